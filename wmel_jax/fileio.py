"""Atomic output files: a reader never sees a half-written report or model.

Everything wmel-jax writes goes through :func:`atomic_output`: the content is
written to a temporary file in the destination's directory and renamed over the
destination only once it is complete, so an error (or Ctrl-C) midway leaves
no output file behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from wmel_jax.errors import WmelError

__all__ = ["atomic_output", "write_json", "check_writable", "check_output_path"]


def check_writable(path: str | os.PathLike) -> Path:
    """Fail early, before any work, if ``path``'s directory cannot take a file."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise WmelError(f"output path {str(path)!r} is a directory")
    if not parent.is_dir():
        raise WmelError(f"cannot write {str(path)!r}: directory {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise WmelError(f"cannot write {str(path)!r}: directory {str(parent)!r} is not writable")
    return path


def check_output_path(path: str | os.PathLike, force: bool) -> Path:
    """:func:`check_writable`, and refuse to replace an existing file unless ``force``."""
    path = check_writable(path)
    if path.exists() and not force:
        raise WmelError(f"{str(path)!r} exists; pass --force to overwrite it")
    return path


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary file beside ``path``; rename it to ``path`` on success.

    On any exception the temporary file is removed and ``path`` is untouched.
    """
    path = check_writable(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        # mkstemp creates the file 0600; give it the mode a plain open() would
        # (0666 less the umask), which is what the user expects of an output.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as JSON atomically; NaN or infinity is a bug, never written."""
    text = json.dumps(obj, indent=2, allow_nan=False) + "\n"
    with atomic_output(path, "w") as f:
        f.write(text)

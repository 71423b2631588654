"""The converted world-model file: safetensors with a JSON header. No code runs on load.

One self-describing file per checkpoint. The tensors are the flax parameters
(float32, flat ``/``-joined paths, see :mod:`wmel_jax.model.arch`); the
safetensors ``__metadata__`` holds two strings:

- ``"format"``: ``"wmel-jax/world-model"``, so a foreign safetensors file is
  recognised as such;
- ``"wmel-jax"``: a JSON document::

    format_version   int (this module writes FORMAT_VERSION)
    schema           "adapter" | "upstream"
    layout           "adapter" | "current" | "older"   (upstream Q-ensemble key layout)
    arch             Arch.to_dict()
    action_dim       int
    action_set       [[float] * action_dim] * A, or null (upstream checkpoints have none)
    task             str or null;  task_source: how it was determined
    task_names       [str] or null (multitask); task_names_source
    frame_skip       int;  frame_skip_source
    policy           {"log_std_min", "log_std_max"} or null
    source           {"file", "sha256", "size_bytes"} of the torch checkpoint
    converter        {"name", "version"}
    meta             the checkpoint's own ``meta`` (JSON-safe copy), else {}

Files are written atomically (:func:`wmel_jax.fileio.atomic_output`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from wmel_jax.errors import WmelError
from wmel_jax.fileio import atomic_output
from wmel_jax.model.arch import Arch, check_params

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "write_model_file", "read_model_file", "REQUIRED_FIELDS"]

FORMAT_NAME = "wmel-jax/world-model"
FORMAT_VERSION = 1
_HEADER_KEY = "wmel-jax"
REQUIRED_FIELDS = (
    "format_version", "schema", "layout", "arch", "action_dim", "action_set", "task",
    "task_names", "frame_skip", "source", "converter", "meta",
)
_SCHEMAS = ("adapter", "upstream")


def write_model_file(path: str | os.PathLike, params: Mapping[str, np.ndarray], header: Mapping[str, Any]) -> Path:
    """Write flat float32 ``params`` and the JSON ``header`` to ``path``, atomically."""
    from safetensors.numpy import save

    doc = {"format_version": FORMAT_VERSION, **header}
    missing = [f for f in REQUIRED_FIELDS if f not in doc]
    if missing:
        raise ValueError(f"header lacks {missing}")  # a bug in the caller, not a user error
    tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in params.items()}
    text = json.dumps(doc, allow_nan=False, sort_keys=True)
    blob = save(tensors, metadata={"format": FORMAT_NAME, _HEADER_KEY: text})
    with atomic_output(path, "wb") as f:
        f.write(blob)
    return Path(path)


def _looks_like_torch(path: Path) -> bool:
    """A torch zip archive, or a legacy torch pickle (protocol-2 marker 0x80) that is not safetensors.

    A safetensors file starts with its header length (u64, little-endian) and
    then ``{``; that length's low byte can be 0x80 too, so the safetensors
    layout is recognised before the pickle marker is looked at.
    """
    with open(path, "rb") as f:
        head = f.read(9)
    if head.startswith(b"PK\x03\x04"):
        return True
    if len(head) == 9 and head[8:9] == b"{":
        return False
    return head[:1] == b"\x80"


def read_model_file(path: str | os.PathLike) -> tuple[dict[str, Any], Arch, dict[str, np.ndarray]]:
    """Read a converted model: ``(header, arch, flat float32 params)``; any defect is a WmelError."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise WmelError(f"model file {str(path)!r} does not exist")
    if path.is_dir():
        raise WmelError(f"model file {str(path)!r} is a directory")
    try:
        torch_like = _looks_like_torch(path)
    except OSError as e:
        raise WmelError(f"cannot read model file {str(path)!r}: {e.strerror or e}") from None
    if torch_like:
        raise WmelError(
            f"{str(path)!r} looks like a torch checkpoint, not a converted model; "
            f"convert it first: wmel-jax convert {path}"
        )
    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != FORMAT_NAME or _HEADER_KEY not in metadata:
                raise WmelError(
                    f"{str(path)!r} is a safetensors file but not a wmel-jax world model "
                    f"(no {FORMAT_NAME!r} header); convert the torch checkpoint with wmel-jax convert"
                )
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except WmelError:
        raise
    except Exception as e:  # safetensors raises its own error types for every defect
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        raise WmelError(
            f"{str(path)!r} is not a readable wmel-jax model file (corrupt, truncated or another "
            f"format): {reason}"
        ) from None
    try:
        header = json.loads(metadata[_HEADER_KEY])
    except json.JSONDecodeError as e:
        raise WmelError(f"{str(path)!r} has a corrupt wmel-jax header: {e.msg}") from None
    if not isinstance(header, dict):
        raise WmelError(f"{str(path)!r} has a corrupt wmel-jax header (not a JSON object)")
    version = header.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise WmelError(f"{str(path)!r} has an invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise WmelError(
            f"{str(path)!r} has format version {version}; this wmel-jax reads up to "
            f"{FORMAT_VERSION}: upgrade wmel-jax"
        )
    missing = [f for f in REQUIRED_FIELDS if f not in header]
    if missing:
        raise WmelError(f"{str(path)!r} header lacks {', '.join(missing)}")
    if header["schema"] not in _SCHEMAS:
        raise WmelError(f"{str(path)!r} has unknown schema {header['schema']!r}")
    arch = Arch.from_dict(header["arch"])
    for name, t in tensors.items():
        if t.dtype != np.float32:
            raise WmelError(f"{str(path)!r}: tensor {name!r} is {t.dtype}, expected float32")
    try:
        check_params(arch, {k: t.shape for k, t in tensors.items()})
    except WmelError as e:
        raise WmelError(f"{str(path)!r} does not match its own architecture: {e}") from None
    if header["action_dim"] != arch.action_dim:
        raise WmelError(f"{str(path)!r}: header action_dim disagrees with arch")
    if header["action_set"] is not None:
        a = np.asarray(header["action_set"], dtype=np.float64)
        if a.ndim != 2 or a.shape[1] != arch.action_dim or a.shape[0] < 1:
            raise WmelError(f"{str(path)!r}: action_set must be a non-empty (A, {arch.action_dim}) list")
    return header, arch, tensors

"""Files in and out: regular files only, reads bounded, outputs written as one set.

Inputs (:func:`open_input`, :func:`read_input`, :func:`check_input`) must be
regular files: a FIFO, a device or a socket is refused before it is read (a
FIFO would block forever, ``/dev/zero`` would fill the memory), and a read is
never sized by what a file claims before the claim is checked against the
file's real size and a cap. Every failure is a one-line :class:`WmelError`
that says what is wrong (a missing file, a dangling link, a link loop, a
directory, a permission).

Outputs go through an :class:`OutputSet`, declared before any work: an output
that exists is an error unless ``force``; an output that is one of the
inputs, or two outputs that are the same file (after following links, or hard
links), are always errors; a symbolic link is written through (its target is
replaced, the link stays), and a device, FIFO, socket or directory is never
replaced. When the work is done, every output is rendered to a temporary file
beside its destination and only once all of them are complete are they
renamed into place, together (Ctrl-C is held back for those few renames). Any
failure (a full disk, Ctrl-C, an exception) leaves none of them behind and
the previous files as they were.

Temporary files and folders in flight are registered, so that the command
line's interrupt handler can remove them when it has to stop a process that
does not return from a long computation (:func:`remove_temporaries`).
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import shutil
import signal
import stat
import tempfile
import threading
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator

from wmel_jax.errors import WmelError

__all__ = [
    "OutputSet",
    "atomic_output",
    "write_json",
    "check_writable",
    "check_output_path",
    "check_input",
    "open_input",
    "read_input",
    "read_json_file",
    "read_npy_file",
    "temporary_directory",
    "remove_temporaries",
    "human_bytes",
    "MAX_JSON_BYTES",
    "MAX_NPY_BYTES",
]

#: The largest JSON input read (a reference CPG file with every episode is a few MB).
MAX_JSON_BYTES = 64 * 2**20
#: The largest ``.npy`` input read (a million states of 64 float64 columns is 512 MB).
MAX_NPY_BYTES = 2**30


def human_bytes(n: int) -> str:
    """``1536`` -> ``"1.5 KiB"``: sizes in messages."""
    value = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- #
# inputs
# --------------------------------------------------------------------------- #

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _kind(mode: int) -> str:
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a regular file"


def _open_error(path: str, what: str, e: OSError) -> WmelError:
    """The one-line reason an input could not be opened or stat'ed."""
    shown = repr(str(path))
    if e.errno == errno.ENOENT:
        if os.path.lexists(path):
            return WmelError(f"{what} {shown} is a broken symbolic link (its target does not exist)")
        return WmelError(f"{what} {shown} does not exist")
    if e.errno == errno.ELOOP:
        return WmelError(f"{what} {shown} is a symbolic link loop (too many levels of symbolic links)")
    if e.errno == errno.ENOTDIR:
        return WmelError(f"{what} {shown} does not exist (a folder on its path is a file)")
    if e.errno in (errno.EACCES, errno.EPERM):
        return WmelError(f"cannot read {what} {shown}: permission denied")
    return WmelError(f"cannot read {what} {shown}: {e.strerror or e}")


def check_input(path: str | os.PathLike, what: str) -> os.stat_result:
    """WmelError unless ``path`` is (a link to) a readable regular file; its stat."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise _open_error(os.fspath(path), what, e) from None
    if not stat.S_ISREG(st.st_mode):
        raise WmelError(f"{what} {str(path)!r} is {_kind(st.st_mode)}, not a regular file")
    return st


@contextlib.contextmanager
def open_input(path: str | os.PathLike, what: str, *, max_bytes: int | None = None) -> Iterator[BinaryIO]:
    """A regular file opened for reading (binary); WmelError for anything else.

    Checked with ``stat`` before it is opened (opening a FIFO or a device can
    block or have effects), opened non-blocking and checked again on the open
    descriptor (the path may have changed in between). ``max_bytes``: refuse a
    bigger file, naming its size. The file object has ``.size`` (bytes).
    """
    check_input(path, what)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise _open_error(os.fspath(path), what, e) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise WmelError(f"{what} {str(path)!r} is {_kind(st.st_mode)}, not a regular file")
        os.set_blocking(fd, True)
        if max_bytes is not None and st.st_size > max_bytes:
            raise WmelError(
                f"{what} {str(path)!r} is {human_bytes(st.st_size)}, more than the {human_bytes(max_bytes)} "
                f"wmel-jax reads for a {what}"
            )
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        f.size = st.st_size  # type: ignore[attr-defined]
        yield f


def read_exactly(f: BinaryIO, n: int, path: str | os.PathLike, what: str) -> bytes:
    """``n`` bytes from ``f`` (its current position); WmelError if the file ends first."""
    try:
        data = f.read(n)
    except OSError as e:
        raise WmelError(f"cannot read {what} {str(path)!r}: {e.strerror or e}") from None
    if len(data) != n:
        raise WmelError(f"{what} {str(path)!r} is truncated (it changed while being read?)")
    return data


def read_input(path: str | os.PathLike, what: str, max_bytes: int) -> bytes:
    """The whole content of a regular file of at most ``max_bytes``."""
    with open_input(path, what, max_bytes=max_bytes) as f:
        return read_exactly(f, f.size, path, what)  # type: ignore[attr-defined]


def read_json_file(path: str | os.PathLike, what: str, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """A JSON document from a regular file, read with a bound; any defect is one WmelError line."""
    data = read_input(path, what, max_bytes)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise WmelError(f"{what} {str(path)!r} is not JSON (not UTF-8 text)") from None
    return parse_json(text, f"{what} {str(path)!r}")


def parse_json(text: str, where: str) -> Any:
    """``json.loads`` with its every failure, nesting too deep included, as a one-line WmelError."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise WmelError(f"{where} is not JSON ({e.msg} at line {e.lineno})") from None
    except RecursionError:
        raise WmelError(f"{where} is JSON nested too deeply to read") from None


def read_npy_file(path: str | os.PathLike, what: str, max_bytes: int = MAX_NPY_BYTES) -> Any:
    """A numeric ``.npy`` array, never unpickling anything; its header is checked before its data is read.

    The header (magic, version, dtype, shape) is parsed by NumPy's header
    reader; the data it declares must be exactly what follows it in the file
    and at most ``max_bytes``. Object and structured dtypes are refused (an
    object array is a pickle). Returns the array (any numeric dtype, any
    shape: the caller checks those).
    """
    import numpy as np
    from numpy.lib import format as npy

    shown = repr(str(path))
    with open_input(path, what, max_bytes=max_bytes + 2**20) as f:
        size = f.size  # type: ignore[attr-defined]
        head = f.read(6)
        if head[:2] == b"PK":
            raise WmelError(f"{what} file {shown} is an .npz archive; give one .npy array")
        if head != npy.MAGIC_PREFIX:
            kind = "empty" if size == 0 else "random bytes or text?"
            raise WmelError(f"{what} file {shown} is not a .npy file (no NumPy header: {kind})")
        f.seek(0)
        try:
            version = npy.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = npy.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = npy.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")
        except (ValueError, SyntaxError, TypeError, EOFError, OSError) as e:
            reason = " ".join(str(e).split())[:160] or type(e).__name__
            raise WmelError(f"{what} file {shown} has a malformed .npy header ({reason})") from None
        if dtype.hasobject:
            raise WmelError(
                f"{what} file {shown} is not a plain numeric .npy array: it holds Python objects (pickled data), "
                "refused without unpickling anything"
            )
        if dtype.fields is not None or dtype.subdtype is not None or dtype.kind not in "biuf":
            raise WmelError(f"{what} file {shown} holds {dtype} values, not numbers")
        count = 1
        for d in shape:
            count *= int(d)
        nbytes = count * dtype.itemsize
        offset = f.tell()
        if nbytes > max_bytes:
            raise WmelError(
                f"{what} file {shown} declares a {tuple(shape)} {dtype} array ({human_bytes(nbytes)}), more than "
                f"the {human_bytes(max_bytes)} wmel-jax reads"
            )
        if offset + nbytes != size:
            raise WmelError(
                f"{what} file {shown} declares a {tuple(shape)} {dtype} array ({human_bytes(nbytes)}) but holds "
                f"{human_bytes(max(size - offset, 0))} of data (truncated or corrupt)"
            )
        data = read_exactly(f, nbytes, path, what + " file")
    arr = np.frombuffer(data, dtype=dtype, count=count)
    return arr.reshape(shape, order="F" if fortran else "C")


# --------------------------------------------------------------------------- #
# temporaries in flight (removed by the interrupt handler when it must exit hard)
# --------------------------------------------------------------------------- #

_TEMPORARIES: set[str] = set()
_TEMP_LOCK = threading.Lock()
#: Held while outputs are renamed into place; the interrupt handler takes it
#: before it removes temporaries and exits, so it never cuts a set of renames short.
_COMMIT_LOCK = threading.RLock()


def register_temporary(path: str | os.PathLike) -> None:
    with _TEMP_LOCK:
        _TEMPORARIES.add(os.fspath(path))


def unregister_temporary(path: str | os.PathLike) -> None:
    with _TEMP_LOCK:
        _TEMPORARIES.discard(os.fspath(path))


def remove_temporaries() -> None:
    """Remove every registered temporary file and folder (for a process about to exit hard).

    Takes the commit lock and keeps it: called by the interrupt handler right
    before ``os._exit``, so no output set is renamed after this.
    """
    _COMMIT_LOCK.acquire()
    with _TEMP_LOCK:
        paths = list(_TEMPORARIES)
        _TEMPORARIES.clear()
    for p in paths:
        try:
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p, ignore_errors=True)
            else:
                os.unlink(p)
        except OSError:
            pass


@contextlib.contextmanager
def temporary_directory(prefix: str = "wmel-jax-") -> Iterator[Path]:
    """``tempfile.TemporaryDirectory``, registered so that a hard interrupt removes it too."""
    path = tempfile.mkdtemp(prefix=prefix)
    register_temporary(path)
    try:
        yield Path(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)
        unregister_temporary(path)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back (main thread only) for a few renames; deliver them after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous: dict[int, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(sig)
        if handler is None:  # installed outside Python: leave it alone
            continue
        previous[sig] = handler
        signal.signal(sig, lambda s, _frame: caught.append(s))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if caught:
            signal.raise_signal(caught[0])


# --------------------------------------------------------------------------- #
# outputs
# --------------------------------------------------------------------------- #


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


class _Declared:
    __slots__ = ("shown", "what", "dest", "identity")

    def __init__(self, shown: str, what: str, dest: str, identity: tuple[int, int] | None):
        self.shown, self.what, self.dest, self.identity = shown, what, dest, identity

    def same_as(self, other: "_Declared") -> bool:
        return self.dest == other.dest or (self.identity is not None and self.identity == other.identity)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` to ``fd`` (the one place outputs hit the disk)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view[: 1 << 24])
        view = view[n:]


class OutputSet:
    """The files one command writes, checked before any work and written together at the end.

    Usage::

        outputs = OutputSet(force=args.force)
        outputs.add_input(model_path, "model")
        outputs.add(report_path, "report")        # WmelError now, before any work
        ...                                        # the work
        outputs.write(report_path, text)           # staged in memory
        outputs.commit()                           # rendered to temporaries, then renamed together

    ``add`` refuses (one-line WmelError): a path that exists unless
    ``force``; a path that is an input or another output (after following
    links; hard links too), even with ``force``; a directory, FIFO, device or
    socket, or a link to one; a folder that does not exist or is not
    writable. A symbolic link to a regular file (or to a path that does not
    exist yet) is written through: its target is replaced and the link is
    kept.
    """

    def __init__(self, *, force: bool = False):
        self.force = force
        self._inputs: list[_Declared] = []
        self._outputs: list[_Declared] = []
        self._staged: dict[str, bytes] = {}

    # -- declaring ---------------------------------------------------------

    def add_input(self, path: str | os.PathLike | None, what: str) -> None:
        """An input no output may be (missing inputs are fine: they are reported where they are read)."""
        if path is None:
            return
        shown = os.fspath(path)
        entry = _Declared(shown, what, os.path.realpath(shown), _identity(shown))
        for out in self._outputs:
            if out.same_as(entry):
                raise self._clash(out, entry)
        self._inputs.append(entry)

    def add_inputs(self, paths: Iterable[str | os.PathLike] | None, what: str) -> None:
        for p in paths or ():
            self.add_input(p, what)

    def add(self, path: str | os.PathLike | None, what: str) -> Path | None:
        """Declare an output (None: nothing); returns the path as given. All checks happen here."""
        if path is None:
            return None
        shown = os.fspath(path)
        if not shown:
            raise WmelError(f"the {what} path is empty")
        dest = self._destination(shown, what)
        entry = _Declared(shown, what, dest, _identity(dest))
        for other in self._inputs:
            if entry.same_as(other):
                raise self._clash(entry, other)
        for other in self._outputs:
            if entry.same_as(other):
                raise WmelError(
                    f"the {what} {shown!r} and the {other.what} {other.shown!r} are the same file; give each "
                    "output its own path"
                )
        self._outputs.append(entry)
        return Path(shown)

    @staticmethod
    def _clash(output: _Declared, source: _Declared) -> WmelError:
        return WmelError(
            f"the {output.what} {output.shown!r} is the {source.what} {source.shown!r}: an output never "
            "replaces an input (not even with --force)"
        )

    def _destination(self, shown: str, what: str) -> str:
        """The real file an output replaces: checked, links followed (never replaced themselves)."""
        try:
            st = os.lstat(shown)
        except FileNotFoundError:
            st = None
        except OSError as e:
            raise _output_error(shown, what, e) from None
        if st is not None and stat.S_ISLNK(st.st_mode):
            try:
                target_st: os.stat_result | None = os.stat(shown)
            except FileNotFoundError:
                target_st = None  # a dangling link: written through, to the path it names
            except OSError as e:
                raise _output_error(shown, what, e) from None
            dest = os.path.realpath(shown)
            if target_st is not None and not stat.S_ISREG(target_st.st_mode):
                raise WmelError(
                    f"the {what} {shown!r} is a symbolic link to {_kind(target_st.st_mode)}, not to a regular "
                    "file; wmel-jax writes only regular files"
                )
            st = target_st
        else:
            dest = os.path.realpath(shown)
            if st is not None and not stat.S_ISREG(st.st_mode):
                raise WmelError(
                    f"the {what} {shown!r} is {_kind(st.st_mode)}, not a regular file; wmel-jax writes only "
                    "regular files (it never replaces a directory, device, FIFO or socket)"
                )
        if st is not None and not self.force:
            raise WmelError(f"the {what} {shown!r} exists; pass --force to replace it")
        parent = os.path.dirname(dest) or "."
        if not os.path.isdir(parent):
            raise WmelError(f"cannot write the {what} {shown!r}: directory {parent!r} does not exist")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise WmelError(f"cannot write the {what} {shown!r}: directory {parent!r} is not writable")
        return dest

    # -- writing -----------------------------------------------------------

    def write(self, path: str | os.PathLike, data: bytes | str) -> None:
        """Stage the content of a declared output (written by :meth:`commit`)."""
        shown = os.fspath(path)
        entry = next((o for o in self._outputs if o.shown == shown), None)
        if entry is None:
            raise ValueError(f"{shown!r} was not declared with add()")  # a bug in the caller
        self._staged[shown] = data.encode("utf-8") if isinstance(data, str) else bytes(data)

    def commit(self) -> list[Path]:
        """Write every staged output: all to temporaries first, then all renamed into place.

        On any failure (a full disk, Ctrl-C) none of them is left behind and
        every destination is as it was; an OSError becomes a one-line WmelError.
        Returns the paths written, as given.
        """
        chosen = [o for o in self._outputs if o.shown in self._staged]
        temps: list[str] = []
        try:
            for out in chosen:
                temps.append(self._render(out, self._staged[out.shown]))
            with _signals_held(), _COMMIT_LOCK:
                self._rename_all(chosen, temps)
        except OSError as e:
            failed = getattr(e, "wmel_output", None) or chosen[min(len(temps), len(chosen) - 1)]
            raise WmelError(
                f"cannot write the {failed.what} {failed.shown!r}: {e.strerror or e}; no output was written"
            ) from None
        finally:
            for tmp in temps:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                unregister_temporary(tmp)
            self._staged.clear()
        return [Path(o.shown) for o in chosen]

    def _render(self, out: _Declared, data: bytes) -> str:
        """``data`` in a new temporary file beside the destination, flushed to disk; its path."""
        folder = os.path.dirname(out.dest) or "."
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(out.dest)}.", suffix=".tmp", dir=folder)
        register_temporary(tmp)
        try:
            # mkstemp creates the file 0600; give it the mode a plain open() would.
            os.fchmod(fd, 0o666 & ~_umask())
            _write_all(fd, data)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            unregister_temporary(tmp)
            raise
        os.close(fd)
        return tmp

    def _rename_all(self, chosen: list[_Declared], temps: list[str]) -> None:
        """Rename every temporary over its destination; on a failure put back what was there."""
        if not self.force:  # something may have appeared at a destination while we worked
            for out in chosen:
                if os.path.lexists(out.dest):
                    raise WmelError(f"the {out.what} {out.shown!r} appeared while wmel-jax worked; nothing was written")
        done: list[tuple[str, str | None]] = []  # (destination, backup of what it replaced)
        try:
            for out, tmp in zip(chosen, temps):
                backup = None
                if os.path.lexists(out.dest):
                    backup = tmp + ".old"
                    try:
                        os.link(out.dest, backup)
                    except OSError:
                        backup = None  # no hard links here: the old file cannot be put back
                try:
                    os.replace(tmp, out.dest)
                except OSError as e:
                    e.wmel_output = out  # type: ignore[attr-defined]  # named in the message
                    raise
                done.append((out.dest, backup))
        except BaseException:
            for dest, backup in reversed(done):
                with contextlib.suppress(OSError):
                    if backup is not None:
                        os.replace(backup, dest)
                    else:
                        os.unlink(dest)
            raise
        finally:
            for _, backup in done:
                if backup is not None:
                    with contextlib.suppress(OSError):
                        os.unlink(backup)
        for folder in {os.path.dirname(o.dest) or "." for o in chosen}:
            _fsync_dir(folder)


def _output_error(shown: str, what: str, e: OSError) -> WmelError:
    if e.errno == errno.ELOOP:
        return WmelError(f"the {what} {shown!r} is a symbolic link loop (too many levels of symbolic links)")
    if e.errno == errno.ENOTDIR:
        return WmelError(f"cannot write the {what} {shown!r}: a folder on its path is a file")
    return WmelError(f"cannot write the {what} {shown!r}: {e.strerror or e}")


def _fsync_dir(folder: str) -> None:
    """Make the renames durable (best effort: some file systems refuse a directory fsync)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- #
# one output at a time (library callers; commands declare an OutputSet)
# --------------------------------------------------------------------------- #


def check_writable(path: str | os.PathLike) -> Path:
    """Fail early, before any work, if ``path`` cannot be written (an existing file may be replaced)."""
    OutputSet(force=True).add(path, "output")
    return Path(path)


def check_output_path(path: str | os.PathLike, force: bool) -> Path:
    """:func:`check_writable`, and refuse to replace an existing file unless ``force``."""
    OutputSet(force=force).add(path, "output")
    return Path(path)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """A file object whose content replaces ``path`` (atomically) when the block ends without error.

    A one-output :class:`OutputSet` with ``force``: links are written
    through, devices and FIFOs refused; on any exception ``path`` is
    untouched and nothing is left behind.
    """
    outputs = OutputSet(force=True)
    outputs.add(path, "output")
    buffer: Any = io.StringIO() if "b" not in mode else io.BytesIO()
    yield buffer
    outputs.write(path, buffer.getvalue())
    outputs.commit()


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as JSON atomically; NaN or infinity is a bug, never written."""
    with atomic_output(path, "w") as f:
        f.write(json_text(obj))


def json_text(obj: Any) -> str:
    """``obj`` as the indented JSON wmel-jax writes (NaN or infinity raises: a bug)."""
    return json.dumps(obj, indent=2, allow_nan=False) + "\n"

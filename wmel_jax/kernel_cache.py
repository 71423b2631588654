"""Compiled kernels: traced once per configuration, compiled once per process.

Every kernel of an evaluation (the state sampler, the oracle's answers, each
architecture's metrics) is compiled through :func:`compiled`, in three layers:

1. in this process, a kernel compiled for these argument shapes and compiler
   options is reused (a sweep of checkpoints of one architecture compiles once);
2. the kernel is traced and lowered once and exported with ``jax.export``
   (StableHLO in a flatbuffer). With a cache directory (:func:`enable`; the
   CLI enables one, see ``--cache-dir``) the exported program is written to
   ``DIR/kernels`` and a later process with the same configuration reads it
   instead of tracing: tracing runs MJX's Python, most of the time of a
   start whose XLA programs are cached;
3. the exported program is compiled with ``jax.jit`` and the kernel's own
   compiler options. With a cache directory, XLA's executables are kept in
   ``DIR/xla`` through JAX's persistent compilation cache, stored by
   :class:`_CheckedXlaCache` (checksummed, written atomically).

A fresh trace and a read one compile the same exported program, so their
results are bit-identical; with no cache directory kernels are exported too,
so ``--no-cache`` computes exactly what a cached run computes.

A stored program is valid only for the code and configuration that traced it.
Its file name is the sha256 of everything it depends on (:func:`disk_key`):
the format version; the kernel's identity, its qualified name and the content
of everything it closes over (:func:`content_key`: code, constants, arrays,
the oracle's configuration and its MuJoCo model's sha256, so a hit needs
neither MJX nor the networks' flax modules); the sha256 of every source file
of the wmel_jax package; the versions of Python, jax, jaxlib, mujoco,
mujoco-mjx, dm-control, flax and numpy; the backend, device kind, the
effective 64-bit mode and every JAX setting but those about caching, logging
and dumps; the argument tree, shapes and dtypes. A kernel that closes over a
value without a content key is never written (it is traced in every
process). On reading, the header's key material must equal the expected one,
the payload's sha256 must match and the program must take exactly the
expected arguments; any other file (corrupt, truncated, stale, foreign) is
ignored and replaced by a fresh trace. Nothing read is unpickled or imported:
the only Python objects a stored program names are NamedTuple types of
already-loaded wmel_jax modules.

Compiler options are not part of a stored program (they apply when it is
compiled): they are part of the in-process key, and JAX's key of the XLA
executable includes them.

Sharded calls (``placement``, :class:`wmel_jax.distributed.Placement`): the
kernel is traced and stored at one device's shapes, exactly as for one
device, and the stored program is compiled wrapped in ``jax.shard_map`` over
the placement's mesh. The traced program is therefore shared by every device
count; the in-process key and JAX's XLA key include the mesh.

:func:`precompile` starts a compilation on a background thread (XLA releases
the GIL while it compiles), so that, e.g., the oracle's kernel compiles while
the state sampler is traced and run; :func:`compiled` then waits for it.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import enum
import functools
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import stat
import sys
import tempfile
import threading
import time
import types
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import numpy as np
from jax import export

__all__ = [
    "FORMAT_VERSION",
    "Unkeyable",
    "compiled",
    "precompile",
    "enable",
    "disable",
    "set_directory",
    "get_directory",
    "content_key",
    "disk_key",
    "stats",
    "clear",
    "add_listener",
    "remove_listener",
]

#: Bumped whenever the file layout or the key material changes.
FORMAT_VERSION = 2
_MAGIC = b"WMELJAX-KERNEL\x00\x02"
_SUFFIX = ".kernel"
_XLA_MAGIC = b"WMELJAX-XLA\x00\x01"
_XLA_SUFFIX = ".xla"

#: Distributions whose code or data a traced kernel depends on.
_DISTRIBUTIONS = ("jax", "jaxlib", "mujoco", "mujoco-mjx", "dm-control", "flax", "numpy")
#: JAX settings left out of the key: where and whether things are cached,
#: logged or dumped changes no traced program.
#: Nor do the devices a process sees (a program is traced at one device's shapes).
_UNKEYED_FLAG = re.compile(r"cache|log|dump|explain|timeout|debug_leaked|mock_gpu|num_cpu_devices|visible_devices|"
                           r"collectives|preemption|distributed")
#: Top-level packages whose functions may be named (not inspected) in a content
#: key: wmel_jax's sources are hashed, the others' versions are in the key.
_NAMED_PACKAGES = frozenset({"wmel_jax", "jax", "jaxlib", "numpy", "mujoco", "flax", "math", "builtins", "operator", "functools"})

_LOCK = threading.Lock()
_COMPILED: dict[tuple, Any] = {}
_INFLIGHT: dict[tuple, concurrent.futures.Future] = {}
_DIRECTORY: Path | None = None
_STATS: Counter = Counter()


class Unkeyable(TypeError):
    """A value without a content key: a kernel closing over it is not stored on disk."""


# --------------------------------------------------------------------------- #
# configuration
# --------------------------------------------------------------------------- #


def enable(directory: str | os.PathLike) -> Path:
    """Cache traced kernels in ``directory``/kernels and XLA executables in ``directory``/xla.

    Creates both folders and checks that a file can be created in each;
    raises OSError (and changes nothing) when not. Process-wide: it sets
    JAX's persistent compilation cache (every compilation is kept, however
    small or quick: in a short run compilation dominates).
    """
    root = Path(directory).expanduser()
    kernels, xla = root / "kernels", root / "xla"
    for folder in (kernels, xla):
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".probe-")
        os.close(fd)
        os.unlink(probe)
    set_directory(kernels)
    _install_xla_cache(xla)
    return root


def disable() -> None:
    """Stop reading and writing both caches (in-process compiled kernels are kept)."""
    set_directory(None)
    from jax._src import compilation_cache

    jax.config.update("jax_compilation_cache_dir", None)
    compilation_cache.reset_cache()


def set_directory(directory: str | os.PathLike | None) -> Path | None:
    """Store and read traced kernels in ``directory`` (created if needed); None: do not.

    Only the traced programs: :func:`enable` also caches XLA's executables.
    """
    global _DIRECTORY
    if directory is None:
        _DIRECTORY = None
        return None
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    _DIRECTORY = path
    return path


def get_directory() -> Path | None:
    return _DIRECTORY


def stats() -> dict[str, float]:
    """Counts and seconds since the last :func:`clear` (all threads).

    Counts: traced, written, read, rejected (bad kernel files), unkeyable,
    unwritable, not_exportable, compiled, reused, xla_read, xla_written,
    xla_rejected (bad XLA files). Seconds: trace_s (tracing and lowering),
    load_s (reading stored programs), xla_s (XLA compilation, or reading
    its executable from the cache).
    """
    with _LOCK:
        return dict(_STATS)


def clear(kernel: Callable | None = None) -> None:
    """Forget this process's compiled ``kernel`` (every shape), or every kernel and :func:`stats` (None).

    For tests and benchmarks: the next :func:`compiled` call reads or traces
    the kernel again.
    """
    with _LOCK:
        if kernel is None:
            _COMPILED.clear()
            _STATS.clear()
        else:
            for key in [k for k in _COMPILED if k[0] is kernel]:
                del _COMPILED[key]


def _count(what: str, n: float = 1) -> None:
    with _LOCK:
        _STATS[what] += n


# --------------------------------------------------------------------------- #
# keys
# --------------------------------------------------------------------------- #


def content_key(obj: Any) -> Any:
    """A JSON-able value that is equal for values that trace the same program.

    Primitives, tuples, lists, dicts, numpy and concrete JAX arrays (by
    content), frozen dataclasses (class and fields), enums, objects defining
    ``__wmel_cache_key__()``, functions (module-level ones by qualified name
    when their package's code is in the key; closures and lambdas also by
    their code and the content of their cells and defaults), bound methods,
    ``functools.partial``, modules and classes. Anything else raises
    :class:`Unkeyable`.
    """
    if obj is None or isinstance(obj, (bool, int, str)):
        return [type(obj).__name__, obj]
    if isinstance(obj, float):
        return ["float", obj.hex()]
    if isinstance(obj, bytes):
        return ["bytes", hashlib.sha256(obj).hexdigest()]
    if isinstance(obj, (tuple, list)):
        return [type(obj).__name__, [content_key(x) for x in obj]]
    if isinstance(obj, dict):
        items = sorted((json.dumps(content_key(k)), content_key(v)) for k, v in obj.items())
        return ["dict", items]
    if isinstance(obj, (frozenset, set)):
        return [type(obj).__name__, sorted(json.dumps(content_key(x)) for x in obj)]
    if isinstance(obj, jax.Array) and not isinstance(obj, jax.core.Tracer):
        obj = np.asarray(obj)
    if isinstance(obj, (np.ndarray, np.generic)):
        arr = np.ascontiguousarray(obj)
        if arr.dtype.hasobject:
            raise Unkeyable("an object array")
        return ["ndarray", arr.dtype.str, list(arr.shape), hashlib.sha256(arr.tobytes()).hexdigest()]
    if isinstance(obj, enum.Enum):
        return ["enum", _named(type(obj)), obj.name]
    custom = getattr(type(obj), "__wmel_cache_key__", None)
    if custom is not None and not isinstance(obj, type):
        return ["custom", _named(type(obj)), content_key(custom(obj))]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        if not type(obj).__dataclass_params__.frozen:
            raise Unkeyable(f"mutable dataclass {type(obj).__qualname__}")
        fields = [[f.name, content_key(getattr(obj, f.name))] for f in dataclasses.fields(obj)]
        return ["dataclass", _named(type(obj)), fields]
    if isinstance(obj, types.MethodType):
        return ["method", content_key(obj.__func__), content_key(obj.__self__)]
    if isinstance(obj, functools.partial):
        return ["partial", content_key(obj.func), content_key(obj.args), content_key(obj.keywords)]
    if isinstance(obj, types.ModuleType):
        _check_package(obj.__name__, obj)
        return ["module", obj.__name__]
    if isinstance(obj, type):
        return ["class", _named(obj)]
    if isinstance(obj, types.FunctionType):
        qualname = obj.__qualname__
        if "<locals>" not in qualname and "<lambda>" not in qualname and obj.__closure__ is None:
            return ["function", _named(obj)]
        cells = []
        for name, cell in zip(obj.__code__.co_freevars, obj.__closure__ or ()):
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell (a name assigned later)
                raise Unkeyable(f"{qualname}: closure cell {name} is empty") from None
            cells.append([name, content_key(value)])
        return [
            "closure",
            _named(obj),
            _code_key(obj.__code__),
            cells,
            content_key(obj.__defaults__),
            content_key(obj.__kwdefaults__),
        ]
    # Other callables (jax.jit wrappers, numpy ufuncs...): by name, module-level only.
    qualname = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    module = getattr(obj, "__module__", None)
    if callable(obj) and isinstance(qualname, str) and isinstance(module, str) and "<locals>" not in qualname:
        _check_package(module, obj)
        return ["callable", module, qualname]
    raise Unkeyable(f"no content key for {type(obj).__module__}.{type(obj).__qualname__}")


def _code_key(code: types.CodeType) -> str:
    """sha256 of a code object's bytecode, constants (nested code objects too) and names."""
    digest = hashlib.sha256()
    stack = [code]
    while stack:
        c = stack.pop()
        digest.update(c.co_code)
        digest.update(repr((c.co_names, c.co_varnames, c.co_freevars, c.co_cellvars)).encode())
        for const in c.co_consts:
            if isinstance(const, types.CodeType):
                stack.append(const)
            else:
                digest.update(repr((type(const).__name__, const)).encode())
    return digest.hexdigest()


def _named(obj: Any) -> list[str]:
    module = getattr(obj, "__module__", None) or "?"
    _check_package(module, obj)
    return [module, obj.__qualname__]


def _check_package(module: str, obj: Any) -> None:
    if module.split(".")[0] not in _NAMED_PACKAGES:
        raise Unkeyable(f"{module}.{getattr(obj, '__qualname__', obj)} is outside the packages whose code is keyed")


def tree_fingerprint(root: Path) -> str:
    """sha256 of every .py file under ``root`` (relative path and bytes, sorted by path)."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\x00")
        digest.update(path.read_bytes() + b"\x00")
    return digest.hexdigest()


@functools.lru_cache(maxsize=1)
def _source_fingerprint() -> str:
    """The wmel_jax package's :func:`tree_fingerprint` (read once per process)."""
    return tree_fingerprint(Path(__file__).resolve().parent)


@functools.lru_cache(maxsize=1)
def _versions() -> dict[str, str]:
    out = {"python": f"{platform.python_implementation()} {sys.version}", "machine": platform.machine()}
    for dist in _DISTRIBUTIONS:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "absent"
    return out


def _trace_context() -> dict[str, Any]:
    """The backend and the JAX settings a trace depends on, as seen by this thread now."""
    flags = {}
    for name, value in jax.config.values.items():
        if _UNKEYED_FLAG.search(name):
            continue
        flags[name] = value if isinstance(value, (bool, int, float, str, type(None))) else repr(value)
    return {
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        # The effective 64-bit mode (jax.enable_x64 scopes are thread-local).
        "x64": str(jax.dtypes.canonicalize_dtype(np.float64)) == "float64",
        "flags": flags,
    }


def _signature(avals: tuple) -> tuple[Any, list]:
    leaves, treedef = jax.tree_util.tree_flatten(avals)
    return treedef, [(tuple(x.shape), str(x.dtype), bool(getattr(x, "weak_type", False))) for x in leaves]


def disk_key(kernel: Callable, avals: tuple) -> tuple[str, dict[str, Any]]:
    """(file name stem, key material) of a kernel traced for ``avals``; Unkeyable if it has none."""
    treedef, leaves = _signature(avals)
    material = {
        "format": FORMAT_VERSION,
        "kernel": content_key(kernel),
        "wmel_jax_sources": _source_fingerprint(),
        "versions": _versions(),
        "context": _trace_context(),
        "args": {"tree": str(treedef), "leaves": [list(x) for x in leaves]},
    }
    blob = json.dumps(material, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest(), material


# --------------------------------------------------------------------------- #
# files
# --------------------------------------------------------------------------- #

#: The largest cache entry read back (the biggest kernels' programs and
#: executables are a few MB); a bigger file is ignored and replaced.
MAX_ENTRY_BYTES = 256 * 2**20

_REPORTED: set[str] = set()


def _report_directory(path: Path) -> None:
    """One warning line per process and path: a folder sits where a cache entry belongs."""
    key = str(path)
    with _LOCK:
        if key in _REPORTED:
            return
        _REPORTED.add(key)
    print(f"wmel-jax: warning: cache entry {key!r} is a directory, so this kernel cannot be cached; "
          "remove it", file=sys.stderr)


def _read_entry(path: Path) -> bytes | None:
    """A cache entry's bytes; None when it is not a regular file of at most MAX_ENTRY_BYTES.

    FileNotFoundError when there is none. Never follows a link (an entry
    linked to /dev/zero would be read forever), never blocks (a FIFO), never
    reads more than the entry's size, checked first.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise
    except OSError:
        return None
    if stat.S_ISDIR(st.st_mode):
        _report_directory(path)
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_ENTRY_BYTES:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise
    except OSError:
        return None
    try:
        st = os.fstat(fd)  # the file opened, which may not be the one stat'ed
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_ENTRY_BYTES:
            return None
        chunks, left = [], st.st_size
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 24))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    Readers (other processes too) see the old file or the whole new one,
    never part of one; a failure leaves no temporary file behind. Whatever
    is at ``path`` (a bad file, a link, a FIFO) is replaced, except a folder,
    which is reported once.
    """
    from wmel_jax import fileio

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".part")
    fileio.register_temporary(tmp)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError) and path.is_dir() and not path.is_symlink():
            _report_directory(path)
        raise
    finally:
        fileio.unregister_temporary(tmp)


def _write(path: Path, material: dict[str, Any], payload: bytes, namedtuples: list[list[str]]) -> None:
    header = json.dumps(
        {
            "key": material,
            "payload_sha256": hashlib.sha256(payload).hexdigest(),
            "payload_bytes": len(payload),
            "namedtuples": namedtuples,
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    _atomic_write(path, _MAGIC + len(header).to_bytes(8, "little") + header + payload)


def _read(path: Path, material: dict[str, Any]) -> tuple[bytes, list] | None:
    """(payload, named tuple types) of a stored kernel whose header matches ``material``; None if absent or not valid."""
    try:
        data = _read_entry(path)
    except FileNotFoundError:
        return None
    if data is None:
        _count("rejected")
        return None
    try:
        if not data.startswith(_MAGIC):
            raise ValueError("magic")
        at = len(_MAGIC)
        size = int.from_bytes(data[at : at + 8], "little")
        header = json.loads(data[at + 8 : at + 8 + size].decode())
        payload = data[at + 8 + size :]
        # Round-trip the expected material through JSON so that both sides compare as JSON values.
        if header["key"] != json.loads(json.dumps(material, sort_keys=True)):
            raise ValueError("key")
        if header["payload_bytes"] != len(payload) or header["payload_sha256"] != hashlib.sha256(payload).hexdigest():
            raise ValueError("checksum")
        namedtuples = [[str(m), str(q)] for m, q in header["namedtuples"]]
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
        _count("rejected")
        return None
    return payload, namedtuples


_REGISTERED: dict[type, str] = {}


def _node_types(treedef) -> set[type]:
    """Every node type of a pytree structure."""
    found, stack = set(), [treedef]
    while stack:
        node = stack.pop()
        data = node.node_data()
        if data is not None:
            found.add(data[0])
        stack.extend(node.children())
    return found


def _is_namedtuple_class(cls: Any) -> bool:
    return isinstance(cls, type) and issubclass(cls, tuple) and hasattr(cls, "_fields")


def _register_namedtuple(cls: type) -> list[str]:
    """Make a wmel_jax NamedTuple serializable in exported programs' pytrees; [module, qualname]."""
    name = [cls.__module__, cls.__qualname__]
    if not _is_namedtuple_class(cls):
        raise ValueError(f"{cls!r} is not a NamedTuple")
    if cls.__module__.split(".")[0] != "wmel_jax":
        raise ValueError(f"{cls!r} is not a wmel_jax type")
    with _LOCK:
        if cls not in _REGISTERED:
            export.register_namedtuple_serialization(cls, serialized_name=".".join(name))
            _REGISTERED[cls] = ".".join(name)
    return name


def _namedtuples_of(exp) -> list[list[str]]:
    """Register and name the NamedTuple types in an exported program's argument and result structures."""
    names = []
    for cls in _node_types(exp.in_tree) | _node_types(exp.out_tree):
        if cls in (tuple, list, dict, type(None)):
            continue
        names.append(_register_namedtuple(cls))
    return sorted(names)


def _resolve_namedtuples(names: list[list[str]]) -> None:
    """Register the NamedTuple types a stored program names, before deserializing it.

    Only types of wmel_jax modules this process has already loaded are
    accepted, found by plain attribute look-up: nothing is imported or run.
    """
    for module_name, qualname in names:
        if module_name.split(".")[0] != "wmel_jax":
            raise ValueError(f"a stored program names a type outside wmel_jax: {module_name}")
        obj: Any = sys.modules.get(module_name)
        if obj is None:
            raise ValueError(f"a stored program names a type of a module not loaded: {module_name}")
        for part in qualname.split("."):
            obj = vars(obj).get(part)  # no __getattr__ hooks
        if not _is_namedtuple_class(obj):
            raise ValueError(f"{module_name}.{qualname} is not a NamedTuple")
        _register_namedtuple(obj)


# --------------------------------------------------------------------------- #
# XLA's executables: JAX's persistent compilation cache, stored checksummed
# --------------------------------------------------------------------------- #


def _xla_cache_class() -> type:
    from jax._src.compilation_cache_interface import CacheInterface

    class _CheckedXlaCache(CacheInterface):
        """JAX's persistent compilation cache in one folder, one checksummed file per entry.

        JAX's own file cache writes entries in place and never replaces one,
        so a truncated or corrupted entry (a killed writer, a full disk) would
        be read and rejected on every later start. Here an entry is
        ``magic, key, sha256, value``, written through a temporary file and a
        rename; an entry that does not check out is deleted and recompiled.
        """

        def __init__(self, path: Path):
            self._path = Path(path)

        def _file(self, key: str) -> Path | None:
            return self._path / (key + _XLA_SUFFIX) if re.fullmatch(r"[A-Za-z0-9_.-]{1,200}", key) else None

        def get(self, key: str) -> bytes | None:
            path = self._file(key)
            if path is None:
                return None
            try:
                data = _read_entry(path)
            except FileNotFoundError:
                return None
            head = _XLA_MAGIC + key.encode() + b"\x00"
            body = b"" if data is None else data[len(head) + 32 :]
            if data is None or not data.startswith(head) or data[len(head) : len(head) + 32] != hashlib.sha256(body).digest():
                _count("xla_rejected")
                if not (path.is_dir() and not path.is_symlink()):
                    try:
                        path.unlink()
                    except OSError:
                        pass
                return None
            _count("xla_read")
            return body

        def put(self, key: str, value: bytes) -> None:
            path = self._file(key)
            if path is None:
                return
            value = bytes(value)
            try:
                _atomic_write(path, _XLA_MAGIC + key.encode() + b"\x00" + hashlib.sha256(value).digest() + value)
            except OSError:
                _count("xla_unwritable")
                return
            _count("xla_written")

    return _CheckedXlaCache


def _install_xla_cache(folder: Path) -> None:
    """JAX's persistent compilation cache in ``folder``, stored by :class:`_CheckedXlaCache`.

    The store is installed through JAX's internal module (jax is pinned; see
    pyproject.toml). Should that module change, JAX's own file cache is used
    in the same folder instead: still a cache, without the checksums.
    """
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    try:
        from jax._src import compilation_cache

        store = _xla_cache_class()(folder)
        compilation_cache.reset_cache()
        with compilation_cache._cache_initialized_mutex:
            compilation_cache._cache = store
            compilation_cache._cache_initialized = True
    except (ImportError, AttributeError):  # pragma: no cover - another jax than the pinned one
        pass


# --------------------------------------------------------------------------- #
# compiling
# --------------------------------------------------------------------------- #


def _abstract(args: tuple) -> tuple:
    def one(x):
        if isinstance(x, jax.ShapeDtypeStruct):
            return x
        x = x if hasattr(x, "dtype") and hasattr(x, "shape") else np.asarray(x)
        return jax.ShapeDtypeStruct(x.shape, x.dtype, weak_type=bool(getattr(x, "weak_type", False)))

    return jax.tree_util.tree_map(one, args)


_LISTENERS: list[Callable[[str, Callable], None]] = []


def add_listener(listener: Callable[[str, Callable], None]) -> None:
    """Call ``listener(event, kernel)`` as kernels are built (in whichever thread builds them).

    Events: "read" (its traced program is read from the cache directory),
    "trace" (it is being traced: no stored program), then "compile" (XLA
    compiles it, or reads its executable from the cache). A kernel this
    process already compiled sends nothing. For progress displays; a listener
    must be quick and must not raise.
    """
    with _LOCK:
        _LISTENERS.append(listener)


def remove_listener(listener: Callable[[str, Callable], None]) -> None:
    with _LOCK:
        if listener in _LISTENERS:
            _LISTENERS.remove(listener)


def _notify(event: str, kernel: Callable) -> None:
    with _LOCK:
        listeners = list(_LISTENERS)
    for listener in listeners:
        try:
            listener(event, kernel)
        except Exception:  # noqa: BLE001 - a display must never break a run
            pass


def _exported(kernel: Callable, avals: tuple):
    """The kernel's exported program for ``avals``: read from the directory, else traced (and written)."""
    directory = _DIRECTORY
    stored = None
    if directory is not None:
        try:
            stem, material = disk_key(kernel, avals)
            stored = (directory / (stem + _SUFFIX), material)
        except Unkeyable:
            _count("unkeyable")
    if stored is not None:
        t0 = time.perf_counter()
        found = _read(*stored)
        if found is not None:
            try:
                payload, namedtuples = found
                _resolve_namedtuples(namedtuples)
                exp = export.deserialize(bytearray(payload))
                treedef, leaves = _signature(avals)
                got_tree, got_leaves = _signature(tuple(jax.tree_util.tree_unflatten(exp.in_tree, exp.in_avals))[0])
                if got_tree != treedef or got_leaves != leaves or jax.default_backend() not in exp.platforms:
                    raise ValueError("the stored program takes other arguments")
            except Exception:  # noqa: BLE001 - any unreadable program is replaced by a trace
                _count("rejected")
            else:
                _count("read")
                _count("load_s", time.perf_counter() - t0)
                _notify("read", kernel)
                return exp
    _notify("trace", kernel)
    t0 = time.perf_counter()
    exp = export.export(jax.jit(kernel))(*avals)
    _count("traced")
    _count("trace_s", time.perf_counter() - t0)
    if stored is not None:
        try:
            namedtuples = _namedtuples_of(exp)
            _write(stored[0], stored[1], bytes(exp.serialize()), namedtuples)
        except Exception:  # noqa: BLE001 - a read-only cache, a full disk, an unserializable pytree:
            _count("unwritable")  # the program is still used, only not stored
        else:
            _count("written")
    return exp


def _build(kernel: Callable, avals: tuple, options: dict[str, Any], placement: Any = None):
    try:
        exp = _exported(kernel, avals)
    except Exception:  # noqa: BLE001 - a kernel jax.export refuses (e.g. a custom call) compiles directly
        _count("not_exportable")
        fn = kernel
    else:
        fn = exp.call
    _notify("compile", kernel)
    if placement is not None:
        fn, avals = placement.wrap(fn), placement.global_avals(avals)
    t0 = time.perf_counter()
    result = jax.jit(fn, compiler_options=options or None).lower(*avals).compile()
    _count("xla_s", time.perf_counter() - t0)
    return result


def compiled(
    kernel: Callable, args: tuple, compiler_options: Mapping[str, Any] | None = None, placement: Any = None
) -> tuple[Any, float]:
    """``kernel`` compiled for the shapes and dtypes of ``args``: (compiled, seconds this call spent).

    ``args`` are arrays or ``jax.ShapeDtypeStruct``; only their shapes and
    dtypes matter. The seconds are 0 when this process already compiled it,
    and the wait when a :func:`precompile` of it was under way.

    ``placement`` (a :class:`wmel_jax.distributed.Placement`; None: one
    device): ``args`` are then one device's shapes, and the compiled program
    takes the whole call's arrays (``placement.global_avals``).
    """
    options = dict(compiler_options or {})
    avals = _abstract(tuple(args))
    treedef, leaves = _signature(avals)
    key = (kernel, treedef, tuple(leaves), tuple(sorted((k, repr(v)) for k, v in options.items())),
           json.dumps(_trace_context(), sort_keys=True), None if placement is None else placement.key())
    t0 = time.perf_counter()
    while True:
        with _LOCK:
            if key in _COMPILED:
                _STATS["reused"] += 1
                return _COMPILED[key], 0.0
            pending = _INFLIGHT.get(key)
            if pending is None:
                mine: concurrent.futures.Future = concurrent.futures.Future()
                _INFLIGHT[key] = mine
                break
        try:
            pending.result()
        except BaseException:  # noqa: BLE001 - the other attempt failed: try again here (and raise here)
            with _LOCK:
                if _INFLIGHT.get(key) is pending:
                    del _INFLIGHT[key]
            continue
        with _LOCK:
            if key in _COMPILED:
                return _COMPILED[key], time.perf_counter() - t0
    try:
        result = _build(kernel, avals, options, placement)
    except BaseException as e:
        with _LOCK:
            del _INFLIGHT[key]
        mine.set_exception(e)
        raise
    with _LOCK:
        _COMPILED[key] = result
        del _INFLIGHT[key]
        _STATS["compiled"] += 1
    mine.set_result(None)
    return result, time.perf_counter() - t0


_BACKGROUND: concurrent.futures.ThreadPoolExecutor | None = None


def precompile(
    kernel: Callable,
    args: tuple,
    compiler_options: Mapping[str, Any] | None = None,
    setup: Callable[[], Any] | None = None,
    placement: Any = None,
) -> concurrent.futures.Future:
    """Start :func:`compiled` (kernel, args, options, placement) on a background thread; a later call waits for it.

    ``setup()`` returns a context manager entered around the compilation (e.g.
    the oracle's precision scope, which is per thread). A failure in the
    background is not raised there: the later :func:`compiled` call compiles
    again and raises it.
    """
    global _BACKGROUND
    with _LOCK:
        if _BACKGROUND is None:
            _BACKGROUND = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="wmel-compile")
        pool = _BACKGROUND

    def run() -> None:
        if setup is None:
            compiled(kernel, args, compiler_options, placement)
        else:
            with setup():
                compiled(kernel, args, compiler_options, placement)

    return pool.submit(run)

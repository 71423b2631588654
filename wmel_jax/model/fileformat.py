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

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from wmel_jax.errors import WmelError
from wmel_jax.fileio import atomic_output
from wmel_jax.model.arch import Arch, param_shapes

__all__ = [
    "FORMAT_NAME", "FORMAT_VERSION", "write_model_file", "model_file_bytes", "read_model_file", "read_model_header",
    "REQUIRED_FIELDS",
]

FORMAT_NAME = "wmel-jax/world-model"
FORMAT_VERSION = 1
_HEADER_KEY = "wmel-jax"
REQUIRED_FIELDS = (
    "format_version", "schema", "layout", "arch", "action_dim", "action_set", "task",
    "task_names", "frame_skip", "source", "converter", "meta",
)
_SCHEMAS = ("adapter", "upstream")
_LAYOUTS = ("adapter", "current", "older")


def model_file_bytes(params: Mapping[str, np.ndarray], header: Mapping[str, Any]) -> bytes:
    """The model file of flat float32 ``params`` and the JSON ``header``, as bytes."""
    from safetensors.numpy import save

    doc = {"format_version": FORMAT_VERSION, **header}
    missing = [f for f in REQUIRED_FIELDS if f not in doc]
    if missing:
        raise ValueError(f"header lacks {missing}")  # a bug in the caller, not a user error
    tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in params.items()}
    text = json.dumps(doc, allow_nan=False, sort_keys=True)
    return save(tensors, metadata={"format": FORMAT_NAME, _HEADER_KEY: text})


def write_model_file(path: str | os.PathLike, params: Mapping[str, np.ndarray], header: Mapping[str, Any]) -> Path:
    """Write flat float32 ``params`` and the JSON ``header`` to ``path``, atomically (replacing it)."""
    with atomic_output(path, "wb") as f:
        f.write(model_file_bytes(params, header))
    return Path(path)


def _looks_like_torch(head: bytes) -> bool:
    """A torch zip archive, or a legacy torch pickle (protocol-2 marker 0x80) that is not safetensors.

    ``head``: the file's first 9 bytes. A safetensors file starts with its
    header length (u64, little-endian) and then ``{``; that length's low byte
    can be 0x80 too, so the safetensors layout is recognised before the
    pickle marker is looked at.
    """
    if head.startswith(b"PK\x03\x04"):
        return True
    if len(head) == 9 and head[8:9] == b"{":
        return False
    return head[:1] == b"\x80"


class _Table:
    """A safetensors tensor table, checked: name -> (shape, begin, end) with data offsets in bytes."""

    def __init__(self, entries: dict[str, tuple[tuple[int, ...], int, int]], data_start: int):
        self.entries = entries
        self.data_start = data_start


def _unreadable(path: Path, reason: str) -> WmelError:
    return WmelError(
        f"{str(path)!r} is not a readable wmel-jax model file (corrupt, truncated or another format): {reason}"
    )


def _read_table(f: Any, path: Path, size: int) -> tuple[dict[str, str], dict[str, Any], int]:
    """(metadata, raw tensor entries, data start) of a safetensors file, its header length checked first."""
    from wmel_jax.fileio import human_bytes, parse_json, read_exactly
    from wmel_jax.limits import MAX_HEADER_BYTES

    head = f.read(9)
    if _looks_like_torch(head):
        raise WmelError(
            f"{str(path)!r} looks like a torch checkpoint, not a converted model; "
            f"convert it first: wmel-jax convert {path}"
        )
    if len(head) < 9:
        raise _unreadable(path, f"the file is {size} bytes long")
    n = int.from_bytes(head[:8], "little")
    if n > MAX_HEADER_BYTES:
        raise _unreadable(path, f"its header claims {human_bytes(n)} (at most {human_bytes(MAX_HEADER_BYTES)})")
    if 8 + n > size:
        raise _unreadable(path, f"its header claims {human_bytes(n)} but the file is {human_bytes(size)}")
    f.seek(8)
    raw = read_exactly(f, n, path, "model file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _unreadable(path, "its header is not UTF-8 text") from None
    try:
        doc = parse_json(text, "its header")
    except WmelError as e:
        raise _unreadable(path, str(e)) from None
    if not isinstance(doc, dict):
        raise _unreadable(path, "its header is not a JSON object")
    metadata = doc.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _unreadable(path, "its __metadata__ is not a map of strings")
    return metadata, doc, 8 + n


def _check_table(path: Path, raw: dict[str, Any], expected: Mapping[str, tuple[int, ...]], size: int,
                 data_start: int) -> _Table:
    """Names, dtypes, shapes against the architecture; offsets and total bytes against the file size."""
    from wmel_jax.fileio import human_bytes
    from wmel_jax.limits import MAX_MODEL_BYTES

    missing = [p for p in expected if p not in raw]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise WmelError(f"{str(path)!r} does not match its own architecture: missing key {missing[0]!r}{more}")
    extra = [p for p in raw if p not in expected]
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise WmelError(f"{str(path)!r} does not match its own architecture: unexpected key {extra[0]!r}{more}")
    entries: dict[str, tuple[tuple[int, ...], int, int]] = {}
    total = 0
    for name, want in expected.items():
        entry = raw[name]
        if not isinstance(entry, dict):
            raise _unreadable(path, f"tensor {name!r} has no dtype/shape/offsets entry")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype != "F32":
            raise WmelError(f"{str(path)!r}: tensor {name!r} is {dtype}, expected float32 (F32)")
        if not isinstance(shape, list) or tuple(shape) != tuple(want) or any(isinstance(d, bool) for d in shape):
            raise WmelError(
                f"{str(path)!r} does not match its own architecture: key {name!r} has shape {shape} but the "
                f"architecture needs {list(want)}"
            )
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)):
            raise _unreadable(path, f"tensor {name!r} has invalid data offsets {offsets!r}")
        nbytes = 4 * math.prod(want)
        if offsets[1] - offsets[0] != nbytes:
            raise _unreadable(path, f"tensor {name!r} spans {offsets[1] - offsets[0]} bytes; its shape needs {nbytes}")
        entries[name] = (tuple(want), offsets[0], offsets[1])
        total += nbytes
    if total > MAX_MODEL_BYTES:
        raise WmelError(
            f"{str(path)!r} declares {human_bytes(total)} of parameters, more than the "
            f"{human_bytes(MAX_MODEL_BYTES)} a model may have (the largest TD-MPC2 model is 1.3 GB)"
        )
    at = 0
    for name, (_, begin, end) in sorted(entries.items(), key=lambda kv: kv[1][1]):
        if begin != at:
            raise _unreadable(path, f"tensor {name!r} starts at byte {begin}, expected {at} (gaps or overlaps)")
        at = end
    if data_start + total != size:
        raise _unreadable(
            path, f"its tensors take {human_bytes(total)} but the file holds {human_bytes(max(size - data_start, 0))}"
        )
    return _Table(entries, data_start)


def _check_header(path: Path, header: Any) -> Arch:
    """Every field of wmel-jax's JSON header, typed and bounded; the architecture it declares."""
    from wmel_jax.limits import MAX_ACTIONS, MAX_ARCH_DIM, MAX_FRAME_SKIP, check_count

    shown = repr(str(path))
    if not isinstance(header, dict):
        raise WmelError(f"{shown} has a corrupt wmel-jax header (not a JSON object)")
    version = header.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise WmelError(f"{shown} has an invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise WmelError(
            f"{shown} has format version {version}; this wmel-jax reads up to {FORMAT_VERSION}: upgrade wmel-jax"
        )
    missing = [f for f in REQUIRED_FIELDS if f not in header]
    if missing:
        raise WmelError(f"{shown} header lacks {', '.join(missing)}")
    if header["schema"] not in _SCHEMAS:
        raise WmelError(f"{shown} has unknown schema {header['schema']!r}")
    if header["layout"] not in _LAYOUTS:
        raise WmelError(f"{shown} has unknown layout {header['layout']!r}")
    arch = Arch.from_dict(header["arch"])
    for field in dataclasses.fields(arch):
        value = getattr(arch, field.name)
        if isinstance(value, int) and not isinstance(value, bool) and value > MAX_ARCH_DIM:
            raise WmelError(f"{shown}: architecture field {field.name} is {value:,}, more than {MAX_ARCH_DIM:,}")
    if not (math.isfinite(arch.vmin) and math.isfinite(arch.vmax) and arch.vmin < arch.vmax):
        raise WmelError(f"{shown}: architecture vmin {arch.vmin} and vmax {arch.vmax} must be finite, vmin < vmax")
    if header["action_dim"] != arch.action_dim or isinstance(header["action_dim"], bool):
        raise WmelError(f"{shown}: header action_dim disagrees with arch")
    actions = header["action_set"]
    if actions is not None:
        if not isinstance(actions, list) or not 1 <= len(actions) <= MAX_ACTIONS:
            raise WmelError(
                f"{shown}: action_set must be a non-empty (A, {arch.action_dim}) list with A at most {MAX_ACTIONS}"
            )
        for i, row in enumerate(actions):
            if (not isinstance(row, list) or len(row) != arch.action_dim
                    or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                               for x in row)):
                raise WmelError(
                    f"{shown}: action_set row {i} is {json.dumps(row)[:80]}, not {arch.action_dim} finite number(s)"
                )
        seen: dict[tuple, int] = {}
        for i, row in enumerate(actions):
            key = tuple(float(x) for x in row)
            if key in seen:
                raise WmelError(f"{shown}: action_set rows {seen[key]} and {i} are the same action {list(key)}")
            seen[key] = i
    try:
        check_count(header["frame_skip"], "frame_skip", MAX_FRAME_SKIP)
    except WmelError as e:
        raise WmelError(f"{shown}: header {e}") from None
    task = header["task"]
    if task is not None and (not isinstance(task, str) or len(task) > 200):
        raise WmelError(f"{shown}: header task must be a task name or null")
    names = header["task_names"]
    if names is not None and (not isinstance(names, list) or len(names) > 10_000
                              or not all(isinstance(n, str) and len(n) <= 200 for n in names)):
        raise WmelError(f"{shown}: header task_names must be a list of task names or null")
    for field in ("meta", "source", "converter"):
        if not isinstance(header[field], dict):
            raise WmelError(f"{shown}: header {field} must be a JSON object")
    policy = header.get("policy")
    if policy is not None and (not isinstance(policy, dict) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in policy.values())):
        raise WmelError(f"{shown}: header policy must map names to finite numbers, or be null")
    return arch


def _open_model(path: Path):
    from wmel_jax.fileio import open_input

    return open_input(path, "model file")


def _header_and_table(f: Any, path: Path) -> tuple[dict[str, Any], Arch, _Table]:
    size = f.size
    metadata, raw, data_start = _read_table(f, path, size)
    if metadata.get("format") != FORMAT_NAME or _HEADER_KEY not in metadata:
        raise WmelError(
            f"{str(path)!r} is a safetensors file but not a wmel-jax world model "
            f"(no {FORMAT_NAME!r} header); convert the torch checkpoint with wmel-jax convert"
        )
    from wmel_jax.fileio import parse_json

    try:
        header = parse_json(metadata[_HEADER_KEY], "its wmel-jax header")
    except WmelError as e:
        raise WmelError(f"{str(path)!r} has a corrupt wmel-jax header: {e}") from None
    arch = _check_header(path, header)
    table = _check_table(path, raw, param_shapes(arch), size, data_start)
    return header, arch, table


def read_model_header(path: str | os.PathLike) -> tuple[dict[str, Any], Arch]:
    """A converted model's ``(header, arch)``, every check of :func:`read_model_file` done, no tensor read."""
    path = Path(path)
    with _open_model(path) as f:
        header, arch, _ = _header_and_table(f, path)
    return header, arch


def read_model_file(path: str | os.PathLike) -> tuple[dict[str, Any], Arch, dict[str, np.ndarray]]:
    """Read a converted model: ``(header, arch, flat float32 params)``; any defect is a WmelError.

    The whole header (the JSON fields, the tensor names, dtypes, shapes and
    offsets against the architecture it declares, the bytes they take against
    the file's size and :data:`~wmel_jax.limits.MAX_MODEL_BYTES`) is checked
    before a tensor is read; then every tensor must be finite.
    """
    from wmel_jax.fileio import read_exactly

    path = Path(path)
    with _open_model(path) as f:
        header, arch, table = _header_and_table(f, path)
        total = f.size - table.data_start
        f.seek(table.data_start)
        data = bytearray(total)
        view = memoryview(data)
        got = 0
        while got < total:
            try:
                n = f.readinto(view[got:])
            except OSError as e:
                raise WmelError(f"cannot read model file {str(path)!r}: {e.strerror or e}") from None
            if not n:
                break
            got += n
        if got != total:
            read_exactly(f, total - got, path, "model file")  # raises: the file shrank
    tensors: dict[str, np.ndarray] = {}
    for name, (shape, begin, end) in table.entries.items():
        t = np.frombuffer(data, dtype="<f4", count=(end - begin) // 4, offset=begin).reshape(shape)
        finite = np.isfinite(t)
        if not finite.all():
            bad = int(t.size - np.count_nonzero(finite))
            raise WmelError(
                f"{str(path)!r}: tensor {name!r} has {bad} NaN or infinite value(s); a model whose parameters "
                "are not finite cannot be evaluated"
            )
        tensors[name] = t
    return header, arch, tensors

"""torch TD-MPC2 checkpoint -> one self-describing wmel-jax model file, once.

:func:`convert_checkpoint` reads a ``torch.save``d checkpoint with
``torch.load(..., weights_only=True)`` only (a pickle that would run code is
refused, never run), detects its schema (SPEC section 2)

- **adapter** (A): ``{model_state: {encoder.*, dynamics.*, decoder.*}, arch,
  action_levels | action_set, meta}``;
- **upstream** (B): ``{"model": WorldModel.state_dict()}`` (or the bare state
  dict), with the Q ensemble in the current layout (``_Qs.params.{layer}.*``)
  or the older one (``_Qs.params.{n}``);

reads the architecture from the tensor shapes, checks every key and shape,
and writes the flax parameters plus a JSON header
(:mod:`wmel_jax.model.fileformat`) atomically. Every defect is a one-line
:class:`~wmel_jax.errors.WmelError`, and no output file is left behind.

Only the networks are converted: upstream's ``_detach_Qs_params`` (the same
tensors as ``_Qs.params``), ``_target_Qs*`` (the target ensemble) and the
data-less ``*.module.*`` shells are checked for shape and dropped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from wmel_jax.errors import WmelError
from wmel_jax.fileio import OutputSet, check_input, open_input
from wmel_jax.limits import MAX_ACTIONS, MAX_FRAME_SKIP, check_count
from wmel_jax.model.arch import DEFAULT_SIMNORM_DIM, Arch, infer_arch
from wmel_jax.model.fileformat import model_file_bytes

from wmel_jax.converters.tasks import determine_task, upstream_task_names

__all__ = ["convert_checkpoint", "convert", "Conversion", "CONVERTER_VERSION"]

#: Bumped when the conversion of the same checkpoint would change.
CONVERTER_VERSION = "1"

#: Action repeat when a checkpoint does not say: upstream TD-MPC2 trains DMC with 2.
UPSTREAM_FRAME_SKIP = 2
ADAPTER_FRAME_SKIP = 1

_ADAPTER_ARCH_KEYS = ("obs_dim", "action_dim", "latent_dim", "enc_dim", "mlp_dim",
                      "num_enc_layers", "decoder_hidden")
_OLD_Q_NAMES = ("weight", "bias", "ln.weight", "ln.bias")
_LAYER_KEY = re.compile(r"^(\d+)\.(weight|bias|ln\.weight|ln\.bias)$")
_UPSTREAM_NETS = {
    "_encoder.state.": "encoder",
    "_dynamics.": "dynamics",
    "_reward.": "reward",
    "_termination.": "termination",
    "_pi.": "pi",
}
_ADAPTER_NETS = {"encoder.": "encoder", "dynamics.": "dynamics", "decoder.": "decoder"}
# Upstream copies of the Q ensemble: checked, not converted.
_Q_COPY_PREFIXES = ("_Qs.module.", "_detach_Qs_params.", "_target_Qs_params.",
                    "_detach_Qs.module.", "_target_Qs.module.", "_target_Qs.params.")


@dataclasses.dataclass
class Conversion:
    """What one conversion produced (``header`` is the file's JSON header)."""

    src: Path
    dst: Path
    arch: Arch
    header: dict[str, Any]

    def summary(self) -> str:
        h, a = self.header, self.arch
        kind = {"adapter": "adapter schema", "current": "upstream TD-MPC2",
                "older": "upstream TD-MPC2 (older Q layout)"}[h["layout"]]
        task = h["task"] if h["task"] is not None else "unknown"
        mt = f", {a.num_tasks} tasks" if a.multitask else ""
        return (
            f"converted {self.src} ({kind}{mt}: obs {a.obs_dim}, action {a.action_dim}, "
            f"latent {a.latent_dim}, heads {'/'.join(a.heads())}; task {task} [{h['task_source']}]; "
            f"frame_skip {h['frame_skip']} [{h['frame_skip_source']}]) -> {self.dst}"
        )


def convert_checkpoint(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    env: str | None = None,
    frame_skip: int | None = None,
    force: bool = False,
) -> Path:
    """Convert the torch checkpoint ``src`` to the wmel-jax model file ``dst``; returns ``dst``.

    ``env`` names the task (else the checkpoint's meta, else inferred where
    unambiguous); ``frame_skip`` the action repeat (else ``meta.frame_skip``,
    else 2 for upstream checkpoints and 1 for adapter ones); ``force``
    allows replacing an existing ``dst``.
    """
    return convert(src, dst, env=env, frame_skip=frame_skip, force=force).dst


def convert(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    env: str | None = None,
    frame_skip: int | None = None,
    force: bool = False,
) -> Conversion:
    """:func:`convert_checkpoint`, returning the :class:`Conversion` record."""
    src, dst = Path(src), Path(dst)
    check_input(src, "checkpoint")
    # Every output check before any work: an existing DST needs --force; DST is never SRC.
    outputs = OutputSet(force=force)
    outputs.add_input(src, "checkpoint")
    outputs.add(dst, "output")
    if frame_skip is not None and (isinstance(frame_skip, bool) or int(frame_skip) < 1):
        raise WmelError(f"--frame-skip must be a positive integer, got {frame_skip}")
    if frame_skip is not None:
        check_count(int(frame_skip), "--frame-skip", MAX_FRAME_SKIP)
    torch = _import_torch()
    # One descriptor, checked to be a regular file, for the digest and torch.load (a FIFO would block).
    with open_input(src, "checkpoint") as f:
        digest, size = _sha256(f, src)
        f.seek(0)
        blob = _torch_load(torch, f, src)
    params, header, arch = _convert_blob(torch, blob, env=env, frame_skip=frame_skip)
    header["source"] = {"file": src.name, "sha256": digest, "size_bytes": size}
    from wmel_jax import __version__

    header["converter"] = {"name": "wmel-jax convert", "version": f"{__version__}/{CONVERTER_VERSION}"}
    outputs.write(dst, model_file_bytes(params, header))
    outputs.commit()
    return Conversion(src=src, dst=dst, arch=arch, header=header)


# --------------------------------------------------------------------------- #
# Reading the source safely
# --------------------------------------------------------------------------- #


def _import_torch() -> Any:
    try:
        import torch
    except ImportError:
        raise WmelError(
            "converting a torch checkpoint needs torch: pip install 'wmel-jax[convert]'"
        ) from None
    return torch


def _sha256(f: Any, src: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    try:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
            size += len(chunk)
    except OSError as e:
        raise WmelError(f"cannot read checkpoint {str(src)!r}: {e.strerror or e}") from None
    if size == 0:
        raise WmelError(f"checkpoint {str(src)!r} is empty")
    return h.hexdigest(), size


def _reason(text: str) -> str:
    """The informative line of a torch.load error message."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    chosen = lines[0] if lines else ""
    for marker in ("GLOBAL", "Unsupported", "failed", "invalid", "Unpickler"):
        found = [line for line in lines if marker in line and "Weights only load failed" not in line]
        if found:
            chosen = found[0]
            break
    return chosen.split(". ")[0].rstrip(".")[:200]


def _torch_load(torch: Any, f: Any, src: Path) -> Any:
    """``torch.load`` of the open checkpoint ``f`` (``src`` names it in messages), tensors and containers only."""
    import pickle

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = _reason(str(e))
        if "GLOBAL" in reason:
            raise WmelError(
                f"refusing to load {str(src)!r}: it holds a pickled object that could run code "
                f"({reason}); only tensors and plain containers are accepted, and nothing was executed"
            ) from None
        raise WmelError(f"{str(src)!r} is not a torch checkpoint ({reason})") from None
    except RuntimeError as e:
        reason = _reason(str(e))
        raise WmelError(f"{str(src)!r} is not a readable torch checkpoint: truncated or corrupt ({reason})") from None
    except EOFError:
        raise WmelError(f"{str(src)!r} is truncated (the pickle ends early)") from None
    except Exception as e:  # torch's legacy reader fails on garbage in assorted ways
        reason = _reason(f"{type(e).__name__}: {e}")
        raise WmelError(f"{str(src)!r} is not a torch checkpoint ({reason})") from None


# --------------------------------------------------------------------------- #
# Schema detection and the key mapping
# --------------------------------------------------------------------------- #


def _keys_seen(d: Mapping[Any, Any]) -> str:
    keys = sorted(str(k) for k in d)
    more = f", ... ({len(keys)} keys)" if len(keys) > 8 else ""
    return "[" + ", ".join(keys[:8]) + more + "]"


def _detect(blob: Any) -> tuple[str, Mapping[str, Any], list[str]]:
    """(schema, state dict, ignored top-level keys)."""
    unknown = (
        "expected an upstream TD-MPC2 agent checkpoint ({'model': state_dict}) or an "
        "adapter checkpoint ({'model_state', 'arch', ...})"
    )
    if not isinstance(blob, Mapping):
        raise WmelError(f"unknown schema: the checkpoint is a {type(blob).__name__}; {unknown}")
    if "model_state" in blob:
        state = blob["model_state"]
        if not isinstance(state, Mapping):
            raise WmelError(f"unknown schema: 'model_state' is a {type(state).__name__}, not a state dict")
        known = {"model_state", "arch", "action_levels", "action_set", "meta"}
        return "adapter", state, sorted(str(k) for k in blob if k not in known)
    if "model" in blob and isinstance(blob["model"], Mapping):
        state, ignored = blob["model"], sorted(str(k) for k in blob if k != "model")
    else:
        state, ignored = blob, []
    if any(isinstance(k, str) and k.startswith("_encoder.state.") for k in state):
        return "upstream", state, ignored
    where = "'model' holds keys" if state is not blob else "top-level keys"
    raise WmelError(f"unknown schema: {where} {_keys_seen(state)}; {unknown}")


@dataclasses.dataclass
class _Mapped:
    """Torch tensors placed at flax paths, plus the way back for messages."""

    tensors: dict[str, Any] = dataclasses.field(default_factory=dict)  # flax path -> torch tensor
    origin: dict[str, str] = dataclasses.field(default_factory=dict)  # flax path -> torch key
    skipped: dict[str, Any] = dataclasses.field(default_factory=dict)  # checked copies
    extras: dict[str, Any] = dataclasses.field(default_factory=dict)  # log_std_* etc.

    def put(self, path: str, key: str, tensor: Any) -> None:
        if path in self.tensors:
            raise WmelError(f"keys {self.origin[path]!r} and {key!r} are the same parameter")
        self.tensors[path] = tensor
        self.origin[path] = key


def _layer_path(net: str, rest: str, normed: Callable[[str], bool], key: str) -> str:
    m = _LAYER_KEY.match(rest)
    if not m:
        raise WmelError(f"unexpected key {key!r}")
    i, name = m.group(1), m.group(2)
    if name.startswith("ln."):
        return f"{net}/layer_{i}/ln/{'scale' if name == 'ln.weight' else 'bias'}"
    leaf = "kernel" if name == "weight" else "bias"
    return f"{net}/layer_{i}/linear/{leaf}" if normed(i) else f"{net}/layer_{i}/{leaf}"


def _map_upstream(state: Mapping[str, Any]) -> tuple[_Mapped, str]:
    m = _Mapped()
    q_current = [k for k in state if re.match(r"^_Qs\.params\.\d+\.", str(k))]
    q_older = [k for k in state if re.match(r"^_Qs\.params\.\d+$", str(k))]
    if q_current and q_older:
        raise WmelError(f"mixed Q-ensemble layouts: {q_current[0]!r} and {q_older[0]!r}")
    layout = "older" if q_older else "current"
    for key, value in state.items():
        key = str(key)
        if key.endswith((".__batch_size", ".__device")) and key.startswith(("_Qs", "_detach_Qs", "_target_Qs")):
            continue  # tensordict bookkeeping written by older tensordict versions
        if key == "_task_emb.weight":
            m.put("task_emb/embedding", key, value)
        elif key == "_action_masks":
            m.put("action_masks", key, value)
        elif key in ("log_std_min", "log_std_dif"):
            m.extras[key] = value
        elif key.startswith("_Qs.params."):
            rest = key[len("_Qs.params."):]
            if layout == "older":
                n = int(rest)
                rest = f"{n // 4}.{_OLD_Q_NAMES[n % 4]}"

                def normed(i: str) -> bool:
                    return f"_Qs.params.{4 * int(i) + 2}" in state
            else:
                def normed(i: str) -> bool:
                    return f"_Qs.params.{i}.ln.weight" in state or f"_Qs.params.{i}.ln.bias" in state
            m.put(_layer_path("q", rest, normed, key), key, value)
        elif key.startswith(_Q_COPY_PREFIXES):
            m.skipped[key] = value
        else:
            for prefix, net in _UPSTREAM_NETS.items():
                if key.startswith(prefix):
                    rest = key[len(prefix):]

                    def normed(i: str, prefix: str = prefix) -> bool:
                        return f"{prefix}{i}.ln.weight" in state or f"{prefix}{i}.ln.bias" in state

                    m.put(_layer_path(net, rest, normed, key), key, value)
                    break
            else:
                raise WmelError(f"unexpected key {key!r} in an upstream TD-MPC2 checkpoint")
    return m, layout


def _map_adapter(state: Mapping[str, Any]) -> _Mapped:
    m = _Mapped()
    for key, value in state.items():
        key = str(key)
        for prefix, net in _ADAPTER_NETS.items():
            if key.startswith(prefix):
                rest = key[len(prefix):]

                def normed(i: str, prefix: str = prefix) -> bool:
                    return f"{prefix}{i}.ln.weight" in state or f"{prefix}{i}.ln.bias" in state

                m.put(_layer_path(net, rest, normed, key), key, value)
                break
        else:
            raise WmelError(f"unexpected key {key!r} in an adapter checkpoint's model_state")
    return m


def _torch_key(path: str, schema: str, layout: str) -> str:
    """The torch key a flax path comes from (for messages about missing keys)."""
    if path == "task_emb/embedding":
        return "_task_emb.weight"
    if path == "action_masks":
        return "_action_masks"
    net, layer, *rest = path.split("/")
    i = int(layer[len("layer_"):])
    name = {("linear", "kernel"): "weight", ("linear", "bias"): "bias", ("ln", "scale"): "ln.weight",
            ("ln", "bias"): "ln.bias", ("kernel",): "weight", ("bias",): "bias"}[tuple(rest)]
    if schema == "adapter":
        return f"{net}.{i}.{name}"
    if net == "q":
        if layout == "older":
            return f"_Qs.params.{4 * i + _OLD_Q_NAMES.index(name)}"
        return f"_Qs.params.{i}.{name}"
    prefix = {v: k for k, v in _UPSTREAM_NETS.items()}[net]
    return f"{prefix}{i}.{name}"


def _torch_shape(path: str, shape: tuple[int, ...]) -> list[int]:
    s = list(shape)
    return s[:-2] + s[-2:][::-1] if path.endswith("kernel") and len(s) >= 2 else s


# --------------------------------------------------------------------------- #
# Values
# --------------------------------------------------------------------------- #


def _to_numpy(torch: Any, key: str, value: Any) -> np.ndarray:
    if not isinstance(value, torch.Tensor):
        raise WmelError(f"key {key!r} holds a {type(value).__name__}, not a tensor")
    if value.device.type == "meta":
        raise WmelError(f"key {key!r} is a data-less (meta device) tensor")
    if not (value.is_floating_point() or key == "_action_masks"):
        raise WmelError(f"key {key!r} has dtype {value.dtype}, expected a floating-point tensor")
    array = value.detach().to(device="cpu", dtype=torch.float32).numpy()
    if not np.isfinite(array).all():
        raise WmelError(f"key {key!r} contains NaN or infinite values")
    return array


def _shape_of(torch: Any, key: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, torch.Tensor):
        raise WmelError(f"key {key!r} holds a {type(value).__name__}, not a tensor")
    return tuple(value.shape)


def _jsonable(x: Any, torch: Any, depth: int = 0) -> Any:
    """A JSON-safe copy of checkpoint metadata (NaN/inf -> None; tensors -> lists)."""
    if depth > 20:
        return str(x)
    if x is None or isinstance(x, (bool, str)):
        return x
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, torch.Tensor):
        if x.device.type == "meta" or x.numel() > 10_000:
            return f"<tensor {list(x.shape)} {x.dtype}>"
        return _jsonable(x.detach().cpu().tolist(), torch, depth + 1)
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v, torch, depth + 1) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v, torch, depth + 1) for v in x]
    return str(x)


def _positive_int(value: Any, what: str) -> int:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise WmelError(f"{what} must be a positive integer, got {value!r}") from None
    if not f.is_integer() or f < 1:
        raise WmelError(f"{what} must be a positive integer, got {value!r}")
    return int(f)


def _action_set(torch: Any, blob: Mapping[str, Any], action_dim: int) -> np.ndarray:
    has_levels, has_set = "action_levels" in blob, "action_set" in blob
    if has_levels == has_set:
        which = "both" if has_levels else "neither"
        raise WmelError(f"an adapter checkpoint needs exactly one of action_levels and action_set; it has {which}")
    raw = blob["action_levels"] if has_levels else blob["action_set"]
    if isinstance(raw, torch.Tensor):
        raw = raw.tolist()
    try:
        actions = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError):
        raise WmelError("the checkpoint's action set is not a list of numbers") from None
    if has_levels:
        if actions.ndim != 1 or actions.size == 0:
            raise WmelError("action_levels must be a non-empty list of numbers")
        if action_dim != 1:
            raise WmelError(f"action_levels describes 1-D actions but the model's action_dim is {action_dim}")
        actions = actions[:, None]
    elif actions.ndim != 2 or actions.shape[0] == 0 or actions.shape[1] != action_dim:
        raise WmelError(
            f"action_set must be a non-empty list of {action_dim}-vectors, got shape {list(actions.shape)}"
        )
    if not np.isfinite(actions).all():
        raise WmelError("the checkpoint's action set contains NaN or infinite values")
    if actions.shape[0] > MAX_ACTIONS:
        raise WmelError(f"the checkpoint's action set has {actions.shape[0]} actions, more than {MAX_ACTIONS}")
    _, first, inverse = np.unique(actions, axis=0, return_index=True, return_inverse=True)
    repeated = [i for i in range(actions.shape[0]) if first[inverse.ravel()[i]] != i]
    if repeated:
        i = repeated[0]
        raise WmelError(
            f"the checkpoint's action set lists action {actions[i].tolist()} twice (rows {int(first[inverse.ravel()[i]])} "
            f"and {i}); an action set names each action once"
        )
    return actions


# --------------------------------------------------------------------------- #
# The conversion
# --------------------------------------------------------------------------- #


def _convert_blob(
    torch: Any, blob: Any, *, env: str | None, frame_skip: int | None
) -> tuple[dict[str, np.ndarray], dict[str, Any], Arch]:
    schema, state, ignored = _detect(blob)
    if schema == "adapter":
        mapped, layout = _map_adapter(state), "adapter"
    else:
        mapped, layout = _map_upstream(state)

    def describe(path: str) -> str:
        return mapped.origin.get(path) or _torch_key(path, schema, layout)

    # Flax shapes: a torch (out, in) weight is an (in, out) kernel (the swap is its own inverse).
    shapes = {path: tuple(_torch_shape(path, _shape_of(torch, mapped.origin[path], t)))
              for path, t in mapped.tensors.items()}

    meta: dict[str, Any] = {}
    if schema == "adapter":
        arch_dict = blob.get("arch")
        if not isinstance(arch_dict, Mapping):
            raise WmelError("an adapter checkpoint needs an 'arch' dict")
        arch_dict = {str(k): v for k, v in arch_dict.items()}
        missing = [k for k in _ADAPTER_ARCH_KEYS if k not in arch_dict]
        if missing:
            raise WmelError(f"the adapter checkpoint's arch lacks {', '.join(missing)}")
        simnorm_dim = _positive_int(arch_dict.get("simnorm_dim", DEFAULT_SIMNORM_DIM), "arch.simnorm_dim")
        action_dim = _positive_int(arch_dict["action_dim"], "arch.action_dim")
        if not any(p.startswith("decoder/") for p in shapes):
            raise WmelError("missing key 'decoder.0.weight' (an adapter checkpoint needs its decoder)")
        arch = infer_arch(shapes, simnorm_dim=simnorm_dim, action_dim=action_dim,
                          describe=describe, show_shape=_torch_shape)
        for field in _ADAPTER_ARCH_KEYS:
            said = _positive_int(arch_dict[field], f"arch.{field}")
            got = getattr(arch, field)
            if field == "num_enc_layers":
                said = max(said, 2)  # 1 and 2 build the same encoder
            if said != got:
                raise WmelError(f"the checkpoint's arch says {field} {said} but its tensors have {got}")
        raw_meta = blob.get("meta") or {}
        if not isinstance(raw_meta, Mapping):
            raise WmelError(f"the checkpoint's meta is a {type(raw_meta).__name__}, not a dict")
        meta = _jsonable(raw_meta, torch)
        actions = _action_set(torch, blob, arch.action_dim)
    else:
        arch = infer_arch(shapes, describe=describe, show_shape=_torch_shape)
        actions = None
    # Copies of the Q ensemble: must fit the online ensemble they copy.
    if mapped.skipped:
        if not arch.has_q:
            raise WmelError(f"unexpected key {next(iter(mapped.skipped))!r}: the checkpoint has no Q ensemble")
        online_torch = {describe(p): tuple(_torch_shape(p, shapes[p])) for p in shapes if p.startswith("q/")}
        for key, value in mapped.skipped.items():
            shape = _shape_of(torch, key, value)
            base = _copy_base(key, layout)
            want = online_torch.get(base)
            if want is None:
                raise WmelError(f"unexpected key {key!r} (no Q-ensemble parameter {base!r} to copy)")
            if key.startswith("_Qs.module."):
                want = want[1:]  # the unstacked template
            if shape != want:
                raise WmelError(f"key {key!r} has shape {list(shape)} but {base!r} needs {list(want)}")

    params = {}
    for path, tensor in mapped.tensors.items():
        array = _to_numpy(torch, mapped.origin[path], tensor)
        if path.endswith("kernel"):
            array = np.swapaxes(array, -1, -2)
        params[path] = np.ascontiguousarray(array)
    if "action_masks" in params and not np.isin(params["action_masks"], (0.0, 1.0)).all():
        raise WmelError("_action_masks must hold only 0 and 1")

    policy = None
    if mapped.extras:
        try:
            lo = float(mapped.extras["log_std_min"])
            policy = {"log_std_min": lo, "log_std_max": lo + float(mapped.extras["log_std_dif"])}
        except KeyError as e:
            raise WmelError(f"missing key {e.args[0]!r} (log_std_min and log_std_dif come together)") from None
        except (TypeError, ValueError, RuntimeError):
            raise WmelError("log_std_min / log_std_dif must be scalars") from None

    task_names, names_source = (None, None)
    if arch.multitask:
        names = meta.get("tasks") if isinstance(meta.get("tasks"), list) else None
        if names is not None and len(names) == arch.num_tasks:
            task_names, names_source = [str(n) for n in names], "meta.tasks"
        else:
            task_names, names_source = upstream_task_names(arch.num_tasks)
    task, task_source = determine_task(
        env=env, meta=meta, obs_dim=arch.obs_dim, action_dim=arch.action_dim,
        multitask=arch.multitask, task_names=task_names,
    )

    meta_skip = meta.get("frame_skip")
    if meta_skip is not None:
        meta_skip = _positive_int(meta_skip, "meta.frame_skip")
    if frame_skip is not None:
        frame_skip = _positive_int(frame_skip, "--frame-skip")
        if meta_skip is not None and meta_skip != frame_skip:
            raise WmelError(f"--frame-skip {frame_skip} contradicts the checkpoint's meta.frame_skip {meta_skip}")
        skip, skip_source = frame_skip, "--frame-skip"
    elif meta_skip is not None:
        skip, skip_source = meta_skip, "meta.frame_skip"
    elif schema == "upstream":
        skip, skip_source = UPSTREAM_FRAME_SKIP, "upstream TD-MPC2 DMC default (action repeat 2)"
    else:
        skip, skip_source = ADAPTER_FRAME_SKIP, "adapter default (no meta.frame_skip)"
    check_count(skip, f"frame_skip ({skip_source})", MAX_FRAME_SKIP)

    header: dict[str, Any] = {
        "schema": schema,
        "layout": layout,
        "arch": arch.to_dict(),
        "action_dim": arch.action_dim,
        "action_set": None if actions is None else actions.tolist(),
        "task": task,
        "task_source": task_source,
        "task_names": task_names,
        "task_names_source": names_source,
        "frame_skip": skip,
        "frame_skip_source": skip_source,
        "policy": policy,
        "meta": meta,
        "ignored_top_level_keys": ignored,
    }
    return params, header, arch


def _copy_base(key: str, layout: str) -> str:
    """The online ``_Qs.params`` key that an upstream Q copy mirrors."""
    for prefix in ("_detach_Qs_params.", "_target_Qs_params.", "_Qs.module.",
                   "_detach_Qs.module.", "_target_Qs.module."):
        if key.startswith(prefix):
            return "_Qs.params." + key[len(prefix):]
    if key.startswith("_target_Qs.params."):
        return "_Qs.params." + key[len("_target_Qs.params."):]
    return key

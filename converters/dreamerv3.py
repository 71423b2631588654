"""DreamerV3 checkpoints -> the wmel-jax model file (the DreamerV3 half of ``wmel-jax convert``).

**NM512/dreamerv3-torch** (the PyTorch port the reference project uses): its
``latest.pt`` is ``torch.save({"agent_state_dict": agent.state_dict(),
"optims_state_dict": ...})``. The world model is the ``_wm.``-prefixed keys
(``_wm._orig_mod.`` when the agent was built with ``torch.compile``); the
behaviours' copies of the same tensors (``_task_behavior._world_model.*``,
``_expl_behavior.*``), the actor and critic and the optimizer states are not
part of it and are ignored. Read with ``torch.load(weights_only=True)``
only (by :mod:`wmel_jax.converters.convert`).

The architecture is read from the tensor shapes: the observation keys and
widths (the decoder's per-key heads), the encoder's and decoder's depths and
widths, deter, hidden, the stochastic width, the action width, the heads,
whether LayerNorms are present and whether the initial state is learned.
What shapes cannot tell comes from upstream's ``dmc_proprio`` defaults
(:data:`DEFAULTS`), overridden by ``--dreamer-config F`` (a YAML or JSON
mapping of upstream's ``configs.yaml`` keys, e.g. the run's own section):
the split of the stochastic width into groups x classes (``dyn_discrete``),
the activations (``act``, ``encoder.act``, ``decoder.act``), symlog inputs
(``encoder.symlog_inputs``), ``unimix_ratio``, and the frame skip
(``action_repeat``, default 2: upstream's DMC action repeat; ``--frame-skip``
overrides). A config value that contradicts the shapes is an error, as is
anything this reader does not support (image encoders or decoders, continuous
latents, ``dyn_rec_depth`` other than 1, decoder distributions other than
``symlog_mse``, reward heads other than ``symlog_disc``). upstream's
LayerNorm epsilon is a constant of its code (1e-3), not a config key.

**danijar/dreamerv3** (the JAX original) saves pickles; those are read only by
:func:`safe_unpickle`, which admits numpy arrays and dtypes and nothing else
(a payload that would run code is refused, and nothing is executed). Its
RSSM differs from the port's (block-diagonal GRU, three input layers, RMS
norm, zero initial state), so its checkpoints are refused with a one-line
error after that safe read.
"""

from __future__ import annotations

import copy
import io
import json
import os
import pickle
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from wmel_jax.errors import WmelError

__all__ = [
    "DEFAULTS",
    "is_dreamer_checkpoint",
    "read_config",
    "convert_blob",
    "summary",
    "safe_unpickle",
    "is_plain_pickle",
    "refuse_danijar",
    "DMC_OBS_SHAPES",
]

#: upstream's configs.yaml ``defaults`` with its ``dmc_proprio`` section, as far as the world model goes.
DEFAULTS: dict[str, Any] = {
    "action_repeat": 2,
    "dyn_stoch": 32,
    "dyn_discrete": 32,
    "dyn_deter": 512,
    "dyn_hidden": 512,
    "dyn_rec_depth": 1,
    "units": 512,
    "act": "SiLU",
    "norm": True,
    "unimix_ratio": 0.01,
    "initial": "learned",
    "encoder": {"mlp_keys": ".*", "cnn_keys": "$^", "act": "SiLU", "norm": True, "mlp_layers": 5,
                "mlp_units": 1024, "symlog_inputs": True},
    "decoder": {"mlp_keys": ".*", "cnn_keys": "$^", "act": "SiLU", "norm": True, "mlp_layers": 5,
                "mlp_units": 1024, "vector_dist": "symlog_mse"},
    "reward_head": {"layers": 2, "dist": "symlog_disc"},
    "cont_head": {"layers": 2},
}
#: upstream's other top-level configs.yaml keys (training, environment, behaviour): accepted, not used.
_OTHER_KEYS = frozenset("""
    logdir traindir evaldir offline_traindir offline_evaldir seed deterministic_run steps parallel eval_every
    eval_episode_num log_every reset_every device compile precision debug video_pred_log task size envs
    time_limit grayscale prefill reward_EMA dyn_mean_act dyn_std_act dyn_min_std grad_heads actor critic
    dyn_scale rep_scale kl_free weight_decay batch_size batch_length train_ratio pretrain model_lr opt_eps
    grad_clip dataset_size opt discount discount_lambda imag_horizon imag_gradient imag_gradient_mix
    eval_state_mean expl_behavior expl_until expl_extr_scale expl_intr_scale disag_target disag_log disag_models
    disag_offset disag_layers disag_units disag_action_cond num_actions value step
""".split())
_CONFIG_MAX_BYTES = 1 << 20

#: dm_control observation keys and widths of the supported tasks (sorted: upstream's gym Dict order).
DMC_OBS_SHAPES: dict[str, dict[str, int]] = {
    "cartpole-swingup": {"position": 3, "velocity": 2},
    "reacher-easy": {"position": 2, "to_target": 2, "velocity": 2},
    "acrobot-swingup": {"orientations": 4, "velocity": 2},
}

_WM_PREFIXES = ("_wm._orig_mod.", "_wm.")
_WM_PARTS = ("encoder.", "dynamics.", "heads.")


# --------------------------------------------------------------------------- #
# Which checkpoints are DreamerV3's
# --------------------------------------------------------------------------- #


def _state_of(blob: Any) -> Mapping[str, Any] | None:
    if not isinstance(blob, Mapping):
        return None
    state = blob.get("agent_state_dict", blob)
    return state if isinstance(state, Mapping) else None


def is_dreamer_checkpoint(blob: Any) -> bool:
    """A dreamerv3-torch checkpoint: ``{"agent_state_dict": ...}``, a bare agent state dict (``_wm.`` keys),
    or a bare world-model state dict (``encoder.``/``dynamics.``/``heads.`` with the RSSM's GRU)."""
    if isinstance(blob, Mapping) and "agent_state_dict" in blob:
        return True
    state = _state_of(blob)
    if state is None:
        return False
    keys = [k for k in state if isinstance(k, str)]
    return any(k.startswith(_WM_PREFIXES) for k in keys) or "dynamics._cell.layers.GRU_linear.weight" in keys


def _world_model_state(blob: Any) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """(world-model state dict without its prefix, layout, what was ignored)."""
    if isinstance(blob, Mapping) and "agent_state_dict" in blob:
        state = blob["agent_state_dict"]
        if not isinstance(state, Mapping):
            raise WmelError(f"'agent_state_dict' is a {type(state).__name__}, not a state dict")
        others = sorted(str(k) for k in blob if k != "agent_state_dict")
    else:
        state, others = blob, []
    keys = [str(k) for k in state]
    compiled = [k for k in keys if k.startswith("_wm._orig_mod.")]
    plain = [k for k in keys if k.startswith("_wm.") and not k.startswith("_wm._orig_mod.")]
    if compiled and plain:
        raise WmelError(f"both {plain[0]!r} and {compiled[0]!r}: two world models in one checkpoint")
    if compiled or plain:
        prefix = "_wm._orig_mod." if compiled else "_wm."
        wm = {k[len(prefix):]: v for k, v in state.items() if str(k).startswith(prefix)}
        ignored = len(keys) - len(wm)
        layout = "agent (torch.compile)" if compiled else "agent"
    else:
        wm, ignored, layout = {str(k): v for k, v in state.items()}, 0, "world model"
    for key in wm:
        if not key.startswith(_WM_PARTS):
            raise WmelError(f"unexpected key {_show(key, layout)!r} in a dreamerv3-torch world model")
    return wm, layout, {"agent_state_dict_keys_outside_the_world_model": ignored, "top_level_keys": others}


def _show(key: str, layout: str) -> str:
    """A world-model key as the checkpoint spells it."""
    if layout == "agent":
        return "_wm." + key
    if layout == "agent (torch.compile)":
        return "_wm._orig_mod." + key
    return key


# --------------------------------------------------------------------------- #
# The config (what shapes cannot tell)
# --------------------------------------------------------------------------- #


def read_config(path: str | os.PathLike | Mapping[str, Any] | None) -> tuple[dict[str, Any], str, frozenset[str]]:
    """(effective config, its source, the keys the file set): :data:`DEFAULTS` overridden by the file's keys.

    ``path``: a YAML or JSON file, or (the Python API) a mapping of the keys. Nested sections (``encoder``, ``decoder``,
    ``reward_head``, ``cont_head``) are merged key by key, as upstream merges
    its sections; the keys set are named ``key`` or ``section.key``. WmelError
    for a missing, oversized or unparsable file, a non-mapping, an unknown key.
    """
    config = copy.deepcopy(DEFAULTS)
    if path is None:
        return config, "upstream dmc_proprio defaults", frozenset()
    if isinstance(path, Mapping):  # the keys themselves (the Python API)
        doc, name = dict(path), "dreamer_config"
    else:
        doc, name = _read_config_file(path), f"--dreamer-config {Path(path).name}"
    if "defaults" in doc:
        raise WmelError(
            f"{name} looks like upstream's whole configs.yaml: give the keys of the run "
            f"(e.g. its dmc_proprio section with the overrides it was trained with)"
        )
    unknown = sorted(str(k) for k in doc if k not in DEFAULTS and k not in _OTHER_KEYS)
    if unknown:
        raise WmelError(f"{name}: unknown key {unknown[0]!r} (not one of upstream's configs.yaml keys)")
    given: set[str] = set()
    for key, value in doc.items():
        if isinstance(DEFAULTS.get(key), dict):
            if not isinstance(value, Mapping):
                raise WmelError(f"{name}: {key} must be a mapping, got {value!r}")
            config[key].update({str(k): v for k, v in value.items()})
            given.update(f"{key}.{k}" for k in value)
        elif key in DEFAULTS:
            config[key] = value
            given.add(str(key))
    return config, name, frozenset(given)


def _read_config_file(path: str | os.PathLike) -> Mapping[str, Any]:
    """The parsed YAML or JSON document of a --dreamer-config file (checked: exists, small, a mapping)."""
    from wmel_jax.fileio import read_input

    # A regular file (not a FIFO or a device), read with a bound.
    data = read_input(path, "--dreamer-config", _CONFIG_MAX_BYTES)
    try:
        text = data.decode()
    except UnicodeDecodeError as e:
        raise WmelError(f"cannot read --dreamer-config {str(path)!r}: {e}") from None
    try:
        import yaml

        doc = yaml.safe_load(text)  # safe_load: plain data only, nothing constructed
    except Exception as e:  # yaml's errors, or no yaml: JSON then
        try:
            doc = json.loads(text)
        except json.JSONDecodeError:
            reason = " ".join(str(e).split())[:160]
            raise WmelError(f"--dreamer-config {str(path)!r} is not YAML or JSON ({reason})") from None
    if not isinstance(doc, Mapping):
        raise WmelError(f"--dreamer-config {str(path)!r} must hold a mapping of upstream config keys")
    return doc


def _plain(value: Any) -> Any:
    """A JSON-safe copy of a config value for the header (YAML can hold dates; NaN is not JSON)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


def _int(config: Mapping[str, Any], key: str, section: str | None = None) -> int:
    value = config[section][key] if section else config[key]
    name = f"{section}.{key}" if section else key
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
        raise WmelError(f"--dreamer-config: {name} must be an integer, got {value!r}")
    return int(value)


def _bool(config: Mapping[str, Any], key: str, section: str | None = None) -> bool:
    value = config[section][key] if section else config[key]
    if not isinstance(value, bool):
        raise WmelError(f"--dreamer-config: {section + '.' if section else ''}{key} must be true or false, got {value!r}")
    return value


def _str(config: Mapping[str, Any], key: str, section: str | None = None) -> str:
    value = config[section][key] if section else config[key]
    if not isinstance(value, str):
        raise WmelError(f"--dreamer-config: {section + '.' if section else ''}{key} must be a string, got {value!r}")
    return value


# --------------------------------------------------------------------------- #
# Key mapping: torch world-model key <-> flax path
# --------------------------------------------------------------------------- #

_BLOCKS = {"_img_in_layers": "img_in", "_img_out_layers": "img_out", "_obs_out_layers": "obs_out"}
_STATS = {"_imgs_stat_layer": "prior", "_obs_stat_layer": "posterior"}
_HEAD_PREFIX = {"decoder": ("heads.decoder._mlp.", "Decoder"), "reward": ("heads.reward.", "Reward"),
                "cont": ("heads.cont.", "Cont")}
_LEAF = {"weight": "scale", "bias": "bias"}


def _flax_path(key: str) -> str | None:
    """The flax path of a world-model key, or None for a decoder head (fused separately) / an unknown key."""
    m = re.fullmatch(r"encoder\._mlp\.layers\.Encoder_(linear|norm)(\d+)\.(weight|bias)", key)
    if m:
        kind, i, leaf = m.groups()
        if kind == "linear":
            return f"encoder/layer_{i}/linear/kernel" if leaf == "weight" else None
        return f"encoder/layer_{i}/ln/{_LEAF[leaf]}"
    if key == "dynamics.W":
        return "rssm/initial"
    m = re.fullmatch(r"dynamics\.(_img_in_layers|_img_out_layers|_obs_out_layers)\.(\d+)\.(weight|bias)", key)
    if m:
        seq, i, leaf = m.groups()
        if i == "0":
            return f"rssm/{_BLOCKS[seq]}/linear/kernel" if leaf == "weight" else None
        return f"rssm/{_BLOCKS[seq]}/ln/{_LEAF[leaf]}" if i == "1" else None
    m = re.fullmatch(r"dynamics\._cell\.layers\.GRU_(linear|norm)\.(weight|bias)", key)
    if m:
        kind, leaf = m.groups()
        if kind == "linear":
            return "rssm/gru/linear/kernel" if leaf == "weight" else None
        return f"rssm/gru/ln/{_LEAF[leaf]}"
    m = re.fullmatch(r"dynamics\.(_imgs_stat_layer|_obs_stat_layer)\.(weight|bias)", key)
    if m:
        layer, leaf = m.groups()
        return f"rssm/{_STATS[layer]}/{'kernel' if leaf == 'weight' else 'bias'}"
    for head, (prefix, name) in _HEAD_PREFIX.items():
        m = re.fullmatch(re.escape(prefix) + rf"layers\.{name}_(linear|norm)(\d+)\.(weight|bias)", key)
        if m:
            kind, i, leaf = m.groups()
            if kind == "linear":
                return f"{head}/layer_{i}/linear/kernel" if leaf == "weight" else None
            return f"{head}/layer_{i}/ln/{_LEAF[leaf]}"
        if head != "decoder":
            m = re.fullmatch(re.escape(prefix) + r"mean_layer\.(weight|bias)", key)
            if m:
                return f"{head}/out/{'kernel' if m.group(1) == 'weight' else 'bias'}"
    return None


def _torch_key(path: str, obs_keys: tuple[str, ...] = ()) -> str:
    """The world-model key a flax path comes from (for messages)."""
    parts = path.split("/")
    if path == "rssm/initial":
        return "dynamics.W"
    if parts[0] == "encoder":
        i = parts[1][len("layer_"):]
        return (f"encoder._mlp.layers.Encoder_linear{i}.weight" if parts[2] == "linear"
                else f"encoder._mlp.layers.Encoder_norm{i}.{'weight' if parts[3] == 'scale' else 'bias'}")
    if parts[0] == "rssm":
        if parts[1] == "gru":
            return ("dynamics._cell.layers.GRU_linear.weight" if parts[2] == "linear"
                    else f"dynamics._cell.layers.GRU_norm.{'weight' if parts[3] == 'scale' else 'bias'}")
        if parts[1] in ("prior", "posterior"):
            layer = {v: k for k, v in _STATS.items()}[parts[1]]
            return f"dynamics.{layer}.{'weight' if parts[2] == 'kernel' else 'bias'}"
        seq = {v: k for k, v in _BLOCKS.items()}[parts[1]]
        return (f"dynamics.{seq}.0.weight" if parts[2] == "linear"
                else f"dynamics.{seq}.1.{'weight' if parts[3] == 'scale' else 'bias'}")
    head = parts[0]
    prefix, name = _HEAD_PREFIX[head]
    if parts[1] == "out":
        leaf = "weight" if parts[2] == "kernel" else "bias"
        if head == "decoder":
            key = obs_keys[0] if obs_keys else "<key>"
            return f"{prefix}mean_layer.{key}.{leaf}"
        return f"{prefix}mean_layer.{leaf}"
    i = parts[1][len("layer_"):]
    return (f"{prefix}layers.{name}_linear{i}.weight" if parts[2] == "linear"
            else f"{prefix}layers.{name}_norm{i}.{'weight' if parts[3] == 'scale' else 'bias'}")


def _torch_shape(path: str, shape: tuple[int, ...]) -> list[int]:
    s = list(shape)
    return s[::-1] if path.endswith("kernel") and len(s) == 2 else s


# --------------------------------------------------------------------------- #
# The conversion
# --------------------------------------------------------------------------- #


def _numpy(torch: Any, key: str, value: Any) -> np.ndarray:
    if not isinstance(value, torch.Tensor):
        raise WmelError(f"key {key!r} holds a {type(value).__name__}, not a tensor")
    if value.device.type == "meta":
        raise WmelError(f"key {key!r} is a data-less (meta device) tensor")
    if not value.is_floating_point():
        raise WmelError(f"key {key!r} has dtype {value.dtype}, expected a floating-point tensor")
    array = value.detach().to(device="cpu", dtype=torch.float32).numpy()
    if not np.isfinite(array).all():
        raise WmelError(f"key {key!r} contains NaN or infinite values")
    return array


def _count(shapes: Mapping[str, tuple[int, ...]], prefix: str) -> int:
    idx = sorted(int(p.split("/")[1][len("layer_"):]) for p in shapes
                 if p.startswith(prefix + "/layer_") and p.endswith("/linear/kernel"))
    if idx != list(range(len(idx))):
        raise WmelError(f"the {prefix} layers are not numbered 0..{len(idx) - 1}: {idx}")
    return len(idx)


def _need(shapes: Mapping[str, tuple[int, ...]], path: str, show: Any) -> tuple[int, ...]:
    if path not in shapes:
        raise WmelError(f"missing key {show(path)!r}: not a complete dreamerv3-torch world model")
    s = tuple(shapes[path])
    if len(s) != (2 if path.endswith(("kernel", "initial")) else 1):
        raise WmelError(f"key {show(path)!r} has shape {_torch_shape(path, s)}: not a weight of the expected rank")
    return s


def _agree(config: Mapping[str, Any], source: str, pairs: list[tuple[str, Any, Any]]) -> None:
    """Each (name, config value, shape value): equal, else the config contradicts the checkpoint."""
    for name, said, got in pairs:
        if said != got:
            raise WmelError(f"{source} says {name} {said!r} but the checkpoint's tensors have {got!r}")


def convert_blob(
    torch: Any,
    blob: Any,
    *,
    env: str | None,
    frame_skip: int | None,
    config_path: str | os.PathLike | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, Any], Any]:
    """(flat float32 flax params, file header, DreamerArch) of a dreamerv3-torch checkpoint."""
    from wmel_jax.model.dreamerv3 import ACTIVATIONS, REWARD_BINS, DreamerArch, check_params

    config, config_source, given = read_config(config_path)
    wm, layout, ignored = _world_model_state(blob)
    show = lambda key: _show(key, layout)  # noqa: E731

    cnn = [k for k in wm if k.startswith(("encoder._cnn.", "heads.decoder._cnn."))]
    if cnn:
        raise WmelError(
            f"{show(cnn[0])!r}: this DreamerV3 model has an image (CNN) encoder or decoder, which is not supported "
            f"yet (only proprioceptive, MLP-only models: upstream's dmc_proprio)"
        )
    # torch keys -> flax paths; the decoder's per-key heads are kept apart and fused below.
    tensors: dict[str, Any] = {}
    origin: dict[str, str] = {}
    heads: dict[str, dict[str, Any]] = {}
    head_prefix = "heads.decoder._mlp.mean_layer."
    for key, value in wm.items():
        if key.startswith(head_prefix):
            m = re.fullmatch(re.escape(head_prefix) + r"(.+)\.(weight|bias)", key)
            if not m:
                raise WmelError(f"unexpected key {show(key)!r}")
            heads.setdefault(m.group(1), {})[m.group(2)] = (key, value)
            continue
        path = _flax_path(key)
        if path is None:
            raise WmelError(f"unexpected key {show(key)!r} in a dreamerv3-torch world model")
        tensors[path], origin[path] = value, key
    if not heads:
        raise WmelError(f"missing key {show(head_prefix + '<key>.weight')!r}: the world model has no decoder heads")
    for name, parts in sorted(heads.items()):
        for leaf in ("weight", "bias"):
            if leaf not in parts:
                raise WmelError(f"missing key {show(f'{head_prefix}{name}.{leaf}')!r}")
    obs_keys = tuple(sorted(heads))

    def describe(path: str) -> str:
        return show(origin.get(path) or _torch_key(path, obs_keys))

    def shape_of(key: str, value: Any) -> tuple[int, ...]:
        if not isinstance(value, torch.Tensor):
            raise WmelError(f"key {show(key)!r} holds a {type(value).__name__}, not a tensor")
        return tuple(value.shape)

    shapes = {p: tuple(_torch_shape(p, shape_of(origin[p], t))) for p, t in tensors.items()}

    # The decoder heads: (width, units) weights and (width,) biases, one per key.
    widths = []
    for name in obs_keys:
        (wk, w), (bk, b) = heads[name]["weight"], heads[name]["bias"]
        ws, bs = shape_of(wk, w), shape_of(bk, b)
        if len(ws) != 2 or len(bs) != 1 or bs[0] != ws[0]:
            raise WmelError(f"decoder head {show(wk)!r} has shape {list(ws)} and its bias {list(bs)}: they do not fit")
        widths.append(int(ws[0]))
    dec_head_in = {shape_of(heads[n]["weight"][0], heads[n]["weight"][1])[1] for n in obs_keys}
    if len(dec_head_in) != 1:
        raise WmelError(f"the decoder heads read different widths {sorted(dec_head_in)}")
    obs_dim = sum(widths)

    # Read the architecture from the shapes.
    need = lambda path: _need(shapes, path, describe)  # noqa: E731
    n_enc, n_dec = _count(shapes, "encoder"), _count(shapes, "decoder")
    n_rew, n_cont = _count(shapes, "reward"), _count(shapes, "cont")
    if n_enc == 0:
        raise WmelError(f"missing key {describe('encoder/layer_0/linear/kernel')!r}: the world model has no encoder")
    enc_in, enc_units = need("encoder/layer_0/linear/kernel")
    if enc_in != obs_dim:
        raise WmelError(
            f"the encoder reads {enc_in} inputs but the decoder predicts {obs_dim} ({', '.join(obs_keys)}): "
            f"different observation keys for the encoder and the decoder are not supported"
        )
    stat_in, stoch_flat = need("rssm/prior/kernel")
    img_in, hidden = need("rssm/img_in/linear/kernel")
    deter = need("rssm/img_out/linear/kernel")[0]
    action_dim = img_in - stoch_flat
    if action_dim < 1:
        raise WmelError(
            f"{describe('rssm/img_in/linear/kernel')!r} reads {img_in} inputs: no room for an action after the "
            f"{stoch_flat} stochastic units"
        )
    dec_units = need("decoder/layer_0/linear/kernel")[1] if n_dec else next(iter(dec_head_in))
    head_units = 0
    if n_rew or n_cont:
        units = {need(f"{h}/layer_0/linear/kernel")[1] for h, n in (("reward", n_rew), ("cont", n_cont)) if n}
        if len(units) != 1:
            raise WmelError(f"the reward and continuation heads have different widths {sorted(units)} "
                            f"(upstream's config has one 'units')")
        head_units = units.pop()
    if n_rew:
        bins = need("reward/out/kernel")[1]
        if bins != REWARD_BINS:
            raise WmelError(f"the reward head has {bins} outputs; only upstream's symlog_disc head "
                            f"({REWARD_BINS} buckets) is supported")
    norm_keys = [p for p in shapes if "/ln/" in p]
    norm = bool(norm_keys)
    initial = "learned" if "rssm/initial" in shapes else "zeros"

    # What the shapes cannot tell, from the config; what the config file sets must agree with the shapes.
    if config["dyn_discrete"] is False or config["dyn_discrete"] == 0:
        raise WmelError(f"{config_source}: dyn_discrete {config['dyn_discrete']!r} means continuous latents, "
                        f"which are not supported")
    if "dyn_discrete" in given or "dyn_stoch" not in given:
        discrete = _int(config, "dyn_discrete")
        split = f"dyn_discrete {discrete} ({config_source if 'dyn_discrete' in given else 'upstream default'})"
    else:  # the groups given: the classes follow
        groups = _int(config, "dyn_stoch")
        discrete = stoch_flat // groups if groups > 0 and stoch_flat % groups == 0 else 0
        split = f"dyn_stoch {groups} ({config_source})"
    if discrete < 1 or stoch_flat % discrete:
        raise WmelError(f"the stochastic state has {stoch_flat} units, which {split} does not divide; pass "
                        f"--dreamer-config with the run's dyn_stoch and dyn_discrete")
    if _int(config, "dyn_rec_depth") != 1:
        raise WmelError(f"{config_source}: dyn_rec_depth other than 1 is not supported")
    for section in ("encoder", "decoder"):
        cnn_keys = _str(config, "cnn_keys", section)
        if cnn_keys != "$^":
            raise WmelError(f"{config_source} says {section}.cnn_keys {cnn_keys!r} (an image {section}), "
                            f"but the checkpoint has no CNN weights; only MLP-only models are supported")
    if _str(config, "vector_dist", "decoder") != "symlog_mse":
        raise WmelError(f"{config_source}: decoder.vector_dist {config['decoder']['vector_dist']!r} is not supported "
                        f"(only upstream's symlog_mse)")
    if n_rew and _str(config, "dist", "reward_head") != "symlog_disc":
        raise WmelError(f"{config_source}: reward_head.dist {config['reward_head']['dist']!r} is not supported "
                        f"(only upstream's symlog_disc)")
    pairs = [
        ("dyn_stoch x dyn_discrete", _int(config, "dyn_stoch") * discrete, stoch_flat),
        ("dyn_deter", _int(config, "dyn_deter"), deter),
        ("dyn_hidden", _int(config, "dyn_hidden"), hidden),
        ("encoder.mlp_layers", _int(config, "mlp_layers", "encoder"), n_enc),
        ("encoder.mlp_units", _int(config, "mlp_units", "encoder"), enc_units),
        ("decoder.mlp_layers", _int(config, "mlp_layers", "decoder"), n_dec),
        ("decoder.mlp_units", _int(config, "mlp_units", "decoder"), dec_units),
        ("norm", _bool(config, "norm"), norm),
        ("encoder.norm", _bool(config, "norm", "encoder"), norm),
        ("decoder.norm", _bool(config, "norm", "decoder"), norm),
        ("initial", _str(config, "initial"), initial),
    ]
    if n_rew:
        pairs.append(("reward_head.layers", _int(config, "layers", "reward_head"), n_rew))
    if n_cont:
        pairs.append(("cont_head.layers", _int(config, "layers", "cont_head"), n_cont))
    if head_units:
        pairs.append(("units", _int(config, "units"), head_units))
    # Only what the file sets is checked: upstream's defaults are overruled by the shapes they cannot beat.
    _agree(config, config_source, [(n, v, g) for n, v, g in pairs if n in given or (
        n == "dyn_stoch x dyn_discrete" and {"dyn_stoch", "dyn_discrete"} <= given)])
    acts = {f: _str(config, "act", s) if s else _str(config, "act") for f, s in
            (("act", None), ("encoder_act", "encoder"), ("decoder_act", "decoder"))}
    for name, act in acts.items():
        if act not in ACTIVATIONS:
            raise WmelError(f"{config_source}: activation {act!r} is not supported ({', '.join(ACTIVATIONS)})")
    unimix = config["unimix_ratio"]
    if isinstance(unimix, bool) or not isinstance(unimix, (int, float)) or not 0.0 <= float(unimix) < 1.0:  # noqa
        raise WmelError(f"{config_source}: unimix_ratio must be a number in [0, 1), got {unimix!r}")

    arch = DreamerArch(
        obs_keys=obs_keys, obs_widths=tuple(widths), action_dim=int(action_dim),
        stoch=stoch_flat // discrete, classes=discrete, deter=int(deter), hidden=int(hidden),
        encoder_layers=n_enc, encoder_units=int(enc_units), decoder_layers=n_dec, decoder_units=int(dec_units),
        reward_layers=n_rew, cont_layers=n_cont, head_units=int(head_units), norm=norm,
        act=acts["act"], encoder_act=acts["encoder_act"], decoder_act=acts["decoder_act"],
        symlog_inputs=_bool(config, "symlog_inputs", "encoder"), unimix=float(unimix), initial=initial,
    )
    if n_dec == 0:
        raise WmelError("the decoder has no layers; upstream's decoder has at least one")
    if stat_in != hidden:
        raise WmelError(f"{describe('rssm/prior/kernel')!r} reads {stat_in} inputs but the RSSM's hidden width is {hidden}")
    # The fused decoder output: heads concatenated in sorted key order on the output axis.
    shapes["decoder/out/kernel"] = (next(iter(dec_head_in)), obs_dim)
    shapes["decoder/out/bias"] = (obs_dim,)
    check_params(arch, shapes, describe=describe, show_shape=_torch_shape)

    params: dict[str, np.ndarray] = {}
    for path, value in tensors.items():
        array = _numpy(torch, show(origin[path]), value)
        params[path] = np.ascontiguousarray(array.T if path.endswith("kernel") else array)
    params["decoder/out/kernel"] = np.ascontiguousarray(
        np.concatenate([_numpy(torch, show(heads[n]["weight"][0]), heads[n]["weight"][1]) for n in obs_keys], 0).T)
    params["decoder/out/bias"] = np.concatenate(
        [_numpy(torch, show(heads[n]["bias"][0]), heads[n]["bias"][1]) for n in obs_keys])

    task, task_source = _task(env, obs_keys, tuple(widths), arch.action_dim)
    skip, skip_source = _frame_skip(frame_skip, config, config_source, "action_repeat" in given)
    header: dict[str, Any] = {
        "family": "dreamerv3",
        "schema": "dreamerv3",
        "layout": f"dreamerv3-torch {layout}",
        "arch": arch.to_dict(),
        "action_dim": arch.action_dim,
        "action_set": None,
        "task": task,
        "task_source": task_source,
        "task_names": None,
        "task_names_source": None,
        "frame_skip": skip,
        "frame_skip_source": skip_source,
        "policy": None,
        "meta": {},
        "dreamer_config_source": config_source,
        "dreamer_config": {k: _plain(config[k.split(".")[0]][k.split(".")[1]] if "." in k else config[k])
                           for k in sorted(given)},
        "ignored": ignored,
    }
    return params, header, arch


def _task(env: str | None, keys: tuple[str, ...], widths: tuple[int, ...], action_dim: int) -> tuple[str | None, str]:
    from .tasks import KNOWN_TASK_DIMS, normalize_task_name

    shapes = dict(zip(keys, widths))
    fits = [t for t, s in DMC_OBS_SHAPES.items() if s == shapes and KNOWN_TASK_DIMS[t][1] == action_dim]
    described = ", ".join(f"{k} ({w})" for k, w in shapes.items())
    if env is not None:
        task = normalize_task_name(env)
        if task not in DMC_OBS_SHAPES:
            raise WmelError(f"--env {env}: unknown task; known tasks: {', '.join(DMC_OBS_SHAPES)}")
        if task not in fits:
            want = ", ".join(f"{k} ({w})" for k, w in DMC_OBS_SHAPES[task].items())
            raise WmelError(
                f"--env {env} has observation keys {want} and action_dim {KNOWN_TASK_DIMS[task][1]}, but the "
                f"checkpoint has {described} and action_dim {action_dim}"
            )
        return task, "--env"
    if len(fits) == 1:
        return fits[0], f"inferred from the observation keys {', '.join(keys)} and action_dim {action_dim}"
    return None, f"unknown: no known task has the observation keys {described} and action_dim {action_dim}"


def _frame_skip(frame_skip: int | None, config: Mapping[str, Any], source: str, explicit: bool) -> tuple[int, str]:
    repeat = _int(config, "action_repeat")
    if repeat < 1:
        raise WmelError(f"{source}: action_repeat must be positive, got {repeat}")
    if frame_skip is not None:
        if explicit and repeat != frame_skip:
            raise WmelError(f"--frame-skip {frame_skip} contradicts the config's action_repeat {repeat}")
        return int(frame_skip), "--frame-skip"
    if explicit:
        return repeat, f"action_repeat ({source})"
    return repeat, "upstream dreamerv3-torch DMC default (action_repeat 2)"


def summary(conversion: Any) -> str:
    """The one line ``wmel-jax convert`` prints for a DreamerV3 conversion."""
    h, a = conversion.header, conversion.arch
    task = h["task"] if h["task"] is not None else "unknown"
    obs = ", ".join(f"{k} {w}" for k, w in zip(a.obs_keys, a.obs_widths))
    return (
        f"converted {conversion.src} (DreamerV3, {h['layout']}: obs {obs}, action {a.action_dim}, "
        f"latents {a.stoch}x{a.classes}, deter {a.deter}, hidden {a.hidden}, encoder {a.encoder_layers}x"
        f"{a.encoder_units}, decoder {a.decoder_layers}x{a.decoder_units}, heads {'/'.join(a.heads())}; "
        f"task {task} [{h['task_source']}]; frame_skip {h['frame_skip']} [{h['frame_skip_source']}]) "
        f"-> {conversion.dst}"
    )


# --------------------------------------------------------------------------- #
# danijar/dreamerv3: pickles, read safely
# --------------------------------------------------------------------------- #

_PICKLE_MAX_BYTES = 1 << 34


def _reconstruct(cls: Any, shape: Any, dtype: Any) -> np.ndarray:
    if cls is not np.ndarray:
        raise pickle.UnpicklingError("only numpy.ndarray may be reconstructed")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


def _dtype(spec: Any, align: Any = False, copy: Any = False) -> np.dtype:
    if not isinstance(spec, str):
        raise pickle.UnpicklingError("a dtype must be named by a string")
    d = np.dtype(spec)
    if d.hasobject:
        raise pickle.UnpicklingError("object dtypes are refused")
    return d


def _scalar(dtype: Any, data: Any = None) -> Any:
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes):
        raise pickle.UnpicklingError("only plain numeric numpy scalars are admitted")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


#: The only globals a safe pickle may name: numpy's array, dtype and scalar reconstruction.
_ADMITTED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
    ("numpy.core.multiarray", "scalar"): _scalar,
    ("numpy._core.multiarray", "scalar"): _scalar,
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        found = _ADMITTED.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"global {module}.{name} is refused")
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are refused")


def _check_plain(x: Any, depth: int = 0) -> None:
    """Only containers, numbers, strings, bytes and numeric arrays (a BUILD on an array could hold objects)."""
    if depth > 64:
        raise pickle.UnpicklingError("nested too deeply")
    if isinstance(x, np.ndarray):
        if x.dtype.hasobject:
            raise pickle.UnpicklingError("object arrays are refused")
    elif isinstance(x, dict):
        for k, v in x.items():
            _check_plain(k, depth + 1)
            _check_plain(v, depth + 1)
    elif isinstance(x, (list, tuple, set, frozenset)):
        for v in x:
            _check_plain(v, depth + 1)
    elif not (x is None or isinstance(x, (bool, int, float, complex, str, bytes, np.generic))):
        raise pickle.UnpicklingError(f"a {type(x).__name__} is refused")


def safe_unpickle(path: str | os.PathLike) -> Any:
    """A pickle of numpy arrays and plain containers; anything that would run code is a WmelError, never run."""
    from wmel_jax.fileio import read_input

    data = read_input(path, "checkpoint", _PICKLE_MAX_BYTES)  # a regular file, read with a bound
    try:
        obj = _NumpyOnlyUnpickler(io.BytesIO(data)).load()
        _check_plain(obj)
    except pickle.UnpicklingError as e:
        raise WmelError(
            f"refusing to load {str(path)!r}: {e}; only numpy arrays, dtypes and plain containers are admitted, "
            f"and nothing was executed"
        ) from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, OverflowError, MemoryError) as e:
        raise WmelError(f"{str(path)!r} is not a readable pickle of arrays ({type(e).__name__}: {str(e)[:120]})") from None
    return obj


def is_plain_pickle(path: str | os.PathLike) -> bool:
    """A pickle that is not a torch checkpoint (torch's legacy format starts with its magic number)."""
    from wmel_jax.fileio import open_input

    with open_input(path, "checkpoint") as f:
        head = f.read(1 << 16)
    if head.startswith(b"PK\x03\x04") or not head[:1] == b"\x80":
        return False
    if len(head) >= 9 and head[8:9] == b"{":  # a safetensors header length ending in 0x80
        return False

    class _Nothing(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            raise pickle.UnpicklingError("no globals")

        def persistent_load(self, pid: Any) -> Any:
            raise pickle.UnpicklingError("no persistent ids")

    try:
        first = _Nothing(io.BytesIO(head)).load()
    except Exception:
        return True
    return first != 0x1950A86A20F9469CFC6C  # torch.serialization's legacy MAGIC_NUMBER


def refuse_danijar(path: str | os.PathLike) -> None:
    """Read a danijar/dreamerv3 pickle safely, then refuse it with what it is (its RSSM is not the port's)."""
    obj = safe_unpickle(path)
    params = obj.get("params") if isinstance(obj, Mapping) else None
    what = "a danijar/dreamerv3 (JAX) agent checkpoint" if isinstance(params, Mapping) else "a pickle of arrays"
    names = sorted(str(k) for k in params)[:3] if isinstance(params, Mapping) else []
    raise WmelError(
        f"{str(path)!r} is {what}{' (' + ', '.join(names) + ', ...)' if names else ''}, read safely: its RSSM "
        f"(block-diagonal GRU, RMS norm, separate input layers) is not NM512/dreamerv3-torch's, and converting it is "
        f"not supported yet"
    )

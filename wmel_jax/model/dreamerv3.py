"""The DreamerV3 family: NM512/dreamerv3-torch's world model (proprioceptive), in flax, on the protocol.

Exactly upstream's networks (``networks.py``: ``RSSM``, ``GRUCell``,
``MultiEncoder``, ``MultiDecoder``, ``MLP``), every stochastic node at its
mode:

- a *block* is Linear without bias -> LayerNorm (eps 1e-3, upstream's
  constant) -> activation (SiLU unless the config says otherwise);
- the encoder is ``encoder_layers`` blocks on ``symlog(obs)`` (the keys
  concatenated in sorted order, as gym's Dict space orders them), its output
  the embedding;
- the GRU cell is upstream's, not ``flax.linen.GRUCell``: one Linear
  (no bias) on ``[x, h]``, one LayerNorm over the three gates, split into
  reset, candidate and update; ``reset = sigmoid(r)``, ``cand =
  tanh(reset * c)``, ``update = sigmoid(u - 1)``, ``h' = update * cand +
  (1 - update) * h``;
- the prior step (``img_step``): ``x = block([stoch, action])``, ``deter =
  GRU(x, deter)``, prior logits ``= Linear(block(deter))``; the posterior:
  logits ``= Linear(block([deter, embed]))`` with the prior's deter;
- the stochastic state is ``stoch`` groups of ``classes`` categorical
  latents; its mode is the one-hot argmax per group of the unimix-mixed,
  normalised logits (``log((1 - u) softmax(l) + u / classes)``, as upstream's
  ``OneHotDist``), flattened group-major;
- the learned initial state is ``deter = tanh(W)`` and stoch the prior's
  mode at it (``initial: zeros``: both zero);
- the features are ``[stoch, deter]``; the decoder is ``decoder_layers``
  blocks and one Linear per observation key (fused here in sorted key
  order), its prediction ``symexp`` of the symlog-space mean; the reward
  head is ``reward_layers`` blocks and a Linear to 255 logits, its value
  ``symexp(softmax(logits) . linspace(-20, 20, 255))``; the continuation
  head ``sigmoid`` of one logit.

All matmuls run at full float32 precision (``Precision.HIGHEST``): the argmax
of the categorical latents flips under reduced precision.

How it is queried (the reference project's adapter): ``encode(obs)`` is a
first frame's posterior (the initial state, one zero-action prior step, the
posterior of the embedded observation), ``latent_step`` the prior step with
the action, ``decode`` the decoder's mode; the observation map
``decode(latent_step(encode(obs), a))`` is the "Markovian projection" (a
recurrent state rebuilt from one observation). ``observe(prior, obs)`` is the
posterior update, so the latent metrics compare the prior rolled open loop
from ``encode(s)`` with the posteriors filtered along the oracle's
trajectory, by :func:`categorical_mismatch`. The reward of a transition is
the reward head at the state reached (``reward_reads_next_latent``).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from wmel_jax.errors import WmelError
from wmel_jax.model.arch import check_param_shapes
from wmel_jax.model.protocol import WorldModelFunctions

__all__ = [
    "FAMILY",
    "SCHEMAS",
    "LAYOUTS",
    "FILE_VERSION",
    "CONFIG_TYPE",
    "DreamerArch",
    "DreamerV3",
    "DreamerV3Model",
    "ACTIVATIONS",
    "LAYERNORM_EPS",
    "REWARD_BINS",
    "functions",
    "xla_options",
    "param_shapes",
    "check_params",
    "check_config",
    "config_from_dict",
    "loaded_model",
    "init_params",
    "categorical_mode",
    "categorical_mismatch",
    "symlog",
    "symexp",
]

FAMILY = "dreamerv3"
#: The file schemas (``header["schema"]``) this family reads.
SCHEMAS = ("dreamerv3",)
#: The header layouts of this family's files: what the converter read (an agent checkpoint, with or
#: without torch.compile's prefix, or a bare world-model state dict).
LAYOUTS = ("dreamerv3-torch agent", "dreamerv3-torch agent (torch.compile)", "dreamerv3-torch world model")
#: The converted-file format version this family's files are written with (readers of version 1
#: predate this family and refuse the file, saying to upgrade).
FILE_VERSION = 2

#: upstream's LayerNorm epsilon (a constant in its networks.py, not a config key).
LAYERNORM_EPS = 1e-3
#: upstream's reward head (``symlog_disc``): 255 buckets in [-20, 20].
REWARD_BINS = 255
REWARD_LOW, REWARD_HIGH = -20.0, 20.0
_PRECISION = jax.lax.Precision.HIGHEST

#: upstream's ``act`` names (torch.nn classes) -> the same function.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "SiLU": jax.nn.silu,
    "ELU": jax.nn.elu,
    "ReLU": jax.nn.relu,
    "Tanh": jnp.tanh,
    "GELU": functools.partial(jax.nn.gelu, approximate=False),  # torch's default: the exact erf form
    "Mish": lambda x: x * jnp.tanh(jax.nn.softplus(x)),
}
_INITIAL = ("learned", "zeros")


@dataclasses.dataclass(frozen=True)
class DreamerArch:
    """Static description of one DreamerV3 world model (hashable: the kernels' cache key).

    ``obs_keys``/``obs_widths``: the observation keys in sorted order and their
    widths (the observation vector is their concatenation); ``stoch`` groups of
    ``classes`` categorical latents; ``deter`` the GRU state; ``hidden`` the
    RSSM's block width; ``reward_layers`` / ``cont_layers`` 0 when the head is
    absent, ``head_units`` their width. The rest is what shapes cannot tell
    (upstream's dmc_proprio defaults unless the conversion's config said).
    """

    obs_keys: tuple[str, ...]
    obs_widths: tuple[int, ...]
    action_dim: int
    stoch: int
    classes: int
    deter: int
    hidden: int
    encoder_layers: int
    encoder_units: int
    decoder_layers: int
    decoder_units: int
    reward_layers: int = 0
    cont_layers: int = 0
    head_units: int = 0
    norm: bool = True
    act: str = "SiLU"
    encoder_act: str = "SiLU"
    decoder_act: str = "SiLU"
    layernorm_eps: float = LAYERNORM_EPS
    symlog_inputs: bool = True
    unimix: float = 0.01
    initial: str = "learned"

    def __post_init__(self) -> None:
        if len(self.obs_keys) != len(self.obs_widths) or not self.obs_keys:
            raise WmelError("architecture: obs_keys and obs_widths must be non-empty and of equal length")
        if tuple(sorted(self.obs_keys)) != tuple(self.obs_keys) or len(set(self.obs_keys)) != len(self.obs_keys):
            raise WmelError(f"architecture: obs_keys must be distinct and sorted, got {list(self.obs_keys)}")
        for f in ("action_dim", "stoch", "classes", "deter", "hidden", "encoder_layers", "encoder_units",
                  "decoder_layers", "decoder_units"):
            if int(getattr(self, f)) < 1:
                raise WmelError(f"architecture: {f} must be positive, got {getattr(self, f)}")
        if any(int(w) < 1 for w in self.obs_widths):
            raise WmelError(f"architecture: observation widths must be positive, got {list(self.obs_widths)}")
        if (self.reward_layers or self.cont_layers) and self.head_units < 1:
            raise WmelError("architecture: reward and continuation heads need head_units >= 1")
        for f in ("act", "encoder_act", "decoder_act"):
            if getattr(self, f) not in ACTIVATIONS:
                raise WmelError(f"architecture: {f} {getattr(self, f)!r} is not one of {', '.join(ACTIVATIONS)}")
        if self.initial not in _INITIAL:
            raise WmelError(f"architecture: initial must be one of {', '.join(_INITIAL)}, got {self.initial!r}")
        if not 0.0 <= self.unimix < 1.0:
            raise WmelError(f"architecture: unimix must be in [0, 1), got {self.unimix}")
        if not self.layernorm_eps > 0.0:
            raise WmelError(f"architecture: layernorm_eps must be positive, got {self.layernorm_eps}")

    @property
    def obs_dim(self) -> int:
        return int(sum(self.obs_widths))

    @property
    def stoch_flat(self) -> int:
        return self.stoch * self.classes

    @property
    def feat_size(self) -> int:
        return self.stoch_flat + self.deter

    @property
    def has_reward(self) -> bool:
        return self.reward_layers > 0

    @property
    def has_decoder(self) -> bool:
        """Always: upstream's world model decodes observations (what the kernels use is the protocol's)."""
        return True

    @property
    def has_cont(self) -> bool:
        return self.cont_layers > 0

    @property
    def multitask(self) -> bool:
        return False

    def heads(self) -> list[str]:
        return ["encoder", "rssm", "decoder"] + (["reward"] if self.has_reward else []) + (
            ["cont"] if self.has_cont else [])

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["obs_keys"], d["obs_widths"] = list(self.obs_keys), list(self.obs_widths)
        return d


def config_from_dict(d: Mapping[str, Any]) -> DreamerArch:
    """Inverse of :meth:`DreamerArch.to_dict`; unknown or mistyped fields are a WmelError."""
    if not isinstance(d, Mapping):
        raise WmelError(f"architecture must be a mapping, got {type(d).__name__}")
    fields = {f.name: f for f in dataclasses.fields(DreamerArch)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise WmelError(f"architecture has unknown fields {unknown}")
    kwargs: dict[str, Any] = {}
    for name, value in d.items():
        if name == "obs_keys":
            if not isinstance(value, (list, tuple)) or not all(isinstance(k, str) for k in value):
                raise WmelError("architecture field obs_keys must be a list of strings")
            value = tuple(value)
        elif name == "obs_widths":
            if not isinstance(value, (list, tuple)) or not all(isinstance(w, int) and not isinstance(w, bool)
                                                                for w in value):
                raise WmelError("architecture field obs_widths must be a list of integers")
            value = tuple(int(w) for w in value)
        elif name in ("norm", "symlog_inputs"):
            if not isinstance(value, bool):
                raise WmelError(f"architecture field {name} must be true/false, got {value!r}")
        elif name in ("act", "encoder_act", "decoder_act", "initial"):
            if not isinstance(value, str):
                raise WmelError(f"architecture field {name} must be a string, got {value!r}")
        elif name in ("layernorm_eps", "unimix"):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise WmelError(f"architecture field {name} must be a number, got {value!r}")
            value = float(value)
        elif isinstance(value, bool) or not isinstance(value, int):
            raise WmelError(f"architecture field {name} must be an integer, got {value!r}")
        kwargs[name] = value
    try:
        return DreamerArch(**kwargs)
    except TypeError as e:
        raise WmelError(f"architecture incomplete: {e}") from None


def check_config(arch: DreamerArch) -> str | None:
    """What is wrong with a file's architecture beyond its field types (None: nothing)."""
    import math

    for name in ("layernorm_eps", "unimix"):
        if not math.isfinite(getattr(arch, name)):
            return f"{name} must be finite, got {getattr(arch, name)}"
    return None


# --------------------------------------------------------------------------- #
# Parameter layout
# --------------------------------------------------------------------------- #


def _block_shapes(out: dict, prefix: str, fan_in: int, fan_out: int, norm: bool) -> None:
    out[f"{prefix}/linear/kernel"] = (fan_in, fan_out)
    if norm:
        out[f"{prefix}/ln/scale"] = (fan_out,)
        out[f"{prefix}/ln/bias"] = (fan_out,)


def _trunk_shapes(out: dict, prefix: str, fan_in: int, layers: int, units: int, norm: bool) -> int:
    for i in range(layers):
        _block_shapes(out, f"{prefix}/layer_{i}", fan_in if i == 0 else units, units, norm)
    return units if layers else fan_in


def param_shapes(arch: DreamerArch) -> dict[str, tuple[int, ...]]:
    """Flat path -> shape of every parameter a model of ``arch`` has (flax layout: kernels are (in, out)).

    ::

        encoder/layer_{i}/linear/kernel, encoder/layer_{i}/ln/{scale,bias}
        rssm/initial (1, deter)                       (initial "learned")
        rssm/img_in/..., rssm/img_out/..., rssm/obs_out/...   blocks
        rssm/gru/linear/kernel (hidden + deter, 3 deter), rssm/gru/ln/*
        rssm/prior/{kernel,bias}, rssm/posterior/{kernel,bias}   hidden -> stoch x classes
        decoder/layer_{i}/..., decoder/out/{kernel,bias}   (the per-key heads fused, sorted keys)
        reward/layer_{i}/..., reward/out/{kernel,bias}     (255 bins)
        cont/layer_{i}/..., cont/out/{kernel,bias}         (1)
    """
    a = arch
    s: dict[str, tuple[int, ...]] = {}
    embed = _trunk_shapes(s, "encoder", a.obs_dim, a.encoder_layers, a.encoder_units, a.norm)
    if a.initial == "learned":
        s["rssm/initial"] = (1, a.deter)
    _block_shapes(s, "rssm/img_in", a.stoch_flat + a.action_dim, a.hidden, a.norm)
    s["rssm/gru/linear/kernel"] = (a.hidden + a.deter, 3 * a.deter)
    if a.norm:
        s["rssm/gru/ln/scale"] = (3 * a.deter,)
        s["rssm/gru/ln/bias"] = (3 * a.deter,)
    _block_shapes(s, "rssm/img_out", a.deter, a.hidden, a.norm)
    _block_shapes(s, "rssm/obs_out", a.deter + embed, a.hidden, a.norm)
    for name in ("prior", "posterior"):
        s[f"rssm/{name}/kernel"] = (a.hidden, a.stoch_flat)
        s[f"rssm/{name}/bias"] = (a.stoch_flat,)
    for head, layers, units, width in (("decoder", a.decoder_layers, a.decoder_units, a.obs_dim),
                                       ("reward", a.reward_layers, a.head_units, REWARD_BINS),
                                       ("cont", a.cont_layers, a.head_units, 1)):
        if layers == 0:
            continue
        last = _trunk_shapes(s, head, a.feat_size, layers, units, a.norm)
        s[f"{head}/out/kernel"] = (last, width)
        s[f"{head}/out/bias"] = (width,)
    return s


def check_params(arch: DreamerArch, shapes: Mapping[str, tuple[int, ...]], *,
                 describe: Callable[[str], str] = lambda path: path,
                 show_shape: Callable[[str, tuple[int, ...]], list[int]] = lambda path, s: list(s)) -> None:
    """Every expected parameter present with its shape, nothing else: else WmelError naming the first."""
    check_param_shapes(param_shapes(arch), shapes, describe=describe, show_shape=show_shape)


# --------------------------------------------------------------------------- #
# The networks
# --------------------------------------------------------------------------- #


def symlog(x: jax.Array) -> jax.Array:
    """sign(x) * log(|x| + 1)."""
    return jnp.sign(x) * jnp.log(jnp.abs(x) + 1.0)


def symexp(x: jax.Array) -> jax.Array:
    """sign(x) * (exp(|x|) - 1), as upstream writes it (not expm1: the same rounding as its torch)."""
    return jnp.sign(x) * (jnp.exp(jnp.abs(x)) - 1.0)


def categorical_mode(logits: jax.Array, groups: int, classes: int, unimix: float) -> jax.Array:
    """The one-hot mode of ``groups`` categoricals: (..., groups * classes) logits -> (..., groups * classes).

    As upstream's ``OneHotDist.mode``: the argmax (first on ties) per group of
    the normalised logits of the unimix-mixed probabilities.
    """
    lead = logits.shape[:-1]
    l = logits.reshape(*lead, groups, classes)
    if unimix > 0.0:
        probs = jax.nn.softmax(l, axis=-1) * (1.0 - unimix) + unimix / classes
        l = jnp.log(probs)
    l = l - jax.nn.logsumexp(l, axis=-1, keepdims=True)
    onehot = jax.nn.one_hot(jnp.argmax(l, axis=-1), classes, dtype=logits.dtype)
    return onehot.reshape(*lead, groups * classes)


def categorical_mismatch(arch: DreamerArch, a: Mapping[str, jax.Array], b: Mapping[str, jax.Array]) -> jax.Array:
    """The fraction of latent groups whose class differs between two states: (N,) in [0, 1].

    Only the categorical part: the deterministic part is a function of the
    previous states' categoricals and the actions, so two rollouts from one
    state with one action sequence differ in deter only after they have
    differed in some group.
    """
    sa = a["stoch"].reshape(*a["stoch"].shape[:-1], arch.stoch, arch.classes)
    sb = b["stoch"].reshape(*b["stoch"].shape[:-1], arch.stoch, arch.classes)
    return jnp.mean(jnp.argmax(sa, -1) != jnp.argmax(sb, -1), axis=-1, dtype=jnp.float32)


class Block(nn.Module):
    """Linear (no bias) -> LayerNorm -> activation; params ``linear/kernel``, ``ln/{scale,bias}``."""

    features: int
    act: str
    norm: bool
    eps: float

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Dense(self.features, use_bias=False, precision=_PRECISION, name="linear")(x)
        if self.norm:
            x = nn.LayerNorm(epsilon=self.eps, use_fast_variance=False, name="ln")(x)
        return ACTIVATIONS[self.act](x)


class Trunk(nn.Module):
    """``layers`` blocks of ``units`` (upstream's MLP layers), named ``layer_{i}``."""

    layers: int
    units: int
    act: str
    norm: bool
    eps: float

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(self.layers):
            x = Block(self.units, self.act, self.norm, self.eps, name=f"layer_{i}")(x)
        return x


class Head(nn.Module):
    """A trunk and a Linear with bias (``out``): upstream's MLP with a mean layer."""

    layers: int
    units: int
    features: int
    act: str
    norm: bool
    eps: float

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(self.layers):
            x = Block(self.units, self.act, self.norm, self.eps, name=f"layer_{i}")(x)
        return nn.Dense(self.features, precision=_PRECISION, name="out")(x)


class GRU(nn.Module):
    """upstream's GRUCell: params ``linear/kernel`` ([x, h] -> 3 deter, no bias), ``ln/{scale,bias}``."""

    size: int
    norm: bool
    eps: float

    @nn.compact
    def __call__(self, x: jax.Array, h: jax.Array) -> jax.Array:
        parts = nn.Dense(3 * self.size, use_bias=False, precision=_PRECISION, name="linear")(
            jnp.concatenate([x, h], -1))
        if self.norm:
            parts = nn.LayerNorm(epsilon=self.eps, use_fast_variance=False, name="ln")(parts)
        reset, cand, update = jnp.split(parts, 3, axis=-1)
        reset = jax.nn.sigmoid(reset)
        cand = jnp.tanh(reset * cand)
        update = jax.nn.sigmoid(update - 1.0)
        return update * cand + (1.0 - update) * h


class RSSM(nn.Module):
    """The recurrent state-space model; states are ``{"deter": (N, deter), "stoch": (N, stoch * classes)}``."""

    arch: DreamerArch

    def setup(self) -> None:
        a = self.arch
        block = functools.partial(Block, act=a.act, norm=a.norm, eps=a.layernorm_eps)
        self.img_in = block(a.hidden)
        self.gru = GRU(a.deter, a.norm, a.layernorm_eps)
        self.img_out = block(a.hidden)
        self.obs_out = block(a.hidden)
        self.prior = nn.Dense(a.stoch_flat, precision=_PRECISION)
        self.posterior = nn.Dense(a.stoch_flat, precision=_PRECISION)
        if a.initial == "learned":
            self.initial_w = self.param("initial", nn.initializers.zeros, (1, a.deter), jnp.float32)

    def _mode(self, logits: jax.Array) -> jax.Array:
        a = self.arch
        return categorical_mode(logits, a.stoch, a.classes, a.unimix)

    def initial(self) -> dict[str, jax.Array]:
        """The initial state, batch 1."""
        a = self.arch
        if a.initial == "zeros":
            return {"deter": jnp.zeros((1, a.deter), jnp.float32), "stoch": jnp.zeros((1, a.stoch_flat), jnp.float32)}
        deter = jnp.tanh(self.initial_w)
        return {"deter": deter, "stoch": self._mode(self.prior(self.img_out(deter)))}

    def img_step(self, state: Mapping[str, jax.Array], action: jax.Array) -> dict[str, jax.Array]:
        x = self.img_in(jnp.concatenate([state["stoch"], action], -1))
        deter = self.gru(x, state["deter"])
        return {"deter": deter, "stoch": self._mode(self.prior(self.img_out(deter)))}

    def observe(self, prior: Mapping[str, jax.Array], embed: jax.Array) -> dict[str, jax.Array]:
        logits = self.posterior(self.obs_out(jnp.concatenate([prior["deter"], embed], -1)))
        return {"deter": prior["deter"], "stoch": self._mode(logits)}


class DreamerV3(nn.Module):
    """Every network of one ``arch``; submodule names are the param paths."""

    arch: DreamerArch

    def setup(self) -> None:
        a = self.arch
        eps = a.layernorm_eps
        self.encoder = Trunk(a.encoder_layers, a.encoder_units, a.encoder_act, a.norm, eps)
        self.rssm = RSSM(a)
        self.decoder = Head(a.decoder_layers, a.decoder_units, a.obs_dim, a.decoder_act, a.norm, eps)
        if a.has_reward:
            self.reward = Head(a.reward_layers, a.head_units, REWARD_BINS, a.act, a.norm, eps)
        if a.has_cont:
            self.cont = Head(a.cont_layers, a.head_units, 1, a.act, a.norm, eps)

    def embed(self, obs: jax.Array) -> jax.Array:
        return self.encoder(symlog(obs) if self.arch.symlog_inputs else obs)

    def first_prior(self) -> dict[str, jax.Array]:
        """The prior of a first frame (batch 1): the initial state stepped with a zero action."""
        zero = jnp.zeros((1, self.arch.action_dim), jnp.float32)
        return self.rssm.img_step(self.rssm.initial(), zero)

    def encode(self, obs: jax.Array) -> dict[str, jax.Array]:
        prior = jax.tree.map(lambda x: jnp.broadcast_to(x, (obs.shape[0], x.shape[-1])), self.first_prior())
        return self.rssm.observe(prior, self.embed(obs))

    def latent_step(self, state, action):
        return self.rssm.img_step(state, action)

    def observe(self, prior, obs):
        return self.rssm.observe(prior, self.embed(obs))

    @staticmethod
    def feat(state: Mapping[str, jax.Array]) -> jax.Array:
        return jnp.concatenate([state["stoch"], state["deter"]], -1)

    def decode(self, state) -> jax.Array:
        return symexp(self.decoder(self.feat(state)))

    def reward_value(self, state) -> jax.Array:
        logits = self.reward(self.feat(state))
        buckets = jnp.linspace(REWARD_LOW, REWARD_HIGH, REWARD_BINS, dtype=jnp.float32)
        return symexp(jnp.sum(jax.nn.softmax(logits, -1) * buckets, -1))

    def continuation(self, state) -> jax.Array:
        return jax.nn.sigmoid(self.cont(self.feat(state))[..., 0])

    def init_all(self, obs, action):
        """Touch every network once (for ``init``)."""
        state = self.encode(obs)
        out = [self.decode(self.latent_step(state, action)), self.observe(state, obs)]
        if self.arch.has_reward:
            out.append(self.reward_value(state))
        if self.arch.has_cont:
            out.append(self.continuation(state))
        return out


@functools.lru_cache(maxsize=None)
def _module(arch: DreamerArch) -> DreamerV3:
    return DreamerV3(arch)


def _apply(arch: DreamerArch, params: Any, method: str, *args: Any) -> Any:
    return _module(arch).apply({"params": params}, *args, method=getattr(DreamerV3, method))


def _f32(x: Any, name: str, width: int) -> jax.Array:
    x = jnp.asarray(x).astype(jnp.float32)
    if x.ndim < 1 or x.shape[-1] != width:
        raise WmelError(f"{name} must have shape (..., {width}), got {tuple(x.shape)}")
    return x


def _state(arch: DreamerArch, state: Any) -> dict[str, jax.Array]:
    if not isinstance(state, Mapping) or set(state) != {"deter", "stoch"}:
        raise WmelError("a DreamerV3 latent is a dict with keys 'deter' and 'stoch'")
    return {"deter": _f32(state["deter"], "deter", arch.deter), "stoch": _f32(state["stoch"], "stoch", arch.stoch_flat)}


# --------------------------------------------------------------------------- #
# The protocol's functions (``(arch, params, task, ...)``; task is unused: DreamerV3 is single-task)
# --------------------------------------------------------------------------- #


def encode(arch: DreamerArch, params: Any, task: Any, obs: Any) -> dict[str, jax.Array]:
    """A first frame's posterior: obs (N, obs_dim) -> {deter (N, deter), stoch (N, stoch * classes)}."""
    return _apply(arch, params, "encode", _f32(obs, "obs", arch.obs_dim))


def latent_step(arch: DreamerArch, params: Any, task: Any, state: Any, action: Any) -> dict[str, jax.Array]:
    """The prior step: state, action (N, action_dim) -> state."""
    return _apply(arch, params, "latent_step", _state(arch, state), _f32(action, "action", arch.action_dim))


def observe(arch: DreamerArch, params: Any, task: Any, prior: Any, obs: Any) -> dict[str, jax.Array]:
    """The posterior of obs (N, obs_dim) given the prior predicted for it -> state."""
    return _apply(arch, params, "observe", _state(arch, prior), _f32(obs, "obs", arch.obs_dim))


def decode(arch: DreamerArch, params: Any, task: Any, state: Any) -> jax.Array:
    """The decoder's mode: state -> obs (N, obs_dim)."""
    return _apply(arch, params, "decode", _state(arch, state))


def reward(arch: DreamerArch, params: Any, task: Any, state: Any, action: Any, next_state: Any) -> jax.Array:
    """The predicted reward of a transition: the reward head at the state reached, (N,)."""
    return _apply(arch, params, "reward_value", _state(arch, next_state))


def xla_options() -> dict[str, Any]:
    """XLA options for every program that runs this family's networks (empty off CPU).

    On CPU, XLA fuses float32 matmuls into YNNPACK calls whose accumulation
    is about 3x less accurate than a plain dot (max error 5.8e-6 against
    1.9e-6 for a (256, 1024) x (1024, 1024) product of unit-scale values;
    torch's is 1.7e-6): at the reference size that alone moved the decoded
    observation 9e-6 from torch's. Turning the fusion off keeps XLA's own dot.
    """
    return {"xla_cpu_experimental_ynn_fusion_type": ""} if jax.default_backend() == "cpu" else {}


@functools.lru_cache(maxsize=None)
def functions(arch: DreamerArch) -> WorldModelFunctions:
    """The protocol's functions of one DreamerV3 architecture (one object per architecture)."""
    return WorldModelFunctions(
        family=FAMILY,
        config=arch,
        encode=functools.partial(encode, arch),
        latent_step=functools.partial(latent_step, arch),
        decode=functools.partial(decode, arch),
        reward=functools.partial(reward, arch) if arch.has_reward else None,
        reward_reads_next_latent=True,
        observe=functools.partial(observe, arch),
        latent_distance=functools.partial(categorical_mismatch, arch),
        latent_distance_name="mismatch",
        unavailable=(() if arch.has_reward else (("reward", "no reward head"),)),
        compiler_options=tuple(sorted(xla_options().items())),
    )


CONFIG_TYPE = DreamerArch


def init_params(arch: DreamerArch, key: jax.Array) -> dict[str, Any]:
    """Fresh random parameters of ``arch`` (flax default init; for tests and shape checks)."""
    obs = jnp.zeros((1, arch.obs_dim), jnp.float32)
    action = jnp.zeros((1, arch.action_dim), jnp.float32)
    variables = _module(arch).init(key, obs, action, method=DreamerV3.init_all)
    return flax.core.unfreeze(variables["params"])


# --------------------------------------------------------------------------- #
# The loaded model
# --------------------------------------------------------------------------- #

def _predict(arch: DreamerArch, params: Any, obs: Any, action: Any) -> jax.Array:
    return functions(arch).obs_step(params, None, obs, action)


def _reward_at(arch: DreamerArch, params: Any, state: Any) -> jax.Array:
    return _apply(arch, params, "reward_value", _state(arch, state))


def _cont_at(arch: DreamerArch, params: Any, state: Any) -> jax.Array:
    return _apply(arch, params, "continuation", _state(arch, state))


@functools.lru_cache(maxsize=None)
def _jitted(name: str) -> Callable:
    """The loaded model's method ``name``, jitted (arch static) with the family's XLA options; built on first use."""
    fn = {"encode": encode, "latent_step": latent_step, "observe": observe, "decode": decode,
          "predict": _predict, "reward": _reward_at, "cont": _cont_at}[name]
    return jax.jit(fn, static_argnums=0, compiler_options=xla_options() or None)


@dataclasses.dataclass(frozen=True, eq=False)
class DreamerV3Model:
    """A loaded DreamerV3 world model (``wmel_jax.load``). Batched methods, float32.

    Attributes as :class:`~wmel_jax.model.world_model.WorldModel`'s:
    ``arch`` (:class:`DreamerArch`), ``params``, ``schema`` ("dreamerv3"),
    ``action_set`` (None: a continuous action space), ``meta``, ``task``,
    ``task_source``, ``frame_skip``, ``task_names`` (None), ``header``, ``path``.
    A latent (state) is ``{"deter": (N, deter), "stoch": (N, stoch * classes)}``.
    """

    arch: DreamerArch
    params: dict[str, Any]
    schema: str
    action_set: np.ndarray | None
    meta: dict[str, Any]
    task: str | None
    task_source: str
    frame_skip: int
    task_names: tuple[str, ...] | None
    header: dict[str, Any]
    path: str | None = None

    @property
    def multitask(self) -> bool:
        return False

    @property
    def action_dim(self) -> int:
        return self.arch.action_dim

    @property
    def functions(self) -> WorldModelFunctions:
        return functions(self.arch)

    def fit_task(self, task: str, obs_dim: int, action_dim: int) -> None:
        """None (single-task) when the widths are the task's; else WmelError."""
        a = self.arch
        if a.obs_dim != obs_dim or a.action_dim != action_dim:
            raise WmelError(
                f"model widths (obs_dim={a.obs_dim}, action_dim={a.action_dim}) do not fit "
                f"{task} (obs_dim={obs_dim}, action_dim={action_dim})"
            )
        return None

    def encode(self, obs: Any) -> dict[str, jax.Array]:
        """A first frame's posterior: (N, obs_dim) -> state."""
        return _jitted("encode")(self.arch, self.params, None, obs)

    def latent_step(self, state: Any, action: Any) -> dict[str, jax.Array]:
        """The prior step: state, (N, action_dim) -> state."""
        return _jitted("latent_step")(self.arch, self.params, None, state, action)

    def observe(self, prior: Any, obs: Any) -> dict[str, jax.Array]:
        """The posterior of (N, obs_dim) observations given their prior -> state."""
        return _jitted("observe")(self.arch, self.params, None, prior, obs)

    def decode(self, state: Any) -> jax.Array:
        """The decoder's mode: state -> (N, obs_dim)."""
        return _jitted("decode")(self.arch, self.params, None, state)

    def predict(self, obs: Any, action: Any) -> jax.Array:
        """The Markovian projection decode(latent_step(encode(obs), action)): (N, obs_dim), (N, action_dim) -> (N, obs_dim)."""
        return _jitted("predict")(self.arch, self.params, obs, action)

    def reward(self, state: Any) -> jax.Array:
        """The reward head's value at a state (the reward of the transition into it): (N,)."""
        if not self.arch.has_reward:
            raise WmelError(f"reward is not available: this DreamerV3 model has {', '.join(self.arch.heads())}")
        return _jitted("reward")(self.arch, self.params, state)

    def continuation(self, state: Any) -> jax.Array:
        """The continuation head's probability at a state: (N,)."""
        if not self.arch.has_cont:
            raise WmelError(f"continuation is not available: this DreamerV3 model has {', '.join(self.arch.heads())}")
        return _jitted("cont")(self.arch, self.params, state)

    def __repr__(self) -> str:
        a = self.arch
        return (
            f"DreamerV3Model(task={self.task!r}, obs={dict(zip(a.obs_keys, a.obs_widths))}, "
            f"action_dim={a.action_dim}, latents={a.stoch}x{a.classes}, deter={a.deter}, heads={a.heads()}, "
            f"frame_skip={self.frame_skip})"
        )


def loaded_model(header: Mapping[str, Any], arch: DreamerArch, params: dict[str, Any],
                 path: str | os.PathLike | None) -> DreamerV3Model:
    """The loaded model of a converted file's header, architecture and (nested, jax) params."""
    return DreamerV3Model(
        arch=arch,
        params=params,
        schema=str(header["schema"]),
        action_set=None,
        meta=dict(header.get("meta") or {}),
        task=header["task"],
        task_source=str(header.get("task_source", "")),
        frame_skip=int(header["frame_skip"]),
        task_names=None,
        header=dict(header),
        path=None if path is None else str(path),
    )

"""A torch mirror of NM512/dreamerv3-torch's world model, laid out key-for-key like upstream.

This is the project's independent torch implementation of the DreamerV3
port the reference project uses (``networks.py``: ``RSSM``, ``GRUCell``,
``MultiEncoder``, ``MultiDecoder``, ``MLP``; ``models.py``: ``WorldModel``;
``dreamer.py``: how the agent is saved), written from reading that code, not
copied, and restricted to what a proprioceptive (``dmc_proprio``) model
has: MLP encoder and decoder, discrete latents, learned or zero initial
state. The parity tests, the per-sample reference path, the example-training
script and the benchmarks build checkpoints with it.

- :class:`WorldModel` has upstream's ``state_dict()`` keys and shapes::

      encoder._mlp.layers.Encoder_linear{i}.weight            (no bias)
      encoder._mlp.layers.Encoder_norm{i}.{weight,bias}        (LayerNorm, eps 1e-3)
      dynamics.W                                               (1, deter): initial "learned"
      dynamics._img_in_layers.{0.weight, 1.weight, 1.bias}     [stoch, action] -> hidden
      dynamics._cell.layers.GRU_linear.weight                  [x, deter] -> 3 deter
      dynamics._cell.layers.GRU_norm.{weight,bias}
      dynamics._img_out_layers.*, dynamics._obs_out_layers.*   deter -> hidden, [deter, embed] -> hidden
      dynamics._imgs_stat_layer.{weight,bias}, dynamics._obs_stat_layer.*   hidden -> groups x classes
      heads.decoder._mlp.layers.Decoder_linear{i}.weight, Decoder_norm{i}.*
      heads.decoder._mlp.mean_layer.{key}.{weight,bias}        one head per observation key
      heads.reward.layers.Reward_linear{i}.weight, Reward_norm{i}.*, heads.reward.mean_layer.*  (255 bins)
      heads.cont.layers.Cont_linear{i}.weight, Cont_norm{i}.*, heads.cont.mean_layer.*          (1)

- :class:`Agent` wraps it the way upstream's ``Dreamer`` does, so its
  ``state_dict()`` also holds the behaviours' copies of the world model
  (``_task_behavior._world_model.*``, ``_expl_behavior.*``), the actor, the
  critic and its slow copy, and the ``ema_vals`` buffer; ``compiled=True``
  adds the ``_orig_mod.`` level that ``torch.compile`` inserts.
  :func:`save_agent` writes ``{"agent_state_dict", "optims_state_dict"}``
  (real Adam states) with ``torch.save``, as upstream's ``latest.pt``.

Semantics (upstream's, with every stochastic node at its mode): the
categorical latent's mode is the one-hot argmax, per group, of the
unimix-mixed and normalised logits, flattened group-major; the features are
``[stoch, deter]``; encoder inputs are symlog-squashed and concatenated in
observation-key order (sorted, as gym's Dict space sorts them); decoder
heads are symlog-space means (the prediction is symexp of them); the reward
is symexp of the softmax-weighted mean of 255 buckets in [-20, 20].
:meth:`WorldModel.markovian_step` is the reference project's "Markovian
projection". This module imports torch at top level: it is never imported on
the evaluation path.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "Config",
    "DMC_OBS_SHAPES",
    "REFERENCE_SIZE",
    "config_for",
    "symlog",
    "symexp",
    "MLP",
    "GRUCell",
    "RSSM",
    "MultiEncoder",
    "MultiDecoder",
    "WorldModel",
    "Agent",
    "build_world_model",
    "randomize_",
    "save_agent",
    "load_world_model",
    "config_from_state",
    "REWARD_BINS",
]

#: dm_control observation keys and widths of the supported tasks (sorted, as the gym Dict sorts them).
DMC_OBS_SHAPES: dict[str, dict[str, int]] = {
    "cartpole-swingup": {"position": 3, "velocity": 2},
    "reacher-easy": {"position": 2, "to_target": 2, "velocity": 2},
    "acrobot-swingup": {"orientations": 4, "velocity": 2},
}
#: upstream's reward head: symlog_disc over 255 buckets in [-20, 20].
REWARD_BINS = 255
REWARD_LOW, REWARD_HIGH = -20.0, 20.0
LAYERNORM_EPS = 1e-3

#: upstream's dmc_proprio architecture (configs.yaml defaults + dmc_proprio): 32x32 latents,
#: deter 512, hidden 512, heads 2 x 512, encoder and decoder 5 x 1024.
REFERENCE_SIZE = dict(stoch=32, discrete=32, deter=512, hidden=512, units=512, mlp_layers=5, mlp_units=1024)


@dataclasses.dataclass(frozen=True)
class Config:
    """What upstream's config decides about the world model (``configs.yaml`` key in brackets)."""

    obs_shapes: tuple[tuple[str, int], ...]  # (key, width), in key order
    num_actions: int  # [num_actions]
    stoch: int = 32  # [dyn_stoch]: groups
    discrete: int = 32  # [dyn_discrete]: classes per group
    deter: int = 512  # [dyn_deter]
    hidden: int = 512  # [dyn_hidden]
    units: int = 512  # [units]: reward / cont / actor / critic widths
    enc_layers: int = 5  # [encoder.mlp_layers]
    enc_units: int = 1024  # [encoder.mlp_units]
    dec_layers: int = 5  # [decoder.mlp_layers]
    dec_units: int = 1024  # [decoder.mlp_units]
    reward_layers: int = 2  # [reward_head.layers]
    cont_layers: int = 2  # [cont_head.layers]
    actor_layers: int = 2  # [actor.layers]
    critic_layers: int = 2  # [critic.layers]
    act: str = "SiLU"  # [act], [encoder.act], [decoder.act]
    norm: bool = True  # [norm]
    unimix: float = 0.01  # [unimix_ratio]
    initial: str = "learned"  # [initial]
    symlog_inputs: bool = True  # [encoder.symlog_inputs]

    @property
    def obs_keys(self) -> tuple[str, ...]:
        return tuple(k for k, _ in self.obs_shapes)

    @property
    def obs_dim(self) -> int:
        return sum(w for _, w in self.obs_shapes)

    @property
    def stoch_flat(self) -> int:
        return self.stoch * self.discrete

    @property
    def feat_size(self) -> int:
        return self.stoch_flat + self.deter


def config_for(task: str, action_dim: int | None = None, **sizes: Any) -> Config:
    """A Config with the task's dm_control observation keys (sorted) and action width."""
    from .tasks import KNOWN_TASK_DIMS

    shapes = DMC_OBS_SHAPES[task]
    action_dim = KNOWN_TASK_DIMS[task][1] if action_dim is None else action_dim
    return Config(obs_shapes=tuple(sorted(shapes.items())), num_actions=action_dim, **sizes)


def symlog(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.log(torch.abs(x) + 1.0)


def symexp(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * (torch.exp(torch.abs(x)) - 1.0)


def _activation(name: str) -> nn.Module:
    return getattr(nn, name)()


def _block(fan_in: int, fan_out: int, cfg: Config) -> list[nn.Module]:
    """Linear without bias -> LayerNorm(eps 1e-3) -> activation (norm=False drops the LayerNorm)."""
    layers: list[nn.Module] = [nn.Linear(fan_in, fan_out, bias=False)]
    if cfg.norm:
        layers.append(nn.LayerNorm(fan_out, eps=LAYERNORM_EPS))
    layers.append(_activation(cfg.act))
    return layers


class MLP(nn.Module):
    """upstream's ``networks.MLP``: ``layers`` (named ``{name}_linear{i}`` / ``_norm{i}`` / ``_act{i}``)
    and a ``mean_layer`` (a Linear, a ModuleDict of per-key Linears, or none: the encoder)."""

    def __init__(self, fan_in: int, out: int | Mapping[str, int] | None, layers: int, units: int,
                 cfg: Config, name: str, learned_std: bool = False):
        super().__init__()
        self.layers = nn.Sequential()
        width = fan_in
        for i in range(layers):
            self.layers.add_module(f"{name}_linear{i}", nn.Linear(width, units, bias=False))
            if cfg.norm:
                self.layers.add_module(f"{name}_norm{i}", nn.LayerNorm(units, eps=LAYERNORM_EPS))
            self.layers.add_module(f"{name}_act{i}", _activation(cfg.act))
            width = units
        self._out = out
        if isinstance(out, Mapping):
            self.mean_layer = nn.ModuleDict({k: nn.Linear(width, w) for k, w in out.items()})
        elif out is not None:
            self.mean_layer = nn.Linear(width, out)
            if learned_std:  # the actor's (std "learned"): not part of the world model
                self.std_layer = nn.Linear(units, out)

    def forward(self, x: torch.Tensor) -> Any:
        h = self.layers(x)
        if self._out is None:
            return h
        if isinstance(self._out, Mapping):
            return {k: layer(h) for k, layer in self.mean_layer.items()}
        return self.mean_layer(h)


class GRUCell(nn.Module):
    """upstream's ``GRUCell`` (norm, update bias -1): one Linear on [x, h], LayerNorm over the three gates."""

    def __init__(self, inp_size: int, size: int, cfg: Config):
        super().__init__()
        self._size = size
        self.layers = nn.Sequential()
        self.layers.add_module("GRU_linear", nn.Linear(inp_size + size, 3 * size, bias=False))
        if cfg.norm:
            self.layers.add_module("GRU_norm", nn.LayerNorm(3 * size, eps=LAYERNORM_EPS))

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        reset, cand, update = torch.split(self.layers(torch.cat([x, h], -1)), [self._size] * 3, -1)
        reset = torch.sigmoid(reset)
        cand = torch.tanh(reset * cand)
        update = torch.sigmoid(update - 1.0)
        return update * cand + (1.0 - update) * h


def _mixed_logits(logits: torch.Tensor, unimix: float) -> torch.Tensor:
    """upstream's OneHotDist logits: unimix-mixed probabilities, as normalised logits (torch's Categorical)."""
    if unimix > 0.0:
        probs = F.softmax(logits, dim=-1)
        probs = probs * (1.0 - unimix) + unimix / probs.shape[-1]
        logits = torch.log(probs)
    return logits - logits.logsumexp(dim=-1, keepdim=True)


class RSSM(nn.Module):
    """upstream's ``RSSM`` with discrete latents; states are dicts {deter (B, deter), stoch (B, S, C), logit}."""

    def __init__(self, cfg: Config, embed: int):
        super().__init__()
        self.cfg = cfg
        self._img_in_layers = nn.Sequential(*_block(cfg.stoch_flat + cfg.num_actions, cfg.hidden, cfg))
        self._cell = GRUCell(cfg.hidden, cfg.deter, cfg)
        self._img_out_layers = nn.Sequential(*_block(cfg.deter, cfg.hidden, cfg))
        self._obs_out_layers = nn.Sequential(*_block(cfg.deter + embed, cfg.hidden, cfg))
        self._imgs_stat_layer = nn.Linear(cfg.hidden, cfg.stoch_flat)
        self._obs_stat_layer = nn.Linear(cfg.hidden, cfg.stoch_flat)
        if cfg.initial == "learned":
            self.W = nn.Parameter(torch.zeros((1, cfg.deter)))
        elif cfg.initial != "zeros":
            raise ValueError(f"initial must be 'learned' or 'zeros', got {cfg.initial!r}")

    def _logits(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return layer(x).reshape(*x.shape[:-1], self.cfg.stoch, self.cfg.discrete)

    def mode(self, logit: torch.Tensor) -> torch.Tensor:
        """One-hot argmax per group of the mixed logits: (B, S, C) -> (B, S, C)."""
        mixed = _mixed_logits(logit, self.cfg.unimix)
        return F.one_hot(mixed.argmax(-1), self.cfg.discrete).to(logit.dtype)

    def sample(self, logit: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A straight-through one-hot sample of the mixed distribution (training only)."""
        probs = _mixed_logits(logit, self.cfg.unimix).exp()
        flat = probs.reshape(-1, probs.shape[-1])
        idx = torch.multinomial(flat.detach(), 1, generator=generator).reshape(probs.shape[:-1])
        onehot = F.one_hot(idx, self.cfg.discrete).to(probs.dtype)
        return onehot + probs - probs.detach()

    def initial(self, batch: int) -> dict[str, torch.Tensor]:
        c = self.cfg
        if c.initial == "zeros":
            return {"deter": torch.zeros(batch, c.deter), "stoch": torch.zeros(batch, c.stoch, c.discrete)}
        deter = torch.tanh(self.W).repeat(batch, 1)
        return {"deter": deter, "stoch": self.mode(self._logits(self._imgs_stat_layer, self._img_out_layers(deter)))}

    def img_step(self, state: Mapping[str, torch.Tensor], action: torch.Tensor, sample: bool = False,
                 generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        stoch = state["stoch"].reshape(*state["stoch"].shape[:-2], self.cfg.stoch_flat)
        x = self._img_in_layers(torch.cat([stoch, action], -1))
        deter = self._cell(x, state["deter"])
        logit = self._logits(self._imgs_stat_layer, self._img_out_layers(deter))
        stoch = self.sample(logit, generator) if sample else self.mode(logit)
        return {"deter": deter, "stoch": stoch, "logit": logit}

    def posterior(self, prior: Mapping[str, torch.Tensor], embed: torch.Tensor, sample: bool = False,
                  generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """The posterior of an embedded observation given the prior predicted for it (its deter is the prior's)."""
        logit = self._logits(self._obs_stat_layer, self._obs_out_layers(torch.cat([prior["deter"], embed], -1)))
        stoch = self.sample(logit, generator) if sample else self.mode(logit)
        return {"deter": prior["deter"], "stoch": stoch, "logit": logit}

    def obs_step(self, state: Mapping[str, torch.Tensor] | None, action: torch.Tensor | None, embed: torch.Tensor,
                 sample: bool = False, generator: torch.Generator | None = None):
        """(posterior, prior); ``state=None`` is a first frame: the initial state and a zero action, as upstream."""
        if state is None:
            state = self.initial(embed.shape[0])
            action = torch.zeros(embed.shape[0], self.cfg.num_actions)
        prior = self.img_step(state, action, sample=sample, generator=generator)
        return self.posterior(prior, embed, sample=sample, generator=generator), prior

    def get_feat(self, state: Mapping[str, torch.Tensor]) -> torch.Tensor:
        stoch = state["stoch"].reshape(*state["stoch"].shape[:-2], self.cfg.stoch_flat)
        return torch.cat([stoch, state["deter"]], -1)


class MultiEncoder(nn.Module):
    """upstream's ``MultiEncoder`` for vector observations: the ``_mlp`` (shape None) on symlog inputs."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self._mlp = MLP(cfg.obs_dim, None, cfg.enc_layers, cfg.enc_units, cfg, "Encoder")
        self.outdim = cfg.enc_units

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """obs: (B, obs_dim), the keys concatenated in key order -> embed (B, enc_units)."""
        return self._mlp(symlog(obs) if self.cfg.symlog_inputs else obs)


class MultiDecoder(nn.Module):
    """upstream's ``MultiDecoder`` for vector observations: one symlog-space mean head per key."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self._mlp = MLP(cfg.feat_size, dict(cfg.obs_shapes), cfg.dec_layers, cfg.dec_units, cfg, "Decoder")

    def forward(self, feat: torch.Tensor) -> dict[str, torch.Tensor]:
        return self._mlp(feat)

    def mode(self, feat: torch.Tensor) -> torch.Tensor:
        """The decoded observation (symexp of each head's mean), keys concatenated in key order: (B, obs_dim)."""
        heads = self(feat)
        return torch.cat([symexp(heads[k]) for k in self.cfg.obs_keys], -1)


class WorldModel(nn.Module):
    """upstream's ``models.WorldModel``: encoder, dynamics (RSSM), heads {decoder, reward, cont}."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.encoder = MultiEncoder(cfg)
        self.dynamics = RSSM(cfg, self.encoder.outdim)
        self.heads = nn.ModuleDict()
        self.heads["decoder"] = MultiDecoder(cfg)
        if cfg.reward_layers:
            self.heads["reward"] = MLP(cfg.feat_size, REWARD_BINS, cfg.reward_layers, cfg.units, cfg, "Reward")
        if cfg.cont_layers:
            self.heads["cont"] = MLP(cfg.feat_size, 1, cfg.cont_layers, cfg.units, cfg, "Cont")
        self.eval()

    # -- the queries the evaluator makes (every stochastic node at its mode) --
    def encode(self, obs: torch.Tensor) -> dict[str, torch.Tensor]:
        """A first frame's posterior (the Markovian encoding): obs (B, obs_dim) -> state."""
        return self.dynamics.obs_step(None, None, self.encoder(obs))[0]

    def latent_step(self, state: Mapping[str, torch.Tensor], action: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.dynamics.img_step(state, action)

    def observe(self, prior: Mapping[str, torch.Tensor], obs: torch.Tensor) -> dict[str, torch.Tensor]:
        """The posterior of ``obs`` given the prior predicted for it."""
        return self.dynamics.posterior(prior, self.encoder(obs))

    def decode(self, state: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.heads["decoder"].mode(self.dynamics.get_feat(state))

    def reward(self, state: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The reward head's mean at ``state`` (the state reached): (B,)."""
        logits = self.heads["reward"](self.dynamics.get_feat(state))
        buckets = torch.linspace(REWARD_LOW, REWARD_HIGH, REWARD_BINS)
        return symexp(torch.sum(torch.softmax(logits, -1) * buckets, -1))

    def markovian_step(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """The reference's Markovian projection: decode(img_step(first-frame posterior(obs), action))."""
        return self.decode(self.latent_step(self.encode(obs), action))


class _Compiled(nn.Module):
    """The wrapper ``torch.compile`` puts around a module: its state-dict keys gain ``_orig_mod.``."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self._orig_mod = module


class _Behavior(nn.Module):
    """upstream's ``ImagBehavior`` as far as its state dict goes: a reference to the world model, the
    actor, the critic and its slow copy, the reward EMA buffer."""

    def __init__(self, wm: WorldModel, cfg: Config):
        super().__init__()
        self._world_model = wm
        self.actor = MLP(cfg.feat_size, cfg.num_actions, cfg.actor_layers, cfg.units, cfg, "Actor", learned_std=True)
        self.value = MLP(cfg.feat_size, REWARD_BINS, cfg.critic_layers, cfg.units, cfg, "Value")
        self._slow_value = MLP(cfg.feat_size, REWARD_BINS, cfg.critic_layers, cfg.units, cfg, "Value")
        self.register_buffer("ema_vals", torch.zeros((2,)))


class Agent(nn.Module):
    """upstream's ``Dreamer`` as far as its state dict goes (the greedy exploration behaviour)."""

    def __init__(self, wm: WorldModel, compiled: bool = False):
        super().__init__()
        behavior = _Behavior(wm, wm.cfg)
        self._wm = _Compiled(wm) if compiled else wm
        self._task_behavior = _Compiled(behavior) if compiled else behavior
        self._expl_behavior = self._task_behavior


def build_world_model(cfg: Config, seed: int = 0) -> WorldModel:
    """A randomized world model (see :func:`randomize_`)."""
    return randomize_(WorldModel(cfg), seed)


@torch.no_grad()
def randomize_(model: nn.Module, seed: int) -> nn.Module:
    """Seeded random values that make every output non-trivial (upstream zeroes W and the reward head).

    Linear weights ~ N(0, 1/fan_in), biases ~ N(0, 0.1^2), LayerNorm scales
    ~ 1 + N(0, 0.2^2) and shifts ~ N(0, 0.1^2), W ~ N(0, 1). Returns ``model``.
    """
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("W"):
            std, mean = 1.0, 0.0
        elif p.ndim == 1 and "norm" in name.lower():
            std, mean = (0.2, 1.0) if name.endswith("weight") else (0.1, 0.0)
        elif name.endswith("bias"):
            std, mean = 0.1, 0.0
        else:
            std, mean = p.shape[-1] ** -0.5, 0.0
        p.copy_(torch.randn(p.shape, generator=gen) * std + mean)
    return model


def _adam_state(module: nn.Module) -> dict[str, Any]:
    """A real Adam optimizer's state dict after one step on ``module``'s parameters."""
    params = [p for p in module.parameters()]
    opt = torch.optim.Adam(params, lr=1e-4, eps=1e-8)
    for p in params:
        p.grad = torch.zeros_like(p)
    opt.step()
    for p in params:
        p.grad = None
    return opt.state_dict()


def save_agent(wm: WorldModel, path: str | Path, *, compiled: bool = False, optimizer_states: bool = True) -> Path:
    """``torch.save({"agent_state_dict", "optims_state_dict"}, path)`` as upstream's dreamer.py saves ``latest.pt``."""
    agent = Agent(wm, compiled=compiled)
    blob: dict[str, Any] = {"agent_state_dict": agent.state_dict()}
    if optimizer_states:
        prefix = "_wm._orig_mod" if compiled else "_wm"
        behavior = agent._task_behavior._orig_mod if compiled else agent._task_behavior
        blob["optims_state_dict"] = {
            f"{prefix}._model_opt._opt": _adam_state(wm),
            "_task_behavior._actor_opt._opt": _adam_state(behavior.actor),
            "_task_behavior._value_opt._opt": _adam_state(behavior.value),
        }
    torch.save(blob, path)
    return Path(path)


# --------------------------------------------------------------------------- #
# Reading a checkpoint back (the per-sample reference path): shapes -> Config
# --------------------------------------------------------------------------- #


def _world_model_state(blob: Any) -> dict[str, torch.Tensor]:
    state = blob.get("agent_state_dict", blob) if isinstance(blob, Mapping) else None
    if not isinstance(state, Mapping):
        raise ValueError("not a dreamerv3-torch checkpoint (no agent_state_dict)")
    for prefix in ("_wm._orig_mod.", "_wm."):
        found = {k[len(prefix):]: v for k, v in state.items() if isinstance(k, str) and k.startswith(prefix)}
        if found:
            return found
    raise ValueError("not a dreamerv3-torch checkpoint (no _wm. keys)")


def config_from_state(state: Mapping[str, torch.Tensor], *, discrete: int = 32, act: str = "SiLU",
                      unimix: float = 0.01, symlog_inputs: bool = True) -> Config:
    """A world model's Config from its own state dict's shapes (independent of the converter).

    What shapes cannot tell (the split of the stochastic width into groups x
    classes, the activation, unimix, symlog inputs) is given.
    """

    def count(prefix: str) -> int:
        n = 0
        while f"{prefix}{n}.weight" in state:
            n += 1
        return n

    heads = "heads.decoder._mlp.mean_layer."
    obs_shapes = tuple(sorted((k[len(heads):-len(".weight")], int(v.shape[0])) for k, v in state.items()
                              if k.startswith(heads) and k.endswith(".weight")))
    stoch_flat, hidden = state["dynamics._imgs_stat_layer.weight"].shape
    deter = state["dynamics._img_out_layers.0.weight"].shape[1]
    enc_units = state["encoder._mlp.layers.Encoder_linear0.weight"].shape[0]
    dec_units = state["heads.decoder._mlp.layers.Decoder_linear0.weight"].shape[0]
    num_actions = state["dynamics._img_in_layers.0.weight"].shape[1] - stoch_flat
    reward_layers = count("heads.reward.layers.Reward_linear")
    cont_layers = count("heads.cont.layers.Cont_linear")
    units = (state["heads.reward.layers.Reward_linear0.weight"].shape[0] if reward_layers else
             state["heads.cont.layers.Cont_linear0.weight"].shape[0] if cont_layers else 512)
    return Config(
        obs_shapes=obs_shapes, num_actions=int(num_actions), stoch=int(stoch_flat) // discrete, discrete=discrete,
        deter=int(deter), hidden=int(hidden), units=int(units),
        enc_layers=count("encoder._mlp.layers.Encoder_linear"), enc_units=int(enc_units),
        dec_layers=count("heads.decoder._mlp.layers.Decoder_linear"), dec_units=int(dec_units),
        reward_layers=reward_layers, cont_layers=cont_layers, act=act,
        norm="dynamics._img_in_layers.1.weight" in state, unimix=unimix,
        initial="learned" if "dynamics.W" in state else "zeros", symlog_inputs=symlog_inputs,
    )


def load_world_model(path: str | Path, **given: Any) -> WorldModel:
    """The mirror WorldModel of a saved ``latest.pt`` (``torch.load(weights_only=True)``), strict, in eval mode.

    ``given``: what shapes cannot tell, as :func:`config_from_state` takes it.
    """
    blob = torch.load(path, map_location="cpu", weights_only=True)
    state = _world_model_state(blob)
    model = WorldModel(config_from_state(state, **given))
    model.load_state_dict(state, strict=True)
    return model.eval()

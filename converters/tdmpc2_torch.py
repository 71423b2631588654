"""A torch mirror of TD-MPC2's world model, laid out key-for-key like upstream.

This is the project's independent torch implementation: the parity tests,
the per-sample reference path, the example-training script and the benchmarks
build checkpoints with it. It reproduces the *layout* of
``nicklashansen/tdmpc2`` (``tdmpc2/common/{layers,world_model,math}.py``)
without depending on that code or on ``tensordict``:

- :class:`WorldModel` has exactly upstream's ``state_dict()`` keys, shapes,
  dtypes and devices (checked against upstream's own module built with
  tensordict 0.15.3)::

      _action_masks, log_std_min, log_std_dif                 (root buffers)
      _task_emb.weight                                        (multitask)
      _encoder.state.{i}.{weight,bias,ln.weight,ln.bias}
      _dynamics.{i}.*, _reward.{i}.*, _termination.{i}.* (episodic), _pi.{i}.*
      _Qs.params.{layer}.*      stacked over num_q (the online Q ensemble)
      _Qs.module.{layer}.*      unstacked, on the meta device (no data)
      _detach_Qs_params.*       the same tensors as _Qs.params
      _target_Qs_params.*       the target ensemble (a separate copy)
      _detach_Qs.module.*, _target_Qs.module.*   stacked shapes, meta device

  :func:`save_upstream` writes it the way upstream's agent does,
  ``torch.save({"model": state_dict}, path)``; ``layout="older"`` writes the
  pre-2025 layout instead (``_Qs.params.{n}`` and ``_target_Qs.params.{n}``
  with ``n = 4 * layer + [weight, bias, ln.weight, ln.bias].index(name)``; no
  ``log_std_*`` or ``_action_masks`` buffers, which were plain attributes then).
- :class:`AdapterWorldModel` is the adapter schema the reference evaluator
  reads (``encoder.{i}``, ``dynamics.{i}``, ``decoder.{0,2,4}``), saved by
  :func:`save_adapter` as ``{model_state, arch, action_levels | action_set, meta}``.

Models are built with :func:`upstream_config` / :func:`adapter_arch` from the
model-size table (:data:`MODEL_SIZES`) and given a random, non-trivial
initialisation by :func:`randomize_` (upstream's own init zeroes the reward
and Q output layers, which would make parity tests vacuous).

This module imports torch at top level: it is never imported on the
evaluation path.
"""

from __future__ import annotations

import copy
import dataclasses
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "MODEL_SIZES",
    "Config",
    "upstream_config",
    "SimNorm",
    "NormedLinear",
    "mlp",
    "Ensemble",
    "WorldModel",
    "AdapterWorldModel",
    "adapter_arch",
    "build_upstream",
    "build_adapter",
    "randomize_",
    "upstream_state_dict",
    "save_upstream",
    "save_adapter",
    "two_hot_inv",
]

#: TD-MPC2's model sizes (millions of parameters) -> architecture, as upstream's
#: ``common.MODEL_SIZE`` (num_q is 5 unless given).
MODEL_SIZES: dict[int, dict[str, int]] = {
    1: dict(enc_dim=256, mlp_dim=384, latent_dim=128, num_enc_layers=2, num_q=2),
    5: dict(enc_dim=256, mlp_dim=512, latent_dim=512, num_enc_layers=2, num_q=5),
    19: dict(enc_dim=1024, mlp_dim=1024, latent_dim=768, num_enc_layers=3, num_q=5),
    48: dict(enc_dim=1792, mlp_dim=1792, latent_dim=768, num_enc_layers=4, num_q=5),
    317: dict(enc_dim=4096, mlp_dim=4096, latent_dim=1376, num_enc_layers=5, num_q=8),
}


@dataclasses.dataclass(frozen=True)
class Config:
    """What upstream's config decides about the network.

    A model is multitask when ``action_dims`` (one action width per task) is
    non-empty; ``obs_dim`` and ``action_dim`` are then the padded maxima.
    ``log_std_min/max`` are ints as in upstream's YAML (the buffers are int64).
    """

    obs_dim: int
    action_dim: int
    enc_dim: int
    mlp_dim: int
    latent_dim: int
    num_enc_layers: int
    num_q: int = 5
    simnorm_dim: int = 8
    num_bins: int = 101
    vmin: float = -10.0
    vmax: float = 10.0
    task_dim: int = 0
    action_dims: tuple[int, ...] = ()
    episodic: bool = False
    dropout: float = 0.01
    log_std_min: int = -10
    log_std_max: int = 2

    @property
    def multitask(self) -> bool:
        return len(self.action_dims) > 0

    @property
    def num_tasks(self) -> int:
        return len(self.action_dims)


def upstream_config(
    model_size: int,
    obs_dim: int,
    action_dim: int,
    *,
    num_tasks: int = 0,
    task_dim: int = 96,
    action_dims: Sequence[int] | None = None,
    **overrides: Any,
) -> Config:
    """Config of a TD-MPC2 model of ``model_size`` (1, 5, 19, 48 or 317).

    Multitask when ``num_tasks > 0``: ``action_dims`` defaults to a spread of
    widths 1..action_dim so the action masks are not trivial.
    """
    if model_size not in MODEL_SIZES:
        raise ValueError(f"model_size must be one of {sorted(MODEL_SIZES)}, got {model_size}")
    if num_tasks:
        if action_dims is None:
            action_dims = [1 + (i % action_dim) for i in range(num_tasks)]
        if len(action_dims) != num_tasks or max(action_dims) > action_dim:
            raise ValueError("action_dims needs num_tasks entries, each <= action_dim")
    else:
        task_dim, action_dims = 0, ()
    kwargs: dict[str, Any] = dict(MODEL_SIZES[model_size])
    kwargs.update(obs_dim=obs_dim, action_dim=action_dim, task_dim=task_dim,
                  action_dims=tuple(int(d) for d in action_dims))
    kwargs.update(overrides)
    return Config(**kwargs)


# --------------------------------------------------------------------------- #
# Layers (upstream common/layers.py)
# --------------------------------------------------------------------------- #


class SimNorm(nn.Module):
    """Softmax within consecutive groups of ``dim`` features."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        groups = x.reshape(*x.shape[:-1], -1, self.dim)
        return F.softmax(groups, dim=-1).reshape(x.shape)


class NormedLinear(nn.Linear):
    """Linear -> (Dropout, training only) -> LayerNorm(eps 1e-5) -> activation (Mish by default)."""

    def __init__(self, in_features: int, out_features: int, dropout: float = 0.0,
                 act: nn.Module | None = None):
        super().__init__(in_features, out_features)
        self.ln = nn.LayerNorm(out_features)
        self.act = act if act is not None else nn.Mish()
        self.dropout = nn.Dropout(dropout) if dropout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        if self.dropout is not None:
            x = self.dropout(x)
        return self.act(self.ln(x))


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int, act: nn.Module | None = None,
        dropout: float = 0.0) -> nn.Sequential:
    """NormedLinear per hidden layer; the last is NormedLinear(act) if ``act`` else Linear.

    Dropout (training only) goes on the first layer, as upstream.
    """
    dims = [in_dim, *hidden, out_dim]
    layers: list[nn.Module] = [
        NormedLinear(dims[i], dims[i + 1], dropout=dropout if i == 0 else 0.0)
        for i in range(len(dims) - 2)
    ]
    layers.append(NormedLinear(dims[-2], dims[-1], act=act) if act is not None
                  else nn.Linear(dims[-2], dims[-1]))
    return nn.Sequential(*layers)


def _module_tree(named: dict[str, torch.Tensor], as_parameters: bool) -> nn.Module:
    """A bare module tree holding ``named`` tensors under their dotted names."""
    root = nn.Module()
    for name, tensor in named.items():
        *parents, leaf = name.split(".")
        node = root
        for p in parents:
            if not hasattr(node, p):
                node.add_module(p, nn.Module())
            node = getattr(node, p)
        if as_parameters:
            node.register_parameter(leaf, tensor if isinstance(tensor, nn.Parameter)
                                    else nn.Parameter(tensor))
        else:
            node.register_buffer(leaf, tensor)
    return root


class Ensemble(nn.Module):
    """``len(modules)`` copies of one MLP evaluated with torch.vmap over stacked params.

    ``params`` holds every parameter stacked on a leading axis; ``module`` is
    a data-less (meta device) template the stacked params are swapped into,
    as in upstream's tensordict-based Ensemble. forward: (N, in) -> (num_q, N, out).
    """

    def __init__(self, modules: Sequence[nn.Module]):
        super().__init__()
        names = [n for n, _ in modules[0].named_parameters()]
        stacked = {n: torch.stack([dict(m.named_parameters())[n].detach() for m in modules])
                   for n in names}
        self.params = _module_tree(stacked, as_parameters=True)
        self.module = copy.deepcopy(modules[0]).to("meta")
        self._n = len(modules)

    def __len__(self) -> int:
        return self._n

    def stacked(self) -> dict[str, torch.Tensor]:
        return dict(self.params.named_parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def one(params: dict[str, torch.Tensor], inp: torch.Tensor) -> torch.Tensor:
            return torch.func.functional_call(self.module, params, (inp,))

        return torch.vmap(one, in_dims=(0, None), randomness="different")(self.stacked(), x)


def two_hot_inv(logits: torch.Tensor, num_bins: int, vmin: float, vmax: float) -> torch.Tensor:
    """symexp(softmax(logits) . linspace(vmin, vmax, num_bins)); (..., bins) -> (..., 1)."""
    if num_bins == 1:
        return torch.sign(logits) * (torch.exp(logits.abs()) - 1)
    bins = torch.linspace(vmin, vmax, num_bins, dtype=logits.dtype, device=logits.device)
    x = torch.sum(F.softmax(logits, dim=-1) * bins, dim=-1, keepdim=True)
    return torch.sign(x) * (torch.exp(x.abs()) - 1)


# --------------------------------------------------------------------------- #
# Upstream world model (upstream common/world_model.py)
# --------------------------------------------------------------------------- #


class WorldModel(nn.Module):
    """TD-MPC2's world model with upstream's exact state-dict layout (eval-mode forward only)."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        c = cfg
        if c.multitask:
            self._task_emb = nn.Embedding(c.num_tasks, c.task_dim, max_norm=1)
            masks = torch.zeros(c.num_tasks, c.action_dim)
            for i, width in enumerate(c.action_dims):
                masks[i, :width] = 1.0
            self.register_buffer("_action_masks", masks)
        za = c.latent_dim + c.action_dim + c.task_dim
        zt = c.latent_dim + c.task_dim
        enc_hidden = max(c.num_enc_layers - 1, 1) * [c.enc_dim]
        self._encoder = nn.ModuleDict(
            {"state": mlp(c.obs_dim + c.task_dim, enc_hidden, c.latent_dim, act=SimNorm(c.simnorm_dim))}
        )
        self._dynamics = mlp(za, 2 * [c.mlp_dim], c.latent_dim, act=SimNorm(c.simnorm_dim))
        self._reward = mlp(za, 2 * [c.mlp_dim], max(c.num_bins, 1))
        self._termination = mlp(zt, 2 * [c.mlp_dim], 1) if c.episodic else None
        self._pi = mlp(zt, 2 * [c.mlp_dim], 2 * c.action_dim)
        self._Qs = Ensemble([mlp(za, 2 * [c.mlp_dim], max(c.num_bins, 1), dropout=c.dropout)
                             for _ in range(c.num_q)])
        self.register_buffer("log_std_min", torch.tensor(c.log_std_min))
        self.register_buffer("log_std_dif", torch.tensor(c.log_std_max) - self.log_std_min)
        # Upstream keeps two more views of the Q parameters: `_detach_Qs_params`
        # (the very same tensors) and `_target_Qs_params` (a Polyak-averaged copy),
        # plus data-less module shells for them. All are saved; none is used here.
        online = self._Qs.stacked()
        self._detach_Qs_params = _module_tree(online, as_parameters=True)
        self._target_Qs_params = _module_tree(
            {n: t.detach().clone() for n, t in online.items()}, as_parameters=True)
        for name in ("_detach_Qs", "_target_Qs"):
            shell = nn.Module()
            shell.add_module("module", _module_tree(
                {n: torch.empty(t.shape, device="meta") for n, t in online.items()},
                as_parameters=True))
            self.add_module(name, shell)
        self.eval()

    # Upstream's forward API (task: int or LongTensor index; None for single-task).
    def task_emb(self, x: torch.Tensor, task: Any) -> torch.Tensor:
        if isinstance(task, int):
            task = torch.tensor([task], device=x.device)
        emb = self._task_emb(task.long())
        if emb.shape[0] == 1 and x.shape[0] != 1:
            emb = emb.repeat(x.shape[0], 1)
        return torch.cat([x, emb], dim=-1)

    def _maybe_task(self, x: torch.Tensor, task: Any) -> torch.Tensor:
        return self.task_emb(x, task) if self.cfg.multitask else x

    def encode(self, obs: torch.Tensor, task: Any = None) -> torch.Tensor:
        return self._encoder["state"](self._maybe_task(obs, task))

    def next(self, z: torch.Tensor, a: torch.Tensor, task: Any = None) -> torch.Tensor:
        return self._dynamics(torch.cat([self._maybe_task(z, task), a], dim=-1))

    def reward(self, z: torch.Tensor, a: torch.Tensor, task: Any = None) -> torch.Tensor:
        """Reward logits (N, num_bins)."""
        return self._reward(torch.cat([self._maybe_task(z, task), a], dim=-1))

    def reward_value(self, z: torch.Tensor, a: torch.Tensor, task: Any = None) -> torch.Tensor:
        """Scalar reward per row (N,)."""
        c = self.cfg
        return two_hot_inv(self.reward(z, a, task), c.num_bins, c.vmin, c.vmax)[..., 0]

    def termination(self, z: torch.Tensor, task: Any = None) -> torch.Tensor:
        return torch.sigmoid(self._termination(self._maybe_task(z, task)))[..., 0]

    def pi_mean(self, z: torch.Tensor, task: Any = None) -> torch.Tensor:
        """The policy prior's deterministic action tanh(mean * mask): (N, action_dim)."""
        mean = self._pi(self._maybe_task(z, task)).chunk(2, dim=-1)[0]
        if self.cfg.multitask:
            mean = mean * self._action_masks[task]
        return torch.tanh(mean)

    def Q_all(self, z: torch.Tensor, a: torch.Tensor, task: Any = None) -> torch.Tensor:
        """Every Q head's logits (num_q, N, num_bins)."""
        return self._Qs(torch.cat([self._maybe_task(z, task), a], dim=-1))

    def Q_values(self, z: torch.Tensor, a: torch.Tensor, task: Any = None) -> torch.Tensor:
        """Every Q head's value (num_q, N)."""
        c = self.cfg
        return two_hot_inv(self.Q_all(z, a, task), c.num_bins, c.vmin, c.vmax)[..., 0]


_OLD_Q_NAMES = ("weight", "bias", "ln.weight", "ln.bias")


def upstream_state_dict(model: WorldModel, layout: str = "current") -> "OrderedDict[str, torch.Tensor]":
    """``model.state_dict()`` (``layout="current"``) or the pre-2025 key layout (``"older"``)."""
    sd = model.state_dict()
    if layout == "current":
        return sd
    if layout != "older":
        raise ValueError(f"layout must be 'current' or 'older', got {layout!r}")
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, value in sd.items():
        if key in ("log_std_min", "log_std_dif", "_action_masks") or "Qs" in key:
            continue
        out[key] = value
    for src, dst in (("_Qs.params.", "_Qs.params."), ("_target_Qs_params.", "_target_Qs.params.")):
        for key, value in sd.items():
            if key.startswith(src):
                layer, name = key[len(src):].split(".", 1)
                out[f"{dst}{4 * int(layer) + _OLD_Q_NAMES.index(name)}"] = value
    return out


def save_upstream(model: WorldModel, path: str | Path, layout: str = "current") -> Path:
    """Save the way upstream's agent does: ``torch.save({"model": state_dict}, path)``."""
    torch.save({"model": upstream_state_dict(model, layout)}, path)
    return Path(path)


# --------------------------------------------------------------------------- #
# Adapter schema (what the reference evaluator reads)
# --------------------------------------------------------------------------- #


def adapter_arch(model_size: int, obs_dim: int, action_dim: int, *, decoder_hidden: int = 256,
                 simnorm_dim: int = 8) -> dict[str, int]:
    """The ``arch`` dict of an adapter-schema checkpoint built on ``model_size``."""
    s = MODEL_SIZES[model_size]
    return dict(obs_dim=obs_dim, action_dim=action_dim, latent_dim=s["latent_dim"],
                enc_dim=s["enc_dim"], mlp_dim=s["mlp_dim"], num_enc_layers=s["num_enc_layers"],
                simnorm_dim=simnorm_dim, decoder_hidden=decoder_hidden)


class AdapterWorldModel(nn.Module):
    """Encoder + latent dynamics (TD-MPC2 layers) + an observation decoder."""

    def __init__(self, arch: dict[str, int]):
        super().__init__()
        a = dict(arch)
        self.arch = a
        act = SimNorm(a["simnorm_dim"])
        enc_hidden = max(a["num_enc_layers"] - 1, 1) * [a["enc_dim"]]
        self.encoder = mlp(a["obs_dim"], enc_hidden, a["latent_dim"], act=act)
        self.dynamics = mlp(a["latent_dim"] + a["action_dim"], 2 * [a["mlp_dim"]], a["latent_dim"],
                            act=SimNorm(a["simnorm_dim"]))
        h = a["decoder_hidden"]
        self.decoder = nn.Sequential(nn.Linear(a["latent_dim"], h), nn.SiLU(), nn.Linear(h, h),
                                     nn.SiLU(), nn.Linear(h, a["obs_dim"]))
        self.eval()

    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        return self.encoder(obs)

    def next(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return self.dynamics(torch.cat([z, a], dim=-1))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def predict(self, obs: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return self.decode(self.next(self.encode(obs), a))


def save_adapter(model: AdapterWorldModel, path: str | Path, *,
                 action_levels: Sequence[float] | None = None,
                 action_set: Sequence[Sequence[float]] | None = None,
                 meta: dict[str, Any] | None = None) -> Path:
    """``torch.save({model_state, arch, action_levels | action_set, meta}, path)``."""
    if (action_levels is None) == (action_set is None):
        raise ValueError("give exactly one of action_levels and action_set")
    blob: dict[str, Any] = {"model_state": model.state_dict(), "arch": dict(model.arch)}
    if action_levels is not None:
        blob["action_levels"] = [float(x) for x in action_levels]
    else:
        blob["action_set"] = [[float(x) for x in row] for row in action_set]
    if meta is not None:
        blob["meta"] = dict(meta)
    torch.save(blob, path)
    return Path(path)


# --------------------------------------------------------------------------- #
# Random, non-trivial initialisation
# --------------------------------------------------------------------------- #


@torch.no_grad()
def randomize_(model: nn.Module, seed: int) -> nn.Module:
    """Fill every parameter with seeded random values that make all outputs non-trivial.

    Linear weights ~ N(0, 1/fan_in) (unit-scale pre-activations, so reward and
    Q logits spread over many bins), biases ~ N(0, 0.1^2), LayerNorm scales
    ~ 1 + N(0, 0.2^2) and shifts ~ N(0, 0.1^2). Task-embedding rows get norms
    spread over [0.25, 2.5] so that max_norm=1 renormalisation matters for some
    tasks and not others. The target Q copy gets its own values (it must not be
    what a converter reads). Returns ``model``.
    """
    gen = torch.Generator().manual_seed(seed)

    def normal(t: torch.Tensor, std: float, mean: float = 0.0) -> None:
        t.copy_(torch.randn(t.shape, generator=gen, dtype=t.dtype) * std + mean)

    for name, p in model.named_parameters(remove_duplicate=True):
        if p.device.type == "meta":
            continue
        if name.endswith("ln.weight"):
            normal(p, 0.2, 1.0)
        elif name.endswith("bias"):
            normal(p, 0.1)
        elif name.endswith("_task_emb.weight"):
            normal(p, 1.0)
            target = torch.linspace(0.25, 2.5, p.shape[0])[torch.randperm(p.shape[0], generator=gen)]
            p.mul_((target / p.norm(dim=-1)).unsqueeze(-1))
        elif name.endswith("weight"):
            normal(p, p.shape[-1] ** -0.5)
        else:
            raise AssertionError(f"unexpected parameter {name}")
    return model


def build_upstream(model_size: int, obs_dim: int, action_dim: int, *, seed: int = 0,
                   num_tasks: int = 0, **kwargs: Any) -> WorldModel:
    """A randomized upstream-layout model (see :func:`upstream_config` for kwargs)."""
    cfg = upstream_config(model_size, obs_dim, action_dim, num_tasks=num_tasks, **kwargs)
    return randomize_(WorldModel(cfg), seed)


def build_adapter(model_size: int, obs_dim: int, action_dim: int, *, seed: int = 0,
                  decoder_hidden: int = 256) -> AdapterWorldModel:
    """A randomized adapter-schema model."""
    arch = adapter_arch(model_size, obs_dim, action_dim, decoder_hidden=decoder_hidden)
    return randomize_(AdapterWorldModel(arch), seed)

"""The TD-MPC2 world model as pure functions of ``(arch, params, inputs)``.

``arch`` (an :class:`~wmel_jax.model.arch.Arch`) is static configuration and
``params`` a plain nested dict of float32 arrays, so every function here

- runs under ``jax.jit`` with ``arch`` static (``jax.jit(encode, static_argnums=0)``,
  compiled once per architecture and input shape, never per checkpoint);
- runs under ``jax.vmap`` over params stacked from many checkpoints of one
  architecture: ``jax.vmap(lambda p: encode(arch, p, obs))(stacked)``.

Inputs are cast to float32 at the boundary; the model computes in float32
whether or not ``jax_enable_x64`` is on. Leading batch axes are free: shapes
below write them as ``(N, ...)``; any ``(...)`` works.

Multitask models take ``task``: an int task index, scalar or ``(N,)``; the
task embedding is concatenated to the input the way upstream does it
(``[obs, emb]``, ``[z, emb, action]``). Single-task models take ``task=None``.
"""

from __future__ import annotations

import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from wmel_jax.errors import WmelError
from wmel_jax.model.arch import Arch
from wmel_jax.model.layers import MLP, Decoder, q_ensemble, renormed_embedding

__all__ = [
    "TDMPC2",
    "encode",
    "next_latent",
    "decode",
    "predict",
    "reward_logits",
    "reward",
    "two_hot_inv",
    "symexp",
    "policy_mean",
    "q_logits",
    "q_values",
    "termination",
    "init_params",
]

Params = dict[str, Any]


class TDMPC2(nn.Module):
    """All TD-MPC2 networks of one ``arch``; submodule names are the param paths."""

    arch: Arch

    def setup(self) -> None:
        a = self.arch
        two = (a.mlp_dim, a.mlp_dim)
        self.encoder = MLP(a.enc_hidden, a.latent_dim, "simnorm", a.simnorm_dim)
        self.dynamics = MLP(two, a.latent_dim, "simnorm", a.simnorm_dim)
        if a.has_reward:
            self.reward = MLP(two, a.num_bins, None, a.simnorm_dim)
        if a.has_termination:
            self.termination = MLP(two, 1, None, a.simnorm_dim)
        if a.has_pi:
            self.pi = MLP(two, 2 * a.action_dim, None, a.simnorm_dim)
        if a.has_q:
            self.q = q_ensemble(a.num_q)(two, a.num_bins, None, a.simnorm_dim)
        if a.has_decoder:
            self.decoder = Decoder(a.decoder_hidden, a.obs_dim)
        if a.multitask:
            self.task_emb = nn.Embed(a.num_tasks, a.task_dim)
        if a.has_action_masks:
            self.action_masks = self.param(
                "action_masks", nn.initializers.ones, (a.num_tasks, a.action_dim), jnp.float32
            )

    def _with_task(self, x: jax.Array, task: jax.Array | None) -> jax.Array:
        if not self.arch.multitask:
            return x
        emb = renormed_embedding(self.task_emb.embedding, task)
        emb = jnp.broadcast_to(emb, x.shape[:-1] + emb.shape[-1:])
        return jnp.concatenate([x, emb], axis=-1)

    def encode(self, obs, task=None):
        return self.encoder(self._with_task(obs, task))

    def next_latent(self, z, action, task=None):
        return self.dynamics(jnp.concatenate([self._with_task(z, task), action], axis=-1))

    def reward_logits(self, z, action, task=None):
        return self.reward(jnp.concatenate([self._with_task(z, task), action], axis=-1))

    def q_logits(self, z, action, task=None):
        return self.q(jnp.concatenate([self._with_task(z, task), action], axis=-1))

    def policy_out(self, z, task=None):
        return self.pi(self._with_task(z, task))

    def termination_logit(self, z, task=None):
        return self.termination(self._with_task(z, task))

    def decode(self, z):
        return self.decoder(z)

    def masks(self, task):
        return jnp.take(self.action_masks, task, axis=0)

    def init_all(self, obs, action, task=None):
        """Touch every network once (for ``init``: creates every parameter)."""
        a = self.arch
        z = self.encode(obs, task)
        out = [self.next_latent(z, action, task)]
        if a.has_reward:
            out.append(self.reward_logits(z, action, task))
        if a.has_q:
            out.append(self.q_logits(z, action, task))
        if a.has_pi:
            out.append(self.policy_out(z, task))
        if a.has_termination:
            out.append(self.termination_logit(z, task))
        if a.has_decoder:
            out.append(self.decode(z))
        if a.has_action_masks:
            out.append(self.masks(task))
        return out


@functools.lru_cache(maxsize=None)
def _module(arch: Arch) -> TDMPC2:
    return TDMPC2(arch)


# --------------------------------------------------------------------------- #
# Input checks (static shapes: these run once per trace, not per call)
# --------------------------------------------------------------------------- #


def _f32(x: Any, name: str, width: int) -> jax.Array:
    x = jnp.asarray(x, dtype=jnp.float32)
    if x.ndim < 1 or x.shape[-1] != width:
        raise WmelError(f"{name} must have shape (..., {width}), got {tuple(x.shape)}")
    return x


def _task(arch: Arch, task: Any) -> jax.Array | None:
    if not arch.multitask:
        if task is not None:
            raise WmelError("this is a single-task model: pass task=None")
        return None
    if task is None:
        raise WmelError(
            f"this is a multitask model ({arch.num_tasks} tasks): pass a task index"
        )
    task = jnp.asarray(task)
    if not jnp.issubdtype(task.dtype, jnp.integer):
        raise WmelError(f"task must be an integer index, got dtype {task.dtype}")
    return task


def _need(arch: Arch, ok: bool, what: str) -> None:
    if not ok:
        raise WmelError(f"this model has no {what}; it has: {', '.join(arch.heads())}")


def _apply(arch: Arch, params: Params, method: str, *args: Any) -> jax.Array:
    return _module(arch).apply({"params": params}, *args, method=getattr(TDMPC2, method))


# --------------------------------------------------------------------------- #
# The public functional API
# --------------------------------------------------------------------------- #


def encode(arch: Arch, params: Params, obs: Any, task: Any = None) -> jax.Array:
    """Observations to latents. obs: (N, obs_dim) -> z: (N, latent_dim)."""
    obs = _f32(obs, "obs", arch.obs_dim)
    return _apply(arch, params, "encode", obs, _task(arch, task))


def next_latent(arch: Arch, params: Params, z: Any, action: Any, task: Any = None) -> jax.Array:
    """Latent dynamics. z: (N, latent_dim), action: (N, action_dim) -> (N, latent_dim)."""
    z = _f32(z, "z", arch.latent_dim)
    action = _f32(action, "action", arch.action_dim)
    return _apply(arch, params, "next_latent", z, action, _task(arch, task))


def decode(arch: Arch, params: Params, z: Any) -> jax.Array:
    """Adapter-schema decoder. z: (N, latent_dim) -> obs: (N, obs_dim)."""
    _need(arch, arch.has_decoder, "observation decoder (decode/predict need an adapter-schema model)")
    return _apply(arch, params, "decode", _f32(z, "z", arch.latent_dim))


def predict(arch: Arch, params: Params, obs: Any, action: Any, task: Any = None) -> jax.Array:
    """Next observation ``decode(next(encode(obs), action))``.

    obs: (N, obs_dim), action: (N, action_dim) -> (N, obs_dim).
    """
    _need(arch, arch.has_decoder, "observation decoder (decode/predict need an adapter-schema model)")
    z = encode(arch, params, obs, task)
    return decode(arch, params, next_latent(arch, params, z, action, task))


def symexp(x: jax.Array) -> jax.Array:
    """sign(x) * (exp(|x|) - 1), the inverse of symlog."""
    return jnp.sign(x) * jnp.expm1(jnp.abs(x))


def two_hot_inv(arch: Arch, logits: jax.Array) -> jax.Array:
    """Bin logits to scalars: symexp(softmax(logits) . linspace(vmin, vmax, num_bins)).

    logits: (..., num_bins) -> (...). With one bin upstream reads the logit
    as symlog(value).
    """
    logits = jnp.asarray(logits, jnp.float32)
    if arch.num_bins == 1:
        return symexp(logits[..., 0])
    bins = jnp.linspace(arch.vmin, arch.vmax, arch.num_bins, dtype=jnp.float32)
    return symexp(jnp.sum(jax.nn.softmax(logits, axis=-1) * bins, axis=-1))


def reward_logits(arch: Arch, params: Params, z: Any, action: Any, task: Any = None) -> jax.Array:
    """Reward head. z: (N, latent_dim), action: (N, action_dim) -> (N, num_bins)."""
    _need(arch, arch.has_reward, "reward head (reward needs an upstream TD-MPC2 model)")
    z = _f32(z, "z", arch.latent_dim)
    action = _f32(action, "action", arch.action_dim)
    return _apply(arch, params, "reward_logits", z, action, _task(arch, task))


def reward(arch: Arch, params: Params, z: Any, action: Any, task: Any = None) -> jax.Array:
    """Predicted reward, a scalar per row. z: (N, latent_dim), action: (N, action_dim) -> (N,)."""
    return two_hot_inv(arch, reward_logits(arch, params, z, action, task))


def q_logits(arch: Arch, params: Params, z: Any, action: Any, task: Any = None) -> jax.Array:
    """Every Q head. z: (N, latent_dim), action: (N, action_dim) -> (num_q, N, num_bins)."""
    _need(arch, arch.has_q, "Q ensemble")
    z = _f32(z, "z", arch.latent_dim)
    action = _f32(action, "action", arch.action_dim)
    return _apply(arch, params, "q_logits", z, action, _task(arch, task))


def q_values(arch: Arch, params: Params, z: Any, action: Any, task: Any = None) -> jax.Array:
    """Every Q head's value. z: (N, latent_dim), action: (N, action_dim) -> (num_q, N)."""
    return two_hot_inv(arch, q_logits(arch, params, z, action, task))


def policy_mean(arch: Arch, params: Params, z: Any, task: Any = None) -> jax.Array:
    """The policy prior's squashed mean tanh(mu), masked per task for multitask models.

    z: (N, latent_dim) -> (N, action_dim). A multitask checkpoint saved
    without action masks (the older layout) is not masked.
    """
    _need(arch, arch.has_pi, "policy head")
    z = _f32(z, "z", arch.latent_dim)
    task = _task(arch, task)
    mu = _apply(arch, params, "policy_out", z, task)[..., : arch.action_dim]
    if arch.has_action_masks:
        mu = mu * _apply(arch, params, "masks", task)
    return jnp.tanh(mu)


def termination(arch: Arch, params: Params, z: Any, task: Any = None) -> jax.Array:
    """Termination probability (episodic models). z: (N, latent_dim) -> (N,)."""
    _need(arch, arch.has_termination, "termination head")
    z = _f32(z, "z", arch.latent_dim)
    return jax.nn.sigmoid(_apply(arch, params, "termination_logit", z, _task(arch, task))[..., 0])


def init_params(arch: Arch, key: jax.Array) -> Params:
    """Fresh random parameters of ``arch`` (flax default init; for tests and shape checks)."""
    obs = jnp.zeros((1, arch.obs_dim), jnp.float32)
    action = jnp.zeros((1, arch.action_dim), jnp.float32)
    task = jnp.zeros((1,), jnp.int32) if arch.multitask else None
    variables = _module(arch).init(key, obs, action, task, method=TDMPC2.init_all)
    return flax.core.unfreeze(variables["params"])  # a plain nested dict

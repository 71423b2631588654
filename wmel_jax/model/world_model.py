"""``wmel_jax.load(path) -> WorldModel``: a converted checkpoint, ready to run.

The methods of :class:`WorldModel` are thin wrappers over the pure functions
of :mod:`wmel_jax.model.networks`, jitted once per architecture (the jit cache
is keyed on the static ``Arch``, so another checkpoint of the same
architecture reuses the compiled code). For many checkpoints at once, stack
their params (:func:`stack_params`) and ``jax.vmap`` the functional API.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from wmel_jax.errors import WmelError
from wmel_jax.model.arch import Arch, unflatten_params
from wmel_jax.model.fileformat import read_model_file

__all__ = ["WorldModel", "load", "stack_params"]

# One jitted function per network function; jax caches compilations per
# (static Arch, input shapes/dtypes), so checkpoints of one arch share them.
# Made on first use: the networks import flax, which loading a model and a run
# whose kernels are all cached never need.
_JITTED = {"_encode": "encode", "_next": "next_latent", "_decode": "decode", "_predict": "predict", "_reward": "reward", "_reward_logits": "reward_logits", "_q_values": "q_values", "_q_logits": "q_logits", "_policy_mean": "policy_mean", "_termination": "termination"}


@functools.lru_cache(maxsize=None)
def _jitted(name: str):
    """``jax.jit(networks.<name>, static_argnums=0)``, one per process."""
    from wmel_jax.model import networks

    return jax.jit(getattr(networks, name), static_argnums=0)


def __getattr__(name: str):
    if name in _JITTED:  # world_model._encode and the like
        return _jitted(_JITTED[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclasses.dataclass(frozen=True, eq=False)
class WorldModel:
    """A loaded world model. Batched methods; inputs (N, dim) of any float dtype.

    Attributes:
      arch: the static architecture (hashable; the jit cache key).
      params: plain nested dict of float32 jax arrays (a pytree).
      schema: "adapter" (encoder/dynamics/decoder) or "upstream" (TD-MPC2 agent).
      action_set: (A, action_dim) float32 numpy array, or None when the checkpoint has none.
      meta: the checkpoint's ``meta`` dict ({} for upstream checkpoints).
      task: the task this model is for (str) or None when unknown.
      task_source: how ``task`` was determined.
      frame_skip: env steps per model step (action repeat).
      task_names: multitask task list (tuple) or None; action_masks: (num_tasks, action_dim) or None.
      header: the file's whole JSON header (source sha256, converter version, ...).
    """

    arch: Arch
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

    # ----------------------------------------------------------------- tasks
    @property
    def multitask(self) -> bool:
        return self.arch.multitask

    @property
    def action_masks(self) -> np.ndarray | None:
        """(num_tasks, action_dim) 0/1 mask per task, or None (single-task / older layout)."""
        masks = self.params.get("action_masks")
        return None if masks is None else np.asarray(masks)

    @property
    def action_dim(self) -> int:
        return self.arch.action_dim

    def task_index(self, task: int | str | None = None) -> int | None:
        """The task index to feed a multitask model (None for single-task models).

        ``task`` may be an index or a name from ``task_names``; by default the
        model's own ``task``.
        """
        if not self.multitask:
            if task is not None and task != self.task:
                raise WmelError("this is a single-task model: do not pass a task")
            return None
        if task is None:
            task = self.task
        if task is None:
            raise WmelError(
                f"this is a multitask model ({self.arch.num_tasks} tasks) with no task chosen: "
                f"pass task= (an index or a name), or convert with --env"
            )
        if isinstance(task, str):
            if not self.task_names or task not in self.task_names:
                raise WmelError(f"task {task!r} is not one of this model's tasks")
            return self.task_names.index(task)
        index = int(task)
        if not 0 <= index < self.arch.num_tasks:
            raise WmelError(f"task index {index} out of range 0..{self.arch.num_tasks - 1}")
        return index

    def _pad(self, x: Any, width: int, name: str) -> jax.Array:
        """Multitask models take zero-padded observations/actions, as upstream's wrapper pads them."""
        x = jnp.asarray(x, dtype=jnp.float32)
        if self.multitask and x.ndim >= 1 and x.shape[-1] < width:
            x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, width - x.shape[-1])])
        return x

    def fit_task(self, task: str, obs_dim: int, action_dim: int) -> int | None:
        """The task index to feed this model on ``task`` (None: single-task); WmelError if it does not fit.

        ``obs_dim``, ``action_dim``: the task's widths. A single-task model's
        widths must be the task's. A multitask model must list ``task`` among
        its tasks, be at least as wide as the task (its inputs are zero-padded,
        as upstream's multitask wrapper pads them), and its action mask for the
        task, when it has one, must enable exactly the task's action dimensions.
        """
        arch = self.arch
        if not arch.multitask:
            if arch.obs_dim != obs_dim or arch.action_dim != action_dim:
                raise WmelError(
                    f"model widths (obs_dim={arch.obs_dim}, action_dim={arch.action_dim}) do not fit "
                    f"{task} (obs_dim={obs_dim}, action_dim={action_dim})"
                )
            return None
        names = self.task_names
        if not names:
            raise WmelError(
                f"this multitask model ({arch.num_tasks} tasks) has no task list, so the index of {task} is unknown"
            )
        if task not in names:
            raise WmelError(f"{task} is not one of this multitask model's {len(names)} tasks")
        index = names.index(task)
        if obs_dim > arch.obs_dim or action_dim > arch.action_dim:
            raise WmelError(
                f"{task} (obs_dim={obs_dim}, action_dim={action_dim}) is wider than this multitask "
                f"model (obs_dim={arch.obs_dim}, action_dim={arch.action_dim})"
            )
        masks = self.action_masks
        if masks is not None:
            active = np.flatnonzero(np.asarray(masks[index]) != 0)
            if active.tolist() != list(range(action_dim)):
                raise WmelError(
                    f"this multitask model's action mask for {task} (task {index}) enables action dimensions "
                    f"{active.tolist()}, but {task} has action_dim {action_dim}"
                )
        return index

    @property
    def functions(self):
        """The world-model protocol's functions of this model's architecture (:mod:`~wmel_jax.model.protocol`)."""
        from wmel_jax.model.protocol import functions_of

        return functions_of(self.arch)

    def _t(self, task: int | str | None) -> jax.Array | None:
        index = self.task_index(task)
        return None if index is None else jnp.asarray(index, dtype=jnp.int32)

    # --------------------------------------------------------------- networks
    def encode(self, obs: Any, task: int | str | None = None) -> jax.Array:
        """obs: (N, obs_dim) -> z: (N, latent_dim)."""
        return _jitted("encode")(self.arch, self.params, self._pad(obs, self.arch.obs_dim, "obs"), self._t(task))

    def next(self, z: Any, action: Any, task: int | str | None = None) -> jax.Array:
        """z: (N, latent_dim), action: (N, action_dim) -> next z: (N, latent_dim)."""
        a = self._pad(action, self.arch.action_dim, "action")
        return _jitted("next_latent")(self.arch, self.params, z, a, self._t(task))

    def decode(self, z: Any) -> jax.Array:
        """z: (N, latent_dim) -> obs: (N, obs_dim). Adapter schema only."""
        self._need(self.arch.has_decoder, "decode")
        return _jitted("decode")(self.arch, self.params, z)

    def predict(self, obs: Any, action: Any) -> jax.Array:
        """decode(next(encode(obs), action)): (N, obs_dim), (N, action_dim) -> (N, obs_dim)."""
        self._need(self.arch.has_decoder, "predict")
        return _jitted("predict")(self.arch, self.params, obs, action, None)

    def reward(self, z: Any, action: Any, task: int | str | None = None) -> jax.Array:
        """Predicted reward: (N, latent_dim), (N, action_dim) -> (N,). Upstream schema only."""
        self._need(self.arch.has_reward, "reward")
        a = self._pad(action, self.arch.action_dim, "action")
        return _jitted("reward")(self.arch, self.params, z, a, self._t(task))

    def reward_logits(self, z: Any, action: Any, task: int | str | None = None) -> jax.Array:
        """(N, latent_dim), (N, action_dim) -> (N, num_bins)."""
        self._need(self.arch.has_reward, "reward_logits")
        a = self._pad(action, self.arch.action_dim, "action")
        return _jitted("reward_logits")(self.arch, self.params, z, a, self._t(task))

    def q_values(self, z: Any, action: Any, task: int | str | None = None) -> jax.Array:
        """Every Q head: (N, latent_dim), (N, action_dim) -> (num_q, N)."""
        self._need(self.arch.has_q, "q_values")
        a = self._pad(action, self.arch.action_dim, "action")
        return _jitted("q_values")(self.arch, self.params, z, a, self._t(task))

    def q_logits(self, z: Any, action: Any, task: int | str | None = None) -> jax.Array:
        """(N, latent_dim), (N, action_dim) -> (num_q, N, num_bins)."""
        self._need(self.arch.has_q, "q_logits")
        a = self._pad(action, self.arch.action_dim, "action")
        return _jitted("q_logits")(self.arch, self.params, z, a, self._t(task))

    def policy_mean(self, z: Any, task: int | str | None = None) -> jax.Array:
        """The policy prior's mean action tanh(mu) (masked per task): (N, latent_dim) -> (N, action_dim)."""
        self._need(self.arch.has_pi, "policy_mean")
        return _jitted("policy_mean")(self.arch, self.params, z, self._t(task))

    def termination(self, z: Any, task: int | str | None = None) -> jax.Array:
        """Termination probability (episodic models): (N, latent_dim) -> (N,)."""
        self._need(self.arch.has_termination, "termination")
        return _jitted("termination")(self.arch, self.params, z, self._t(task))

    def _need(self, ok: bool, method: str) -> None:
        if not ok:
            raise WmelError(
                f"{method} is not available: this {self.schema}-schema model has "
                f"{', '.join(self.arch.heads())}"
                + ("; predictions live in latent space (use encode/next/reward)"
                   if self.schema == "upstream" else "")
            )

    def __repr__(self) -> str:
        a = self.arch
        return (
            f"WorldModel(schema={self.schema!r}, task={self.task!r}, obs_dim={a.obs_dim}, "
            f"action_dim={a.action_dim}, latent_dim={a.latent_dim}, heads={a.heads()}, "
            f"frame_skip={self.frame_skip})"
        )


def load(path: str | os.PathLike):
    """Load a converted world model (``wmel-jax convert`` output) of any family. Never imports torch.

    A TD-MPC2 file gives a :class:`WorldModel`, a DreamerV3 file a
    :class:`~wmel_jax.model.dreamerv3.DreamerV3Model`; both follow
    :class:`~wmel_jax.model.protocol.LoadedWorldModel`.
    """
    from wmel_jax.model.protocol import family_for_schema

    header, arch, flat = read_model_file(path)
    # One transfer for every tensor (jnp.asarray would compile and run one XLA program per shape);
    # copied, not aliasing the file's buffer.
    params = unflatten_params(jax.device_put(flat, may_alias=False))
    return family_for_schema(header["schema"]).loaded_model(header, arch, params, path)


def stack_params(models: Sequence[WorldModel]) -> tuple[Arch, dict[str, Any]]:
    """``(arch, params)`` with every leaf stacked on a new leading axis (one per model).

    All models must share one architecture. Use with the functional API::

        arch, stacked = stack_params(models)
        z = jax.vmap(lambda p: networks.encode(arch, p, obs))(stacked)   # (M, N, latent)
    """
    if not models:
        raise WmelError("stack_params needs at least one model")
    arch = models[0].arch
    for m in models[1:]:
        if m.arch != arch:
            raise WmelError(f"cannot stack models of different architectures: {arch} vs {m.arch}")
    return arch, jax.tree.map(lambda *leaves: jnp.stack(leaves), *[m.params for m in models])

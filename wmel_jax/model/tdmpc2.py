"""The TD-MPC2 family on the world-model protocol (:mod:`wmel_jax.model.protocol`).

The networks are :mod:`wmel_jax.model.networks`; this module adapts them to
the protocol's ``(params, task, ...)`` functions and holds what is TD-MPC2's
own convention rather than the metrics': a multitask model sees what
upstream's multitask wrapper and planner give it, observations and actions
zero-padded to its widths and actions multiplied by the task's action mask
(upstream's planner masks every action it feeds the dynamics and reward
heads). The latent is one ``(N, latent_dim)`` array, compared by L2 (the
consistency loss TD-MPC2 trains), and the model is Markovian: the latent of
an observation is ``encode(obs)`` whatever came before.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from wmel_jax.model.arch import Arch, check_params, param_shapes
from wmel_jax.model.protocol import WorldModelFunctions

__all__ = ["FAMILY", "SCHEMAS", "LAYOUTS", "FILE_VERSION", "CONFIG_TYPE", "functions", "model_obs", "model_action",
           "config_from_dict", "check_config", "check_params", "param_shapes", "loaded_model"]

FAMILY = "tdmpc2"
#: The file schemas (``header["schema"]``) this family reads: the adapter and the upstream agent checkpoint.
SCHEMAS = ("adapter", "upstream")
#: The header layouts of this family's files (upstream's Q-ensemble key layout, or the adapter's).
LAYOUTS = ("adapter", "current", "older")
#: The converted-file format version this family's files are written with.
FILE_VERSION = 1
CONFIG_TYPE = Arch
config_from_dict = Arch.from_dict

# The networks (and flax) are imported inside the functions below, when a kernel is traced:
# a run whose kernels are all read from the cache never imports flax.


def check_config(arch: Arch) -> str | None:
    """What is wrong with a file's architecture beyond its field types (None: nothing)."""
    import math

    if not (math.isfinite(arch.vmin) and math.isfinite(arch.vmax) and arch.vmin < arch.vmax):
        return f"vmin {arch.vmin} and vmax {arch.vmax} must be finite, vmin < vmax"
    return None

_NO_DECODER = "no observation decoder (the model predicts latents only; see the latent-space metrics)"


def model_obs(arch: Arch, obs: jax.Array) -> jax.Array:
    """(..., task obs_dim) -> (..., arch.obs_dim) float32: zero-padded for a multitask model."""
    obs = jnp.asarray(obs).astype(jnp.float32)
    if obs.shape[-1] < arch.obs_dim:
        obs = jnp.pad(obs, [(0, 0)] * (obs.ndim - 1) + [(0, arch.obs_dim - obs.shape[-1])])
    return obs


def model_action(arch: Arch, params: Any, task: Any, action: jax.Array) -> jax.Array:
    """(..., task action_dim) -> (..., arch.action_dim) float32: zero-padded and masked as upstream's planner."""
    action = jnp.asarray(action).astype(jnp.float32)
    if action.shape[-1] < arch.action_dim:
        action = jnp.pad(action, [(0, 0)] * (action.ndim - 1) + [(0, arch.action_dim - action.shape[-1])])
    if arch.has_action_masks:
        action = action * jnp.take(params["action_masks"], task, axis=0)
    return action


def encode(arch: Arch, params: Any, task: Any, obs: jax.Array) -> jax.Array:
    """obs: (N, task obs_dim) -> z: (N, latent_dim)."""
    from wmel_jax.model import networks  # flax: only when traced

    return networks.encode(arch, params, model_obs(arch, obs), task)


def latent_step(arch: Arch, params: Any, task: Any, z: jax.Array, action: jax.Array) -> jax.Array:
    """z: (N, latent_dim), action: (N, task action_dim) -> (N, latent_dim)."""
    from wmel_jax.model import networks  # flax: only when traced

    return networks.next_latent(arch, params, z, model_action(arch, params, task, action), task)


def decode(arch: Arch, params: Any, task: Any, z: jax.Array) -> jax.Array:
    """z: (N, latent_dim) -> obs: (N, obs_dim) (adapter schema: single-task)."""
    from wmel_jax.model import networks  # flax: only when traced

    return networks.decode(arch, params, z)


def reward(arch: Arch, params: Any, task: Any, z: jax.Array, action: jax.Array, next_z: Any = None) -> jax.Array:
    """TD-MPC2's reward head reads (z, action): (N, latent_dim), (N, task action_dim) -> (N,)."""
    from wmel_jax.model import networks  # flax: only when traced

    return networks.reward(arch, params, z, model_action(arch, params, task, action), task)


@functools.lru_cache(maxsize=None)
def functions(arch: Arch) -> WorldModelFunctions:
    """The protocol's functions of one TD-MPC2 architecture (one object per architecture)."""
    unavailable = []
    if not arch.has_decoder:
        unavailable.append(("decode", _NO_DECODER))
    if not arch.has_reward:
        unavailable.append(("reward", "no reward head"))
    return WorldModelFunctions(
        family="tdmpc2",
        config=arch,
        encode=functools.partial(encode, arch),
        latent_step=functools.partial(latent_step, arch),
        decode=functools.partial(decode, arch) if arch.has_decoder else None,
        reward=functools.partial(reward, arch) if arch.has_reward else None,
        unavailable=tuple(unavailable),
    )


def loaded_model(header: Any, arch: Arch, params: Any, path: Any):
    """The loaded :class:`~wmel_jax.model.world_model.WorldModel` of a converted file."""
    import numpy as np

    from wmel_jax.model.world_model import WorldModel

    action_set = header["action_set"]
    names = header.get("task_names")
    return WorldModel(
        arch=arch,
        params=params,
        schema=header["schema"],
        action_set=None if action_set is None else np.asarray(action_set, dtype=np.float32),
        meta=dict(header.get("meta") or {}),
        task=header["task"],
        task_source=str(header.get("task_source", "")),
        frame_skip=int(header["frame_skip"]),
        task_names=None if names is None else tuple(names),
        header=header,
        path=None if path is None else str(path),
    )

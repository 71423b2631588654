"""The seeded state batch (SPEC section 5), as one kernel.

States are the observations a random-action policy visits in the real task:
``ceil(n / reset_every)`` independent episodes, each starting from the task's
reset distribution (dm_control's ``initialize_episode``) and stepped
``reset_every - 1`` times with actions drawn uniformly from the action set.
Each episode contributes its reset observation and the observation after each
step; the batch is the episodes concatenated in order, truncated to ``n``.
Episodes are vmapped and each is rolled with ``lax.scan``, so the whole batch
is one jit call. The reference draws with Python/NumPy generators, this with
JAX keys: a different sample from the same distribution.
"""

from __future__ import annotations

import functools
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from wmel_jax import kernel_cache
from wmel_jax.errors import WmelError
from wmel_jax.oracle import DEFAULT_PRECISION, make_oracle
from wmel_jax.oracle.base import batch_chunk, compiler_options, map_chunks, precision_scope

__all__ = ["RESET_EVERY", "sample_states"]

#: Observations per rollout episode of the seeded batch (SPEC section 5): the
#: reset observation and 24 steps. States of one episode are correlated, so the
#: metrics' intervals resample whole episodes (SPEC section 10).
RESET_EVERY = 25


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise WmelError(f"{name} must be a positive int; got {value!r}")
    return int(value)


def sample_states(
    key: jax.Array,
    task: str,
    n: int = 150,
    actions: Any = None,
    reset_every: int = RESET_EVERY,
    frame_skip: int = 1,
    precision: str = DEFAULT_PRECISION,
    *,
    runtime: Any = None,
) -> jax.Array:
    """Seeded on-task states: (n, obs_dim) observations of random-action rollouts.

    Args:
      key: a JAX PRNG key (``jax.random.key(seed)``); the same key gives the same states.
      task: a task name (``wmel_jax.list_tasks()``).
      n: number of states.
      actions: (A, action_dim) action set to draw from; default the task's default set.
      reset_every: episode length in observations (the reset observation plus
        ``reset_every - 1`` steps).
      frame_skip: physics steps per environment step (action repeat).
      precision: the oracle's precision, ``"float64"`` or ``"float32"``.
      runtime: the devices the episodes are split over
        (:class:`wmel_jax.distributed.Runtime`; default the process's). The
        randomness is drawn once for the whole batch, so the states do not
        depend on the device count; in a run of several processes every
        process gets every state.
    """
    oracle = make_oracle(task, frame_skip=frame_skip, precision=precision)
    n = _positive_int(n, "n")
    reset_every = _positive_int(reset_every, "reset_every")
    action_set = oracle.validate_actions(oracle.actions if actions is None else actions, "action set")
    if not isinstance(key, jax.Array) or _is_tracer(key):
        if _is_tracer(key):
            raise WmelError("sample_states needs a concrete key (it is not traceable: n is a shape)")
        raise WmelError(f"key must be a JAX PRNG key (jax.random.key(seed)); got {type(key).__name__}")
    from wmel_jax import distributed

    rt = distributed.runtime() if runtime is None else runtime
    episodes = -(-n // reset_every)
    steps = max(reset_every - 1, 0)
    impl = str(jax.random.key_impl(key))
    with precision_scope(oracle.precision):
        # The randomness first (integers only: the same bits on any device), then the
        # episodes split over the devices; traced once per configuration (kernel_cache),
        # with the oracle's codegen options for the whole batch.
        draw, _ = kernel_cache.compiled(_draws(episodes, steps, int(action_set.shape[0])), (key,))
        reset_keys, indices = (np.asarray(x) for x in draw(key))
        layout = rt.layout(episodes, episodes)  # one call: the whole batch, as on one device
        take, _ = layout.local_take(0)
        shared = rt.replicate(np.asarray(action_set, oracle.dtype))
        one_device = (jax.ShapeDtypeStruct((layout.per_device, *reset_keys.shape[1:]), reset_keys.dtype),
                      jax.ShapeDtypeStruct((layout.per_device, steps), indices.dtype), shared)
        kernel, _ = kernel_cache.compiled(
            _sampler(oracle, reset_every, impl), one_device, compiler_options(episodes * reset_every),
            rt.placement((0, 0, None), 0),
        )
        obs = kernel(rt.put(reset_keys[take]), rt.put(indices[take]), shared)  # (E', reset_every, obs_dim)
        obs = np.asarray(rt.gather(obs) if rt.process_count > 1 else obs)
    # Cut on the host (eager jax slicing would compile a program per shape), then back as a jax array.
    return jax.device_put(obs[:episodes].reshape(episodes * reset_every, -1)[:n])


def _is_tracer(x: Any) -> bool:
    return isinstance(x, jax.core.Tracer)


@functools.lru_cache(maxsize=64)
def _draws(episodes: int, steps: int, n_actions: int):
    """The batch's randomness: key -> (reset key data (episodes, ...) uint32, action indices (episodes, steps))."""

    def kernel(key):
        k_reset, k_act = jax.random.split(key)
        reset_keys = jax.random.key_data(jax.random.split(k_reset, episodes))
        return reset_keys, jax.random.randint(k_act, (episodes, steps), 0, n_actions)

    return kernel


@functools.lru_cache(maxsize=64)
def _sampler(oracle, reset_every: int, impl: str):
    """The rollouts of a batch of episodes, given their randomness (:func:`_draws`).

    reset key data (E, ...), action indices (E, reset_every - 1), action set
    (A, action_dim) -> (E, reset_every, obs_dim). Per episode: any E, any
    device, the same arithmetic.
    """
    physics = oracle.physics
    frame_skip = oracle.frame_skip

    def episodes_from(d, aux, ctrls):
        """Reset data (E,), aux (E, aux_dim), ctrls (E, reset_every - 1, nu) -> (E, reset_every, obs_dim)."""
        first = physics.observe(d, aux)[:, None]
        if reset_every == 1:
            return first
        ctrls = jnp.swapaxes(ctrls, 0, 1)  # time-major for the scan
        traj = physics.scan_observe(physics.start(d, ctrls[0]), aux, ctrls, frame_skip)
        return jnp.concatenate([first, jnp.swapaxes(traj, 0, 1)], axis=1)

    def kernel(reset_keys, idx, action_set):
        d, aux = physics.reset(jax.random.wrap_key_data(reset_keys, impl=impl))
        ctrls = action_set[idx]  # (E, steps, action_dim)
        return map_chunks(episodes_from, (d, aux, ctrls), batch_chunk())  # (E, reset_every, obs_dim)

    return kernel

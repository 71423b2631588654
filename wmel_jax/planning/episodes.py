"""Many planning episodes as one kernel: plan rounds in ``lax`` control flow, finished episodes masked.

An arm (SPEC section 9) runs n episodes through ``E`` slots (the episodes in
flight, ``chunk_episodes``), all in one jitted program per call:

- every slot holding a running episode plans once per round, all slots at
  once (the planner is batched over slots x candidates: one dynamics batch of
  E x C rows per plan step);
- each slot then executes its own plan prefix (1..15 steps, different per
  slot) open loop in the true simulator, in a ``lax.while_loop`` of at most
  ``plan_horizon`` env steps, checking success after every step;
- a slot whose episode ended (success, the horizon reached, or an empty plan)
  writes the episode's result and takes the next episode of the run's queue
  (its start state from a table), so no slot idles while episodes remain: the
  slots stay busy until the queue runs dry, and only the last episodes run
  with idle slots beside them;
- only the slots that hold an episode are planned: each round moves them to
  the front (a stable permutation: an episode's keys and results follow it,
  not its slot) and plans them in whole blocks (:func:`plan_sizes`,
  :func:`_plan_running`). So the run's tail, when the last episodes finish
  with idle slots beside them, costs about the running episodes' work, not
  the slots'. The work left masked is the last block's padding, counted in
  ``planned`` against ``slot_rounds``.

The per-episode state (:class:`Slots`) and the run's state (:class:`Episodes`)
are pytrees of fixed shapes. A call runs up to ``rounds_per_call`` rounds
(stopping early once every episode has ended), so the host can show progress
between calls; the host loop (:func:`run_arm`) does nothing per episode or per
step.

Randomness is a pure function of (seed, episode, plan call): with ``root =
fold_in(key(seed mod 2**32), seed // 2**32)``, episode k's start state is the
task's reset distribution drawn with ``fold_in(fold_in(root, 0), k)``, its
i-th plan call's candidates with ``fold_in(fold_in(fold_in(root, 1), k), i)``
(:func:`plan_key`). Results therefore do not
depend on the slot count, the order in which slots take episodes, or on how
many rounds a call runs. Both arms use the same keys (the reference seeds
both arms' planners alike): the same start states, and common random numbers
for the candidates.

Over several devices (and processes), :func:`run_arm` gives each device a
contiguous share of the episodes (:func:`device_shares`) with its own slots
and queue, and runs this kernel under ``jax.shard_map``
(:class:`wmel_jax.distributed.Placement`): a share's episodes keep their
indices in the whole run (``Episodes.first``) for their keys, so the
results are the one-device run's.

Success: an env step's reward is the task's true reward (dm_control's, the
oracle's ``step_reward``), averaged over the frame_skip physics steps the
action is held (for frame_skip 1, dm_control's reward itself), compared with
the task's threshold (:data:`SUCCESS_THRESHOLDS`).
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from wmel_jax import kernel_cache
from wmel_jax.errors import WmelError
from wmel_jax.planning.planners import PlannerConfig, plan

__all__ = [
    "SUCCESS_THRESHOLDS",
    "DEFAULT_CHUNK_EPISODES",
    "default_chunk_episodes",
    "MAX_HORIZON",
    "ROUNDS_PER_CALL",
    "Slots",
    "Episodes",
    "ArmResult",
    "success_threshold",
    "start_states",
    "seed_words",
    "plan_key",
    "plan_sizes",
    "episode_kernel",
    "device_shares",
    "run_arm",
]

#: The reward an env step must reach to end its episode as a success (SPEC section 9).
SUCCESS_THRESHOLDS: dict[str, float] = {"cartpole-swingup": 0.6, "acrobot-swingup": 0.6, "reacher-easy": 0.5}
#: Episodes in flight per kernel call by default: bounds memory (the dynamics
#: batch is chunk x candidates rows). On CPU a plan step's throughput is flat
#: from 32 to 256 episodes in flight (3,200 rows already fill the matmuls; the
#: end of a run, with free slots beside the last episodes, is planned in
#: blocks of the running ones); accelerators want wide batches.
DEFAULT_CHUNK_EPISODES = 64
DEFAULT_CHUNK_EPISODES_ACCELERATOR = 1024


def default_chunk_episodes() -> int:
    """Episodes in flight when not given: DEFAULT_CHUNK_EPISODES on CPU, wider on accelerators."""
    return DEFAULT_CHUNK_EPISODES if jax.default_backend() == "cpu" else DEFAULT_CHUNK_EPISODES_ACCELERATOR
#: The longest episode the command accepts (env steps).
MAX_HORIZON = 10_000
#: Plan rounds per kernel call: the host reports progress between calls.
ROUNDS_PER_CALL = 8

_START_STREAM, _PLAN_STREAM = 0, 1


def seed_words(seed: int) -> np.ndarray:
    """A seed (0 .. 2**63 - 1) as two uint32 words (low, high): traced without 64-bit JAX."""
    seed = int(seed)
    return np.array([seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF], np.uint32)


def root_key(words: jax.Array) -> jax.Array:
    """The run's root key: ``fold_in(key(low word), high word)``."""
    return jax.random.fold_in(jax.random.key(words[0]), words[1])


def plan_key(words: Any, episode: Any, call: Any) -> jax.Array:
    """The key of episode ``episode``'s plan call ``call``: a pure function of (seed, episode, call)."""
    root = jax.random.fold_in(root_key(jnp.asarray(words, jnp.uint32)), _PLAN_STREAM)
    return jax.random.fold_in(jax.random.fold_in(root, episode), call)


def success_threshold(task: str) -> float:
    try:
        return SUCCESS_THRESHOLDS[task]
    except KeyError:
        raise WmelError(f"no success threshold is defined for {task!r}; tasks with one: "
                        f"{', '.join(sorted(SUCCESS_THRESHOLDS))}") from None


class Slots(NamedTuple):
    """The episodes in flight, one row per slot (E slots).

    episode: (E,) int32 episode index, -1 for an empty slot; obs: (E, obs_dim)
    the env's current observation; steps: (E,) int32 env steps taken;
    plan_calls: (E,) int32 plan calls made.
    """

    episode: jax.Array
    obs: jax.Array
    steps: jax.Array
    plan_calls: jax.Array


class Episodes(NamedTuple):
    """A run of n episodes: the slots, the queue and the results so far.

    next_episode: () int32, the first episode not yet started; success,
    steps, plan_calls: (n,) per-episode results; ended: (n,) bool; rounds: ()
    int32 plan rounds run; slot_rounds: () int32 slot-rounds that planned for
    a running episode; planned: () int32 slot-rounds planned (whole blocks:
    the excess over ``slot_rounds`` is masked work); first: ()
    int32 the run's index of episode 0 (its keys are episode ``first + k``'s:
    a device's share of a larger run); count: () int32 episodes to run, the
    first ``count`` of the n (the rest is padding, ended from the start).
    """

    slots: Slots
    next_episode: jax.Array
    success: jax.Array
    steps: jax.Array
    plan_calls: jax.Array
    ended: jax.Array
    rounds: jax.Array
    slot_rounds: jax.Array
    planned: jax.Array
    first: jax.Array
    count: jax.Array


def initial_episodes(start_obs: np.ndarray, slots: int, first: int = 0, count: int | None = None) -> Episodes:
    """``slots`` slots holding episodes 0..slots-1, the rest of the queue waiting.

    start_obs: (n, obs_dim) every episode's start observation; ``first``:
    the run's index of episode 0; ``count`` (default n): the episodes to run,
    the rest padding (ended, never started; their slots empty). Slots beyond
    ``count`` (a block size rounding the slot count up) start empty.
    """
    n = start_obs.shape[0]
    count = n if count is None else count
    e = slots
    i32 = np.int32
    index = np.arange(e, dtype=i32)
    slot_set = Slots(
        episode=np.where(index < count, index, -1).astype(i32),
        obs=np.asarray(start_obs[np.minimum(index, n - 1)]),
        steps=np.zeros(e, i32),
        plan_calls=np.zeros(e, i32),
    )
    return Episodes(slot_set, np.asarray(min(e, count), i32), np.zeros(n, bool), np.zeros(n, i32), np.zeros(n, i32),
                    np.arange(n) >= count, np.asarray(0, i32), np.asarray(0, i32), np.asarray(0, i32),
                    np.asarray(first, i32), np.asarray(count, i32))


#: Start states are drawn in blocks of this many episodes: one compiled kernel serves every n.
START_BLOCK = 256


@functools.lru_cache(maxsize=None)
def _start_kernel(oracle: Any) -> Callable:
    physics = oracle.physics

    def kernel(seed, first):
        root = jax.random.fold_in(root_key(seed), _START_STREAM)
        keys = jax.vmap(lambda k: jax.random.fold_in(root, k))(first + jnp.arange(START_BLOCK))
        d, aux = physics.reset(keys)
        return physics.observe(d, aux)

    return kernel


def start_states(oracle: Any, seed: int, n: int) -> np.ndarray:
    """Episode k's start observation for k < n: (n, obs_dim), a pure function of (seed, k).

    The task's reset distribution (dm_control's ``initialize_episode``), drawn
    with ``fold_in(fold_in(key(seed), 0), k)``.
    """
    from wmel_jax.oracle.base import compiler_options, precision_scope

    with precision_scope(oracle.precision):
        seed_arg = jnp.asarray(seed_words(seed))
        first = jnp.asarray(0, jnp.int32)
        compiled, _ = kernel_cache.compiled(_start_kernel(oracle), (seed_arg, first), compiler_options(START_BLOCK))
        blocks = [np.asarray(compiled(seed_arg, jnp.asarray(b, jnp.int32))) for b in range(0, n, START_BLOCK)]
    return np.concatenate(blocks)[:n]


def _execute(env, chosen, s: Slots, executing, actions, config: PlannerConfig, frame_skip: int, threshold: float):
    """Each executing slot's plan prefix, open loop in the env: (obs, steps, success) after it.

    A ``lax.while_loop`` over plan steps t: slot e steps while t < its
    length, until its first success; the loop ends when no slot steps.
    """

    def go(carry):
        t, _, _, _, moving = carry
        return (t < config.horizon) & jnp.any(moving)

    def env_step(carry):
        t, obs, steps, success, executing = carry
        moving = executing & (t < chosen.length)
        nxt, reward = env.step_reward(obs, actions[chosen.actions[:, t]])
        obs = jnp.where(moving[:, None], nxt, obs)
        hit = moving & (reward / frame_skip >= threshold)
        return t + 1, obs, steps + moving, success | hit, moving & ~hit

    start = (jnp.int32(0), s.obs, s.steps, jnp.zeros_like(executing), executing)
    _, obs, steps, success, _ = jax.lax.while_loop(go, env_step, start)
    return obs, steps, success


def _execute_recorded(chosen, s: Slots, running, frame_skip: int, threshold: float):
    """The prefix of each running slot, read from the planner's own predictions of it (env = dynamics).

    The episode ends at the first step whose reward reaches the threshold, else
    after the whole prefix; the state after the last step taken is the slot's
    new observation.
    """
    t = jnp.arange(chosen.actions.shape[1])
    hits = (t < chosen.length[:, None]) & (chosen.recorded.reward / frame_skip >= threshold)
    success = running & jnp.any(hits, axis=1)
    taken = jnp.where(success, jnp.argmax(hits, axis=1) + 1, chosen.length) * running  # (E,) steps this round
    last = jnp.clip(taken - 1, 0, t.size - 1)
    reached = jnp.take_along_axis(chosen.recorded.obs, last[:, None, None], axis=1)[:, 0]
    obs = jnp.where((taken > 0)[:, None], reached.astype(s.obs.dtype), s.obs)
    return obs, s.steps + taken.astype(jnp.int32), success


def plan_sizes(slots: int, block: int, halving: bool) -> tuple[int, ...]:
    """The block sizes (slots per planner call, largest first) of a kernel with ``slots`` slots.

    ``block`` <= 0 or >= slots: one block of every slot. Else ``slots`` must be
    a multiple of ``block``; ``halving``: ``block * 2**j`` for every j with
    that at most ``slots`` (a model compiles in seconds, one copy per size,
    and wide blocks keep its matmuls efficient); otherwise ``block`` alone
    (the physics, whose copies would each compile for tens of seconds, runs
    as fast in narrow blocks).
    """
    if block <= 0 or block >= slots:
        return (slots,)
    if slots % block:
        raise ValueError(f"{slots} slots are not a multiple of the block of {block}")
    if not halving:
        return (block,)
    sizes = [block]
    while sizes[-1] * 2 <= slots:
        sizes.append(sizes[-1] * 2)
    return tuple(reversed(sizes))


def _plan_running(sizes: tuple[int, ...], running: jax.Array, plan_rows: Callable[[Any, int], Plan]
                  ) -> tuple[Plan, jax.Array]:
    """The plans of the first r = sum(running) slots (the running ones), in whole blocks.

    ``plan_rows(start, size)`` plans slots [start, start + size). With one
    block size S, ceil(r / S) blocks of S run in a loop. With several
    (halving: m * 2**j up to the slot count), r is rounded up to R, a
    multiple of m, and R's binary decomposition into the sizes is planned
    widest first: each size at most once (its compiled copy runs under a
    ``lax.cond``), less than m slots masked. Rows past the
    planned ones are zeros (length 0: an empty plan, for slots that hold no
    episode). Returns (plans of every slot, slot rows planned).
    """
    e = running.shape[0]
    r = jnp.sum(running).astype(jnp.int32)
    shapes = jax.eval_shape(lambda: plan_rows(jnp.int32(0), sizes[-1]))
    init = jax.tree_util.tree_map(lambda a: jnp.zeros((e,) + a.shape[1:], a.dtype), shapes)

    def put(plans, start, size):
        return jax.tree_util.tree_map(lambda a, v: jax.lax.dynamic_update_slice_in_dim(a, v, start, 0),
                                      plans, plan_rows(start, size))

    if len(sizes) == 1:
        size = sizes[0]
        blocks = (r + size - 1) // size
        return jax.lax.fori_loop(0, blocks, lambda b, plans: put(plans, b * size, size), init), blocks * size
    smallest = sizes[-1]
    total = (r + smallest - 1) // smallest * smallest
    plans, start = init, jnp.int32(0)
    for size in sizes:
        take = total - start >= size
        plans = jax.lax.cond(take, lambda p, a, z=size: put(p, a, z), lambda p, a: p, plans, start)
        start = start + jnp.where(take, size, 0)
    return plans, total


def episode_kernel(
    env: Any,
    dynamics: Callable[[Any, Any], Callable],
    score: Callable[[jax.Array], jax.Array],
    config: PlannerConfig,
    threshold: float,
    rounds_per_call: int = ROUNDS_PER_CALL,
    dynamics_is_env: bool = False,
    share_prefixes: bool = False,
    block: int = 0,
    halving: bool = False,
) -> Callable:
    """The kernel that advances a run by up to ``rounds_per_call`` plan rounds.

    env: the task's oracle (the true simulator the episodes run in, its
    ``step_reward``); dynamics(params, task) -> step(obs (B, obs_dim), action
    (B, action_dim)) -> (B, obs_dim): what the planner rolls candidates
    through (a model's observation map with its params); score: the task's
    score of an observation batch. Returns ``kernel(params, task, run,
    start_obs, seed, actions, horizon) -> run`` (params and task may be None),
    pure: one compilation serves every checkpoint of an architecture.

    ``dynamics_is_env`` (the oracle arm): the planner rolls candidates through
    the env itself (``dynamics`` is ignored), so executing the chosen prefix
    would recompute, step for step, the states and rewards the planner
    already predicted for it: the kernel reads them from the planner instead
    (the same function of the same inputs; the physics is compiled once).
    ``share_prefixes``: see :func:`~wmel_jax.planning.planners.rollout_scores`
    (for a model's dynamics: each shared level is one more compiled copy).
    ``block``, ``halving``: the planner's block sizes (:func:`plan_sizes` of
    the slot count, which must be a multiple of ``block``; 0: one block).
    """
    frame_skip = env.frame_skip

    def kernel(params, task, run: Episodes, start_obs, seed, actions, horizon):
        n = start_obs.shape[0]
        sizes = plan_sizes(run.slots.episode.shape[0], block, halving)
        step = env.step_reward if dynamics_is_env else dynamics(params, task)
        plan_root = jax.random.fold_in(root_key(seed), _PLAN_STREAM)

        def key_of(episode, call):  # = plan_key(seed, episode, call)
            return jax.random.fold_in(jax.random.fold_in(plan_root, episode), call)

        def one_round(run: Episodes) -> Episodes:
            # The slots holding an episode first (stable): only they are planned.
            order = jnp.argsort(run.slots.episode < 0, stable=True)
            s = jax.tree_util.tree_map(lambda x: x[order], run.slots)
            running = s.episode >= 0

            def plan_rows(start, size):
                rows = jax.tree_util.tree_map(lambda x: jax.lax.dynamic_slice_in_dim(x, start, size), s)
                keys = jax.vmap(key_of)(run.first + jnp.maximum(rows.episode, 0), rows.plan_calls)
                return plan(keys, step, score, rows.obs, horizon - rows.steps, actions, config,
                            record=dynamics_is_env, share_prefixes=share_prefixes)

            chosen, planned = _plan_running(sizes, running, plan_rows)
            plan_calls = s.plan_calls + running
            empty = chosen.length == 0
            if dynamics_is_env:
                obs, steps, success = _execute_recorded(chosen, s, running, frame_skip, threshold)
            else:
                obs, steps, success = _execute(env, chosen, s, running & ~empty, actions, config, frame_skip,
                                               threshold)
            ended = running & (success | (steps >= horizon) | empty)

            # Results of the episodes that ended (index n: dropped).
            where = jnp.where(ended, s.episode, n)
            results = dict(
                success=run.success.at[where].set(success, mode="drop"),
                steps=run.steps.at[where].set(steps, mode="drop"),
                plan_calls=run.plan_calls.at[where].set(plan_calls, mode="drop"),
                ended=run.ended.at[where].set(True, mode="drop"),
            )
            # Each freed slot takes the next episode of the queue, in slot order.
            candidate = run.next_episode + jnp.cumsum(ended) - 1
            takes = ended & (candidate < run.count)
            episode = jnp.where(ended, jnp.where(takes, candidate, -1), s.episode)
            fresh = start_obs[jnp.clip(candidate, 0, n - 1)]
            slots = Slots(
                episode=episode.astype(jnp.int32),
                obs=jnp.where(takes[:, None], fresh, obs),
                steps=jnp.where(ended, 0, steps).astype(jnp.int32),
                plan_calls=jnp.where(ended, 0, plan_calls).astype(jnp.int32),
            )
            return Episodes(
                slots,
                (run.next_episode + jnp.sum(takes)).astype(jnp.int32),
                rounds=run.rounds + 1,
                slot_rounds=run.slot_rounds + jnp.sum(running).astype(jnp.int32),
                planned=run.planned + planned,
                first=run.first,
                count=run.count,
                **results,
            )

        def more(carry):
            i, run = carry
            return (i < rounds_per_call) & jnp.any(run.slots.episode >= 0)

        _, run = jax.lax.while_loop(more, lambda c: (c[0] + 1, one_round(c[1])), (jnp.int32(0), run))
        return run

    kernel.block = block  # run_arm rounds its slot count up to a multiple of it
    return kernel


class ArmResult(NamedTuple):
    """One arm's episodes: success (n,) bool, steps (n,) int, plan_calls (n,) int; and how it ran.

    rounds: plan rounds (over several devices: the most any device ran);
    slot_rounds: slot-rounds that planned for a running episode (the plan
    calls); planned: slot-rounds planned, in whole blocks (every device's:
    the excess over ``slot_rounds`` is masked work); chunk: slots in flight,
    over every device; compile_s, run_s: seconds.
    """

    success: np.ndarray
    steps: np.ndarray
    plan_calls: np.ndarray
    rounds: int
    slot_rounds: int
    planned: int
    chunk: int
    compile_s: float
    run_s: float

    @property
    def masked_fraction(self) -> float:
        """The share of the planned slot-rounds that planned for no episode (a last block's padding)."""
        return 1.0 - self.slot_rounds / self.planned if self.planned else 0.0


#: How an :class:`Episodes` run is placed over devices (:class:`wmel_jax.distributed.Placement`):
#: each device runs its own share of the episodes (its own slots and queue; per-episode arrays
#: and slots on axis 0, the scalars one per device).
def _run_axes():
    from wmel_jax.distributed import STACKED

    return Episodes(Slots(0, 0, 0, 0), STACKED, 0, 0, 0, 0, STACKED, STACKED, STACKED, STACKED, STACKED)


def device_shares(n: int, n_devices: int) -> list[tuple[int, int]]:
    """Each device's episodes [start, stop) of a run of n: contiguous shares of ceil(n / D) (the last ones short or empty)."""
    share = -(-n // n_devices)
    return [(min(g * share, n), min((g + 1) * share, n)) for g in range(n_devices)]


def run_arm(
    kernel: Callable,
    params: Any,
    task: Any,
    start_obs: np.ndarray,
    seed: int,
    actions: np.ndarray,
    horizon: int,
    chunk: int,
    *,
    dtype: Any,
    compiler_options: dict | None = None,
    progress: Callable[[int, int, int], None] | None = None,
    runtime: Any = None,
) -> ArmResult:
    """Run every episode of ``start_obs`` (n, obs_dim) through ``kernel`` (:func:`episode_kernel`).

    ``chunk`` slots in flight (per process: over several devices, each has
    ``ceil(chunk / D)``); ``progress(episodes ended, n, rounds)`` after each
    call. ``dtype``: the env's (the oracle's precision). ``runtime``
    (:class:`wmel_jax.distributed.Runtime`; default the process's): over
    D > 1 devices (of every process), device g runs episodes
    :func:`device_shares` ``[g]`` with its own slots, as ``jax.shard_map`` of
    the one-device kernel; an episode's keys are its index in the whole run's
    (``first``), so it plans with the same candidates on any device count.
    Every process returns every episode. The slot count is rounded up to a
    multiple of the kernel's smallest planner block (``kernel.block``, see
    :func:`plan_sizes`; the extra slots start empty).
    """
    from wmel_jax import distributed

    rt = distributed.runtime() if runtime is None else runtime
    n = start_obs.shape[0]
    start_obs = np.asarray(start_obs, dtype)
    shares = device_shares(n, rt.n_devices)
    share = shares[0][1] - shares[0][0]
    slots = min(-(-chunk // rt.devices_per_process), share) if rt.sharded else min(chunk, n)
    block = getattr(kernel, "block", 0)
    if 0 < block < slots:
        slots = -(-slots // block) * block
    local = range(rt.process_index * rt.devices_per_process, (rt.process_index + 1) * rt.devices_per_process)
    if rt.sharded:
        parts = []
        for g in local:  # this process's devices' shares, padded to one shape
            a, b = shares[g]
            obs = start_obs[np.minimum(np.arange(a, a + share), n - 1)]
            parts.append((obs, initial_episodes(obs, slots, first=a, count=b - a)))
        own_obs = np.concatenate([p[0] for p in parts])
        own_run = jax.tree_util.tree_map(lambda *xs: np.stack(xs) if np.ndim(xs[0]) == 0 else np.concatenate(xs),
                                         *[p[1] for p in parts])
        one_obs, one_run = parts[0]
    else:
        own_obs = one_obs = start_obs
        own_run = one_run = initial_episodes(start_obs, slots)
    shared = (params, task, jnp.asarray(seed_words(seed)), jnp.asarray(actions, dtype),
              jnp.asarray(horizon, jnp.int32))
    args = (shared[0], shared[1], jax.tree_util.tree_map(jnp.asarray, one_run), jnp.asarray(one_obs), *shared[2:])
    axes = (None, None, _run_axes(), 0, None, None, None)
    compiled, compile_s = kernel_cache.compiled(kernel, args, compiler_options, rt.placement(axes, _run_axes()))
    if rt.sharded:
        params_arg, task_arg, seed_arg, actions_arg, horizon_arg = rt.replicate(shared)
        run, obs_arg = rt.put(own_run, _run_axes()), rt.put(own_obs)
    else:
        params_arg, task_arg, seed_arg, actions_arg, horizon_arg = shared
        run, obs_arg = args[2], args[3]
    padding = rt.n_devices * share - n if rt.sharded else 0
    t0 = time.perf_counter()
    while True:
        run = compiled(params_arg, task_arg, run, obs_arg, seed_arg, actions_arg, horizon_arg)
        # Waits for the call (the progress shown is real); over processes, a sum over all of them.
        ended = int(jnp.sum(run.ended)) - padding
        if progress is not None:  # this process's devices' rounds (no collective: progress is process 0's alone)
            progress(ended, n, max(int(np.max(np.asarray(x.data))) for x in run.rounds.addressable_shards))
        if ended == n:
            break
    run = rt.gather(run)
    if rt.sharded:
        def rows(x):  # (D * share,) -> the run's n episodes, in order
            x = np.asarray(x).reshape(rt.n_devices, share)
            return np.concatenate([x[g, : b - a] for g, (a, b) in enumerate(shares)])
    else:
        rows = np.asarray  # noqa: E731
    return ArmResult(
        success=rows(run.success).astype(bool),
        steps=rows(run.steps).astype(np.int64),
        plan_calls=rows(run.plan_calls).astype(np.int64),
        rounds=int(np.max(run.rounds)),
        slot_rounds=int(np.sum(run.slot_rounds)),
        planned=int(np.sum(run.planned)),
        chunk=slots * (rt.n_devices if rt.sharded else 1),
        compile_s=compile_s,
        run_s=time.perf_counter() - t0,
    )

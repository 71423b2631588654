"""The main job: the metrics of world models against the oracle, over a whole state batch.

Pipeline (SPEC.md sections 5-6)::

    Problem  = task, frame_skip, precision, states (N, obs_dim),
               action set (A, action_dim), M2 action sequence (k, action_dim)
    targets  = the oracle's answers for the Problem, computed ONCE:
               next_obs (N, A, obs_dim), scores (N, A), rewards (N, A),
               trajectory (k, N, obs_dim)
    cell     = one model's metrics against those targets

Each model gets every metric its networks support, in one kernel pass
(:data:`METRIC_SPACES` says where each lives), or those of the spaces asked
for (:data:`SPACES`; the kernel then does only their network work):

- observation space (models with an observation decoder: TD-MPC2's adapter
  schema, DreamerV3 through its Markovian projection):
  M1 ``m1_l2_onestep``, M2 ``m2_l2_kstep`` / ``m2_curve``, M3
  ``m3_action_agreement`` (SPEC section 6);
- latent space (every model: all have an encoder and latent dynamics):
  ``m1_latent_onestep`` = mean over (s, a) of ``|| next(encode(s), a) -
  encode(O(s, a)) ||_2`` (TD-MPC2's own consistency target), and
  ``m2_latent_kstep`` / ``m2_latent_curve``: ``z_{t+1} = next(z_t, a_t)``
  rolled open loop from ``encode(s)`` (as TD-MPC2 plans) against ``encode`` of
  the oracle's trajectory. A family with its own latent distance reports its
  own fields (:func:`latent_fields`): DreamerV3's ``m1_latent_mismatch_onestep``,
  ``m2_latent_mismatch_kstep`` / ``m2_latent_mismatch_curve``, the fraction of
  latent groups whose class differs between the prior and the posterior of the
  oracle's successor (one step), or the posteriors filtered along the oracle's
  trajectory (k steps: a recurrent family's ``observe``);
- reward (models with a reward head):
  ``reward_rank_agreement``, per state the Kendall tau-b between the model's
  predicted reward of (s, a) and the task's true reward of the transition
  (dm_control's, summed over the action repeat) over the action set, with M3's
  masking and null rules.

The oracle's outputs depend only on the Problem, so every checkpoint of a run
reuses them. Both the oracle and the model kernels run over fixed-size chunks
of states (the last chunk padded and masked), so memory is bounded for any N,
time grows linearly with N, and each kernel compiles once per shape. The model
kernel is cached per architecture: evaluating many checkpoints of one
architecture compiles once (a multitask model's task index is an argument,
not a constant). The encoder runs once per state and the latent one-step
predictions ``next(encode(s), a)`` are shared by the latent one-step error,
the reward ranking, M1 and M3.

The kernels know no model family by name: a model's static configuration
names its family, whose pure functions (:mod:`wmel_jax.model.protocol`:
encode, latent step, decode, reward, and for a recurrent model its posterior
update and latent distance) are all the kernel calls. Family conventions live
in the family's module: a multitask TD-MPC2 model's padding and action masks
in :mod:`wmel_jax.model.tdmpc2`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from wmel_jax import kernel_cache
from wmel_jax import metrics as M
from wmel_jax.distributed import STACKED
from wmel_jax.errors import WmelError

__all__ = [
    "DEFAULT_N_STATES",
    "DEFAULT_K_STEPS",
    "DEFAULT_CHUNK_STATES",
    "METRIC_SPACES",
    "SPACES",
    "requested_spaces",
    "model_spaces",
    "latent_fields",
    "Problem",
    "OracleTargets",
    "make_problem",
    "validate_episode_ids",
    "read_episode_ids",
    "interval_config",
    "draw_action_sequence",
    "oracle_targets",
    "precompile_oracle_targets",
    "model_metrics",
    "model_episode_sums",
    "summarize_episode_sums",
    "model_compiler_options",
    "check_model_fits",
    "model_task_index",
    "non_finite_metrics",
    "NON_FINITE_REASON",
]

DEFAULT_N_STATES = 150
DEFAULT_K_STEPS = 10
#: States per kernel call. Bounds memory (the oracle's MJX data is the largest
#: per-state cost: A one-step copies and one k-step rollout per state) while
#: keeping calls few enough that dispatch overhead does not matter.
DEFAULT_CHUNK_STATES = 4096

#: Where each reported metric lives: "observation" (compares observations: needs
#: an observation decoder), "latent" (compares the model's own latents: every
#: model), "reward" (ranks predicted against true rewards: needs a reward head).
METRIC_SPACES: dict[str, str] = {
    "m1_l2_onestep": "observation",
    "m2_l2_kstep": "observation",
    "m2_curve": "observation",
    "m3_action_agreement": "observation",
    "m1_latent_onestep": "latent",
    "m2_latent_kstep": "latent",
    "m2_latent_curve": "latent",
    "m1_latent_mismatch_onestep": "latent",
    "m2_latent_mismatch_kstep": "latent",
    "m2_latent_mismatch_curve": "latent",
    "reward_rank_agreement": "reward",
}
#: The metric spaces, in report order (the values of METRIC_SPACES).
SPACES = ("observation", "latent", "reward")
_LATENT_FIELDS = ("m1_latent_onestep", "m2_latent_kstep", "m2_latent_curve")


def latent_fields(distance_name: str) -> tuple[str, str, str]:
    """The report fields (one-step, k-step, curve) of latent metrics measured with ``distance_name``.

    L2 (TD-MPC2's) keeps the original names; another distance (DreamerV3's
    "mismatch") gets its own fields, so that metrics in different units are
    never tabulated or correlated as one.
    """
    if distance_name == "l2":
        return _LATENT_FIELDS
    return (f"m1_latent_{distance_name}_onestep", f"m2_latent_{distance_name}_kstep",
            f"m2_latent_{distance_name}_curve")


def _rename_latent_fields(result: dict[str, Any], unavailable: dict[str, str], distance_name: str) -> None:
    """In place: the latent metrics (and their intervals, sds, reasons) under the family's own field names."""
    own = latent_fields(distance_name)
    if own == _LATENT_FIELDS:
        return
    names = dict(zip(_LATENT_FIELDS, own))
    for old, new in names.items():
        for suffix in ("", "_ci"):
            if old + suffix in result:
                result[new + suffix] = result.pop(old + suffix)
        if old in unavailable:
            unavailable[new] = unavailable.pop(old)
    if isinstance(result.get("episode_sd"), dict):
        result["episode_sd"] = {names.get(k, k): v for k, v in result["episode_sd"].items()}


@dataclasses.dataclass(frozen=True, eq=False)
class Problem:
    """Everything the oracle's answers depend on (and nothing model-specific).

    states: (N, obs_dim) float64; actions: (A, action_dim) the action set of
    M1 and M3; action_sequence: (k, action_dim) the open-loop actions of M2.
    """

    task: str
    frame_skip: int
    precision: str
    states: np.ndarray
    actions: np.ndarray
    action_sequence: np.ndarray
    seed: int | None = None
    #: (N,) int: which states belong together (the rollout episode of a sampled
    #: state; given with ``--episode-ids``; None: each state on its own). The
    #: metrics' intervals resample these units whole. Not part of the oracle's
    #: answers (``cache_key``).
    episode_ids: np.ndarray | None = None
    #: How ``episode_ids`` came about: "sampled" (episodes of the rollouts),
    #: "file" (given), "states" (none given: each state is its own unit).
    episode_source: str = "states"

    def __post_init__(self):
        n = int(self.states.shape[0])
        ids = np.arange(n) if self.episode_ids is None else np.asarray(self.episode_ids)
        if ids.shape != (n,):
            raise WmelError(f"episode ids must be one per state: {n} states, got shape {ids.shape}")
        # Dense 0..E-1 in order of first appearance (what the kernels' segments index).
        _, first, dense = np.unique(ids, return_index=True, return_inverse=True)
        order = np.argsort(np.argsort(first))
        index = order[dense.reshape(-1)].astype(np.int64)
        index.setflags(write=False)
        object.__setattr__(self, "_episode_index", index)
        object.__setattr__(self, "_n_episodes", int(first.size))

    @property
    def n_states(self) -> int:
        return int(self.states.shape[0])

    @property
    def episode_index(self) -> np.ndarray:
        """(N,) int64: each state's episode as 0..n_episodes-1, in order of first appearance."""
        return self._episode_index

    @property
    def n_episodes(self) -> int:
        """The independent units the metrics' intervals resample (episodes, or states)."""
        return self._n_episodes

    @property
    def k_steps(self) -> int:
        return int(self.action_sequence.shape[0])

    def oracle(self):
        from wmel_jax.oracle import make_oracle

        return make_oracle(self.task, frame_skip=self.frame_skip, precision=self.precision)

    def cache_key(self) -> tuple:
        """Equal keys, equal oracle answers."""
        return (
            self.task,
            self.frame_skip,
            self.precision,
            self.states.tobytes(),
            self.states.shape,
            self.actions.tobytes(),
            self.actions.shape,
            self.action_sequence.tobytes(),
            self.action_sequence.shape,
        )


@dataclasses.dataclass(frozen=True)
class OracleTargets:
    """The oracle's answers for a Problem (numpy, the oracle's precision).

    next_obs: (N, A, obs_dim) O(s, a) for every state and action;
    scores: (N, A) the task score of each of those successors;
    trajectory: (k, N, obs_dim) the open-loop rollout of the action sequence;
    timings: seconds spent compiling and running;
    rewards: (N, A) the task's reward of each transition (s, a), summed over
    the frame_skip repeats;
    rows: None when the arrays hold every state, in order; in a run of
    several processes, the (M,) ascending indices of the states this process
    computed (its share, :meth:`wmel_jax.distributed.Layout.local_rows`), and
    the arrays hold those M states only (M in place of N above).
    """

    next_obs: np.ndarray
    scores: np.ndarray
    trajectory: np.ndarray
    timings: Mapping[str, float]
    rewards: np.ndarray
    rows: np.ndarray | None = None

    def positions(self, rows: np.ndarray) -> np.ndarray:
        """Where the states ``rows`` (indices into the problem's states) are in these arrays; WmelError if absent."""
        if self.rows is None:
            return rows
        at = np.searchsorted(self.rows, rows)
        if np.any(at >= self.rows.size) or np.any(self.rows[np.minimum(at, self.rows.size - 1)] != rows):
            raise WmelError(
                "these oracle answers are another process's share of the states: compute them with the same "
                "runtime and chunk size as the model metrics"
            )
        return at


def draw_action_sequence(key: jax.Array, actions: np.ndarray, k_steps: int) -> np.ndarray:
    """M2's open-loop actions: k_steps draws, uniform with replacement from the action set.

    actions: (A, action_dim) -> (k_steps, action_dim), numpy.
    """
    from wmel_jax.limits import MAX_K_STEPS, check_count

    k_steps = check_count(k_steps, "k_steps", MAX_K_STEPS)
    idx = np.asarray(jax.random.randint(key, (k_steps,), 0, actions.shape[0]))
    return np.asarray(actions)[idx]


def make_problem(
    task: str,
    actions: Any = None,
    *,
    n_states: int = DEFAULT_N_STATES,
    k_steps: int = DEFAULT_K_STEPS,
    seed: int = 0,
    frame_skip: int = 1,
    precision: str | None = None,
    states: Any = None,
    action_sequence: Any = None,
    episode_ids: Any = None,
) -> Problem:
    """The seeded evaluation problem of a task (SPEC.md section 5).

    ``states`` (N, obs_dim) replaces the sampled batch; ``action_sequence``
    (k, action_dim) replaces the drawn one; ``actions`` (A, action_dim) defaults
    to the task's default action set. Everything is validated here, at the
    boundary: widths, finiteness (the first bad row is named), actuator range.

    Episodes: sampled state i belongs to rollout episode ``i // RESET_EVERY``.
    ``episode_ids`` (N,) integer labels say which rows of ``states`` belong
    together (only with ``states``); without them each given state is its own
    unit.
    """
    from wmel_jax import limits
    from wmel_jax.oracle import DEFAULT_PRECISION, make_oracle

    if states is None:
        n_states = limits.check_count(n_states, "n_states (--n-states)", limits.MAX_N_STATES)
    if action_sequence is None:
        k_steps = limits.check_count(k_steps, "k_steps (--k-steps)", limits.MAX_K_STEPS)
    seed = limits.check_seed(seed, "seed (--seed)")
    precision = DEFAULT_PRECISION if precision is None else precision
    oracle = make_oracle(task, frame_skip=frame_skip, precision=precision)
    action_set = check_distinct_actions(
        oracle.validate_actions(oracle.actions if actions is None else actions, "action set"), "action set"
    )
    if states is not None:
        states = oracle.validate_state_range(oracle.validate_states(states, "state"), "state")
    if action_sequence is not None:
        action_sequence = oracle.validate_actions(action_sequence, "action sequence")
    # Every size bounded before any work (the sampler would allocate N states at once).
    limits.check_problem_size(
        n_states if states is None else states.shape[0],
        action_set.shape[0],
        k_steps if action_sequence is None else action_sequence.shape[0],
    )
    key_states, key_sequence = jax.random.split(jax.random.key(seed))
    if states is None:
        from wmel_jax.states import RESET_EVERY, sample_states

        if episode_ids is not None:
            raise WmelError("episode ids label the rows of given states: pass them with the states")
        states = np.asarray(
            sample_states(key_states, task, n_states, actions=action_set, reset_every=RESET_EVERY,
                          frame_skip=frame_skip, precision=precision),
            dtype=np.float64,
        )
        episode_ids, episode_source = np.arange(states.shape[0]) // RESET_EVERY, "sampled"
    else:
        episode_source = "states"
        if episode_ids is not None:
            episode_ids = validate_episode_ids(episode_ids, states.shape[0])
            episode_source = "file"
    if action_sequence is None:
        action_sequence = draw_action_sequence(key_sequence, action_set, k_steps)
    for arr in (states, action_set, action_sequence, *(() if episode_ids is None else (episode_ids,))):
        arr.setflags(write=False)
    return Problem(task, oracle.frame_skip, oracle.precision, states, action_set, action_sequence, seed,
                   episode_ids=episode_ids, episode_source=episode_source)


def read_episode_ids(path: Any) -> np.ndarray:
    """A ``.npy`` of (N,) integer episode labels, never unpickling anything (checked by make_problem)."""
    from wmel_jax.fileio import read_npy_file

    return read_npy_file(path, "episode ids")


def interval_config(problem: Problem, *, episode_file: Any = None) -> dict[str, Any]:
    """The report's ``config`` fields about the metrics' intervals: n_episodes, episodes, interval {...}."""
    from wmel_jax import stats
    from wmel_jax.states import RESET_EVERY

    e = problem.n_episodes
    episodes = {
        "sampled": f"rollout episodes of {RESET_EVERY} states (state i in episode i // {RESET_EVERY})",
        "file": f"file: {episode_file}" if episode_file is not None else "given",
        "states": "none: each state is its own unit",
    }[problem.episode_source]
    return {
        "n_episodes": e,
        "episodes": episodes,
        "interval": {
            "method": "bootstrap-t and expanded percentile, hull",
            "unit": "state" if problem.episode_source == "states" else "episode",
            "n_units": e,
            "n_resamples": stats.default_resamples(e),
            "confidence": stats.INTERVAL_CONFIDENCE,
            "seed": 0 if problem.seed is None else int(problem.seed),
        },
    }


def validate_episode_ids(episode_ids: Any, n_states: int) -> np.ndarray:
    """(N,) integer episode labels, one per state: WmelError otherwise. Returns int64 numpy.

    Any integers (labels, not positions); integer-valued floats are accepted
    (a .npy written from float arrays), other values are not.
    """
    ids = np.asarray(episode_ids)
    if ids.ndim == 2 and 1 in ids.shape:
        ids = ids.reshape(-1)
    if ids.ndim != 1:
        raise WmelError(f"episode ids must be a 1-D array (one label per state); got shape {ids.shape}")
    if ids.shape[0] != n_states:
        raise WmelError(f"{ids.shape[0]} episode ids for {n_states} states: give one per state")
    if np.issubdtype(ids.dtype, np.floating):
        bad = np.flatnonzero(~np.isfinite(ids) | (ids != np.round(ids)))
        if bad.size:
            raise WmelError(f"episode id {bad[0]} is {ids[bad[0]]!r}, not an integer")
    elif not np.issubdtype(ids.dtype, np.integer):
        raise WmelError(f"episode ids must be integers; got {ids.dtype} values")
    return ids.astype(np.int64)


def check_distinct_actions(actions: np.ndarray, what: str) -> np.ndarray:
    """``actions`` (A, action_dim), unless an action appears twice (M3 would rank it against itself)."""
    seen: dict[bytes, int] = {}
    for i, row in enumerate(np.asarray(actions, np.float64)):
        key = (row + 0.0).tobytes()  # -0.0 and 0.0 are one action
        if key in seen:
            raise WmelError(
                f"{what} rows {seen[key]} and {i} are the same action {row.tolist()}; an action set names each "
                "action once"
            )
        seen[key] = i
    return actions


# --------------------------------------------------------------------------- #
# chunking
# --------------------------------------------------------------------------- #


def _layout(runtime: Any, n: int, chunk_states: int):
    """How ``n`` states are cut into kernel calls over ``runtime``'s devices (:class:`~wmel_jax.distributed.Layout`).

    On one device: calls of ``min(n, chunk_states)`` states, the last one
    padded with copies of the last state (masked out).
    """
    from wmel_jax.limits import MAX_CHUNK_STATES, check_count

    check_count(chunk_states, "chunk size (--chunk-states)", MAX_CHUNK_STATES)
    return runtime.layout(n, int(chunk_states))


def _runtime(runtime: Any):
    from wmel_jax import distributed

    return distributed.runtime() if runtime is None else runtime


# --------------------------------------------------------------------------- #
# the oracle's side, once per Problem
# --------------------------------------------------------------------------- #


@functools.lru_cache(maxsize=None)
def _oracle_kernel(oracle: Any) -> Callable:
    """The oracle's answers for one chunk of states: one program per oracle configuration."""

    def kernel(states, actions, sequence):
        next_obs, rewards = oracle.step_all_reward(states, actions)  # (C, A, obs_dim), (C, A)
        scores = oracle.score(next_obs.reshape(-1, next_obs.shape[-1])).reshape(next_obs.shape[:2])
        return next_obs, scores, oracle.rollout(states, sequence), rewards

    return kernel


#: Where the oracle kernel's arguments and outputs keep their states (the batch axis; None: shared).
_ORACLE_IN_AXES = (0, None, None)  # states, actions, sequence
_ORACLE_OUT_AXES = (0, 0, 1, 0)  # next_obs, scores, trajectory (k, C, obs_dim), rewards


def _oracle_compile_spec(
    oracle: Any, n_states: int, n_actions: int, k_steps: int, chunk_states: int, runtime: Any = None
) -> tuple:
    """(kernel, one device's argument shapes, compiler options, placement) of :func:`oracle_targets`."""
    from wmel_jax.oracle.base import compiler_options

    rt = _runtime(runtime)
    size = _layout(rt, n_states, chunk_states).per_device
    dtype = oracle.dtype
    args = (
        jax.ShapeDtypeStruct((size, oracle.obs_dim), dtype),
        jax.ShapeDtypeStruct((n_actions, oracle.action_dim), dtype),
        jax.ShapeDtypeStruct((k_steps, oracle.action_dim), dtype),
    )
    # The oracle's own codegen options (its kernels are inlined here), for the whole problem's size.
    return (_oracle_kernel(oracle), args, compiler_options(n_states),
            rt.placement(_ORACLE_IN_AXES, _ORACLE_OUT_AXES))


def oracle_targets(
    problem: Problem, chunk_states: int = DEFAULT_CHUNK_STATES, *, runtime: Any = None, gather: bool = False
) -> OracleTargets:
    """The oracle's next observations, their scores, the rewards and the k-step trajectory, chunked.

    Returns numpy arrays in the oracle's precision: next_obs (N, A, obs_dim),
    scores (N, A), rewards (N, A), trajectory (k, N, obs_dim).

    ``runtime`` (:class:`wmel_jax.distributed.Runtime`; default the
    process's): each call covers ``chunk_states`` states per process, split
    over its devices. In a run of several processes each process computes its
    share of the states and the arrays hold only those (``rows``), unless
    ``gather``: then every process gets every state's answers.
    """
    from wmel_jax.oracle.base import precision_scope

    rt = _runtime(runtime)
    oracle = problem.oracle()
    n, obs_dim = problem.states.shape
    n_actions = problem.actions.shape[0]
    layout = _layout(rt, n, chunk_states)
    dtype = oracle.dtype
    rows = layout.local_rows()
    m = rows.size
    next_obs = np.empty((m, n_actions, obs_dim), dtype)
    scores = np.empty((m, n_actions), dtype)
    rewards = np.empty((m, n_actions), dtype)
    trajectory = np.empty((problem.k_steps, m, obs_dim), dtype)
    run_s = 0.0
    with precision_scope(problem.precision):
        actions = rt.replicate(np.asarray(problem.actions, dtype))
        sequence = rt.replicate(np.asarray(problem.action_sequence, dtype))
        compiled, compile_s = _compiled(*_oracle_compile_spec(oracle, n, n_actions, problem.k_steps, chunk_states, rt))
        at = 0
        for j in range(layout.n_chunks):
            take, valid = layout.local_take(j)
            t0 = time.perf_counter()
            out = compiled(rt.put(np.asarray(problem.states[take], dtype)), actions, sequence)
            out = jax.block_until_ready(out)
            run_s += time.perf_counter() - t0
            k = int(valid.sum())
            local = [rt.local_part(x, axis) for x, axis in zip(out, _ORACLE_OUT_AXES)]
            next_obs[at : at + k] = local[0][valid]
            scores[at : at + k] = local[1][valid]
            trajectory[:, at : at + k] = local[2][:, valid]
            rewards[at : at + k] = local[3][valid]
            at += k
    held = None if rt.process_count == 1 else rows
    if gather and held is not None:
        next_obs, scores, rewards, trajectory = (
            rt.gather_rows(x, rows, n, axis) for x, axis in ((next_obs, 0), (scores, 0), (rewards, 0), (trajectory, 1))
        )
        held = None
    for arr in (next_obs, scores, trajectory, rewards):
        arr.setflags(write=False)
    return OracleTargets(
        next_obs, scores, trajectory, {"oracle_compile_s": compile_s, "oracle_run_s": run_s}, rewards=rewards,
        rows=held,
    )


# --------------------------------------------------------------------------- #
# the model's side, once per checkpoint
# --------------------------------------------------------------------------- #


def check_model_fits(model: Any, task: str) -> None:
    """WmelError unless the model can be judged on ``task`` (its ``fit_task``: widths, task list).

    A model that fits is judged on the metric spaces its family provides
    (:func:`model_spaces`); the others are reported unavailable.
    """
    model_task_index(model, task)


def model_task_index(model: Any, task: str) -> int | None:
    """The task index to feed ``model`` on ``task`` (None: single-task); WmelError if it does not fit.

    The model decides (its ``fit_task``: a multitask TD-MPC2 model checks its
    task list, widths and action mask) against the task's widths.
    """
    from wmel_jax.oracle import task_class

    spec = task_class(task)
    return model.fit_task(task, spec.obs_dim, spec.action_dim)


def requested_spaces(spaces: Any = None) -> tuple[str, ...]:
    """The metric spaces asked for, validated, in :data:`SPACES` order (None or "all": every space).

    ``spaces``: an iterable of space names, or one string of them separated by
    commas ("observation,reward"). WmelError on an unknown or empty request.
    """
    if spaces is None:
        return SPACES
    names = spaces.split(",") if isinstance(spaces, str) else list(spaces)
    names = [str(x).strip() for x in names if str(x).strip()]
    if "all" in names:
        return SPACES
    unknown = [x for x in names if x not in SPACES]
    if unknown:
        raise WmelError(f"unknown metric space {unknown[0]!r}: choose from {', '.join(SPACES)}, or all")
    if not names:
        raise WmelError(f"no metric space asked for: choose from {', '.join(SPACES)}, or all")
    return tuple(x for x in SPACES if x in names)


def _available(arch: Any) -> dict[str, str | None]:
    """Space -> why this architecture cannot have its metrics (None: it can): what its family provides."""
    from wmel_jax.model.protocol import functions_of

    return functions_of(arch).space_reasons()


def model_spaces(arch: Any, spaces: Any = None) -> tuple[str, ...]:
    """The spaces whose metrics are computed for ``arch``: those asked for that it can have.

    WmelError when it can have none of them (a decoder-less model asked for
    the observation-space metrics only, say): there would be nothing to report.
    """
    asked = requested_spaces(spaces)
    why = _available(arch)
    computed = tuple(x for x in asked if why[x] is None)
    if not computed:
        reasons = "; ".join(f"{x}: {why[x]}" for x in asked)
        raise WmelError(f"the model has none of the metrics asked for ({reasons})")
    return computed


def _unavailable(arch: Any, spaces: tuple[str, ...]) -> dict[str, str]:
    """Metric -> why it is not reported for this architecture and request (empty: all are).

    Only the metrics its family can have: another family's latent fields are not listed.
    """
    from wmel_jax.model.protocol import functions_of

    why = _available(arch)
    own_latent = latent_fields(functions_of(arch).latent_distance_name)
    out: dict[str, str] = {}
    for metric, space in METRIC_SPACES.items():
        if space == "latent" and metric not in own_latent:
            continue
        if why[space] is not None:
            out[metric] = why[space]
        elif space not in spaces:
            out[metric] = f"not requested (metric spaces asked for: {', '.join(spaces)})"
    return out


#: Where the model kernel's arguments keep their states: params, task, states, valid, segments, actions,
#: sequence, true_next, true_scores, true_rewards, true_traj (k, C, obs_dim). Its outputs are per-segment
#: sums of one device's part: one per device.
_MODEL_IN_AXES = (None, None, 0, 0, 0, None, None, 0, 0, 0, 1)


@functools.lru_cache(maxsize=None)
def _model_kernel(arch: Any, score_fn: Callable, spaces: tuple[str, ...]) -> Callable:
    """The metrics of ``spaces`` (those the architecture has: :func:`model_spaces`), as chunk sums, for one chunk.

    ``arch`` is the model's static configuration; the kernel asks its family
    (:func:`wmel_jax.model.protocol.functions_of`) for the functions it needs,
    never for a family by name. Pure in (params, task index, chunk arrays), so
    one compilation serves every checkpoint of the architecture (and every
    task of a multitask one). ``spaces`` is static: a space not asked for
    costs nothing (its networks are not run). Returns a dict of
    :class:`~wmel_jax.metrics.SumCount`: ``m1_latent``, ``m2_latent``
    (latent); ``reward_rank`` (reward); ``m1``, ``m2``, ``m3`` (observation),
    each split per segment: ``segments`` (C,) int32 gives each state of the
    chunk its episode's index among the chunk's episodes (there are at most
    C), so every total is (C,) or (C, k) and every count (C,); the host adds
    them up per episode.
    """
    from wmel_jax.model.protocol import functions_of, repeat_latent, stack_latent

    fns = functions_of(arch)

    def kernel(params, task, states, valid, segments, actions, sequence, true_next, true_scores, true_rewards,
               true_traj):
        n, a = states.shape[0], actions.shape[0]
        per = dict(segments=segments, num_segments=n)  # per-episode partial sums (at most n episodes)
        k = sequence.shape[0]
        z = fns.encode(params, task, states)  # (C, ...): once per state
        z_rep = repeat_latent(z, a)  # (C*A, ...), state-major
        act_rep = jnp.tile(actions, (n, 1))  # (C*A, action_dim)
        out = {}
        if "latent" in spaces or "observation" in spaces or (
            "reward" in spaces and fns.reward_reads_next_latent
        ):
            z_next = fns.latent_step(params, task, z_rep, act_rep)  # shared by every one-step metric

        if "latent" in spaces:
            # One-step: against the model's own latent of the oracle's successors.
            z_true_next = fns.observed_latent(params, task, z_next, true_next.reshape(n * a, -1))
            dist = fns.latent_distance(z_next, z_true_next).reshape(n, a)
            out["m1_latent"] = M.one_step_distance_sum(dist, valid, **per)

            # k-step: the latent rolled open loop (as the model plans) against the model's latents of
            # the oracle's trajectory (encode(s_t) for a Markovian model; for a recurrent one, its
            # posterior filtered along the trajectory).
            def latent_step(zt, action):
                zt = fns.latent_step(params, task, zt, jnp.broadcast_to(action, (n, action.shape[0])))
                return zt, zt

            _, z_traj = jax.lax.scan(latent_step, z, sequence)  # (k, C, ...)
            if fns.observe is None:
                z_true_traj = stack_latent(fns.encode(params, task, true_traj.reshape(k * n, -1)), (k, n))
            else:
                def observed_step(post, inputs):
                    action, obs = inputs
                    prior = fns.latent_step(params, task, post, jnp.broadcast_to(action, (n, action.shape[0])))
                    post = fns.observe(params, task, prior, obs)
                    return post, post

                _, z_true_traj = jax.lax.scan(observed_step, z, (sequence, true_traj))
            dist = jax.vmap(fns.latent_distance)(z_traj, z_true_traj)  # (k, C)
            out["m2_latent"] = M.kstep_distance_curve_sum(dist, valid, **per)

        if "reward" in spaces:
            pred_rewards = fns.reward(
                params, task, z_rep, act_rep, z_next if fns.reward_reads_next_latent else None
            ).reshape(n, a)
            out["reward_rank"] = M.action_ranking_agreement(
                true_rewards, pred_rewards.astype(true_rewards.dtype), valid, **per
            )

        if "observation" in spaces:
            pred_next = fns.decode(params, task, z_next)
            out["m1"] = M.one_step_l2_sum(pred_next.reshape(n, a, -1), true_next, valid, **per)
            pred_scores = jax.vmap(score_fn)(pred_next.astype(true_scores.dtype)).reshape(n, a)
            out["m3"] = M.action_ranking_agreement(true_scores, pred_scores, valid, **per)

            def step(obs, action):
                nxt = fns.obs_step(params, task, obs, jnp.broadcast_to(action, (n, action.shape[0])))
                return nxt, nxt

            _, traj = jax.lax.scan(step, states.astype(jnp.float32), sequence)  # (k, C, obs_dim)
            out["m2"] = M.kstep_l2_curve_sum(traj, true_traj, valid, **per)
        return out

    return kernel


def model_metrics(
    model: Any,
    problem: Problem,
    targets: OracleTargets,
    chunk_states: int = DEFAULT_CHUNK_STATES,
    *,
    total_states: int | None = None,
    spaces: Any = None,
    interval_resamples: int | None = None,
    interval_seed: int | None = None,
    runtime: Any = None,
) -> tuple[dict[str, Any], dict[str, float]]:
    """Every metric the model supports on a problem, or those of ``spaces``, with intervals; (metrics, timings).

    ``runtime`` (default the process's): the devices the calls are split
    over; each device returns its own chunk sums, added on the host in the
    order of the states (see :mod:`wmel_jax.distributed`). ``targets`` must
    hold the answers for this process's share of the states (all of them, or
    :func:`oracle_targets` computed with the same runtime and chunk size).

    ``spaces``: the metric spaces to compute (:func:`requested_spaces`; None:
    all). WmelError when the model has none of them (:func:`model_spaces`).

    ``total_states``: the states the caller will put through this
    architecture's kernel in all (every checkpoint of the run), when it knows
    them; a small total compiles the kernel for compile time, not run time
    (:func:`model_compiler_options`).

    metrics (unrounded), each field present for every model:
    observation space: m1_l2_onestep, m2_l2_kstep, m2_curve (k,),
    m3_action_agreement (None when no state has a defined tau-b),
    m3_states_used; latent space: m1_latent_onestep, m2_latent_kstep,
    m2_latent_curve (k,); reward: reward_rank_agreement (None when no state
    has a defined tau-b), reward_rank_states_used. A metric the model cannot
    have (no decoder: the observation-space ones; no reward head: the reward
    ranking) or that was not asked for is None, with its states-used count,
    and ``unavailable`` maps it to the reason.

    Beside each metric ``<metric>_ci``: its 95% interval [low, high] from the
    episode bootstrap (:func:`summarize_episode_sums`; a curve's is a list of
    k [low, high]), None where the metric is None or there are fewer than two
    episodes; ``n_episodes``, the units resampled; ``episode_sd`` {metric:
    per-episode sd}, for the precision warning's suggested N. ``interval_*``:
    the bootstrap's resamples (default ``stats.INTERVAL_RESAMPLES``) and seed
    (default the problem's seed): every model of a run is resampled on the
    same episodes.

    timings: model_compile_s, model_run_s (the kernel), interval_s (the
    bootstrap, on the host).
    """
    sums, timings = model_episode_sums(
        model, problem, targets, chunk_states, total_states=total_states, spaces=spaces, runtime=runtime
    )
    t0 = time.perf_counter()
    result = summarize_episode_sums(sums, problem, resamples=interval_resamples, seed=interval_seed)
    timings["interval_s"] = time.perf_counter() - t0
    from wmel_jax.model.protocol import functions_of

    distance_name = functions_of(model.arch).latent_distance_name
    unavailable = _unavailable(model.arch, requested_spaces(spaces))
    # (The checks below use TD-MPC2's field names; a family with its own latent distance is renamed after.)
    unavailable = {_LATENT_FIELDS[latent_fields(distance_name).index(k)] if k in latent_fields(distance_name)
                   else k: v for k, v in unavailable.items()}
    # A metric that overflowed is null with its reason (and no interval), never a silent null.
    for curve, last in (("m2_curve", "m2_l2_kstep"), ("m2_latent_curve", "m2_latent_kstep")):
        if result.get(curve) is not None and not all(math.isfinite(v) for v in result[curve]):
            for field in (curve, last):
                result[field] = result[f"{field}_ci"] = None
                unavailable[field] = NON_FINITE_REASON
    for metric in ("m1_l2_onestep", "m3_action_agreement", "m1_latent_onestep", "reward_rank_agreement"):
        if result.get(metric) is not None and not math.isfinite(result[metric]):
            result[metric] = result[f"{metric}_ci"] = None
            unavailable[metric] = NON_FINITE_REASON
    _rename_latent_fields(result, unavailable, distance_name)
    if unavailable:
        result["unavailable"] = unavailable
    return result, timings


def model_episode_sums(
    model: Any,
    problem: Problem,
    targets: OracleTargets,
    chunk_states: int = DEFAULT_CHUNK_STATES,
    *,
    total_states: int | None = None,
    spaces: Any = None,
    runtime: Any = None,
) -> tuple[dict[str, M.SumCount], dict[str, float]]:
    """The model kernel's sums per episode, over every chunk; (sums, timings).

    ``runtime`` (default the process's): the devices the calls are split
    over; each device returns its own part's per-episode sums, added on the
    host in the order of the states, as a one-device run adds its chunks' (see
    :mod:`wmel_jax.distributed`). ``targets`` must hold the answers for this
    process's share of the states (all of them, or :func:`oracle_targets`
    computed with the same runtime and chunk size).

    sums: {kernel output: SumCount(total (E,) or (E, k) float64, count (E,)
    int64)} for the outputs of the computed spaces (``m1``, ``m2``, ``m3``;
    ``m1_latent``, ``m2_latent``; ``reward_rank``), E = problem.n_episodes,
    episodes in :attr:`Problem.episode_index` order. A chunk boundary that
    cuts an episode leaves two partial sums, added here.
    """
    task = model_task_index(model, problem.task)
    computed = model_spaces(model.arch, spaces)
    oracle = problem.oracle()
    kernel = _model_kernel(model.arch, oracle.physics.task.score, computed)
    rt = _runtime(runtime)
    n = problem.n_states
    layout = _layout(rt, n, chunk_states)
    size = layout.per_device
    f32 = np.float32
    episode_index = problem.episode_index
    shared = rt.replicate((model.params, None if task is None else np.asarray(task, np.int32),
                           np.asarray(problem.actions, f32), np.asarray(problem.action_sequence, f32)))

    def segments_of(take: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Each row's episode among its device part's episodes (padding: 0, masked out): (len(take),) int32."""
        segments = np.zeros(take.size, np.int32)
        for at in range(0, take.size, size):
            rows = take[at : at + size][valid[at : at + size]]
            segments[at : at + rows.size] = np.unique(episode_index[rows], return_inverse=True)[1].reshape(-1)
        return segments

    from wmel_jax.model.protocol import functions_of

    def local_args(take: np.ndarray, valid: np.ndarray) -> tuple:
        """This process's rows of a call (``take``: indices into the states), as the kernel's batch arguments."""
        return (problem.states[take], valid, segments_of(take, valid), *_target_rows(targets, take, valid))

    def call_args(batch: tuple, put: Callable) -> tuple:
        states, valid, segments, true_next, true_scores, true_rewards, true_traj = batch
        params, task_arg, actions, sequence = shared
        return (params, task_arg, put(states), put(valid), put(segments), actions, sequence, put(true_next),
                put(true_scores), put(true_rewards), put(true_traj, 1))

    take0, valid0 = layout.local_take(0)
    one_device = tuple(x[:size] if i != 6 else x[:, :size] for i, x in enumerate(local_args(take0, valid0)))
    spec_args = call_args(one_device, lambda x, axis=0: jax.ShapeDtypeStruct(x.shape, x.dtype))
    # The family's own XLA options (its numerics) over the compile-time ones.
    options = {**model_compiler_options(total_states), **functions_of(model.arch).xla_options()}
    compiled, compile_s = _compiled(kernel, spec_args, options, rt.placement(_MODEL_IN_AXES, STACKED))
    outputs: list[dict] = []
    run_s = 0.0
    for j in range(layout.n_chunks):
        args = call_args(local_args(*layout.local_take(j)), rt.put)
        t0 = time.perf_counter()
        out = jax.block_until_ready(compiled(*args))
        run_s += time.perf_counter() - t0
        outputs.append(out)
    # One part per device per call, in the order of the states (a one-device run's chunks), and
    # the episodes of each part's segments.
    parts = rt.per_device(outputs)
    maps = [np.unique(episode_index[start:stop]) for _, _, start, stop in layout.parts()]
    sums = {name: M.scatter_segments([p[name] for p in parts], maps, problem.n_episodes) for name in parts[0]}
    return sums, {"model_compile_s": compile_s, "model_run_s": run_s}


# Report fields of each kernel output: (metric field, its end-point field for a curve, states-used field).
_SUM_FIELDS = {
    "m1": ("m1_l2_onestep", None, None),
    "m2": ("m2_curve", "m2_l2_kstep", None),
    "m3": ("m3_action_agreement", None, "m3_states_used"),
    "m1_latent": ("m1_latent_onestep", None, None),
    "m2_latent": ("m2_latent_curve", "m2_latent_kstep", None),
    "reward_rank": ("reward_rank_agreement", None, "reward_rank_states_used"),
}
# Fields in report order, each followed by its interval.
_FIELD_ORDER = (
    "m1_l2_onestep", "m2_l2_kstep", "m2_curve", "m3_action_agreement", "m3_states_used",
    "m1_latent_onestep", "m2_latent_kstep", "m2_latent_curve",
    "reward_rank_agreement", "reward_rank_states_used",
)
_COUNT_FIELDS = ("m3_states_used", "reward_rank_states_used")


@functools.lru_cache(maxsize=8)
def _resampler(n_units: int, n_resamples: int, seed: int):
    from wmel_jax.stats import EpisodeResampler

    return EpisodeResampler(n_units, n_resamples, seed)


def summarize_episode_sums(
    sums: Mapping[str, M.SumCount],
    problem: Problem,
    *,
    resamples: int | None = None,
    seed: int | None = None,
    confidence: float | None = None,
) -> dict[str, Any]:
    """Metrics, their episode-bootstrap intervals and per-episode sds from per-episode sums.

    sums: :func:`model_episode_sums`' output. Each metric is the ratio of its
    sums over all episodes (exactly the mean over states, or over (state,
    action) pairs); its interval resamples whole episodes, all metrics on the
    same resamples (``wmel_jax.stats.ratio_intervals``). Returns the
    :func:`model_metrics` fields (unavailable ones None), ``n_episodes`` and
    ``episode_sd``.
    """
    from wmel_jax import stats

    e = problem.n_episodes
    resamples = stats.default_resamples(e) if resamples is None else int(resamples)
    seed = (0 if problem.seed is None else int(problem.seed)) if seed is None else int(seed)
    confidence = stats.INTERVAL_CONFIDENCE if confidence is None else float(confidence)

    # Every metric's per-episode sums as columns of one (E, m) matrix: one bootstrap for all.
    columns: list[tuple[str, int, int]] = []  # (kernel output, first column, width)
    totals, counts = [], []
    for name, part in sums.items():
        total = np.asarray(part.total, np.float64).reshape(e, -1)
        count = np.asarray(part.count, np.float64).reshape(e, 1)
        columns.append((name, sum(t.shape[1] for t in totals), total.shape[1]))
        totals.append(total)
        counts.append(np.broadcast_to(count, total.shape))
    if totals:
        t_all, c_all = np.concatenate(totals, axis=1), np.concatenate(counts, axis=1)
        low, high, _ = stats.ratio_intervals(t_all, c_all, _resampler(e, resamples, seed), confidence)
        sd = stats.episode_sd(t_all, c_all)

    def interval(i: int, bounded: bool = False):
        if not (np.isfinite(low[i]) and np.isfinite(high[i])):
            return None
        lo, hi = float(low[i]), float(high[i])
        return [max(lo, -1.0), min(hi, 1.0)] if bounded else [lo, hi]  # a tau-b lives in [-1, 1]

    fields: dict[str, Any] = {}
    sds: dict[str, float | None] = {}
    for name, first, width in columns:
        field, end_field, used_field = _SUM_FIELDS[name]
        value, used = M.mean_or_none(M.combine_sums(sums[name]))
        if used_field is not None:
            fields[used_field] = used
        if value is None:
            fields[field] = None
            fields[f"{field}_ci"] = None
            if end_field is not None:
                fields[end_field] = fields[f"{end_field}_ci"] = None
            continue
        fields[field] = value
        if end_field is None:
            fields[f"{field}_ci"] = interval(first, bounded=used_field is not None)
            sds[field] = float(sd[first]) if np.isfinite(sd[first]) else None
        else:  # a curve: every step's interval; its end point is the k-step metric
            steps = [interval(first + j) for j in range(width)]
            fields[f"{field}_ci"] = None if any(x is None for x in steps) else steps
            fields[end_field] = value[-1]
            fields[f"{end_field}_ci"] = steps[-1]
            last = first + width - 1
            sds[end_field] = float(sd[last]) if np.isfinite(sd[last]) else None

    result: dict[str, Any] = {}
    for field in _FIELD_ORDER:
        result[field] = fields.get(field)
        if field not in _COUNT_FIELDS:
            result[f"{field}_ci"] = fields.get(f"{field}_ci")
    result["n_states"] = problem.n_states
    result["n_episodes"] = e
    result["episode_sd"] = {k: sds.get(k) for k in _FIELD_ORDER if k in sds}
    return result


def _target_rows(targets: OracleTargets, take: np.ndarray, valid: np.ndarray) -> tuple:
    """The oracle's answers for the states ``take`` (next_obs, scores, rewards, trajectory), padding rows filled.

    Padding rows (``~valid``) are masked out by the kernel: they repeat one
    of this process's rows (zeros if it has none).
    """
    if targets.rows is None:
        at = take
    else:
        at = np.zeros(take.shape, np.int64)
        if valid.any():
            at[valid] = targets.positions(take[valid])
            at[~valid] = at[valid][-1]
        elif targets.rows.size == 0:  # a process with no states at all (more processes than chunks of states)
            n = take.size
            return (np.zeros((n, *targets.next_obs.shape[1:]), targets.next_obs.dtype),
                    np.zeros((n, *targets.scores.shape[1:]), targets.scores.dtype),
                    np.zeros((n, *targets.rewards.shape[1:]), targets.rewards.dtype),
                    np.zeros((targets.trajectory.shape[0], n, *targets.trajectory.shape[2:]), targets.trajectory.dtype))
    return targets.next_obs[at], targets.scores[at], targets.rewards[at], targets.trajectory[:, at]


#: The ``unavailable`` reason of a metric that came out NaN or infinite.
NON_FINITE_REASON = (
    "not finite: the model's predictions overflow (or are NaN) on these states, so the metric is NaN or infinite"
)


def non_finite_metrics(values: Mapping[str, Any]) -> list[str]:
    """The metrics of a :func:`model_metrics` result that came out non-finite (null, with NON_FINITE_REASON)."""
    return [k for k, why in (values.get("unavailable") or {}).items() if why == NON_FINITE_REASON]


#: A run putting at most this many states through a model kernel in all compiles
#: it at XLA's backend optimisation level 0 (see :func:`model_compiler_options`).
MODEL_FAST_COMPILE_MAX_STATES = 512


def model_compiler_options(total_states: int | None) -> dict[str, Any]:
    """XLA options for a model kernel that will see ``total_states`` states in all (None: unknown).

    On CPU, a total of at most MODEL_FAST_COMPILE_MAX_STATES compiles at
    backend optimisation level 0 with XLA's classic emitters: for one size-1
    model at N = 150 the kernel compiles in 0.3 s instead of 1.3 s and runs in
    0.14 s instead of 0.03 s, a second saved when compilation is most of the
    run. Bigger totals (many checkpoints of one architecture, big N) keep the
    optimised code: the extra ~0.7 ms per state would outgrow the saving.
    Codegen only (the parity tests hold both to the same tolerances).
    """
    if total_states is None or total_states > MODEL_FAST_COMPILE_MAX_STATES or jax.default_backend() != "cpu":
        return {}
    return {"xla_cpu_use_fusion_emitters": False, "xla_backend_optimization_level": 0}


def _compiled(
    kernel: Callable, args: tuple, compiler_options: Mapping[str, Any] | None = None, placement: Any = None
) -> tuple[Any, float]:
    """``kernel`` compiled for the shapes and dtypes of ``args``; (compiled, seconds spent now).

    Once per process and argument shapes (a sweep of checkpoints of one
    architecture, or a second run on a problem of the same shape, reports 0);
    traced once per configuration when a kernel cache directory is set
    (:mod:`wmel_jax.kernel_cache`). ``placement``: split over devices (None: one).
    """
    return kernel_cache.compiled(kernel, args, compiler_options, placement)


def precompile_oracle_targets(
    task: str,
    *,
    n_states: int,
    k_steps: int,
    actions: Any = None,
    frame_skip: int = 1,
    precision: str | None = None,
    chunk_states: int = DEFAULT_CHUNK_STATES,
    runtime: Any = None,
) -> Any:
    """Start compiling :func:`oracle_targets`' kernel for a problem of this shape, on a background thread.

    The kernel depends on the problem's shapes only, so it can compile while
    the states are being sampled (XLA releases the GIL while it compiles);
    ``oracle_targets`` then waits for it instead of compiling. Returns the
    future, or None when the arguments are not valid (``make_problem`` reports
    those).
    """
    from wmel_jax import limits
    from wmel_jax.oracle import DEFAULT_PRECISION, make_oracle
    from wmel_jax.oracle.base import precision_scope

    try:
        precision = DEFAULT_PRECISION if precision is None else precision
        oracle = make_oracle(task, frame_skip=frame_skip, precision=precision)
        action_set = check_distinct_actions(
            oracle.validate_actions(oracle.actions if actions is None else actions, "action set"), "action set"
        )
        # Out of bounds: make_problem says so, and nothing compiles meanwhile.
        limits.check_problem_size(n_states, action_set.shape[0], k_steps)
        limits.check_count(chunk_states, "chunk size", limits.MAX_CHUNK_STATES)
        kernel, args, options, placement = _oracle_compile_spec(
            oracle, int(n_states), action_set.shape[0], int(k_steps), int(chunk_states), runtime
        )
    except (WmelError, TypeError, ValueError):
        return None
    return kernel_cache.precompile(kernel, args, options, setup=lambda: precision_scope(oracle.precision),
                                   placement=placement)

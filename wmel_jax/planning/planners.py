"""Observation-space MPC planners (SPEC section 9) as pure functions over a batch of episodes.

Both planners search sequences of discrete actions (indices into the action
set) with a one-step dynamics ``step(obs (B, obs_dim), action (B, action_dim))
-> next_obs (B, obs_dim)`` (the MJX oracle or a learned model: the arms differ
only in what is passed) and the task's score ``score(obs (B, obs_dim)) -> (B,)``
(lower is better). Every function takes a leading batch of E independent
episodes; row e is planned exactly as the reference plans one episode:

- a candidate of ``H = min(plan_horizon, steps_left)`` actions is rolled from
  the current observation, each predicted state 1..H is scored; its *value*
  is the best score and its *cut* the step where it is reached, scanning from
  the final step's score as the initial best and replacing it only by a
  strictly lower score (a tie with the final step keeps the final step;
  earlier ties keep the earliest) (:func:`value_and_cut`);
- **random shooting** (:func:`random_shooting`): ``candidates`` sequences drawn
  uniformly; the best value wins (strictly lower; the first drawn wins ties)
  (:func:`choose`) and is returned cut at its cut step;
- **CEM** (:func:`cem`): a categorical distribution per plan step, uniform at
  first; each of ``iterations`` draws ``samples`` sequences, sorts them by
  value (stable), keeps the best candidate seen so far (strict improvement)
  and refits each step's distribution to ``(1 - smoothing) * elite histogram
  + smoothing * uniform`` (:func:`cem_refit`).

The plan (:class:`Plan`) is the chosen sequence (E, plan_horizon) and the
prefix length to execute open loop (E,); length 0 means no candidate had a
value below +inf (every prediction NaN or +inf), where the reference returns
an empty plan and its episode ends. Steps beyond an episode's H are computed
(fixed shapes) and masked out of every value.

Randomness is a JAX key per episode; the candidate sequences can instead be
given (``candidates=``), which is how the parity tests feed this and the
per-call reference planner (``wmel_jax.benchmarks.reference_planner``) the
same sequences. One deviation from the reference, for non-finite values only:
CEM sorts a NaN value after every number (Python's sort leaves NaN keys in an
unspecified order).
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from wmel_jax.errors import WmelError

__all__ = [
    "PLANNERS",
    "PlannerConfig",
    "Plan",
    "Recorded",
    "RandomShootingTrace",
    "CEMTrace",
    "shared_levels",
    "rollout_scores",
    "value_and_cut",
    "choose",
    "cem_refit",
    "random_shooting",
    "cem",
    "plan",
]

#: The planner names the CLI takes.
PLANNERS = ("random-shooting", "cem")

Step = Callable[[jax.Array, jax.Array], jax.Array]
Score = Callable[[jax.Array], jax.Array]


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise WmelError(f"{name} must be a positive int; got {value!r}")
    return int(value)


@dataclasses.dataclass(frozen=True)
class PlannerConfig:
    """A planner and its sizes (SPEC section 9 defaults). Static: it shapes the traced program.

    kind: "random-shooting" (``candidates`` sequences) or "cem" (``iterations``
    x ``samples``, ``elites`` kept, ``smoothing`` toward uniform); horizon: the
    plan horizon (actions per candidate, cut to the steps left).
    """

    kind: str = "random-shooting"
    horizon: int = 15
    candidates: int = 50
    iterations: int = 3
    samples: int = 24
    elites: int = 6
    smoothing: float = 0.1

    def __post_init__(self) -> None:
        if self.kind not in PLANNERS:
            raise WmelError(f"unknown planner {self.kind!r}: choose {' or '.join(PLANNERS)}")
        for name in ("horizon", "candidates", "iterations", "samples", "elites"):
            object.__setattr__(self, name, _positive_int(getattr(self, name), f"planner {name.replace('_', ' ')}"))
        if self.elites > self.samples:
            raise WmelError(f"CEM elites ({self.elites}) must be at most its samples ({self.samples})")
        smoothing = self.smoothing
        if isinstance(smoothing, bool) or not isinstance(smoothing, numbers.Real) or not 0.0 <= smoothing <= 1.0:
            raise WmelError(f"CEM smoothing must be a number in [0, 1]; got {smoothing!r}")
        object.__setattr__(self, "smoothing", float(smoothing))

    @property
    def sequences_per_call(self) -> int:
        """Candidate sequences rolled per plan call."""
        return self.candidates if self.kind == "random-shooting" else self.iterations * self.samples

    @property
    def dynamics_calls_per_plan(self) -> int:
        """One-step dynamics evaluations per plan call (the reference's compute_per_plan_call)."""
        return self.sequences_per_call * self.horizon

    def describe(self) -> str:
        if self.kind == "random-shooting":
            return f"random shooting {self.candidates} x {self.horizon}"
        return (f"CEM {self.iterations} x {self.samples}, {self.elites} elites, smoothing {self.smoothing:g}, "
                f"horizon {self.horizon}")

    def to_dict(self) -> dict[str, Any]:
        """The sizes that apply to this planner, in the reference's config names where it has them."""
        if self.kind == "random-shooting":
            return {"planner": self.kind, "num_candidates": self.candidates, "plan_horizon": self.horizon}
        return {"planner": self.kind, "num_iterations": self.iterations, "num_samples": self.samples,
                "num_elites": self.elites, "smoothing": self.smoothing, "plan_horizon": self.horizon}


class Recorded(NamedTuple):
    """Predicted states and rewards along candidates: obs (..., T, obs_dim), reward (..., T)."""

    obs: jax.Array
    reward: jax.Array


class Plan(NamedTuple):
    """A plan per episode. actions: (E, horizon) int32 indices into the action set;
    length: (E,) int32, the prefix to execute (1..H; 0: empty plan, nothing had a finite value);
    recorded: with ``record=True``, the chosen candidate's predicted states and rewards
    (:class:`Recorded`, (E, horizon, ...)), else None."""

    actions: jax.Array
    length: jax.Array
    recorded: Recorded | None = None


class RandomShootingTrace(NamedTuple):
    """What one random-shooting call saw (for tests). candidates: (E, C, horizon) int32;
    values, cuts: (E, C); chosen: (E,) the winning candidate."""

    candidates: jax.Array
    values: jax.Array
    cuts: jax.Array
    chosen: jax.Array


class CEMTrace(NamedTuple):
    """What one CEM call saw, per iteration i (for tests). candidates: (E, I, S, horizon);
    values, cuts, order (the stable sort by value): (E, I, S); probs: (E, I, horizon, A) the
    distribution refitted after iteration i; best_value, best_length: (E, I) the best
    candidate over iterations 0..i (length 0: none yet)."""

    candidates: jax.Array
    values: jax.Array
    cuts: jax.Array
    order: jax.Array
    probs: jax.Array
    best_value: jax.Array
    best_length: jax.Array


def _plan_length(config: PlannerConfig, steps_left: jax.Array) -> jax.Array:
    """H = min(plan horizon, steps left), at least 1 (an episode with no step left is masked by its caller)."""
    return jnp.clip(jnp.asarray(steps_left, jnp.int32), 1, config.horizon)


def shared_levels(n_actions: int, n_candidates: int, horizon: int) -> int:
    """Plan steps at which candidates share prefixes enough to compute each prefix once.

    At step j at most ``n_actions ** j`` distinct prefixes exist; while that is
    fewer than the candidates, rolling every prefix once (E x A^j rows) and
    gathering the candidates' states from them costs fewer dynamics calls:
    cartpole's 5 actions and 50 candidates share steps 1 and 2 (5 and 25 rows
    per episode instead of 50 and 50), 9% of random shooting's 750 calls.
    """
    levels = 0
    while levels < horizon and n_actions ** (levels + 1) < n_candidates:
        levels += 1
    return levels


def rollout_scores(step: Step, score: Score, obs: jax.Array, candidates: jax.Array, actions: jax.Array,
                   record: bool = False, share_prefixes: bool = False) -> Any:
    """The score of every predicted state of every candidate.

    obs: (E, obs_dim); candidates: (E, C, T) int indices into ``actions`` (A,
    action_dim). Each candidate is rolled from its episode's observation, the
    dynamics fed its own predictions. Returns (E, C, T): entry t scores the
    state after actions 0..t. The E * C rollouts are one batch per step.

    ``record``: ``step`` returns ``(next_obs, reward)`` and the result is
    ``(scores, Recorded(obs (E, C, T, obs_dim), reward (E, C, T)))``, every
    predicted state and reward (for an arm whose dynamics is its env).

    ``share_prefixes``: the first :func:`shared_levels` steps are rolled once
    per distinct prefix (every prefix of that length) and gathered: the same
    numbers (each row is the same function of the same inputs), fewer
    dynamics calls, but one more compiled copy of the dynamics per level (for
    a cheap-to-compile model, not the physics).
    """
    e, c, t = candidates.shape
    a = actions.shape[0]
    probe = jax.eval_shape(step, obs, actions[jnp.zeros((e,), jnp.int32)])
    # Carried in the dynamics' own dtype (a float32 model fed float64 observations).
    dtype = (probe[0] if record else probe).dtype
    levels = shared_levels(a, c, t) if share_prefixes else 0

    def run(x, act):
        out = step(x, act)
        return (out, None) if not record else out

    # The prefix tree: level j holds every prefix of j actions, node index sum_i a_i A^(j-1-i).
    tree = obs.astype(dtype)[:, None, :]  # (E, 1, obs_dim)
    head_scores, head_states, head_rewards = [], [], []
    node = jnp.zeros((e, c), jnp.int32)
    for j in range(levels):
        nodes = tree.shape[1]
        nxt, reward = run(jnp.repeat(tree, a, axis=1).reshape(e * nodes * a, -1), jnp.tile(actions, (e * nodes, 1)))
        tree = nxt.reshape(e, nodes * a, -1)
        node = node * a + candidates[:, :, j]

        def gather(v):  # (E, nodes * A, ...) -> (E, C, ...) at each candidate's prefix
            return jnp.take_along_axis(v, node.reshape(node.shape + (1,) * (v.ndim - 2)), axis=1)

        head_scores.append(gather(score(nxt).reshape(e, nodes * a)))
        if record:
            head_states.append(gather(tree))
            head_rewards.append(gather(reward.reshape(e, nodes * a)))
    x0 = jnp.take_along_axis(tree, node[:, :, None], axis=1).reshape(e * c, -1)  # (E * C, obs_dim)
    flat = candidates.reshape(e * c, t)[:, levels:]

    def body(x, idx):
        nxt, reward = run(x, actions[idx])
        return nxt, (score(nxt), (nxt, reward) if record else None)

    parts = [jnp.stack(head_scores, axis=2)] if levels else []
    if levels < t:
        _, (scores, kept) = jax.lax.scan(body, x0, flat.T)  # (T - levels, E * C)
        parts.append(scores.T.reshape(e, c, t - levels))
    scores = jnp.concatenate(parts, axis=2)
    if not record:
        return scores
    states = [jnp.stack(head_states, axis=2)] if levels else []
    rewards = [jnp.stack(head_rewards, axis=2)] if levels else []
    if levels < t:
        kept_states, kept_rewards = kept  # (T - levels, E * C, obs_dim), (T - levels, E * C)
        states.append(jnp.moveaxis(kept_states, 0, 1).reshape(e, c, t - levels, -1))
        rewards.append(kept_rewards.T.reshape(e, c, t - levels))
    return scores, Recorded(jnp.concatenate(states, axis=2), jnp.concatenate(rewards, axis=2))


def value_and_cut(scores: jax.Array, length: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Each candidate's value and cut step.

    scores: (..., T) of predicted states 1..T; length: (...) or broadcastable,
    H in 1..T (steps beyond it are ignored). value = the final step's score
    (step H) unless a strictly lower score comes before it, then the lowest
    one; cut = H, or the first step reaching that strictly lower score. A NaN
    score before H is never lower (the reference's comparison is False); a NaN
    final score makes the value NaN with cut H. Returns (value (...), cut
    (...) int32 in 1..H).
    """
    t = scores.shape[-1]
    length = jnp.broadcast_to(jnp.asarray(length, jnp.int32), scores.shape[:-1])
    final = jnp.take_along_axis(scores, (length - 1)[..., None], axis=-1)[..., 0]
    usable = (jnp.arange(t) < length[..., None]) & ~jnp.isnan(scores)
    masked = jnp.where(usable, scores, jnp.inf)
    lowest = jnp.min(masked, axis=-1)
    first = jnp.argmax(usable & (masked == lowest[..., None]), axis=-1).astype(jnp.int32) + 1
    earlier = lowest < final  # False for a NaN final score: the initial best is never replaced
    return jnp.where(earlier, lowest, final), jnp.where(earlier, first, length)


def choose(values: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The winning candidate: values (..., C) -> (index (...), ok (...)).

    The reference keeps a running best starting at +inf and replaces it only
    by a strictly lower value, so the first drawn of the lowest values wins and
    a NaN or +inf value never does; ``ok`` is False when no value is below +inf.
    """
    selectable = values < jnp.inf  # False for NaN and +inf
    index = jnp.argmin(jnp.where(selectable, values, jnp.inf), axis=-1).astype(jnp.int32)
    return index, jnp.any(selectable, axis=-1)


def _take(x: jax.Array, index: jax.Array) -> jax.Array:
    """x (E, C, ...) at index (E,) -> (E, ...)."""
    return jnp.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 1)), axis=1)[:, 0]


def random_shooting(
    key: jax.Array,
    step: Step,
    score: Score,
    obs: jax.Array,
    steps_left: jax.Array,
    actions: jax.Array,
    config: PlannerConfig,
    candidates: jax.Array | None = None,
    record: bool = False,
    share_prefixes: bool = False,
) -> tuple[Plan, RandomShootingTrace]:
    """Random-shooting MPC for a batch of episodes.

    key: (E,) PRNG keys; obs: (E, obs_dim); steps_left: (E,) int; actions: (A,
    action_dim). candidates: (E, C, horizon) int indices to use instead of
    drawing ``config.candidates`` sequences uniformly from the action set.
    record, share_prefixes: see :func:`rollout_scores` (with record the plan carries the chosen
    candidate's predictions).
    """
    e = obs.shape[0]
    if candidates is None:
        candidates = jax.vmap(
            lambda k: jax.random.randint(k, (config.candidates, config.horizon), 0, actions.shape[0], jnp.int32)
        )(key)
    candidates = jnp.asarray(candidates, jnp.int32)
    length = _plan_length(config, steps_left)
    rolled = rollout_scores(step, score, obs, candidates, actions, record, share_prefixes)
    scores, recorded = rolled if record else (rolled, None)
    values, cuts = value_and_cut(scores, length[:, None])
    chosen, ok = choose(values)
    kept = None if recorded is None else Recorded(_take(recorded.obs, chosen), _take(recorded.reward, chosen))
    plan = Plan(_take(candidates, chosen), jnp.where(ok, _take(cuts, chosen), 0).astype(jnp.int32), kept)
    assert plan.actions.shape == (e, candidates.shape[2])
    return plan, RandomShootingTrace(candidates, values, cuts, chosen)


def cem_refit(elites: jax.Array, n_actions: int, smoothing: float, dtype: Any) -> jax.Array:
    """Each plan step's refitted distribution from the elites.

    elites: (E, K, T) action indices -> (E, T, A): ``(1 - smoothing) * (count
    / K) + smoothing * (1 / A)``, the reference's expression (XLA may fuse the
    multiply-add, which rounds once: the last bit may differ).
    """
    counts = jnp.sum(jax.nn.one_hot(elites, n_actions, dtype=dtype), axis=1)  # (E, T, A)
    empirical = counts / elites.shape[1]
    return (1.0 - smoothing) * empirical + smoothing * (1.0 / n_actions)


def cem(
    key: jax.Array,
    step: Step,
    score: Score,
    obs: jax.Array,
    steps_left: jax.Array,
    actions: jax.Array,
    config: PlannerConfig,
    candidates: jax.Array | None = None,
    record: bool = False,
    share_prefixes: bool = False,
) -> tuple[Plan, CEMTrace]:
    """Cross-entropy-method MPC for a batch of episodes.

    key: (E,) PRNG keys; obs: (E, obs_dim); steps_left: (E,) int; actions: (A,
    action_dim). candidates: (E, iterations, samples, horizon) int indices to
    use instead of drawing each iteration's from its distribution.
    record, share_prefixes: see :func:`rollout_scores` (with record the plan carries the best
    candidate's predictions).
    """
    e = obs.shape[0]
    n_actions = actions.shape[0]
    length = _plan_length(config, steps_left)
    dtype = jnp.result_type(float)  # float64 under jax_enable_x64, as the reference's Python floats
    probs0 = jnp.full((e, config.horizon, n_actions), 1.0 / n_actions, dtype)
    if candidates is None:
        keys = jnp.swapaxes(jax.vmap(lambda k: jax.random.split(k, config.iterations))(key), 0, 1)  # (I, E)
        given = None
    else:
        keys, given = None, jnp.swapaxes(jnp.asarray(candidates, jnp.int32), 0, 1)  # (I, E, S, T)

    def draw(k: jax.Array, probs: jax.Array) -> jax.Array:
        # (horizon, A) -> (samples, horizon): each step from its own categorical.
        return jax.random.categorical(k, jnp.log(probs), axis=-1, shape=(config.samples, config.horizon)).astype(jnp.int32)

    def iteration(carry, xs):
        probs, best_value, best_plan, best_length, best_recorded = carry
        k, cand = xs
        if cand is None:
            cand = jax.vmap(draw)(k, probs)  # (E, S, T)
        rolled = rollout_scores(step, score, obs, cand, actions, record, share_prefixes)
        scores, recorded = rolled if record else (rolled, None)
        values, cuts = value_and_cut(scores, length[:, None])
        order = jnp.argsort(jnp.where(jnp.isnan(values), jnp.inf, values), axis=-1, stable=True).astype(jnp.int32)
        top = order[:, 0]
        top_value = _take(values, top)
        improved = top_value < best_value
        best_value = jnp.where(improved, top_value, best_value)
        best_plan = jnp.where(improved[:, None], _take(cand, top), best_plan)
        best_length = jnp.where(improved, _take(cuts, top), best_length)
        if record:
            best_recorded = Recorded(
                jnp.where(improved[:, None, None], _take(recorded.obs, top), best_recorded.obs),
                jnp.where(improved[:, None], _take(recorded.reward, top), best_recorded.reward),
            )
        elites = jnp.take_along_axis(cand, order[:, : config.elites, None], axis=1)  # (E, K, T)
        probs = cem_refit(elites, n_actions, config.smoothing, dtype)
        out = (cand, values, cuts, order, probs, best_value, best_length)
        return (probs, best_value, best_plan, best_length, best_recorded), out

    no_record = None
    if record:
        # The best candidate's predictions start as zeros (never read: length 0 executes nothing).
        shapes = jax.eval_shape(step, obs, actions[jnp.zeros((e,), jnp.int32)])
        no_record = Recorded(jnp.zeros((e, config.horizon) + shapes[0].shape[1:], shapes[0].dtype),
                             jnp.zeros((e, config.horizon), shapes[1].dtype))
    init = (
        probs0,
        jnp.full((e,), jnp.inf, dtype),
        jnp.zeros((e, config.horizon), jnp.int32),
        jnp.zeros((e,), jnp.int32),
        no_record,
    )
    (_, _, best_plan, best_length, best_recorded), per_iter = jax.lax.scan(
        iteration, init, (keys, given), length=config.iterations)
    trace = CEMTrace(*(jnp.swapaxes(x, 0, 1) for x in per_iter))
    return Plan(best_plan, best_length.astype(jnp.int32), best_recorded), trace


def plan(
    key: jax.Array,
    step: Step,
    score: Score,
    obs: jax.Array,
    steps_left: jax.Array,
    actions: jax.Array,
    config: PlannerConfig,
    candidates: jax.Array | None = None,
    record: bool = False,
    share_prefixes: bool = False,
) -> Plan:
    """The configured planner's plan (see :func:`random_shooting`, :func:`cem`)."""
    fn = random_shooting if config.kind == "random-shooting" else cem
    return fn(key, step, score, obs, steps_left, actions, config, candidates, record, share_prefixes)[0]

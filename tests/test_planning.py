"""The planners' semantics (SPEC section 9) on a toy dynamics where every number is exact.

The toy world moves a point on a grid: ``x' = (x0 + a, x1 - 0.5 a)`` with
integer actions, scored ``|x0 - 3| + 0.25 |x1|``: every value is a small
dyadic number, so both the JAX planners and the per-call reference planner
compute them exactly, ties are frequent and exact, and every decision (cut,
choice, sort order, refit) must be identical. The MJX and torch dynamics are
compared in tests/test_planning_parity.py.

Each distinct planner configuration and shape is one compile: the suite's
time budget keeps the exact-equality tests by default; the shared-prefix,
empty-plan, per-row-key and distribution tests compile shapes of their own
and are marked slow (run them with -m slow).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wmel_jax.benchmarks import reference_planner as RP
from wmel_jax.errors import WmelError
from wmel_jax.planning import planners as P

ACTIONS = np.array([[-1.0], [0.0], [1.0], [2.0]])
#: XLA's quickest codegen for these small programs (the same operations; compile time is all their cost).
FAST = {"xla_cpu_use_fusion_emitters": False, "xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else {}
#: A refitted probability, (1 - s) * count / K + s / A: XLA may fuse the multiply-add (one rounding
#: instead of two), so the two sides can differ in the last bit.
PROBS_ATOL = 1e-15


def toy_step(obs, action):
    return jnp.stack([obs[:, 0] + action[:, 0], obs[:, 1] - 0.5 * action[:, 0]], axis=1)


def toy_score(obs):
    return jnp.abs(obs[:, 0] - 3.0) + 0.25 * jnp.abs(obs[:, 1])


def ref_step(obs, action):
    return (obs[0] + action[0], obs[1] - 0.5 * action[0])


def ref_score(obs):
    return abs(obs[0] - 3.0) + 0.25 * abs(obs[1])


@functools.lru_cache(maxsize=None)
def _jitted(kind: str, step=None, share=False, record=False, **sizes):
    """A jitted planner on the toy world (compiled once per configuration and shape; eager lax.scan retraces)."""
    cfg = P.PlannerConfig(kind, **sizes)
    fn = P.random_shooting if kind == "random-shooting" else P.cem
    return jax.jit(lambda keys, obs, left, cands=None: fn(keys, step or toy_step, toy_score, obs, left,
                                                          jnp.asarray(ACTIONS), cfg, cands, record, share),
                   compiler_options=FAST)


def _rs(obs, steps_left, candidates):
    return _jitted("random-shooting")(None, obs, steps_left, candidates)


def _cem(obs, steps_left, candidates):
    return _jitted("cem")(None, obs, steps_left, candidates)


# --------------------------------------------------------------------------- #
# value, cut, choice: the rules worked out by hand
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    "scores, length, value, cut",
    [
        ([3, 1, 1, 2], 4, 1, 2),  # strictly below the final score: the first step reaching the lowest
        ([2, 1, 3, 1], 4, 1, 4),  # a tie with the final step keeps the final step
        ([4, 4, 4, 4], 4, 4, 4),  # all equal: the final step
        ([5, 0, 9, 9, 0], 3, 0, 2),  # steps beyond H = 3 are ignored
        ([5, 4, 3, 0, 0], 3, 3, 3),
        ([7, 8, 9], 1, 7, 1),  # H = 1
        ([np.nan, 1, 2], 3, 1, 2),  # a NaN before H is never lower
        ([1, 0, np.nan], 3, np.nan, 3),  # a NaN final score: the reference's best stays NaN, cut H
        ([np.inf, 2, np.inf], 3, 2, 2),
        ([-np.inf, 2, 3], 3, -np.inf, 1),
    ],
)
def test_value_and_cut_follow_the_reference_scan(scores, length, value, cut):
    got_value, got_cut = jax.jit(P.value_and_cut, compiler_options=FAST)(jnp.asarray([scores], jnp.float64),
                                                                         jnp.asarray([length]))
    np.testing.assert_equal(float(got_value[0]), value)
    assert int(got_cut[0]) == cut
    # The reference's own scan on the first H scores gives the same.
    step = lambda s, a: a  # noqa: E731 - states are the scores themselves
    ref_value, ref_cut = RP.value_and_cut(step, float, None, [float(x) for x in scores[:length]])
    np.testing.assert_equal(ref_value, value)
    assert ref_cut == cut


@pytest.mark.parametrize(
    "values, index, ok",
    [
        ([3.0, 1.0, 1.0, 2.0], 1, True),  # the first drawn of the lowest
        ([np.nan, 5.0, np.inf], 1, True),  # NaN and +inf never win
        ([np.nan, np.inf], None, False),  # nothing below +inf: an empty plan
        ([-np.inf, -np.inf], 0, True),
    ],
)
def test_choose_first_strictly_lowest(values, index, ok):
    got, got_ok = jax.jit(P.choose, compiler_options=FAST)(jnp.asarray(values))
    assert bool(got_ok) == ok
    if ok:
        assert int(got) == index


# --------------------------------------------------------------------------- #
# both planners against the per-call reference, exactly
# --------------------------------------------------------------------------- #

STEPS_LEFT = np.array([500, 15, 7, 3, 1])


def _start():
    rng = np.random.default_rng(0)
    return rng.integers(-4, 5, (STEPS_LEFT.size, 2)).astype(np.float64)


def test_random_shooting_equals_the_reference_exactly():
    rng = np.random.default_rng(1)
    obs = _start()
    cands = rng.integers(0, len(ACTIONS), (STEPS_LEFT.size, 50, 15))
    plan, trace = jax.device_get(_rs(jnp.asarray(obs), jnp.asarray(STEPS_LEFT), jnp.asarray(cands)))
    rows = [tuple(a) for a in ACTIONS.tolist()]
    ties_seen = 0
    for e, left in enumerate(STEPS_LEFT):
        prefix, ref = RP.RandomShooting(ref_step, ref_score, rows).plan(tuple(obs[e]), int(left), candidates=cands[e])
        assert trace.values[e].tolist() == ref["values"], e
        assert trace.cuts[e].tolist() == ref["cuts"], e
        assert int(trace.chosen[e]) == ref["chosen"], e
        assert int(plan.length[e]) == len(prefix)
        assert [rows[i] for i in plan.actions[e][: len(prefix)]] == prefix
        ties_seen += ref["values"].count(min(ref["values"])) > 1
    assert ties_seen >= 2  # the toy world makes exact ties: the first-drawn rule is exercised


def test_cem_equals_the_reference_exactly_iteration_by_iteration():
    rng = np.random.default_rng(2)
    obs = _start()
    cands = rng.integers(0, len(ACTIONS), (STEPS_LEFT.size, 3, 24, 15))
    plan, trace = jax.device_get(_cem(jnp.asarray(obs), jnp.asarray(STEPS_LEFT), jnp.asarray(cands)))
    rows = [tuple(a) for a in ACTIONS.tolist()]
    for e, left in enumerate(STEPS_LEFT):
        h = min(15, int(left))
        prefix, ref = RP.CEM(ref_step, ref_score, rows).plan(tuple(obs[e]), int(left), candidates=cands[e])
        for i, it in enumerate(ref["iterations"]):
            assert trace.values[e, i].tolist() == it["values"], (e, i)
            assert trace.cuts[e, i].tolist() == it["cuts"], (e, i)
            assert trace.order[e, i].tolist() == it["order"], (e, i)  # stable: exact ties keep draw order
            np.testing.assert_allclose(trace.probs[e, i, :h], it["probs"], rtol=0, atol=PROBS_ATOL, err_msg=f"{e} {i}")
            assert float(trace.best_value[e, i]) == it["best_value"]
            assert int(trace.best_length[e, i]) == it["best_length"]
        assert int(plan.length[e]) == len(prefix)
        assert [rows[i] for i in plan.actions[e][: len(prefix)]] == prefix


@pytest.mark.slow  # the suite's budget: see the module docstring
@pytest.mark.parametrize("kind", P.PLANNERS)
def test_shared_prefixes_give_the_same_numbers(kind):
    """Rolling each distinct prefix once (the learned arm) changes no value, cut, choice or prediction."""
    assert P.shared_levels(4, 50, 15) == 2 and P.shared_levels(4, 24, 15) == 2 and P.shared_levels(9, 50, 15) == 1
    assert P.shared_levels(5, 5, 15) == 0 and P.shared_levels(2, 50, 3) == 3

    def step_reward(obs, action):
        return toy_step(obs, action), obs[:, 0] * action[:, 0]

    keys = jax.random.split(jax.random.key(7), STEPS_LEFT.size)
    obs, left = jnp.asarray(_start()), jnp.asarray(STEPS_LEFT)
    plain = _jitted(kind, step_reward, record=True)(keys, obs, left)
    shared = _jitted(kind, step_reward, share=True, record=True)(keys, obs, left)
    for a, b in zip(jax.tree_util.tree_leaves(plain), jax.tree_util.tree_leaves(shared)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow  # the suite's budget: see the module docstring
def test_empty_plan_when_no_candidate_has_a_finite_value():
    def nan_step(obs, action):
        return obs + jnp.nan

    keys, obs, left = jax.random.split(jax.random.key(0), 2), jnp.zeros((2, 2)), jnp.array([9, 9])
    plan, _ = _jitted("random-shooting", nan_step, candidates=4, horizon=3)(keys, obs, left)
    assert plan.length.tolist() == [0, 0]
    plan, trace = _jitted("cem", nan_step, horizon=3, samples=4, elites=2)(keys, obs, left)
    assert plan.length.tolist() == [0, 0]
    assert np.isnan(np.asarray(trace.values)).all()


def test_cem_sorts_nan_values_last():
    def half_nan(obs, action):  # action index 0 (-1.0) poisons the state
        nxt = toy_step(obs, action)
        return jnp.where(action[:, :1] < 0, jnp.nan, nxt)

    cands = np.array([[[[0, 1, 1], [1, 1, 1], [2, 2, 2], [0, 0, 0]]]])  # (E=1, I=1, S=4, T=3)
    plan, trace = _jitted("cem", half_nan, horizon=3, iterations=1, samples=4, elites=2)(
        None, jnp.zeros((1, 2)), jnp.array([9]), jnp.asarray(cands))
    order = np.asarray(trace.order)[0, 0].tolist()
    assert set(order[-2:]) == {0, 3} and order[:2] == [2, 1]  # finite values first, NaNs after
    assert int(plan.length[0]) > 0


# --------------------------------------------------------------------------- #
# randomness: per-row keys, distributions
# --------------------------------------------------------------------------- #


@pytest.mark.slow  # the suite's budget: see the module docstring
def test_rows_are_independent_and_keys_determine_the_plan():
    keys = jax.random.split(jax.random.key(3), 6)
    obs = jnp.asarray(np.random.default_rng(4).integers(-4, 5, (6, 2)).astype(np.float64))
    left = jnp.array([500, 9, 4, 500, 2, 15])
    for kind in P.PLANNERS:
        planner = _jitted(kind)
        together = planner(keys, obs, left)[0]
        for e in range(6):
            alone = planner(keys[e:e + 1], obs[e:e + 1], left[e:e + 1])[0]
            assert alone.actions.tolist()[0] == together.actions.tolist()[e]
            assert int(alone.length[0]) == int(together.length[e])
        again = planner(keys, obs, left)[0]
        assert again.actions.tolist() == together.actions.tolist()


@pytest.mark.slow  # the suite's budget: see the module docstring
def test_random_shooting_draws_uniformly():
    e = 200
    _, trace = _jitted("random-shooting")(jax.random.split(jax.random.key(5), e), jnp.zeros((e, 2)), jnp.full((e,), 500))
    counts = np.bincount(np.asarray(trace.candidates).ravel(), minlength=len(ACTIONS))
    n = counts.sum()
    chi2 = float(np.sum((counts - n / len(ACTIONS)) ** 2 / (n / len(ACTIONS))))
    assert chi2 < 16.27  # chi-square, 3 degrees of freedom, p = 0.001


@pytest.mark.slow  # the suite's budget: see the module docstring
def test_cem_draws_each_step_from_its_refitted_distribution():
    # With one step left, +2 (action 3) is the best move from the origin toward x0 = 3: the elites
    # favour it, and iteration 2 draws step 0 from the skewed refit.
    e = 400
    _, trace = _jitted("cem", iterations=2)(jax.random.split(jax.random.key(6), e), jnp.zeros((e, 2)), jnp.full((e,), 1))
    probs = np.asarray(trace.probs)[:, 0, 0]  # (E, A) refitted after iteration 1, step 0
    first = np.asarray(trace.candidates)[:, 1, :, 0]  # iteration 2's draws at step 0
    # Each episode's draws follow its own refit: pooled, the frequency of each action matches the mean probability.
    for a in range(len(ACTIONS)):
        p = probs[:, a].mean()
        freq = (first == a).mean()
        sd = math.sqrt(p * (1 - p) / first.size)
        assert abs(freq - p) < 4 * sd + 1e-9, (a, freq, p)
    assert probs[:, 3].mean() > 0.6  # the refit is skewed: the check above is not of a uniform draw
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=0, atol=1e-12)


def test_planner_config_rejects_bad_sizes():
    with pytest.raises(WmelError, match="unknown planner"):
        P.PlannerConfig("mppi")
    for field in ("horizon", "candidates", "iterations", "samples", "elites"):
        with pytest.raises(WmelError, match="positive int"):
            P.PlannerConfig(**{field: 0})
    with pytest.raises(WmelError, match="at most its samples"):
        P.PlannerConfig("cem", samples=4, elites=5)
    with pytest.raises(WmelError, match=r"\[0, 1\]"):
        P.PlannerConfig("cem", smoothing=1.5)
    assert P.PlannerConfig().dynamics_calls_per_plan == 750
    assert P.PlannerConfig("cem").dynamics_calls_per_plan == 1080

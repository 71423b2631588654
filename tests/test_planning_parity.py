"""The JAX planners against the per-call reference planner, given the same candidate sequences.

For every task, from the same observations and with the same candidates
(indices into the action set), ``wmel_jax.planning.planners`` (batched over
episodes, the MJX oracle or the flax model as dynamics, jitted) and
``wmel_jax.benchmarks.reference_planner`` (one candidate and one step at a
time: dm_control rebuilt from the observation per call, or the torch
checkpoint batch-of-1) must agree on every candidate's value and cut, the
chosen candidate and prefix (random shooting), and per CEM iteration on the
values, cuts, the sort order, the best candidate so far and the refitted
distribution. One episode plans with 500 steps left (H = 15), one with 7
(H = 7: the steps beyond are masked).

Decisions are compared exactly where the reference's margin is above twice
the largest disagreement between the two sides' values in that case (a
choice between two candidates closer than the implementations' rounding is a
tie either side may break); such near-ties must stay rare.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import wmel_jax
from wmel_jax.benchmarks import reference as R
from wmel_jax.benchmarks import reference_planner as RP
from wmel_jax.demo import EXAMPLES_DIR
from wmel_jax.oracle.base import compiler_options
from wmel_jax.planning import planners as P
from wmel_jax.planning.cpg import _task_score, observation_map

TASKS = ("cartpole-swingup", "reacher-easy", "acrobot-swingup")
#: Candidate values: the MJX and dm_control oracles agree to ~1e-12 over 15
#: float64 steps (the oracle's own parity is 1e-9 per step, tests/test_oracle.py).
ORACLE_VALUE_ATOL = 1e-8
#: Candidate values through the learned model: torch and XLA float32 forward
#: passes round differently; over 15 re-encoded steps the scores still agree
#: to float32 resolution (1.2e-7 measured on cartpole's good example).
MODEL_VALUE_ATOL = 1e-6
#: A refitted probability is (1 - s) * count / K + s / A on both sides: equal up to float64 rounding.
PROBS_ATOL = 1e-12
#: Near-ties (margins below the value tolerance) allowed per task and arm, out of every decision compared.
MAX_NEAR_TIES = 2
STEPS_LEFT = (500, 7)


def _near(values: list[float], i: int, j: int, margin: float) -> bool:
    """Two values closer than the implementations agree, but not equal (exact ties, from candidates that
    share their first H actions, are equal on both sides and broken alike: the first drawn wins)."""
    return 0 < abs(values[i] - values[j]) <= margin


@functools.lru_cache(maxsize=None)
def _jax_planners(task: str, arm: str):
    """One jitted function per (task, arm): RS and CEM with injected candidates."""
    oracle = wmel_jax.make_oracle(task)
    score = _task_score(oracle)
    if arm == "oracle":
        def step_for(params):
            return oracle.step
    else:
        model = wmel_jax.load(EXAMPLES_DIR / f"{task}-good.safetensors")
        omap = observation_map(model.arch, oracle.obs_dim)

        def step_for(params):
            return lambda o, a: omap(params, None, o, a)

    share = arm == "learned"  # as the learned arm plans (wmel_jax.planning.cpg)

    def planners(params, obs, steps_left, actions, rs_candidates, cem_candidates):
        step = step_for(params)
        rs = P.random_shooting(None, step, score, obs, steps_left, actions, P.PlannerConfig(), rs_candidates,
                               share_prefixes=share)
        ce = P.cem(None, step, score, obs, steps_left, actions, P.PlannerConfig("cem"), cem_candidates,
                   share_prefixes=share)
        return rs, ce

    return jax.jit(planners, compiler_options=compiler_options(64))


@functools.lru_cache(maxsize=None)
def _case(task: str):
    """Start observations, the action set and the candidate sequences of a task (seeded)."""
    oracle = wmel_jax.make_oracle(task)
    obs = np.asarray(oracle.reset(jax.random.key(11), len(STEPS_LEFT)))
    actions = np.asarray(oracle.actions)
    rng = np.random.default_rng(5)
    e = len(STEPS_LEFT)
    rs = rng.integers(0, actions.shape[0], (e, 50, 15))
    cem = rng.integers(0, actions.shape[0], (e, 3, 24, 15))
    # Skew CEM's later iterations toward one action, as a refitted distribution draws them.
    cem[:, 1:, :12] = np.where(rng.random((e, 2, 12, 15)) < 0.5, 0, cem[:, 1:, :12])
    return obs, actions, rs, cem


def _reference_step(task: str, arm: str):
    if arm == "oracle":
        return RP.oracle_dynamics(task)
    return RP.model_dynamics(str(EXAMPLES_DIR / f"{task}-good.pt"))[0]


@pytest.fixture
def one_torch_thread():
    """torch batch-of-1 calls on one thread (more only wait for each other on a shared machine), restored after."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _margin(got, want) -> float:
    """Twice the largest disagreement between the two sides' values: closer values are a tie either may break."""
    return 2.0 * float(np.max(np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64))))


#: (task, arm) cases. Each oracle case compiles the MJX step into both planners, each learned one
#: runs torch batch-of-1 against it: all run with -m slow (the suite's time budget; the planners'
#: semantics are checked exactly by default on a toy world, tests/test_planning.py, and the oracle
#: arm's choices end to end against the reference's loop, tests/test_cpg.py's replay).
CASES = [
    pytest.param("cartpole-swingup", "oracle", marks=pytest.mark.slow),
    pytest.param("reacher-easy", "oracle", marks=pytest.mark.slow),
    pytest.param("acrobot-swingup", "oracle", marks=pytest.mark.slow),
    pytest.param("cartpole-swingup", "learned", marks=pytest.mark.slow),
    pytest.param("reacher-easy", "learned", marks=pytest.mark.slow),
    pytest.param("acrobot-swingup", "learned", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("task, arm", CASES)
def test_planners_match_the_per_call_reference(task, arm, one_torch_thread):
    obs, actions, rs_cands, cem_cands = _case(task)
    params = None if arm == "oracle" else wmel_jax.load(EXAMPLES_DIR / f"{task}-good.safetensors").params
    rs, ce = jax.device_get(_jax_planners(task, arm)(
        params, jnp.asarray(obs), jnp.asarray(STEPS_LEFT), jnp.asarray(actions), jnp.asarray(rs_cands),
        jnp.asarray(cem_cands)))
    (rs_plan, rs_trace), (cem_plan, cem_trace) = rs, ce
    atol = ORACLE_VALUE_ATOL if arm == "oracle" else MODEL_VALUE_ATOL
    step, score = _reference_step(task, arm), R.task_score(task)
    action_rows = [tuple(a) for a in actions.tolist()]
    near_ties = 0
    for e, steps_left in enumerate(STEPS_LEFT):
        h = min(15, steps_left)
        where = f"{task} {arm} episode {e} (H={h})"
        # Random shooting.
        prefix, trace = RP.RandomShooting(step, score, action_rows).plan(tuple(obs[e]), steps_left,
                                                                         candidates=rs_cands[e])
        values = trace["values"]
        np.testing.assert_allclose(rs_trace.values[e], values, rtol=0, atol=atol,
                                   err_msg=f"{where}: random-shooting values")
        margin = _margin(rs_trace.values[e], values)
        if arm == "oracle":
            assert rs_trace.cuts[e].tolist() == trace["cuts"], f"{where}: random-shooting cuts"
        else:  # a cut can move only between steps whose scores are within the margin
            near_ties += int(np.sum(rs_trace.cuts[e] != np.asarray(trace["cuts"])))
        order = sorted(range(len(values)), key=lambda j: values[j])
        if _near(values, order[0], order[1], margin):
            near_ties += 1
            assert rs_trace.chosen[e] in (order[0], order[1]), where
        else:
            assert rs_trace.chosen[e] == trace["chosen"], f"{where}: chosen candidate"
            assert int(rs_plan.length[e]) == len(prefix), f"{where}: prefix length"
            assert [action_rows[i] for i in rs_plan.actions[e][: len(prefix)]] == prefix, f"{where}: prefix"
        # CEM, iteration by iteration.
        prefix, trace = RP.CEM(step, score, action_rows).plan(tuple(obs[e]), steps_left, candidates=cem_cands[e])
        decided = True
        for i, it in enumerate(trace["iterations"]):
            at = f"{where}: CEM iteration {i}"
            np.testing.assert_allclose(cem_trace.values[e, i], it["values"], rtol=0, atol=atol,
                                       err_msg=f"{at}: values")
            margin = _margin(cem_trace.values[e, i], it["values"])
            ranked = it["order"]
            if any(_near(it["values"], ranked[k], ranked[k + 1], margin) for k in range(len(ranked) - 1)):
                near_ties += 1
                decided = False
                continue
            assert cem_trace.order[e, i].tolist() == ranked, f"{at}: sort order"
            assert cem_trace.cuts[e, i].tolist() == it["cuts"], f"{at}: cuts"
            np.testing.assert_allclose(cem_trace.probs[e, i, :h], it["probs"], rtol=0, atol=PROBS_ATOL,
                                       err_msg=f"{at}: refitted probabilities")
            assert int(cem_trace.best_length[e, i]) == it["best_length"], f"{at}: best length"
        if decided:
            assert int(cem_plan.length[e]) == len(prefix), f"{where}: CEM prefix length"
            assert [action_rows[i] for i in cem_plan.actions[e][: len(prefix)]] == prefix, f"{where}: CEM prefix"
    assert near_ties <= (0 if arm == "oracle" else MAX_NEAR_TIES), f"{task} {arm}: {near_ties} near-ties"

"""M1, M2, M3 kernels: hand-worked values, scipy, chunking, and parity with the per-sample reference."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import kendalltau

from wmel_jax.benchmarks import reference
from wmel_jax import metrics

# Kernel vs plain-Python reference, float64 throughout (the kernels and the
# reference sum in different orders, nothing else differs).
M1_M2_RTOL = 1e-9
M3_ATOL = 1e-12
# Kendall tau-b vs scipy on the same vectors.
SCIPY_TAU_ATOL = 1e-12
# Chunked sums vs one shot: only the summation order differs.
CHUNK_RTOL = 1e-12


@pytest.fixture(scope="module")
def jitted():
    """The kernels compiled once for the module."""
    return {
        "kendall_tau_b": jax.jit(metrics.kendall_tau_b),
        "one_step_l2_sum": jax.jit(metrics.one_step_l2_sum),
        "kstep_l2_curve_sum": jax.jit(metrics.kstep_l2_curve_sum),
        "action_ranking_agreement": jax.jit(metrics.action_ranking_agreement),
    }


# ----------------------------------------------------------- Kendall tau-b

# (x, y, expected tau-b or None when undefined), worked by hand.
HAND_TAU_CASES = [
    # Pairs (i<j) of [1,2,3,4] vs [1,3,2,4]: only (2nd, 3rd) is discordant.
    # C = 5, D = 1, no ties: (5 - 1) / sqrt(6 * 6) = 4/6.
    pytest.param([1, 2, 3, 4], [1, 3, 2, 4], 4 / 6, id="one-swap"),
    # Identical orders: C = 6, D = 0 -> +1.
    pytest.param([0.1, 0.5, 0.2, 0.9], [0.1, 0.5, 0.2, 0.9], 1.0, id="identical"),
    # Reversed orders: every one of the 10 pairs discordant -> -1.
    pytest.param([1, 2, 3, 4, 5], [5, 4, 3, 2, 1], -1.0, id="reversed"),
    # x = [1,1,2,3], y = [1,2,2,3]: pair (0,1) tied in x only, (1,2) tied in y
    # only, the other 4 concordant. n0 = 6, n1 = n2 = 1: 4 / sqrt(5 * 5) = 0.8.
    pytest.param([1, 1, 2, 3], [1, 2, 2, 3], 0.8, id="ties-each-side"),
    # x = [1,1,2], y = [5,5,0]: pair (0,1) tied in both (n1 = n2 = 1), pairs
    # (0,2), (1,2) discordant. n0 = 3: (0 - 2) / sqrt(2 * 2) = -1.
    pytest.param([1, 1, 2], [5, 5, 0], -1.0, id="tie-in-both"),
    # x = [1,2,3], y = [2,2,1]: (0,1) tied in y, (0,2) and (1,2) discordant.
    # n0 = 3, n1 = 0, n2 = 1: -2 / sqrt(3 * 2) = -0.8164965809...
    pytest.param([1, 2, 3], [2, 2, 1], -2 / math.sqrt(6), id="tie-in-y"),
    # Two actions, opposite order: -1 / sqrt(1 * 1).
    pytest.param([0.0, 1.0], [3.0, -3.0], -1.0, id="two-actions"),
    # Tiny but distinct values are not ties (a product of differences would underflow).
    pytest.param([0.0, 1e-200], [0.0, 1e-200], 1.0, id="tiny-differences"),
    # Constant vector on either side, or both: undefined.
    pytest.param([3, 3, 3], [1, 2, 3], None, id="constant-x"),
    pytest.param([1, 2, 3], [7, 7, 7], None, id="constant-y"),
    pytest.param([2, 2], [2, 2], None, id="both-constant"),
    # A single action: no pairs, undefined.
    pytest.param([1.5], [0.5], None, id="single-action"),
]


@pytest.mark.parametrize("x, y, expected", HAND_TAU_CASES)
def test_kendall_tau_b_hand_values(x, y, expected, jitted):
    for fn in (metrics.kendall_tau_b, jitted["kendall_tau_b"]):
        tau, defined = fn(jnp.asarray(x, jnp.float64), jnp.asarray(y, jnp.float64))
        if expected is None:
            assert not bool(defined)
            assert math.isnan(float(tau))
        else:
            assert bool(defined)
            assert float(tau) == pytest.approx(expected, abs=1e-15)


@pytest.mark.parametrize("x, y, expected", HAND_TAU_CASES)
def test_reference_kendall_tau_b_hand_values(x, y, expected):
    got = reference.kendall_tau_b(x, y)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected, abs=1e-15)


def test_kendall_tau_b_matches_scipy_with_ties(jitted):
    # Integer-valued scores in 0..3 over 9 actions: many ties, some constant rows.
    rng = np.random.default_rng(1)
    x = rng.integers(0, 4, size=(300, 9)).astype(np.float64)
    y = rng.integers(0, 4, size=(300, 9)).astype(np.float64)
    x[:5] = 2.0  # constant rows: undefined
    y[5:8] = -1.0
    tau, defined = jitted["kendall_tau_b"](x, y)
    tau, defined = np.asarray(tau), np.asarray(defined)
    expected = np.array([kendalltau(a, b, variant="b").statistic for a, b in zip(x, y)])
    np.testing.assert_array_equal(defined, np.isfinite(expected))
    np.testing.assert_allclose(tau[defined], expected[defined], rtol=0, atol=SCIPY_TAU_ATOL)
    assert np.isnan(tau[~defined]).all()
    assert (~defined).sum() >= 8


def test_kendall_tau_b_vmaps_over_batches(jitted):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 7, 5))
    y = np.round(x + rng.normal(scale=0.5, size=x.shape), 1)  # rounding makes ties
    direct_tau, direct_def = jitted["kendall_tau_b"](x, y)
    vmapped_tau, vmapped_def = jax.jit(jax.vmap(jax.vmap(metrics.kendall_tau_b)))(x, y)
    np.testing.assert_array_equal(np.asarray(vmapped_def), np.asarray(direct_def))
    np.testing.assert_array_equal(np.asarray(vmapped_tau), np.asarray(direct_tau))
    assert direct_tau.shape == (3, 7)


def test_kendall_tau_b_dtype_is_the_wider_input():
    x32 = jnp.asarray([1.0, 2.0, 3.0], jnp.float32)
    x64 = jnp.asarray([1.0, 3.0, 2.0], jnp.float64)
    assert metrics.kendall_tau_b(x32, x32)[0].dtype == jnp.float32
    assert metrics.kendall_tau_b(x32, x64)[0].dtype == jnp.float64


# ------------------------------------------------------------------ M1, M2


def test_one_step_l2_hand_example(jitted):
    # N = 2 states, A = 2 actions, obs_dim = 2; the model predicts zeros.
    # Distances: ||(3,4)|| = 5, 0, ||(1,0)|| = 1, ||(0,2)|| = 2 -> mean 8/4 = 2.
    true = np.array([[[3.0, 4.0], [0.0, 0.0]], [[1.0, 0.0], [0.0, 2.0]]])
    pred = np.zeros_like(true)
    assert float(metrics.one_step_l2(pred, true)) == 2.0
    total, count = jitted["one_step_l2_sum"](pred, true)
    assert (float(total), int(count)) == (8.0, 4)
    # Masking out state 0 leaves 1 and 2: sum 3 over 2 pairs.
    total, count = jitted["one_step_l2_sum"](pred, true, np.array([False, True]))
    assert (float(total), int(count)) == (3.0, 2)


def test_one_step_l2_widens_float32_model_against_float64_oracle():
    rng = np.random.default_rng(3)
    true = rng.normal(size=(4, 3, 5))  # float64 oracle
    pred = (true + rng.normal(scale=1e-3, size=true.shape)).astype(np.float32)
    m1 = metrics.one_step_l2(jnp.asarray(pred), jnp.asarray(true))
    assert m1.dtype == jnp.float64
    expected = np.mean(np.linalg.norm(pred.astype(np.float64) - true, axis=-1))
    assert float(m1) == pytest.approx(expected, rel=1e-14)


def test_kstep_l2_curve_hand_example(jitted):
    # k = 2 steps, N = 2 states, obs_dim = 2; the oracle stays at zero.
    # Step 1: ||(3,4)|| = 5 and 0 -> 2.5.  Step 2: ||(6,8)|| = 10 and ||(1,0)|| = 1 -> 5.5.
    pred = np.array([[[3.0, 4.0], [0.0, 0.0]], [[6.0, 8.0], [1.0, 0.0]]])
    true = np.zeros_like(pred)
    np.testing.assert_array_equal(np.asarray(metrics.kstep_l2_curve(pred, true)), [2.5, 5.5])
    total, count = jitted["kstep_l2_curve_sum"](pred, true)
    np.testing.assert_array_equal(np.asarray(total), [5.0, 11.0])
    assert int(count) == 2


def test_action_ranking_agreement_hand_example(jitted):
    # Three states, three actions:
    # state 0: same order -> +1; state 1: reversed -> -1; state 2: model
    # constant -> undefined, skipped. M3 = (1 - 1) / 2 = 0 over 2 states.
    true = np.array([[0.1, 0.2, 0.3], [0.1, 0.2, 0.3], [0.1, 0.2, 0.3]])
    pred = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0], [5.0, 5.0, 5.0]])
    part = jitted["action_ranking_agreement"](true, pred)
    assert (float(part.total), int(part.count)) == (0.0, 2)
    assert metrics.mean_or_none(part) == (0.0, 2)
    # Only state 2 valid: nothing defined -> None, never NaN.
    part = jitted["action_ranking_agreement"](true, pred, np.array([False, False, True]))
    assert metrics.mean_or_none(part) == (None, 0)
    # A single action: every state undefined.
    part = metrics.action_ranking_agreement(true[:, :1], pred[:, :1])
    assert metrics.mean_or_none(part) == (None, 0)


def test_chunked_sums_equal_one_shot_with_one_compilation():
    # Fresh wrappers: jax.jit of the same function shares one cache, and the
    # module's jits have seen other shapes. These see only this test's chunks.
    def fresh_jit(fn):
        return jax.jit(lambda *args: fn(*args))

    jitted = {
        name: fresh_jit(getattr(metrics, name))
        for name in ("one_step_l2_sum", "kstep_l2_curve_sum", "action_ranking_agreement")
    }
    rng = np.random.default_rng(4)
    n, a, k, d, chunk = 37, 5, 6, 4, 16
    true_next = rng.normal(size=(n, a, d))
    pred_next = true_next + rng.normal(scale=0.1, size=true_next.shape)
    true_traj = rng.normal(size=(k, n, d))
    pred_traj = true_traj + rng.normal(scale=0.2, size=true_traj.shape)
    true_scores = np.round(rng.normal(size=(n, a)), 1)
    pred_scores = np.round(true_scores + rng.normal(scale=0.3, size=(n, a)), 1)
    pred_scores[::7] = 0.0  # some undefined states

    def pad(x, axis, start):
        piece = np.take(x, np.arange(start, min(start + chunk, n)), axis=axis)
        widths = [(0, 0)] * x.ndim
        widths[axis] = (0, chunk - piece.shape[axis])
        return np.pad(piece, widths)

    m1_parts, m2_parts, m3_parts = [], [], []
    for start in range(0, n, chunk):
        valid = np.arange(start, start + chunk) < n
        m1_parts.append(jitted["one_step_l2_sum"](pad(pred_next, 0, start), pad(true_next, 0, start), valid))
        m2_parts.append(jitted["kstep_l2_curve_sum"](pad(pred_traj, 1, start), pad(true_traj, 1, start), valid))
        m3_parts.append(
            jitted["action_ranking_agreement"](pad(true_scores, 0, start), pad(pred_scores, 0, start), valid)
        )
    m1, m1_count = metrics.mean_or_none(metrics.combine_sums(*m1_parts))
    curve, m2_count = metrics.mean_or_none(metrics.combine_sums(*m2_parts))
    m3, m3_count = metrics.mean_or_none(metrics.combine_sums(*m3_parts))

    assert (m1_count, m2_count) == (n * a, n)
    assert m1 == pytest.approx(float(metrics.one_step_l2(pred_next, true_next)), rel=CHUNK_RTOL)
    np.testing.assert_allclose(curve, np.asarray(metrics.kstep_l2_curve(pred_traj, true_traj)), rtol=CHUNK_RTOL)
    tau, defined = metrics.kendall_tau_b(true_scores, pred_scores)
    assert m3_count == int(np.sum(defined)) < n
    assert m3 == pytest.approx(float(np.mean(np.asarray(tau)[np.asarray(defined)])), rel=CHUNK_RTOL)
    # The padded last chunk reused the compiled kernels: one compilation each.
    for name in ("one_step_l2_sum", "kstep_l2_curve_sum", "action_ranking_agreement"):
        assert jitted[name]._cache_size() == 1, name


def test_kernels_work_with_x64_off():
    # Library code must not depend on jax_enable_x64: run in a fresh process with it off.
    code = textwrap.dedent(
        """
        import jax, jax.numpy as jnp, numpy as np
        assert not jax.config.jax_enable_x64
        from wmel_jax import metrics
        x = jnp.asarray(np.random.default_rng(0).normal(size=(6, 5, 3)), jnp.float32)
        m1 = jax.jit(metrics.one_step_l2)(x, x + 1.0)
        assert m1.dtype == jnp.float32 and abs(float(m1) - 3 ** 0.5) < 1e-5, m1
        tau, ok = jax.jit(metrics.kendall_tau_b)(x[..., 0], -x[..., 0])
        assert tau.dtype == jnp.float32 and bool(ok.all()) and np.allclose(tau, -1.0)
        part = jax.jit(metrics.action_ranking_agreement)(x[..., 0], x[..., 0])
        assert metrics.mean_or_none(part) == (1.0, 6)
        print("ok")
        """
    )
    env = {**os.environ, "JAX_ENABLE_X64": "0"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok")


# ------------------------------------ parity with the per-sample reference

OBS_DIM = 4
ACTIONS = np.array([[i, j] for i in (-1.0, 0.0, 1.0) for j in (-1.0, 0.0, 1.0)])  # 9 actions
_rng = np.random.default_rng(5)
W = _rng.normal(size=(OBS_DIM, OBS_DIM))
B = _rng.normal(size=(2, OBS_DIM))
V = _rng.normal(size=(OBS_DIM, OBS_DIM))
M = np.eye(OBS_DIM) + 0.05 * _rng.normal(size=(OBS_DIM, OBS_DIM))


# Dynamics over any leading batch shape: s (..., obs_dim), a (..., 2) -> (..., obs_dim).
def oracle_dyn(s, a):
    return s + 0.1 * np.tanh(s @ W + a @ B)


def good_model(s, a):  # close to the oracle, nonlinear error
    return oracle_dyn(s, a) + 0.01 * np.sin(s @ V)


def linear_model(s, a):
    return s @ M + 0.05 * (a @ B)


def float32_model(s, a):  # the learned model's dtype
    return good_model(s, a).astype(np.float32)


def action_blind_model(s, a):  # ignores the action: M3 undefined in every state
    return 0.9 * s + 0.0 * a[..., :1]


def half_blind_model(s, a):  # the action acts only where s[0] > 0: undefined elsewhere, exactly
    gate = (s[..., :1] > 0).astype(s.dtype)
    return s + gate * 0.1 * np.tanh(s @ W + a @ B)


def upright_score(obs):  # cartpole-like: -cos(theta) read as -obs[1]
    return -obs[..., 1]


def saturated_score(obs):  # ties wherever both successors saturate
    return np.clip(obs[..., 0] + obs[..., 2], -0.3, 0.3)


MODELS = {
    "good": good_model,
    "linear": linear_model,
    "float32": float32_model,
    "action_blind": action_blind_model,
    "half_blind": half_blind_model,
}
SCORES = {"upright": upright_score, "saturated": saturated_score}


def _kernel_metrics(states, action_sequence, model, score):
    """Batch the synthetic dynamics in numpy, then run the kernels (the eval's path)."""
    true_next = oracle_dyn(states[:, None, :], ACTIONS[None, :, :])  # (N, A, d)
    pred_next = model(states[:, None, :], ACTIONS[None, :, :])
    true_traj, pred_traj = [], []
    so = sl = states
    for a in action_sequence:
        so, sl = oracle_dyn(so, a), model(sl, a)
        true_traj.append(so)
        pred_traj.append(sl)
    m1 = metrics.mean_or_none(metrics.one_step_l2_sum(pred_next, true_next))[0]
    curve = metrics.mean_or_none(metrics.kstep_l2_curve_sum(np.stack(pred_traj), np.stack(true_traj)))[0]
    m3, used = metrics.mean_or_none(metrics.action_ranking_agreement(score(true_next), score(pred_next)))
    return {"m1_l2_onestep": m1, "m2_l2_kstep": curve[-1], "m2_curve": curve,
            "m3_action_agreement": m3, "m3_states_used": used}


@pytest.mark.parametrize("score_name", sorted(SCORES))
@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_kernels_match_per_sample_reference(model_name, score_name):
    rng = np.random.default_rng(6)
    states = rng.normal(scale=0.8, size=(24, OBS_DIM))
    action_sequence = ACTIONS[rng.integers(0, len(ACTIONS), size=5)]
    model, score = MODELS[model_name], SCORES[score_name]

    got = _kernel_metrics(states, action_sequence, model, score)
    want = reference.reference_metrics(
        list(states), list(ACTIONS), list(action_sequence),
        oracle_step=oracle_dyn, model_step=model, score=lambda o: float(score(np.asarray(o))),
    )

    assert got["m1_l2_onestep"] == pytest.approx(want["m1_l2_onestep"], rel=M1_M2_RTOL)
    assert got["m2_l2_kstep"] == pytest.approx(want["m2_l2_kstep"], rel=M1_M2_RTOL)
    np.testing.assert_allclose(got["m2_curve"], want["m2_curve"], rtol=M1_M2_RTOL)
    assert got["m3_states_used"] == want["m3_states_used"]
    if want["m3_action_agreement"] is None:
        assert got["m3_action_agreement"] is None
    else:
        assert got["m3_action_agreement"] == pytest.approx(want["m3_action_agreement"], abs=M3_ATOL)
    # The cases cover what they claim to.
    if model_name == "action_blind":
        assert want["m3_action_agreement"] is None
    if model_name == "half_blind":
        assert 0 < want["m3_states_used"] < len(states)


def test_reference_oracle_rollout_is_used_for_m2():
    # An oracle rollout that carries hidden state: the oracle "sees" a constant
    # offset the observation does not. With oracle_rollout the M2 curve uses it.
    states = [np.zeros(2)]
    seq = [np.zeros(1)] * 3
    step = lambda s, a: np.asarray(s) + 1.0  # noqa: E731
    rollout = lambda s, seq: [np.asarray(s) + t + 1.0 + np.array([3.0, 4.0]) for t in range(len(seq))]  # noqa: E731
    plain = reference.reference_m2_curve(states, seq, step, step)
    carried = reference.reference_m2_curve(states, seq, step, step, oracle_rollout=rollout)
    assert plain == [0.0, 0.0, 0.0]
    assert carried == [5.0, 5.0, 5.0]  # ||(3, 4)|| at every step

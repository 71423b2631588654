"""Spearman with a bootstrap interval, and the per-task / pooled correlations of cells with the gap."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from wmel_jax import stats

# rho from scipy vs ours: the same scipy call, compared exactly up to rounding.
RHO_ATOL = 1e-12


def _reference_bootstrap(x, y, n_resamples, seed, confidence):
    """The reference evaluator's procedure, written out plainly: one Python
    ``random.Random(seed)`` stream, n ``randrange`` draws per resample, a constant
    resample skipped, order-statistic percentiles of the sorted rhos."""
    import random

    rng = random.Random(seed)
    n = len(x)
    rhos = []
    for _ in range(n_resamples):
        idx = [rng.randrange(n) for _ in range(n)]
        xb, yb = [x[i] for i in idx], [y[i] for i in idx]
        if len(set(xb)) == 1 or len(set(yb)) == 1:
            continue
        rhos.append(spearmanr(xb, yb).statistic)
    rhos.sort()
    m, alpha = len(rhos), 1 - confidence
    lo = rhos[max(0, min(int(alpha / 2 * m), m - 1))]
    hi = rhos[max(0, min(int((1 - alpha / 2) * m) - 1, m - 1))]
    return lo, hi, m


def test_rho_matches_scipy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=12)
    y = np.round(x + rng.normal(size=12), 0)  # ties in y
    result = stats.spearman_with_bootstrap(x, y, n_resamples=200)
    assert result["rho"] == pytest.approx(spearmanr(x, y).statistic, abs=RHO_ATOL)
    assert result["n_cells"] == 12 and result["reason"] is None


@pytest.mark.parametrize(
    "x, y",
    [
        # 5 cells with ties on both sides, so some resamples are constant and dropped.
        ([0.1, 0.1, 0.3, 0.2, 0.5], [0.0, 0.8, 0.8, 0.3, 0.1]),
        # 12 cells, a noisy monotone relation: rho takes fine-grained values, so a
        # different random stream moves the interval (numpy's default_rng(7) gives
        # [0.618, 0.966] here, the reference's stream [0.587, 0.971]).
        (
            [0.805, 0.808, 0.515, 0.286, 0.054, 0.383, 0.408, 0.045, 0.049, 0.999, 0.652, 0.235],
            [0.52, 1.29, 0.58, -0.23, 0.03, 0.03, 0.22, -0.1, -0.16, 1.17, 0.63, 0.06],
        ),
    ],
)
def test_bootstrap_reproduces_the_reference_procedure_exactly(x, y):
    result = stats.spearman_with_bootstrap(x, y, n_resamples=2000, seed=7, confidence=0.9)
    lo, hi, used = _reference_bootstrap(x, y, 2000, 7, 0.9)
    assert result["n_resamples_used"] == used
    assert result["ci_low"] == pytest.approx(lo, abs=RHO_ATOL)
    assert result["ci_high"] == pytest.approx(hi, abs=RHO_ATOL)


def test_bootstrap_is_seeded_and_deterministic():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=8), rng.normal(size=8)
    a = stats.spearman_with_bootstrap(x, y, seed=3)
    b = stats.spearman_with_bootstrap(x, y, seed=3)
    c = stats.spearman_with_bootstrap(x, y, seed=4)
    assert a == b
    assert (a["ci_low"], a["ci_high"]) != (c["ci_low"], c["ci_high"])
    assert a["n_resamples"] == 10_000


def test_interval_brackets_rho_on_a_clear_monotone_example():
    # Error metric rising with the gap, a little noise: rho near +1, interval above 0.
    rng = np.random.default_rng(2)
    gap = np.linspace(-0.1, 0.8, 12)
    metric = 0.05 + 0.3 * gap + rng.normal(scale=0.01, size=12)
    result = stats.spearman_with_bootstrap(metric, gap)
    assert result["rho"] > 0.9
    assert result["ci_low"] <= result["rho"] <= result["ci_high"] <= 1.0
    assert result["excludes_zero"] is True
    # Sign flips with the metric's direction.
    flipped = stats.spearman_with_bootstrap(-metric, gap)
    assert flipped["rho"] == pytest.approx(-result["rho"])
    assert flipped["ci_high"] < 0 and flipped["excludes_zero"] is True


def test_interval_including_zero_is_reported_as_such():
    x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    y = [0.2, -0.1, 0.4, 0.0, 0.3, 0.1]  # no real relation
    result = stats.spearman_with_bootstrap(x, y)
    assert result["ci_low"] < 0 < result["ci_high"]
    assert result["excludes_zero"] is False


@pytest.mark.parametrize(
    "x, y, reason",
    [
        ([0.1, 0.2], [0.3, 0.1], "fewer than 3"),
        ([], [], "fewer than 3"),
        ([0.5, 0.5, 0.5, 0.5], [0.1, 0.2, 0.3, 0.4], "metric is constant"),
        ([0.1, 0.2, 0.3, 0.4], [0.3, 0.3, 0.3, 0.3], "gap is constant"),
    ],
)
def test_undefined_gives_none_never_nan(x, y, reason):
    result = stats.spearman_with_bootstrap(x, y)
    assert result["rho"] is None and result["ci_low"] is None and result["ci_high"] is None
    assert result["excludes_zero"] is None
    assert reason in result["reason"]


def test_non_finite_or_mismatched_input_is_a_caller_bug():
    with pytest.raises(ValueError, match="finite"):
        stats.spearman_with_bootstrap([0.1, float("nan"), 0.3], [1, 2, 3])
    with pytest.raises(ValueError, match="equal length"):
        stats.spearman_with_bootstrap([0.1, 0.2, 0.3], [1, 2])


def _cell(model, env, m1, m3, gap, **extra):
    cell = {"model": model, "env": env, "m1_l2_onestep": m1, "m2_l2_kstep": 2 * m1,
            "m2_curve": [m1, 2 * m1], "m3_action_agreement": m3, "m3_states_used": 10,
            "seed": 0, "model_size": 1, "verdict": "INCONCLUSIVE",
            "context": {"oracle_success_rate": 1.0}, **extra}
    if gap is not None:
        cell["gap"] = gap
    return cell


def test_within_env_correlation_groups_by_task_and_finds_every_metric():
    cells = [
        _cell("c0", "cartpole-swingup", 0.01, 0.9, 0.1, m1_latent_onestep=0.3),
        _cell("c1", "cartpole-swingup", 0.02, 0.8, 0.3, m1_latent_onestep=0.2),
        _cell("c2", "cartpole-swingup", 0.03, None, 0.5, m1_latent_onestep=0.5),
        _cell("c3", "cartpole-swingup", 0.04, 0.5, 0.8),
        _cell("c4", "cartpole-swingup", 0.05, 0.4, None),  # unpaired: left out
        _cell("r0", "reacher-easy", 0.1, 0.5, 0.2),  # only 2 paired reacher cells
        _cell("r1", "reacher-easy", 0.2, 0.6, 0.1),
    ]
    out = stats.within_env_correlation(cells, n_resamples=500)
    assert list(out) == ["cartpole-swingup"]
    block = out["cartpole-swingup"]
    assert block["n_cells"] == 4
    # M1, M2, M3 first, then the extra metric; counts and context are not metrics.
    assert list(block["metrics"]) == ["m1_l2_onestep", "m2_l2_kstep", "m3_action_agreement", "m1_latent_onestep"]
    assert block["metrics"]["m1_l2_onestep"]["rho"] == pytest.approx(1.0)
    assert block["metrics"]["m3_action_agreement"]["n_cells"] == 3  # c2's M3 is undefined
    assert block["metrics"]["m3_action_agreement"]["rho"] == pytest.approx(-1.0)
    assert block["metrics"]["m1_latent_onestep"]["n_cells"] == 3  # c3 has none


def test_curves_and_unavailable_maps_are_not_metrics():
    # A decoder-less model's cell: its curve is null (not a list), and the reasons are a dict.
    cell = _cell("u", "cartpole-swingup", 0.01, 0.5, 0.1, m2_latent_curve=None, reward_rank_agreement=0.2,
                 reward_rank_states_used=3, unavailable={"m2_curve": "no observation decoder"})
    cell["m2_curve"] = None
    assert stats.metric_keys([cell]) == ["m1_l2_onestep", "m2_l2_kstep", "m3_action_agreement",
                                         "reward_rank_agreement"]


def test_pooled_m3_only_across_two_or_more_tasks():
    one_task = [_cell(f"c{i}", "cartpole-swingup", 0.01 * i, 0.1 * i, 0.1 * i) for i in range(4)]
    assert stats.pooled_m3_correlation(one_task) is None
    two_tasks = one_task + [_cell(f"r{i}", "reacher-easy", 0.5 * i, 0.1 * i + 0.05, 0.1 * i) for i in range(2)]
    pooled = stats.pooled_m3_correlation(two_tasks, n_resamples=500)
    assert pooled["metric"] == "m3_action_agreement"
    assert pooled["tasks"] == ["cartpole-swingup", "reacher-easy"]
    assert pooled["n_cells"] == 6
    assert "never pooled" in pooled["note"]
    assert pooled["correlation"]["rho"] == pytest.approx(spearmanr(
        [c["m3_action_agreement"] for c in two_tasks], [c["gap"] for c in two_tasks]).statistic)

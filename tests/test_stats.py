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


def test_intervals_counts_and_nested_objects_are_not_metrics():
    cell = {"env": "e", "model": "m", "gap": 0.1, "m1_l2_onestep": 0.2, "m1_l2_onestep_ci": None,
            "m3_action_agreement_ci": [0.1, 0.2], "counts": {"n_episodes": 6}, "episode_sd": {"m1_l2_onestep": 1.0},
            "hidden": 64, "planner": "cem"}
    assert stats.metric_keys([cell]) == ["m1_l2_onestep"]


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


# ------------------------------------------------------------ permutation p-value


def _spearman_rows(x, y, axis=-1):
    from scipy.stats import rankdata

    rx, ry = rankdata(x, axis=axis), rankdata(y, axis=axis)
    rx = rx - rx.mean(axis=axis, keepdims=True)
    ry = ry - ry.mean(axis=axis, keepdims=True)
    return (rx * ry).sum(axis) / np.sqrt((rx * rx).sum(axis) * (ry * ry).sum(axis))


@pytest.mark.parametrize("n", [3, 4, 5, 6, 7])
def test_permutation_p_value_equals_scipys_exact_test(n):
    from scipy.stats import permutation_test

    rng = np.random.default_rng(n)
    x = rng.normal(size=n)
    y = np.round(x + rng.normal(size=n), 0)  # ties in the gaps
    p, method = stats.permutation_p_value(x, y)
    # scipy permutes one sample's pairings against the other (n! of them, enumerated).
    want = permutation_test((x,), lambda xs, axis=-1: _spearman_rows(xs, y, axis), permutation_type="pairings",
                            n_resamples=np.inf, vectorized=True).pvalue
    assert method == "exact" and p == pytest.approx(want, abs=1e-12)


def test_permutation_p_value_is_monte_carlo_above_the_exact_limit():
    from scipy.stats import permutation_test

    rng = np.random.default_rng(1)
    n = stats.MAX_EXACT_PERMUTATION_CELLS + 3
    x = rng.normal(size=n)
    y = x + rng.normal(scale=2.0, size=n)
    p, method = stats.permutation_p_value(x, y, seed=0)
    assert method.startswith("monte carlo")
    want = permutation_test((x,), lambda xs, axis=-1: _spearman_rows(xs, y, axis), permutation_type="pairings",
                            n_resamples=200_000, vectorized=True, rng=1).pvalue
    assert p == pytest.approx(want, abs=0.005)
    assert stats.permutation_p_value(x, y, seed=0) == (p, method)  # seeded


def test_correlation_result_carries_the_p_value_and_says_when_the_interval_means_little():
    x, y = [0.1, 0.2, 0.3, 0.5], [0.0, 0.4, 0.3, 0.9]
    r = stats.spearman_with_bootstrap(x, y, n_resamples=500)
    assert r["p_value_method"] == "exact" and 0 < r["p_value"] <= 1
    assert r["interval_meaningful"] is False  # 4 cells
    assert stats.spearman_with_bootstrap([1, 2, 3, 4, 5], [2, 1, 4, 3, 5], n_resamples=500)["interval_meaningful"]


def test_few_cells_and_identical_model_files_are_flagged():
    cells = [{"env": "cartpole-swingup", "model": f"m{i}", "gap": g, "m1_l2_onestep": v,
              "context": {"model_sha256": "same" if i < 2 else f"h{i}"}}
             for i, (g, v) in enumerate([(0.1, 0.3), (0.5, 0.3), (0.9, 0.1), (0.2, 0.2)])]
    block = stats.within_env_correlation(cells, n_resamples=300)["cartpole-swingup"]
    assert block["identical_models"] == [["m0", "m1"]]
    assert any("only 4 paired cells" in w and "not meaningful" in w for w in block["warnings"])
    assert any("m0 and m1 are the same model file" in w for w in block["warnings"])


# ------------------------------------------------------------ precision warnings


def _precise_cell(model, **fields):
    base = {"model": model, "counts": {"n_states": 150, "n_episodes": 6}, "episode_sd": {}}
    for key, (value, ci, sd) in fields.items():
        base[key], base[f"{key}_ci"] = value, ci
        base["episode_sd"][key] = sd
    return base


def test_precision_warning_against_the_spread_between_models():
    # M1: spread 0.10; half-widths 0.02 (fine) and 0.06 (> 0.5 x 0.10: the two intervals can overlap).
    cells = [_precise_cell("a", m1_l2_onestep=(0.10, [0.08, 0.12], 0.05)),
             _precise_cell("b", m1_l2_onestep=(0.20, [0.14, 0.26], 0.12))]
    (w,) = stats.precision_warnings(cells)
    assert (w["model"], w["metric"], w["basis"]) == ("b", "m1_l2_onestep", "the spread between the models")
    assert w["half_width"] == pytest.approx(0.06) and w["limit"] == pytest.approx(0.05)
    # The suggested N: the episodes that bring sd 0.12 under 0.05, rounded up, times 25 states.
    units = stats.suggested_units(0.12, 0.05)
    assert w["suggested_n_states"] == units * 25 and w["suggested_n_states"] > 150


def test_precision_warning_for_a_tau_b_and_for_a_single_model():
    wide_tau = _precise_cell("a", m3_action_agreement=(-0.54, [-0.97, 0.42], 0.76))
    (w,) = stats.precision_warnings([wide_tau])
    assert w["limit"] == stats.RANK_HALF_WIDTH_LIMIT and w["basis"] == "the tau-b limit"
    assert 5_000 <= w["suggested_n_states"] <= 6_000  # about 225 episodes of 25
    # One model, no spread: judged against its own value (half-width 0.3 of 1.0 is fine, 0.6 is not).
    assert stats.precision_warnings([_precise_cell("a", m1_l2_onestep=(1.0, [0.7, 1.3], 0.5))]) == []
    (w,) = stats.precision_warnings([_precise_cell("a", m1_l2_onestep=(1.0, [0.4, 1.6], 0.5))])
    assert w["basis"] == "the value"
    # Nothing to say without an interval.
    assert stats.precision_warnings([_precise_cell("a", m1_l2_onestep=(1.0, None, None))]) == []

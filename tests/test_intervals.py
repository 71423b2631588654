"""The metrics' intervals: per-episode sums out of the kernels, the episode bootstrap, its calibration.

The bootstrap is checked against a plain resampling loop written out here
(the same seeded draws, every resample summed explicitly), the kernels'
per-episode sums against numpy, and the interval's calibration on a shipped
model at a size the suite can afford (the 40-seed, three-task version is
``python -m wmel_jax.benchmarks.intervals calibration``).
"""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest
from scipy.stats import norm, t as student_t

from wmel_jax import evaluate, metrics, stats
from wmel_jax.errors import WmelError

from conftest import EVAL_CHUNK, EVAL_K, EVAL_N

# Per-episode sums vs numpy, float64 inputs: only the summation order differs.
SUM_RTOL = 1e-12
# The vectorised bootstrap vs the plain loop over the same draws: matrix products vs Python sums.
BOOTSTRAP_RTOL = 1e-12


# ------------------------------------------------------------ per-episode sums


def test_kernels_split_their_sums_per_segment():
    rng = np.random.default_rng(0)
    n, a, k, d = 11, 4, 3, 2
    segments = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 0, 3])  # segment 0 in two runs; 4 and 5 empty
    valid = np.ones(n, bool)
    valid[-1] = False  # a padded row: masked out, whatever its segment
    true_next, pred_next = rng.normal(size=(n, a, d)), rng.normal(size=(n, a, d))
    true_traj, pred_traj = rng.normal(size=(k, n, d)), rng.normal(size=(k, n, d))
    true_scores = np.round(rng.normal(size=(n, a)), 1)
    pred_scores = np.round(rng.normal(size=(n, a)), 1)
    pred_scores[3] = 0.0  # a constant score vector: tau-b undefined in state 3

    per = dict(segments=segments, num_segments=6)
    m1 = jax.jit(metrics.one_step_l2_sum, static_argnames="num_segments")(pred_next, true_next, valid, **per)
    m2 = metrics.kstep_l2_curve_sum(pred_traj, true_traj, valid, **per)
    m3 = metrics.action_ranking_agreement(true_scores, pred_scores, valid, **per)

    dist1 = np.linalg.norm(pred_next - true_next, axis=-1).sum(axis=1)  # (n,)
    dist2 = np.linalg.norm(pred_traj - true_traj, axis=-1).T  # (n, k)
    tau, defined = metrics.kendall_tau_b(true_scores, pred_scores)
    tau, defined = np.asarray(tau), np.asarray(defined) & valid
    for s in range(6):
        rows = (segments == s) & valid
        assert float(m1.total[s]) == pytest.approx(dist1[rows].sum(), rel=SUM_RTOL, abs=0)
        assert int(m1.count[s]) == a * rows.sum()
        np.testing.assert_allclose(m2.total[s], dist2[rows].sum(axis=0), rtol=SUM_RTOL)
        assert int(m2.count[s]) == rows.sum()
        used = rows & defined
        assert float(m3.total[s]) == pytest.approx(tau[used].sum(), rel=SUM_RTOL, abs=1e-15)
        assert int(m3.count[s]) == used.sum()
    assert int(m3.count[1]) == 1  # state 3's tau-b is undefined: segment 1 keeps state 4 only
    # Summed over segments, the unsplit sums.
    whole = metrics.one_step_l2_sum(pred_next, true_next, valid)
    assert float(np.sum(m1.total)) == pytest.approx(float(whole.total), rel=SUM_RTOL)


def test_pieces_of_an_episode_cut_by_a_chunk_boundary_are_added():
    # Chunk 1 holds episodes 0 and 1 (its local 0, 1), chunk 2 the rest of 1 and episode 2.
    parts = [
        metrics.SumCount(np.array([1.0, 2.0, 0.0]), np.array([3, 4, 0])),
        metrics.SumCount(np.array([5.0, 7.0, 0.0]), np.array([1, 2, 0])),
    ]
    got = metrics.scatter_segments(parts, [np.array([0, 1]), np.array([1, 2])], 3)
    np.testing.assert_array_equal(got.total, [1.0, 7.0, 7.0])
    np.testing.assert_array_equal(got.count, [3, 5, 2])


def test_problem_episodes_in_order_of_first_appearance():
    states = np.zeros((5, 5))
    states[:, 1] = 1.0  # cos(theta) = 1: a valid cartpole observation
    problem = evaluate.make_problem("cartpole-swingup", states=states, k_steps=2, episode_ids=[7, 7, 3, 3, 7])
    assert problem.n_episodes == 2 and problem.episode_index.tolist() == [0, 0, 1, 1, 0]
    assert problem.episode_source == "file"
    alone = evaluate.make_problem("cartpole-swingup", states=states, k_steps=2)
    assert alone.n_episodes == 5 and alone.episode_source == "states"
    with pytest.raises(WmelError, match="4 episode ids for 5 states"):
        evaluate.make_problem("cartpole-swingup", states=states, k_steps=2, episode_ids=[0, 0, 1, 1])
    with pytest.raises(WmelError, match="not an integer"):
        evaluate.make_problem("cartpole-swingup", states=states, k_steps=2, episode_ids=[0, 0.5, 1, 1, 1])
    with pytest.raises(WmelError, match="pass them with the states"):
        evaluate.make_problem("cartpole-swingup", n_states=5, episode_ids=[0, 0, 1, 1, 1])


def test_sampled_states_carry_their_rollout_episodes():
    problem = evaluate.make_problem("cartpole-swingup", n_states=EVAL_N, k_steps=EVAL_K)
    assert problem.episode_source == "sampled" and problem.n_episodes == math.ceil(EVAL_N / 25)
    np.testing.assert_array_equal(problem.episode_index, np.arange(EVAL_N) // 25)


# ------------------------------------------------------------ the bootstrap


def _ratio_and_se(t, c):
    """A ratio mean and its linearised standard error over the units given (one column)."""
    n = len(t)
    ratio = sum(t) / sum(c)
    mean_count = sum(c) / n
    sd = math.sqrt(sum(((ti - ratio * ci) / mean_count) ** 2 for ti, ci in zip(t, c)) / (n - 1))
    return ratio, sd / math.sqrt(n)


def _plain_loop_intervals(totals, counts, resampler, confidence):
    """The same resamples, each summed with Python loops over its drawn units, one column at a time."""
    e, m = totals.shape
    alpha = 1 - confidence
    tail = norm.cdf(-math.sqrt(e / (e - 1)) * student_t.ppf(1 - alpha / 2, e - 1))
    draws = []
    for block, start in enumerate(range(0, resampler.n_resamples, resampler._rows)):
        b = min(resampler._rows, resampler.n_resamples - start)
        draws += list(np.random.default_rng([resampler.seed, block]).integers(0, e, size=(b, e)))
    lows, highs = [], []
    for j in range(m):
        t, c = list(totals[:, j]), list(counts[:, j])
        ratio, se = _ratio_and_se(t, c)
        means, t_values = [], []
        for drawn in draws:
            tb, cb = [t[i] for i in drawn], [c[i] for i in drawn]
            if sum(cb) == 0:
                continue
            rb, seb = _ratio_and_se(tb, cb)
            means.append(rb)
            if seb > 0:
                t_values.append((rb - ratio) / seb)
        low, high = np.quantile(means, [tail, 1 - tail])  # the expanded percentile interval
        q_low, q_high = np.quantile(t_values, [alpha / 2, 1 - alpha / 2])  # the studentized one
        lows.append(min(low, ratio - q_high * se))
        highs.append(max(high, ratio - q_low * se))
    return np.array(lows), np.array(highs)


def test_ratio_intervals_equal_a_plain_resampling_loop():
    rng = np.random.default_rng(3)
    e = 7
    counts = np.column_stack([np.full(e, 25.0), rng.integers(0, 3, size=e).astype(float)])
    counts[0, 1] = counts[1, 1] = 0.0  # a tau-b column with episodes that have no defined state
    totals = np.column_stack([rng.gamma(2.0, size=e) * 25, rng.uniform(-1, 1, size=e) * counts[:, 1]])
    resampler = stats.EpisodeResampler(e, 500, seed=11)
    low, high, used = stats.ratio_intervals(totals, counts, resampler)
    want_low, want_high = _plain_loop_intervals(totals, counts, resampler, stats.INTERVAL_CONFIDENCE)
    np.testing.assert_allclose(low, want_low, rtol=BOOTSTRAP_RTOL)
    np.testing.assert_allclose(high, want_high, rtol=BOOTSTRAP_RTOL)
    assert used[0] == 500 and 0 < used[1] <= 500  # resamples of only count-0 episodes are dropped
    # Seeded: the same draws again (cached or not), another seed other draws.
    again = stats.ratio_intervals(totals, counts, stats.EpisodeResampler(e, 500, seed=11))
    np.testing.assert_array_equal(again[0], low)
    other = stats.ratio_intervals(totals, counts, stats.EpisodeResampler(e, 500, seed=12))
    assert not np.array_equal(other[0], low)


def test_expanded_tail_is_the_t_interval_level():
    for n in (2, 6, 40, 400):
        z = math.sqrt(n / (n - 1)) * student_t.ppf(0.975, n - 1)
        assert stats.expanded_tail(n) == pytest.approx(norm.cdf(-z), rel=1e-10)
    assert stats.expanded_tail(6) == pytest.approx(0.0024, abs=5e-5)  # 6 episodes: far tails
    assert 0.0245 < stats.expanded_tail(400) < 0.025  # many: nearly the plain percentile


def test_one_episode_has_no_interval():
    low, high, used = stats.ratio_intervals(np.ones((1, 2)), np.ones((1, 2)), stats.EpisodeResampler(1, 50))
    assert np.isnan(low).all() and np.isnan(high).all() and used.tolist() == [0, 0]


def test_resample_count_shrinks_for_many_units_only():
    assert stats.default_resamples(6) == stats.INTERVAL_RESAMPLES
    assert stats.default_resamples(400) == 5_000
    assert stats.default_resamples(100_000) == stats.INTERVAL_MIN_RESAMPLES


def test_episode_sd_is_the_ratio_linearisation():
    totals = np.array([[2.0], [4.0], [9.0]])
    counts = np.array([[2.0], [2.0], [3.0]])
    ratio = 15.0 / 7.0
    dev = (totals[:, 0] - ratio * counts[:, 0]) / (7.0 / 3.0)
    assert stats.episode_sd(totals, counts)[0] == pytest.approx(math.sqrt(np.sum(dev**2) / 2))


def test_suggested_units_meet_the_target_and_no_fewer_would():
    sd, target = 0.76, 0.1
    e = stats.suggested_units(sd, target)
    z = lambda n: math.sqrt(n / (n - 1)) * student_t.ppf(0.975, n - 1)  # noqa: E731
    assert z(e) * sd / math.sqrt(e) <= target < z(e - 1) * sd / math.sqrt(e - 1)
    assert 220 <= e <= 230  # about (1.96 * 0.76 / 0.1)^2 = 222, a little more for the t quantile
    assert stats.suggested_units(0.0, 0.1) is None and stats.suggested_units(0.5, 0.0) is None


# ------------------------------------------------------------ the evaluator's intervals


@pytest.fixture(scope="module")
def cartpole_weak():
    """The shipped weak cartpole model (an adapter checkpoint: every observation-space metric)."""
    import wmel_jax
    from wmel_jax.demo import EXAMPLES_DIR

    return wmel_jax.load(EXAMPLES_DIR / "cartpole-swingup-weak.safetensors")


def _per_state_sums(model, seed, sequence):
    """One seed's sampled problem, the same states as a problem of one unit per state, and the kernel's sums on it.

    ``sequence``: M2's actions, the same for every seed (M2's value depends on them).
    """
    sampled = evaluate.make_problem("cartpole-swingup", model.action_set, n_states=EVAL_N, action_sequence=sequence,
                                    seed=seed)
    per_state = evaluate.Problem(**{**{f: getattr(sampled, f) for f in
                                      ("task", "frame_skip", "precision", "states", "actions", "action_sequence",
                                       "seed")}, "episode_ids": None})
    targets = evaluate.oracle_targets(per_state, EVAL_CHUNK)
    sums, _ = evaluate.model_episode_sums(model, per_state, targets, EVAL_CHUNK, total_states=EVAL_N,
                                          spaces=["observation"])
    return sampled, per_state, sums


def _episode_and_state_runs(model, seed, sequence):
    """One seed's problem evaluated once: per-state sums, summarised with episodes and without."""
    sampled, per_state, sums = _per_state_sums(model, seed, sequence)
    # The episodes' sums from the states' (state i in episode i // 25).
    episode = np.arange(EVAL_N) // 25
    by_episode = {}
    for name, part in sums.items():
        total = np.zeros((sampled.n_episodes, *part.total.shape[1:]))
        count = np.zeros(sampled.n_episodes, np.int64)
        np.add.at(total, episode, part.total)
        np.add.at(count, episode, part.count)
        by_episode[name] = metrics.SumCount(total, count)
    with_episodes = evaluate.summarize_episode_sums(by_episode, sampled)
    ignoring = evaluate.summarize_episode_sums(sums, per_state)
    return with_episodes, ignoring, sums


CALIBRATION_METRICS = ("m1_l2_onestep", "m2_l2_kstep", "m3_action_agreement")


def test_intervals_cover_the_large_sample_value_and_ignoring_episodes_does_not(cartpole_weak):
    """Calibration at the suite's size: 12 seeds at N = 150, the value at N = 1,200 as the truth.

    The truth pools 8 other seeds' states (48 episodes; its own standard
    error is about a seventh of an N = 150 interval's half-width), all with
    one M2 action sequence. The full version (40 seeds, three tasks, the
    truth at N = 20,000) is ``python -m wmel_jax.benchmarks.intervals
    calibration``: there the reported intervals cover 85-96% per task. Here,
    over the 36 runs (12 seeds x M1, M2, M3), they must cover at least 27
    (75%: with a true coverage of 90%, fewer happens with probability about
    1%), and intervals that resample states as if independent must be much
    narrower and cover at most 60% (they cover 30-50% in the benchmark).
    """
    sequence = evaluate.draw_action_sequence(jax.random.key(7), np.asarray(cartpole_weak.action_set), EVAL_K)
    pooled = None
    for seed in range(100, 108):  # the truth needs the sums only, no interval
        _, _, sums = _per_state_sums(cartpole_weak, seed, sequence)
        part = {k: metrics.combine_sums(v) for k, v in sums.items()}
        pooled = part if pooled is None else {k: metrics.combine_sums(pooled[k], part[k]) for k in part}
    truth = {
        "m1_l2_onestep": metrics.mean_or_none(pooled["m1"])[0],
        "m2_l2_kstep": metrics.mean_or_none(pooled["m2"])[0][-1],
        "m3_action_agreement": metrics.mean_or_none(pooled["m3"])[0],
    }
    covered, covered_naive, runs = 0, 0, 0
    width_ratio = {k: [] for k in CALIBRATION_METRICS}
    for seed in range(12):
        with_episodes, ignoring, _ = _episode_and_state_runs(cartpole_weak, seed, sequence)
        assert with_episodes["n_episodes"] == 6 and ignoring["n_episodes"] == EVAL_N
        for k in CALIBRATION_METRICS:
            low, high = with_episodes[f"{k}_ci"]
            nlow, nhigh = ignoring[f"{k}_ci"]
            assert with_episodes[k] == pytest.approx(ignoring[k], rel=1e-12)  # the same value either way
            covered += low <= truth[k] <= high
            covered_naive += nlow <= truth[k] <= nhigh
            runs += 1
            width_ratio[k].append((nhigh - nlow) / (high - low))
    assert covered >= 27, (covered, covered_naive, runs)
    assert covered_naive <= 0.6 * runs, (covered, covered_naive, runs)
    for k in CALIBRATION_METRICS:
        assert np.median(width_ratio[k]) < 0.7, (k, np.median(width_ratio[k]))

"""The CPG's statistics: the reference's files recomputed from their own episodes, and each rule by hand.

Every reference CPG file (../shared/reference-data; ``tests/data/reference_cpg.json``
keeps each one's ``cpg`` block and per-episode results of both arms) holds
the ``cpg`` block the reference computed from its episodes: the gap, its
Agresti-Caffo interval and the verdict must come out identical. The
paired bootstrap must equal the reference's algorithm (one
``random.Random(seed)`` stream of ``randrange(n)`` draws, written out here in
plain Python); Newcombe's interval and McNemar's test are checked against
values worked out by hand.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest

from wmel_jax.planning import stats as S

REFERENCE = json.loads((Path(__file__).parent / "data" / "reference_cpg.json").read_text())["files"]


@pytest.mark.parametrize("doc", REFERENCE, ids=lambda d: d["file"])
def test_the_reference_files_cpg_blocks_recomputed_from_their_episodes(doc):
    cpg = S.gap_interval(doc["oracle_full"]["success"], doc["learned_full"]["success"])
    for key in ("oracle_success_rate", "learned_success_rate", "gap", "n_episodes_oracle", "n_episodes_learned",
                "gap_ci_low", "gap_ci_high"):
        assert cpg[key] == doc["cpg"][key], key
    assert S.verdict(cpg) == doc["cpg"]["verdict"]


def _reference_bootstrap(o, l, n_boot, seed, alpha=0.05):
    """The reference's paired bootstrap, literally: one random.Random(seed), randrange(n) per draw."""
    n = len(o)
    rng = random.Random(seed)
    gaps = []
    for _ in range(n_boot):
        total = 0.0
        for _ in range(n):
            j = rng.randrange(n)
            total += o[j] - l[j]
        gaps.append(total / n)
    gaps.sort()
    return (sum(o) / n - sum(l) / n, gaps[max(0, min(int(alpha / 2 * n_boot), n_boot - 1))],
            gaps[max(0, min(int((1 - alpha / 2) * n_boot) - 1, n_boot - 1))])


@pytest.mark.parametrize("n, seed", [(1, 0), (10, 0), (30, 3), (257, 11), (1000, 2**40 + 5)])
def test_paired_bootstrap_is_the_references_exactly(n, seed):
    rng = np.random.default_rng(n)
    o = (rng.random(n) < 0.8).astype(int).tolist()
    l = (rng.random(n) < 0.5).astype(int).tolist()
    n_boot = 2000 if n < 500 else 200
    got = S.paired_bootstrap(o, l, n_resamples=n_boot, seed=seed)
    assert (got["gap"], got["ci_low"], got["ci_high"]) == _reference_bootstrap(o, l, n_boot, seed)


def test_agresti_caffo_and_verdicts_by_hand():
    # 9/10 vs 5/10: plus-4 rates 10/12 and 6/12, variance with n + 2 = 12.
    cpg = S.gap_interval([1] * 9 + [0], [1] * 5 + [0] * 5)
    half = 1.96 * math.sqrt((10 / 12) * (2 / 12) / 12 + (6 / 12) * (6 / 12) / 12)
    assert cpg["gap"] == pytest.approx(0.4) and cpg["gap_ci_low"] == pytest.approx(4 / 12 - half)
    assert S.verdict(cpg) == "INCONCLUSIVE"  # the interval crosses 0 at n = 10
    assert S.verdict(S.gap_interval([1] * 300, [0] * 300)) == "MODEL BOTTLENECK"
    assert S.verdict(S.gap_interval([0] * 300, [1] * 300)) == "LEARNED OUTPERFORMS ORACLE"
    assert S.verdict(S.gap_interval([0] * 29 + [1], [0] * 30)) == "PLANNER BOTTLENECK"
    assert S.verdict(S.gap_interval([1] * 30, [1] * 29 + [0])) == "MODEL AS GOOD AS ORACLE"
    # The interval gate comes first: both rates at the extremes but apart is a bottleneck.
    assert S.verdict(S.gap_interval([1] * 1000, [1] * 940 + [0] * 60)) == "MODEL BOTTLENECK"


def test_wilson_interval_by_hand():
    lo, hi = S.wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(3.8416 / 13.8416)  # z^2 / (n + z^2) at p = 0
    lo, hi = S.wilson_interval(10, 10)
    assert hi == 1.0 and lo == pytest.approx(10 / 13.8416)
    lo, hi = S.wilson_interval(150, 300)
    half = 1.96 * math.sqrt(0.25 / 300 + 3.8416 / (4 * 300**2)) / (1 + 3.8416 / 300)
    assert (lo + hi) / 2 == pytest.approx(0.5) and (hi - lo) / 2 == pytest.approx(half)


def test_mcnemar_exact_by_hand():
    # 8 oracle-only, 0 learned-only: p = 2 * (1/2)^8.
    m = S.mcnemar_exact([1] * 10, [0] * 8 + [1] * 2)
    assert (m["both"], m["oracle_only"], m["learned_only"], m["neither"]) == (2, 8, 0, 0)
    assert m["p_value"] == 2 / 256
    # 3 vs 1 discordant: 2 * (1 + 4) / 16.
    assert S.mcnemar_exact([1, 1, 1, 0, 1], [0, 0, 0, 1, 1])["p_value"] == 10 / 16
    assert S.mcnemar_exact([1, 0], [1, 0])["p_value"] == 1.0  # no discordant pair: no evidence
    # A large table stays exact (no float overflow in the binomial tail).
    big = S.mcnemar_exact([1] * 1500 + [0] * 500, [0] * 1500 + [1] * 500)
    assert 0.0 <= big["p_value"] < 1e-100


def test_newcombe_paired_interval_by_hand():
    # (a, b, c, d) = (8, 5, 0, 0): the oracle always succeeds, so a margin is empty and phi = 0; the
    # interval is then square-and-add of the two Wilson intervals (Newcombe 1998, method 10).
    o = [1] * 13
    l = [1] * 8 + [0] * 5
    r = S.newcombe_paired(o, l)
    (l1, u1), (l2, u2) = S._wilson_raw(13, 13, 1.96), S._wilson_raw(8, 13, 1.96)
    p1, p2 = 1.0, 8 / 13
    assert r["gap"] == pytest.approx(5 / 13) and r["phi"] == 0.0
    assert r["ci_low"] == pytest.approx(5 / 13 - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2))
    assert r["ci_high"] == pytest.approx(5 / 13 + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2))
    # With both kinds of discordant pairs phi enters: positively correlated arms narrow the interval.
    o, l = [1, 1, 1, 1, 0, 0, 1, 0], [1, 1, 1, 0, 0, 0, 0, 1]
    r = S.newcombe_paired(o, l)
    a, b, c, d = 3, 2, 1, 2
    assert r["phi"] == pytest.approx((a * d - b * c) / math.sqrt(5 * 3 * 4 * 4))
    assert r["ci_low"] < r["gap"] < r["ci_high"]


def test_episodes_for_half_width_is_the_smallest_n_reaching_it():
    for p_o, p_l in ((0.9, 0.5), (1.0, 0.0), (0.5, 0.5), (0.97, 0.7)):
        n = S.episodes_for_half_width(p_o, p_l, 0.05)
        assert S.ac_half_width(p_o, p_l, n) <= 0.05 < S.ac_half_width(p_o, p_l, n - 1)
    # The reference's power analysis: oracle 0.5, learned 0.533 needs about 770 episodes per arm for +-0.05.
    assert 700 < S.episodes_for_half_width(0.5, 0.533, 0.05) < 800
    assert S.episodes_for_half_width(0.5, 0.5, 1e-6, n_max=1000) is None


def test_steps_summary():
    s = S.steps_summary([True, False, True, True], [10, 500, 30, 20])
    assert s == {"n": 3, "mean": 20.0, "median": 20.0, "q25": 15.0, "q75": 25.0, "min": 10, "max": 30}
    assert S.steps_summary([False], [500])["mean"] is None

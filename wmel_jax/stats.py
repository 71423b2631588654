"""How sure is each number? Metric intervals, and Spearman + bootstrap against the gap.

**Metric intervals** (SPEC.md section 10). The seeded state batch is made of
rollout episodes of correlated states, so a metric's interval resamples whole
episodes (a cluster bootstrap): :class:`EpisodeResampler` draws, once per run,
``n_resamples`` multisets of episodes (seeded), and :func:`ratio_intervals`
turns every metric's per-episode sums and counts (the kernels' outputs, see
``wmel_jax.metrics``) into the resampled means ``sum(w * total) / sum(w *
count)`` and their standard errors with a few matrix products. The interval
is the hull of the studentized (bootstrap-t) interval and Hesterberg's
*expanded percentile* interval (the percentile interval at tail probability
alpha'/2 with ``z_{alpha'/2} = sqrt(E / (E - 1)) t_{alpha/2, E-1}``). With
few clusters the plain percentile interval is far too narrow (at the default
N = 150 there are 6 episodes): it ignores the t quantile, and the skew of
per-episode distances. The calibration benchmark
(``python -m wmel_jax.benchmarks.intervals calibration``) measures the
coverage of this interval, of the plain percentile one and of one that
resamples states as if independent.
:func:`suggested_units` says how many episodes would bring a half-width under
a target, from the observed per-episode variance; :func:`precision_warnings`
applies the report's rule (a half-width above ``PRECISION_SPREAD_FRACTION``
of the spread between the run's models, or above ``RANK_HALF_WIDTH_LIMIT``
for a tau-b).

**Downstream correlation.**

Cells (one per evaluated model) paired with a downstream Counterfactual
Planning Gap are correlated per metric: Spearman's rho (scipy) and a paired
percentile bootstrap interval (cells resampled with replacement, 10,000
resamples, the reference's seeded ``random.Random`` stream), as the reference's Stage-2 analysis does
(SPEC.md section 7). M1 and M2 are L2 distances in each task's own units, so
they are correlated only within one task; M3 (Kendall tau, unitless) may also
be pooled across tasks, and that pooled result is reported separately.

Undefined results are ``None``, never NaN: fewer than 3 cells, a constant side
(Spearman's rho has no value when all metric values or all gaps are equal), or
fewer than 2 usable bootstrap resamples for the interval.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

__all__ = [
    "INTERVAL_CONFIDENCE",
    "INTERVAL_RESAMPLES",
    "EpisodeResampler",
    "default_resamples",
    "expanded_tail",
    "INTERVAL_METHODS",
    "ratio_intervals",
    "episode_sd",
    "suggested_units",
    "PRECISION_SPREAD_FRACTION",
    "RANK_HALF_WIDTH_LIMIT",
    "precision_warnings",
    "permutation_p_value",
    "MIN_CELLS",
    "CORE_METRICS",
    "spearman_with_bootstrap",
    "metric_keys",
    "within_env_correlation",
    "identical_models",
    "pooled_m3_correlation",
]

# --------------------------------------------------------------------------- #
# metric intervals: the episode (cluster) bootstrap
# --------------------------------------------------------------------------- #

#: Confidence of every metric interval.
INTERVAL_CONFIDENCE = 0.95
#: Resamples of the episode bootstrap: INTERVAL_RESAMPLES (the reference's count
#: for its correlations) for up to 200 units (N = 5,000 sampled states), where the
#: expanded interval's far tails need them; with more units fewer, so the draws
#: stay near INTERVAL_DRAWS (the tails move in towards 2.5%), but never fewer than
#: INTERVAL_MIN_RESAMPLES: N = 10,000 sampled states (400 episodes) 5,000.
INTERVAL_RESAMPLES = 10_000
INTERVAL_DRAWS = 2_000_000
INTERVAL_MIN_RESAMPLES = 2_000
# Weight matrices of at most this many entries are kept and shared by every
# metric and model of a run (32 MB); bigger ones are drawn block by block, again
# for each caller, from the same per-block seeds.
_CACHED_WEIGHTS = 4_000_000
_BLOCK_ENTRIES = 2_000_000


class EpisodeResampler:
    """Seeded bootstrap resamples of ``n_units`` units (episodes, or states), drawn once.

    Resample r draws n_units units uniformly with replacement; it is held as a
    weight row (how often each unit was drawn). The same seed gives the same
    resamples, whoever asks: every metric and every model of a run is
    resampled on the same episodes.
    """

    def __init__(self, n_units: int, n_resamples: int | None = None, seed: int = 0):
        if n_resamples is None:
            n_resamples = default_resamples(n_units)
        if int(n_units) < 1 or int(n_resamples) < 1:
            raise ValueError("n_units and n_resamples must be >= 1")
        self.n_units = int(n_units)
        self.n_resamples = int(n_resamples)
        self.seed = int(seed)
        self._rows = max(1, _BLOCK_ENTRIES // self.n_units)
        self._cached: list[np.ndarray] | None = None

    def _draw(self, block: int, rows: int) -> np.ndarray:
        e = self.n_units
        # Seeded per block, so a block is the same whether cached or drawn again.
        rng = np.random.default_rng([self.seed, block])
        idx = rng.integers(0, e, size=(rows, e)) + e * np.arange(rows)[:, None]
        return np.bincount(idx.ravel(), minlength=rows * e).reshape(rows, e).astype(np.float64)

    def blocks(self) -> Iterator[np.ndarray]:
        """The resamples as weight blocks (b, n_units) float64, n_resamples rows in all, in order."""
        if self._cached is not None:
            yield from self._cached
            return
        keep = self.n_resamples * self.n_units <= _CACHED_WEIGHTS
        kept = []
        for block, start in enumerate(range(0, self.n_resamples, self._rows)):
            w = self._draw(block, min(self._rows, self.n_resamples - start))
            if keep:
                kept.append(w)
            yield w
        if keep:
            self._cached = kept


def default_resamples(n_units: int) -> int:
    """INTERVAL_RESAMPLES, fewer for many units (see INTERVAL_DRAWS): 6 units 10,000; 400 units 5,000."""
    return int(min(INTERVAL_RESAMPLES, max(INTERVAL_MIN_RESAMPLES, INTERVAL_DRAWS // max(int(n_units), 1))))


def expanded_tail(n_units: int, confidence: float = INTERVAL_CONFIDENCE) -> float:
    """Tail probability alpha'/2 of the expanded percentile interval for n_units >= 2 clusters.

    ``z_{alpha'/2} = sqrt(n / (n - 1)) t_{alpha/2, n - 1}`` (Hesterberg, "What
    teachers should know about the bootstrap", 2015): a percentile interval
    at that level has, for a normal mean, the coverage of the t interval, where
    the plain percentile interval (alpha/2) under-covers with few clusters.
    n = 6: 0.0024; n = 40: 0.0216; n = 400: 0.0247 (alpha/2 = 0.025).
    """
    from scipy.special import ndtr, stdtrit  # scipy.special: already imported by jax

    n = int(n_units)
    if n < 2:
        raise ValueError("an interval needs at least 2 units")
    alpha = 1.0 - confidence
    z = math.sqrt(n / (n - 1)) * float(stdtrit(n - 1, 1.0 - alpha / 2.0))
    return float(ndtr(-z))


def _quantiles(x: np.ndarray, q: Sequence[float]) -> np.ndarray:
    """Column quantiles of (B, m) ignoring NaN: (len(q), m); NaN where a column has fewer than 2 values."""
    finite = np.isfinite(x)
    used = finite.sum(axis=0)
    out = np.full((len(q), x.shape[1]), np.nan)
    full = used == x.shape[0]
    if np.any(full):  # the common case, without nanquantile's per-column loop
        out[:, full] = np.quantile(x[:, full], q, axis=0)
    partial = ~full & (used >= 2)
    if np.any(partial):
        out[:, partial] = np.nanquantile(np.where(finite[:, partial], x[:, partial], np.nan), q, axis=0)
    return out


#: The interval constructions :func:`ratio_intervals` knows ("hull" is the reported one;
#: the others are there for the calibration benchmark to compare against).
INTERVAL_METHODS = ("hull", "studentized", "expanded", "percentile")


def ratio_intervals(
    totals: np.ndarray,
    counts: np.ndarray,
    resampler: EpisodeResampler,
    confidence: float = INTERVAL_CONFIDENCE,
    method: str = "hull",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bootstrap intervals of ratio means ``sum(total) / sum(count)`` over resampled units.

    totals, counts: (E, m) per-unit sums and term counts of m metrics (a mean
    is a ratio: M1 sums distances over (state, action) pairs, M3 sums tau-b
    over the states where it is defined). Each resample's mean is the ratio of
    its weighted sums; a resample whose count is 0 (no defined tau-b in any
    drawn episode) has none and is dropped.

    The interval is the hull of two intervals from the same resamples:

    - the studentized (bootstrap-t) interval ``[R - q_hi se, R - q_lo se]``,
      q the 2.5% / 97.5% quantiles of ``(R_b - R) / se_b`` over the resamples,
      se the ratio's linearised standard error (:func:`episode_sd`) of the
      sample and se_b of each resample. Distances are skewed across episodes
      (a few episodes reach states the model gets badly wrong): a sample
      without such an episode has both a low mean and a low spread, and
      studentizing carries that into the interval, where a percentile
      interval stays narrow around the low mean;
    - the expanded percentile interval (:func:`expanded_tail`), which holds
      where the studentized statistic degenerates: resamples with no spread
      (a tau-b of exactly 1 in most episodes) have no t-value.

    Returns (low (m,), high (m,), resamples used (m,)); NaN where fewer than 2
    resamples are usable or E < 2 (one episode says nothing about the spread
    between episodes). ``method`` (INTERVAL_METHODS): "hull" (the above),
    "studentized" or "expanded" alone, or "percentile" (the plain 2.5%-97.5%
    percentile interval), for comparisons.
    """
    if method not in INTERVAL_METHODS:
        raise ValueError(f"method must be one of {INTERVAL_METHODS}; got {method!r}")
    totals = np.asarray(totals, np.float64)
    counts = np.asarray(counts, np.float64)
    if totals.ndim != 2 or totals.shape != counts.shape:
        raise ValueError(f"totals and counts must both be (E, m); got {totals.shape} and {counts.shape}")
    e, m = totals.shape
    if e != resampler.n_units:
        raise ValueError(f"{e} units but the resampler draws {resampler.n_units}")
    nan = np.full(m, np.nan)
    if e < 2:
        return nan, nan.copy(), np.zeros(m, np.int64)
    csum = counts.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(csum > 0, totals.sum(axis=0) / csum, np.nan)
    se = episode_sd(totals, counts) / math.sqrt(e)
    means = np.empty((resampler.n_resamples, m))
    t_values = np.empty((resampler.n_resamples, m))
    # Metrics of one kernel output share their counts: resample each distinct count column once.
    unique_counts, which = np.unique(counts, axis=1, return_inverse=True)
    which = which.reshape(-1)
    squares, cross = totals * totals, totals * counts
    unique_count_squares = unique_counts * unique_counts
    row = 0
    for w in resampler.blocks():
        rows = slice(row, row + w.shape[0])
        num, den = w @ totals, (w @ unique_counts)[:, which]
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(den > 0, num / den, np.nan)
            # The resample's own linearised variance: sum_e w_e (t_e - R_b c_e)^2 / (E - 1) / (den / E)^2.
            sum_sq = w @ squares + mean * mean * (w @ unique_count_squares)[:, which]
            spread = sum_sq - 2.0 * mean * (w @ cross)
            # A spread lost in the rounding of its terms is none (a resample of equal episodes).
            spread = np.where(spread > 1e-9 * sum_sq, spread, 0.0)
            se_b = np.sqrt(spread / (e - 1)) / (den / e) / math.sqrt(e)
            t_values[rows] = np.where(se_b > 0, (mean - ratio) / se_b, np.nan)
        means[rows] = mean
        row += w.shape[0]
    used = np.sum(np.isfinite(means), axis=0)
    alpha = 1.0 - confidence
    tail = alpha / 2.0 if method == "percentile" else expanded_tail(e, confidence)
    low, high = _quantiles(means, [tail, 1.0 - tail])
    if method in ("hull", "studentized"):
        q_low, q_high = _quantiles(t_values, [alpha / 2.0, 1.0 - alpha / 2.0])
        ok = np.isfinite(q_low) & np.isfinite(q_high) & (se > 0)
        t_low, t_high = ratio - q_high * se, ratio - q_low * se
        if method == "hull":
            low, high = np.where(ok, np.fmin(low, t_low), low), np.where(ok, np.fmax(high, t_high), high)
        else:  # no spread in the sample: the interval is the point
            low, high = np.where(ok, t_low, ratio), np.where(ok, t_high, ratio)
    bad = used < 2
    low[bad] = np.nan
    high[bad] = np.nan
    return low, high, used


def episode_sd(totals: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per-unit standard deviation of ratio means, in the metric's units: (E, m) x2 -> (m,).

    The ratio's linearisation: ``d_e = (total_e - R count_e) / mean(count)``
    with ``R = sum(total) / sum(count)``, and ``sd = sqrt(sum(d_e^2) / (E -
    1))``, so the standard error of the mean over E units is about ``sd /
    sqrt(E)``. NaN where E < 2 or no unit has a term.
    """
    totals = np.asarray(totals, np.float64)
    counts = np.asarray(counts, np.float64)
    e = totals.shape[0]
    csum = counts.sum(axis=0)
    out = np.full(totals.shape[1], np.nan)
    ok = (csum > 0) & (e >= 2)
    if not np.any(ok):
        return out
    ratio = totals[:, ok].sum(axis=0) / csum[ok]
    dev = (totals[:, ok] - ratio * counts[:, ok]) / (csum[ok] / e)
    out[ok] = np.sqrt(np.sum(dev * dev, axis=0) / (e - 1))
    return out


def _expanded_z(n_units: int, confidence: float) -> float:
    from scipy.special import stdtrit

    return math.sqrt(n_units / (n_units - 1)) * float(stdtrit(n_units - 1, 1.0 - (1.0 - confidence) / 2.0))


def suggested_units(sd: float, half_width: float, confidence: float = INTERVAL_CONFIDENCE) -> int | None:
    """The fewest units (episodes) whose interval half-width would be at most ``half_width``, from a per-unit sd.

    The smallest E >= 2 with ``z'(E) sd / sqrt(E) <= half_width``, z'(E) the
    expanded interval's quantile (:func:`expanded_tail`), which shrinks
    towards the normal 1.96 as E grows. None when sd or the target is not a
    positive finite number.
    """
    if not (math.isfinite(sd) and sd > 0 and math.isfinite(half_width) and half_width > 0):
        return None

    def wide_enough(e: int) -> bool:
        return _expanded_z(e, confidence) * sd / math.sqrt(e) <= half_width

    lo, hi = 1, 2  # wide_enough(lo) is False (E = 1 has no interval), find hi with True
    while not wide_enough(hi):
        lo, hi = hi, hi * 2
        if hi > 10**12:
            return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if wide_enough(mid) else (mid, hi)
    return hi


#: A metric's interval is called imprecise when its half-width exceeds this
#: fraction of the spread (max - min) between the run's models on that metric:
#: above half the spread, the intervals of the best and the worst model can
#: overlap, so not even their order is settled (with a single model, or models
#: that tie: of the metric's own magnitude).
PRECISION_SPREAD_FRACTION = 0.5
#: For tau-b metrics (M3, reward ranking; unitless, in [-1, 1]): a fixed limit.
RANK_HALF_WIDTH_LIMIT = 0.1
#: The tau-b metrics.
RANK_METRICS = ("m3_action_agreement", "reward_rank_agreement")


def _round_up_2sig(n: float) -> int:
    """n rounded up to two significant digits (2,431 -> 2,500; 96 -> 96)."""
    n = math.ceil(n)
    if n < 100:
        return int(n)
    scale = 10 ** (len(str(n)) - 2)
    return int(-(-n // scale) * scale)


def precision_warnings(cells: Sequence[Mapping[str, Any]], metrics: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One warning per (cell, metric) whose interval is wider than the report's limit.

    cells: report cells of one task (the same states), each with ``<metric>``,
    ``<metric>_ci`` [low, high], ``episode_sd`` {metric: sd} and ``counts``
    {n_states, n_episodes}. The limit on the half-width is
    RANK_HALF_WIDTH_LIMIT for a tau-b, else PRECISION_SPREAD_FRACTION of the
    spread between the cells' values (of |value| when there is no spread).
    Each warning: {model, metric, half_width, limit, basis, n_states,
    n_episodes, suggested_n_states (None when the per-episode sd is 0)}: the N
    that would bring the half-width under the limit, from the observed
    per-episode sd (:func:`suggested_units`; should the interval be wider than
    that sd predicts, the half-width scaled as 1/sqrt(episodes)): the episodes
    needed, rounded up to two significant digits, times the run's states per
    episode.
    """
    keys = list(metrics) if metrics is not None else [
        k[: -len("_ci")] for k in dict.fromkeys(k for c in cells for k in c) if k.endswith("_ci")
    ]
    out: list[dict[str, Any]] = []
    for key in keys:
        values = [float(c[key]) for c in cells if _is_finite_number(c.get(key))]
        spread = max(values) - min(values) if len(values) >= 2 else 0.0
        for cell in cells:
            ci, value = cell.get(f"{key}_ci"), cell.get(key)
            if not (isinstance(ci, (list, tuple)) and len(ci) == 2 and _is_finite_number(value)):
                continue
            if not (_is_finite_number(ci[0]) and _is_finite_number(ci[1])):
                continue
            half = (float(ci[1]) - float(ci[0])) / 2.0
            if key in RANK_METRICS:
                limit, basis = RANK_HALF_WIDTH_LIMIT, "the tau-b limit"
            elif spread > 0:
                limit, basis = PRECISION_SPREAD_FRACTION * spread, "the spread between the models"
            else:
                limit, basis = PRECISION_SPREAD_FRACTION * abs(float(value)), "the value"
            if not half > limit:
                continue
            counts = cell.get("counts") or {}
            n_states, n_units = counts.get("n_states"), counts.get("n_episodes")
            sd = (cell.get("episode_sd") or {}).get(key)
            suggested = None
            if sd is not None and n_states and n_units:
                units = suggested_units(float(sd), limit)
                if units is not None and units <= n_units:
                    # The bootstrap interval is wider than the sd predicts: scale by what it shows instead.
                    units = math.ceil(n_units * (half / limit) ** 2)
                if units is not None:  # whole episodes of the run's size
                    suggested = math.ceil(_round_up_2sig(units) * n_states / n_units)
            out.append({
                "model": cell.get("model"),
                "metric": key,
                "half_width": half,
                "limit": limit,
                "basis": basis,
                "n_states": n_states,
                "n_episodes": n_units,
                "suggested_n_states": suggested,
            })
    return out


# --------------------------------------------------------------------------- #
# downstream correlation
# --------------------------------------------------------------------------- #

#: Fewest paired cells a correlation is computed from.
MIN_CELLS = 3
#: The three metrics, in report order; other metric keys follow alphabetically.
CORE_METRICS = ("m1_l2_onestep", "m2_l2_kstep", "m3_action_agreement")
#: The one metric that is unitless, hence poolable across tasks.
POOLABLE_METRIC = "m3_action_agreement"

# Cell keys that describe a cell rather than measure it: the reference
# correlate.py's (epochs, seed, hidden, data_size, model_size, env, planner,
# model, variant, cell), the gap and the verdict. Numeric context that is not a
# metric lives in a cell's ``context`` dict (as in the reference bundle), counts
# in its ``counts``.
_DESCRIPTOR_KEYS = frozenset(
    {"model", "env", "seed", "model_size", "gap", "verdict", "context", "epochs", "cell",
     "hidden", "data_size", "planner", "variant", "counts", "episode_sd", "unavailable"}
)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _is_finite_number(v: Any) -> bool:
    return _is_number(v) and math.isfinite(float(v))


def _result(
    n_cells: int,
    n_resamples: int,
    confidence: float,
    *,
    rho: float | None = None,
    interval: tuple[float, float] | None = None,
    n_resamples_used: int = 0,
    reason: str | None = None,
    p_value: float | None = None,
    p_value_method: str | None = None,
) -> dict[str, Any]:
    lo, hi = interval if interval is not None else (None, None)
    return {
        "rho": rho,
        "ci_low": lo,
        "ci_high": hi,
        "excludes_zero": None if interval is None else bool(lo > 0.0 or hi < 0.0),
        "p_value": p_value,
        "p_value_method": p_value_method,
        "n_cells": n_cells,
        "n_resamples": n_resamples,
        "n_resamples_used": n_resamples_used,
        "confidence": confidence,
        "interval_meaningful": n_cells >= MEANINGFUL_INTERVAL_CELLS,
        "reason": reason,
    }


def _is_constant(v: np.ndarray) -> np.ndarray:
    """Along the last axis: all values equal (exactly)."""
    return np.min(v, axis=-1) == np.max(v, axis=-1)


def _rowwise_spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman rho per row of (B, n) arrays: Pearson on average ranks (ties averaged).

    Rows with a constant side give NaN; callers drop them.
    """
    from scipy.stats import rankdata

    rx = rankdata(x, axis=-1)
    ry = rankdata(y, axis=-1)
    rx -= rx.mean(axis=-1, keepdims=True)
    ry -= ry.mean(axis=-1, keepdims=True)
    num = np.sum(rx * ry, axis=-1)
    den = np.sqrt(np.sum(rx * rx, axis=-1) * np.sum(ry * ry, axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = num / den
    # Rounding can carry |rho| a hair past 1 for perfectly (anti)monotone rows.
    return np.clip(rho, -1.0, 1.0)


def _resample_indices(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """(n_resamples, n) cell indices drawn exactly as the reference draws them.

    The reference evaluator resamples with ``random.Random(seed).randrange(n)``,
    n draws per resample, resample after resample. Drawing the same stream
    (100,000 draws for 10 cells: a few tens of milliseconds) makes our interval
    equal to the reference's for the same cells, not merely equal in method.
    """
    import random

    randrange = random.Random(seed).randrange
    flat = [randrange(n) for _ in range(n_resamples * n)]
    return np.asarray(flat, dtype=np.intp).reshape(n_resamples, n)


#: Up to this many cells the permutation p-value enumerates every pairing
#: (8! = 40,320); above, PERMUTATION_DRAWS random ones (seeded: their p-value is
#: within about 0.0014 of the exact one at p = 0.05).
MAX_EXACT_PERMUTATION_CELLS = 8
PERMUTATION_DRAWS = 100_000
# Cells below which a bootstrap interval over cells is not meaningful (printed).
MEANINGFUL_INTERVAL_CELLS = 5


@functools.lru_cache(maxsize=4)
def _all_permutations(n: int) -> np.ndarray:
    """(n!, n) int8: every permutation of range(n), built by inserting k into every position."""
    perms = np.zeros((1, 0), np.int8)
    for k in range(n):
        m = perms.shape[0]
        grown = np.empty((m * (k + 1), k + 1), np.int8)
        for pos in range(k + 1):
            grown[pos * m : (pos + 1) * m] = np.insert(perms, pos, k, axis=1)
        perms = grown
    perms.setflags(write=False)
    return perms


def _centred_ranks(v: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    r = rankdata(v)
    return r - r.mean()


def permutation_p_value(
    metric_values: Sequence[float], gaps: Sequence[float], seed: int = 0
) -> tuple[float, str]:
    """Two-sided permutation p-value of Spearman's rho (metric vs gap); (p, method).

    The null distribution is rho over every pairing of the gaps with the
    metric values (n! of them for n <= MAX_EXACT_PERMUTATION_CELLS: exact;
    else PERMUTATION_DRAWS random pairings, seeded, with the +1 correction of
    Phipson and Smyth 2010). p = min(1, 2 min(P(rho* <= rho), P(rho* >= rho))),
    values within 100 float64 epsilons (relative) of rho counted as equal:
    scipy.stats.permutation_test's convention, so the two agree. method:
    "exact" or "monte carlo (N pairings)". Needs >= 2 cells and no constant side.
    """
    x = np.asarray(metric_values, np.float64)
    y = np.asarray(gaps, np.float64)
    n = x.size
    rx, ry = _centred_ranks(x), _centred_ranks(y)
    norm = math.sqrt(float(rx @ rx) * float(ry @ ry))
    if n < 2 or norm == 0.0:
        raise ValueError("a permutation p-value needs at least 2 cells and no constant side")
    observed = float(rx @ ry) / norm
    gamma = abs(np.finfo(np.float64).eps * 100 * observed)
    if n <= MAX_EXACT_PERMUTATION_CELLS:
        perms, adjustment, method = _all_permutations(n), 0, "exact"
    else:
        rng = np.random.default_rng(seed)
        perms = rng.permuted(np.tile(np.arange(n), (PERMUTATION_DRAWS, 1)), axis=1)
        adjustment, method = 1, f"monte carlo ({PERMUTATION_DRAWS} pairings)"
    less = greater = 0
    block = 200_000
    for start in range(0, perms.shape[0], block):
        null = (ry[perms[start : start + block]] @ rx) / norm
        less += int(np.count_nonzero(null <= observed + gamma))
        greater += int(np.count_nonzero(null >= observed - gamma))
    total = perms.shape[0] + adjustment
    p = 2.0 * min((less + adjustment) / total, (greater + adjustment) / total)
    return float(min(1.0, max(0.0, p))), method


def spearman_with_bootstrap(
    metric_values: Sequence[float],
    gaps: Sequence[float],
    n_resamples: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Spearman rho of metric vs gap, with a paired percentile bootstrap interval.

    metric_values, gaps: (n_cells,) finite numbers, index-aligned. The
    resamples draw n_cells cell indices with replacement from Python's
    ``random.Random(seed)``, in the reference's order (so the interval equals
    the reference's); a resample
    with a constant side has no rho and is dropped (``n_resamples_used``
    counts the rest). The interval is the order-statistic percentile interval
    of the sorted usable rhos r (m of them): ``r[floor(alpha/2 m)]`` and
    ``r[floor((1 - alpha/2) m) - 1]``, alpha = 1 - confidence (the reference's
    convention).

    Returns {rho, ci_low, ci_high, excludes_zero, p_value, p_value_method,
    n_cells, n_resamples, n_resamples_used, confidence, interval_meaningful,
    reason}: ``p_value`` is :func:`permutation_p_value`'s (None where rho is);
    ``interval_meaningful`` is False below MEANINGFUL_INTERVAL_CELLS cells
    (a bootstrap over 3 or 4 cells has a handful of distinct resamples: the
    table says so). ``reason`` is None when all is
    defined; otherwise it says what is not: rho and the interval are None for
    fewer than 3 cells or a constant side; the interval alone (and
    ``excludes_zero``) is None when fewer than 2 resamples are usable.
    """
    x = np.asarray(metric_values, dtype=np.float64)
    y = np.asarray(gaps, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"metric_values and gaps must be 1-D and equal length, got {x.shape} and {y.shape}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("metric_values and gaps must be finite (drop undefined cells first)")
    if n_resamples < 1:
        raise ValueError("n_resamples must be >= 1")
    if not 0.0 < confidence < 1.0:
        raise ValueError("confidence must be in (0, 1)")
    n = x.size
    if n < MIN_CELLS:
        return _result(n, n_resamples, confidence, reason=f"fewer than {MIN_CELLS} paired cells")
    if _is_constant(x):
        return _result(n, n_resamples, confidence, reason="the metric is constant over the cells")
    if _is_constant(y):
        return _result(n, n_resamples, confidence, reason="the gap is constant over the cells")

    from scipy.stats import spearmanr

    rho = float(spearmanr(x, y).statistic)
    p_value, p_method = permutation_p_value(x, y, seed=seed)
    tested = dict(p_value=p_value, p_value_method=p_method)

    idx = _resample_indices(n, n_resamples, seed)
    xb, yb = x[idx], y[idx]
    usable = ~(_is_constant(xb) | _is_constant(yb))
    rhos = np.sort(_rowwise_spearman(xb[usable], yb[usable]))
    m = int(rhos.size)
    if m < 2:
        return _result(
            n, n_resamples, confidence, rho=rho, n_resamples_used=m,
            reason="fewer than 2 bootstrap resamples with a defined rho", **tested,
        )
    alpha = 1.0 - confidence
    lo = float(rhos[max(0, min(int(alpha / 2.0 * m), m - 1))])
    hi = float(rhos[max(0, min(int((1.0 - alpha / 2.0) * m) - 1, m - 1))])
    return _result(n, n_resamples, confidence, rho=rho, interval=(lo, hi), n_resamples_used=m, **tested)


def metric_keys(cells: Iterable[Mapping[str, Any]]) -> list[str]:
    """The metric fields present in cells: M1, M2, M3 first, then any others, sorted.

    A metric is a top-level scalar field (a number, or None where undefined)
    that is not a descriptor (model, env, seed, model_size, gap, verdict...)
    nor a count (``*_states_used``), so metrics added later (latent-space
    ones, say) are correlated without code changes. Curves (lists, or None
    where a model cannot have one: ``*_curve``), intervals (``*_ci``), strings
    and the nested dicts are not metrics.
    """
    keys: set[str] = set()
    for cell in cells:
        for k, v in cell.items():
            if k in _DESCRIPTOR_KEYS or k.endswith(("_states_used", "_curve", "_ci")):
                continue
            if _is_number(v) or v is None:
                keys.add(k)
    return [k for k in CORE_METRICS if k in keys] + sorted(keys - set(CORE_METRICS))


def _paired(cells: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [c for c in cells if _is_finite_number(c.get("gap"))]


def _correlate_metrics(
    cells: Sequence[Mapping[str, Any]], keys: Sequence[str], n_resamples: int, seed: int, confidence: float
) -> dict[str, dict]:
    out = {}
    for key in keys:
        usable = [c for c in cells if _is_finite_number(c.get(key))]
        out[key] = spearman_with_bootstrap(
            [float(c[key]) for c in usable],
            [float(c["gap"]) for c in usable],
            n_resamples=n_resamples,
            seed=seed,
            confidence=confidence,
        )
    return out


def within_env_correlation(
    cells: Sequence[Mapping[str, Any]],
    n_resamples: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, dict]:
    """Per task with >= 3 paired cells, each metric's Spearman correlation with the gap.

    cells: report cells, each with ``env`` (the task), metric fields and, when
    paired, a finite ``gap``. Returns {task: {"n_cells": paired cells,
    "metrics": {metric: spearman_with_bootstrap(...)}}}, the reference's
    layout; a metric undefined in some cells is correlated over the others
    (its own ``n_cells``). Tasks with fewer than 3 paired cells are left out.
    """
    by_task: dict[str, list[Mapping[str, Any]]] = {}
    for cell in _paired(cells):
        by_task.setdefault(str(cell.get("env")), []).append(cell)
    out = {}
    for task in sorted(by_task):
        group = by_task[task]
        if len(group) < MIN_CELLS:
            continue
        identical = identical_models(group)
        out[task] = {
            "n_cells": len(group),
            "warnings": _block_warnings(len(group), identical),
            "identical_models": identical,
            "metrics": _correlate_metrics(group, metric_keys(group), n_resamples, seed, confidence),
        }
    return out


def identical_models(cells: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    """Groups of 2+ cells whose model files are identical (the same ``context.model_sha256``), by model name."""
    by_hash: dict[str, list[str]] = {}
    for cell in cells:
        digest = (cell.get("context") or {}).get("model_sha256")
        if digest:
            by_hash.setdefault(digest, []).append(str(cell.get("model")))
    return [names for names in by_hash.values() if len(names) > 1]


def _block_warnings(n_cells: int, identical: list[list[str]]) -> list[str]:
    warnings_ = []
    if n_cells < MEANINGFUL_INTERVAL_CELLS:
        warnings_.append(
            f"only {n_cells} paired cells: a bootstrap interval over so few cells is not meaningful "
            f"(at least {MEANINGFUL_INTERVAL_CELLS} are needed); read the permutation p-value"
        )
    for names in identical:
        warnings_.append(
            f"{' and '.join(names)} are the same model file: their cells are not independent evidence"
        )
    return warnings_


def pooled_m3_correlation(
    cells: Sequence[Mapping[str, Any]],
    n_resamples: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any] | None:
    """M3 vs gap pooled over every task, or None when the paired cells span fewer than 2 tasks.

    Only M3 pools: it is unitless, while M1/M2 are in each task's own units
    (SPEC.md section 7). Returns {"metric", "tasks", "n_cells", "note",
    "correlation": spearman_with_bootstrap(...)}.
    """
    paired = _paired(cells)
    tasks = sorted({str(c.get("env")) for c in paired})
    if len(tasks) < 2:
        return None
    return {
        "metric": POOLABLE_METRIC,
        "tasks": tasks,
        "n_cells": len(paired),
        "note": "M3 only: M1/M2 are L2 distances in each task's own units and are never pooled across tasks.",
        "correlation": _correlate_metrics(paired, [POOLABLE_METRIC], n_resamples, seed, confidence)[
            POOLABLE_METRIC
        ],
    }

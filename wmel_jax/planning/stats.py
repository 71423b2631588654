"""The Counterfactual Planning Gap's statistics (SPEC section 9), on per-episode successes.

- :func:`gap_interval`: the raw gap (oracle minus learned success rate) and
  the Agresti-Caffo ("plus-4") 95% interval: each arm's rate (s + 1) / (n + 2),
  variance with n + 2, z = 1.96, centred on the adjusted difference;
- :func:`verdict`: MODEL BOTTLENECK (interval above 0), LEARNED OUTPERFORMS
  ORACLE (below 0), PLANNER BOTTLENECK (both rates <= 0.05), MODEL AS GOOD AS
  ORACLE (both >= 0.95), else INCONCLUSIVE, in that order;
- :func:`wilson_interval`: one arm's success rate interval;
- the paired analyses the reference reports beside the gap (episode k of
  both arms starts from the same state): :func:`paired_bootstrap` (percentile
  bootstrap over episode indices, 10,000 resamples drawn from the same seeded
  ``random.Random`` stream as the reference, so its interval equals the
  reference's), :func:`newcombe_paired` (Newcombe's square-and-add interval on
  Wilson bounds with the phi correction), :func:`mcnemar_exact` (two-sided
  exact test on the discordant pairs);
- :func:`episodes_for_half_width`: the episodes per arm an Agresti-Caffo
  interval needs to be at most +-h wide at given rates (the reference's power
  analysis), and :func:`steps_summary` for steps-to-success.

Plain numpy and the standard library; nothing here needs JAX.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

__all__ = [
    "Z95",
    "N_BOOTSTRAP",
    "VERDICTS",
    "gap_interval",
    "verdict",
    "wilson_interval",
    "ac_half_width",
    "episodes_for_half_width",
    "paired_bootstrap",
    "newcombe_paired",
    "mcnemar_exact",
    "steps_summary",
]

Z95 = 1.96
#: Resamples of the paired bootstrap (the reference's).
N_BOOTSTRAP = 10_000
#: Both rates within this of 0 (or of 1): the planner (or nothing) is the bottleneck.
EXTREME_TOLERANCE = 0.05
VERDICTS = (
    "MODEL BOTTLENECK",
    "LEARNED OUTPERFORMS ORACLE",
    "PLANNER BOTTLENECK",
    "MODEL AS GOOD AS ORACLE",
    "INCONCLUSIVE",
)


def _counts(success: Sequence[Any]) -> tuple[int, int]:
    s = np.asarray(success, bool).reshape(-1)
    if s.size == 0:
        raise ValueError("no episodes")
    return int(s.sum()), int(s.size)


def gap_interval(oracle_success: Sequence[Any], learned_success: Sequence[Any], z: float = Z95) -> dict[str, Any]:
    """The reference's ``cpg`` block (without the verdict): rates, raw gap, Agresti-Caffo interval, counts."""
    s_o, n_o = _counts(oracle_success)
    s_l, n_l = _counts(learned_success)
    p_o, p_l = s_o / n_o, s_l / n_l
    t_o, t_l = (s_o + 1.0) / (n_o + 2.0), (s_l + 1.0) / (n_l + 2.0)
    half = z * math.sqrt(t_o * (1.0 - t_o) / (n_o + 2.0) + t_l * (1.0 - t_l) / (n_l + 2.0))
    centre = t_o - t_l
    return {
        "oracle_success_rate": p_o,
        "learned_success_rate": p_l,
        "gap": p_o - p_l,
        "n_episodes_oracle": n_o,
        "n_episodes_learned": n_l,
        "gap_ci_low": centre - half,
        "gap_ci_high": centre + half,
    }


def verdict(cpg: dict[str, Any], tolerance: float = EXTREME_TOLERANCE) -> str:
    """The verdict of a :func:`gap_interval` block (SPEC section 9, in that order)."""
    if cpg["gap_ci_low"] > 0:
        return VERDICTS[0]
    if cpg["gap_ci_high"] < 0:
        return VERDICTS[1]
    p_o, p_l = cpg["oracle_success_rate"], cpg["learned_success_rate"]
    if p_o <= tolerance and p_l <= tolerance:
        return VERDICTS[2]
    if p_o >= 1.0 - tolerance and p_l >= 1.0 - tolerance:
        return VERDICTS[3]
    return VERDICTS[4]


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of one proportion (it does not collapse at 0/n or n/n)."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2.0 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z2 / (4.0 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def ac_half_width(p_oracle: float, p_learned: float, n: int, z: float = Z95) -> float:
    """Agresti-Caffo half-width with n episodes per arm at these rates (the reference's power analysis)."""
    t_o = (p_oracle * n + 1.0) / (n + 2.0)
    t_l = (p_learned * n + 1.0) / (n + 2.0)
    return z * math.sqrt(t_o * (1.0 - t_o) / (n + 2.0) + t_l * (1.0 - t_l) / (n + 2.0))


def episodes_for_half_width(p_oracle: float, p_learned: float, half_width: float = 0.05,
                            z: float = Z95, n_max: int = 10_000_000) -> int | None:
    """The fewest episodes per arm whose Agresti-Caffo interval is at most +-``half_width`` at these rates.

    None if even ``n_max`` is not enough. The half-width decreases with n at
    fixed rates, so a bisection finds it.
    """
    if not half_width > 0:
        raise ValueError("half_width must be positive")
    if ac_half_width(p_oracle, p_learned, n_max, z) > half_width:
        return None
    lo, hi = 1, n_max
    while lo < hi:
        mid = (lo + hi) // 2
        if ac_half_width(p_oracle, p_learned, mid, z) <= half_width:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _python_random_stream(seed: int):
    """The 32-bit outputs of ``random.Random(seed)``, in blocks, as numpy's MT19937 produces them.

    ``random.Random(seed)`` seeds MT19937 with ``init_by_array`` of the seed's
    32-bit words (least significant first; [0] for 0), which is what numpy's
    legacy ``RandomState(words)`` does; ``randint(0, 2**32)`` then returns one
    raw 32-bit output per value, as ``getrandbits(32)`` does.
    """
    seed = abs(int(seed))
    words = []
    while True:
        words.append(seed & 0xFFFFFFFF)
        seed >>= 32
        if not seed:
            break
    state = np.random.RandomState(words)
    while True:
        yield state.randint(0, 2**32, size=1 << 20, dtype=np.uint64)


def paired_bootstrap(oracle_success: Sequence[Any], learned_success: Sequence[Any], n_resamples: int = N_BOOTSTRAP,
                     seed: int = 0, alpha: float = 0.05) -> dict[str, Any]:
    """Percentile bootstrap of the gap over paired episode indices (the reference's, exactly).

    Each resample draws n indices with ``random.Random(seed).randrange(n)``
    (one stream for all resamples, in order) and takes the mean of the paired
    differences; the interval is the sorted resamples at
    ``int(alpha / 2 * B)`` and ``int((1 - alpha / 2) * B) - 1``.
    """
    o = np.asarray(oracle_success, bool).reshape(-1).astype(np.int64)
    l = np.asarray(learned_success, bool).reshape(-1).astype(np.int64)
    if o.size != l.size or o.size == 0:
        raise ValueError("paired arms must be non-empty and of equal length")
    n = o.size
    diff = o - l
    gaps = np.empty(n_resamples, np.float64)
    per_block = max(1, (1 << 22) // n)  # resamples per block: bounded memory at any n
    # One continuous stream, as the reference draws all resamples from one generator.
    draws = _randrange_stream(n, seed)
    for start in range(0, n_resamples, per_block):
        m = min(per_block, n_resamples - start)
        idx = draws(m * n).reshape(m, n)
        gaps[start:start + m] = diff[idx].sum(axis=1) / n  # integer sums: exact, as the reference's
    gaps.sort()
    lo = gaps[max(0, min(int((alpha / 2.0) * n_resamples), n_resamples - 1))]
    hi = gaps[max(0, min(int((1.0 - alpha / 2.0) * n_resamples) - 1, n_resamples - 1))]
    return {"gap": float(o.mean() - l.mean()), "ci_low": float(lo), "ci_high": float(hi),
            "n_resamples": n_resamples, "seed": seed}


def _randrange_stream(n: int, seed: int):
    """A function returning the next ``count`` values of ``random.Random(seed).randrange(n)`` on each call.

    ``randrange(n)`` takes the top ``k = n.bit_length()`` bits of one 32-bit
    output and rejects values >= n, so its values are the stream's top k bits,
    filtered (n < 2**32).
    """
    if not 1 <= n < 2**32:
        raise ValueError("n out of range")
    k = n.bit_length()
    blocks = _python_random_stream(seed)
    pending = np.empty(0, np.int64)

    def take(count: int) -> np.ndarray:
        nonlocal pending
        parts, have = [pending], pending.size
        while have < count:
            values = (next(blocks) >> np.uint64(32 - k)).astype(np.int64)
            values = values[values < n]
            parts.append(values)
            have += values.size
        joined = np.concatenate(parts)
        pending = joined[count:]
        return joined[:count]

    return take


def newcombe_paired(oracle_success: Sequence[Any], learned_success: Sequence[Any], z: float = Z95) -> dict[str, Any]:
    """Newcombe's (1998) interval for a difference of paired proportions (Wilson bounds, phi-corrected)."""
    o = np.asarray(oracle_success, bool).reshape(-1)
    l = np.asarray(learned_success, bool).reshape(-1)
    if o.size != l.size or o.size == 0:
        raise ValueError("paired arms must be non-empty and of equal length")
    n = o.size
    a, b = int(np.sum(o & l)), int(np.sum(o & ~l))
    c, d = int(np.sum(~o & l)), int(np.sum(~o & ~l))
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = _wilson_raw(a + b, n, z)
    l2, u2 = _wilson_raw(a + c, n, z)
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    phi = (a * d - b * c) / math.sqrt(margins) if margins > 0 else 0.0
    diff = p1 - p2
    lower = diff - math.sqrt(max(0.0, (p1 - l1) ** 2 - 2.0 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    upper = diff + math.sqrt(max(0.0, (u1 - p1) ** 2 - 2.0 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return {"gap": diff, "ci_low": lower, "ci_high": upper, "phi": phi}


def _wilson_raw(successes: int, n: int, z: float) -> tuple[float, float]:
    """Wilson bounds without clipping to [0, 1] (the reference's, inside Newcombe's interval)."""
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2.0 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z2 / (4.0 * n * n)) / denom
    return centre - half, centre + half


def mcnemar_exact(oracle_success: Sequence[Any], learned_success: Sequence[Any]) -> dict[str, Any]:
    """Exact two-sided McNemar test: the paired 2x2 table and p (1.0 with no discordant pair)."""
    o = np.asarray(oracle_success, bool).reshape(-1)
    l = np.asarray(learned_success, bool).reshape(-1)
    if o.size != l.size or o.size == 0:
        raise ValueError("paired arms must be non-empty and of equal length")
    both, oracle_only = int(np.sum(o & l)), int(np.sum(o & ~l))
    learned_only, neither = int(np.sum(~o & l)), int(np.sum(~o & ~l))
    m = oracle_only + learned_only
    if m == 0:
        p = 1.0
    else:
        k = min(oracle_only, learned_only)
        # Twice the smaller binomial(m, 1/2) tail, exactly in integers, capped at 1.
        tail = sum(math.comb(m, i) for i in range(k + 1))
        p = min(1.0, 2 * tail / (1 << m))  # int / int: correctly rounded at any m
    return {"both": both, "oracle_only": oracle_only, "learned_only": learned_only, "neither": neither,
            "n_discordant": m, "p_value": p}


def steps_summary(success: Sequence[Any], steps: Sequence[Any]) -> dict[str, Any]:
    """Steps to success over the successful episodes: count, mean, median, quartiles, min, max (None if none)."""
    s = np.asarray(success, bool).reshape(-1)
    st = np.asarray(steps, np.float64).reshape(-1)[s]
    if st.size == 0:
        return {"n": 0, "mean": None, "median": None, "q25": None, "q75": None, "min": None, "max": None}
    q25, med, q75 = np.percentile(st, [25, 50, 75])
    return {"n": int(st.size), "mean": float(st.mean()), "median": float(med), "q25": float(q25),
            "q75": float(q75), "min": int(st.min()), "max": int(st.max())}

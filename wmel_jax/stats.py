"""Does an offline metric track the downstream planning gap? Spearman + bootstrap.

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

import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "MIN_CELLS",
    "CORE_METRICS",
    "spearman_with_bootstrap",
    "metric_keys",
    "within_env_correlation",
    "pooled_m3_correlation",
]

#: Fewest paired cells a correlation is computed from.
MIN_CELLS = 3
#: The three metrics, in report order; other metric keys follow alphabetically.
CORE_METRICS = ("m1_l2_onestep", "m2_l2_kstep", "m3_action_agreement")
#: The one metric that is unitless, hence poolable across tasks.
POOLABLE_METRIC = "m3_action_agreement"

# Cell keys that describe a cell rather than measure it. Numeric context that is
# not a metric lives in a cell's ``context`` dict (as in the reference bundle).
_DESCRIPTOR_KEYS = frozenset(
    {"model", "env", "seed", "model_size", "gap", "verdict", "context", "epochs", "cell"}
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
) -> dict[str, Any]:
    lo, hi = interval if interval is not None else (None, None)
    return {
        "rho": rho,
        "ci_low": lo,
        "ci_high": hi,
        "excludes_zero": None if interval is None else bool(lo > 0.0 or hi < 0.0),
        "n_cells": n_cells,
        "n_resamples": n_resamples,
        "n_resamples_used": n_resamples_used,
        "confidence": confidence,
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

    Returns {rho, ci_low, ci_high, excludes_zero, n_cells, n_resamples,
    n_resamples_used, confidence, reason}. ``reason`` is None when all is
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

    idx = _resample_indices(n, n_resamples, seed)
    xb, yb = x[idx], y[idx]
    usable = ~(_is_constant(xb) | _is_constant(yb))
    rhos = np.sort(_rowwise_spearman(xb[usable], yb[usable]))
    m = int(rhos.size)
    if m < 2:
        return _result(
            n, n_resamples, confidence, rho=rho, n_resamples_used=m,
            reason="fewer than 2 bootstrap resamples with a defined rho",
        )
    alpha = 1.0 - confidence
    lo = float(rhos[max(0, min(int(alpha / 2.0 * m), m - 1))])
    hi = float(rhos[max(0, min(int((1.0 - alpha / 2.0) * m) - 1, m - 1))])
    return _result(n, n_resamples, confidence, rho=rho, interval=(lo, hi), n_resamples_used=m)


def metric_keys(cells: Iterable[Mapping[str, Any]]) -> list[str]:
    """The metric fields present in cells: M1, M2, M3 first, then any others, sorted.

    A metric is a top-level scalar field (a number, or None where undefined)
    that is not a descriptor (model, env, seed, model_size, gap, verdict) nor a
    count (``*_states_used``), so metrics added later (latent-space ones, say)
    are correlated without code changes. Curves (lists, or None where a model
    cannot have one: ``*_curve``), strings and the ``context`` and
    ``unavailable`` dicts are not metrics.
    """
    keys: set[str] = set()
    for cell in cells:
        for k, v in cell.items():
            if k in _DESCRIPTOR_KEYS or k.endswith("_states_used") or k.endswith("_curve"):
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
        out[task] = {
            "n_cells": len(group),
            "metrics": _correlate_metrics(group, metric_keys(group), n_resamples, seed, confidence),
        }
    return out


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

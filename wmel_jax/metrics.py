"""M1, M2, M3 as pure jit/vmap-friendly kernels over whole batches.

Each metric is a pure function of arrays the caller already has: the oracle's
and the learned model's next observations (M1), their k-step open-loop
trajectories (M2), and the task score of every one-step successor (M3). The
kernels never call a model or an oracle, so one set of oracle outputs serves
every checkpoint evaluated in a run. Definitions: SPEC.md section 6.

All three metrics are means, so each has a ``*_sum`` form returning a
:class:`SumCount` (a sum and the number of terms). Sums from chunks of a large
batch combine exactly with :func:`combine_sums` (on the host, in float64), and
:func:`mean_or_none` turns the result into the reported number. Every ``*_sum``
kernel takes an optional ``valid`` mask over states, so a caller can pad the
last chunk to the chunk shape (one compilation) and mask the padding out.

Every ``*_sum`` kernel also takes optional ``segments`` (N,) int ids with a
static ``num_segments``: the sums are then split per segment (a segment-sum;
SumCount(total (S,) or (S, k), count (S,))). The evaluator passes each state's
rollout episode, so the kernels return per-episode partial sums: the host adds
the pieces of an episode that two chunks share (:func:`scatter_segments`) and
resamples whole episodes for the metrics' intervals (``wmel_jax.stats``), at no
extra model or oracle work.

Dtypes: distances are computed in the wider float dtype of the two inputs (the
learned model is float32, the oracle may be float64); nothing here depends on
``jax_enable_x64`` beyond what the inputs' dtypes imply.

The plain-Python per-sample reference for all of this is
``benchmarks/reference.py``; ``tests/test_metrics.py`` checks the two agree.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.typing import ArrayLike

__all__ = [
    "SumCount",
    "l2_distance",
    "one_step_l2",
    "one_step_l2_sum",
    "kstep_l2_curve",
    "kstep_l2_curve_sum",
    "one_step_distance_sum",
    "kstep_distance_curve_sum",
    "kendall_tau_b",
    "action_ranking_agreement",
    "combine_sums",
    "mean_or_none",
    "scatter_segments",
]


class SumCount(NamedTuple):
    """A metric's sum and its number of terms: the chunk-combinable form of a mean.

    ``total``: () for M1 and M3, (k,) for the M2 curve. ``count``: () integer
    (M1: valid states x actions; M2: valid start states; M3: states whose
    tau-b is defined). A NamedTuple, hence a pytree: it can leave a jit.
    """

    total: Array
    count: Array


def _float_dtype(*arrays: ArrayLike) -> jnp.dtype:
    """The wider floating dtype of the inputs (float32 at least)."""
    return jnp.result_type(*(jnp.asarray(a).dtype for a in arrays), jnp.float32)


def l2_distance(a: ArrayLike, b: ArrayLike) -> Array:
    """Euclidean distance along the last axis: (..., obs_dim) x2 -> (...).

    Computed in the wider float dtype of ``a`` and ``b``.
    """
    a, b = jnp.asarray(a), jnp.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"l2_distance: shapes differ: {a.shape} vs {b.shape}")
    dtype = _float_dtype(a, b)
    diff = a.astype(dtype) - b.astype(dtype)
    return jnp.sqrt(jnp.sum(diff * diff, axis=-1))


def _state_mask(valid: ArrayLike | None, n_states: int) -> Array:
    if valid is None:
        return jnp.ones((n_states,), dtype=bool)
    valid = jnp.asarray(valid, dtype=bool)
    if valid.shape != (n_states,):
        raise ValueError(f"valid mask must have shape ({n_states},), got {valid.shape}")
    return valid


def _reduce_states(
    total: Array, count: Array, segments: ArrayLike | None, num_segments: int | None
) -> SumCount:
    """Per-state sums (N, ...) and counts (N,) -> summed over states, or per segment.

    segments None: SumCount(total (...), count ()). Else (N,) int ids in
    [0, num_segments): SumCount(total (S, ...), count (S,)); ids out of range
    are dropped (jax.ops.segment_sum's rule), so give padded rows any valid id
    and mask them out with ``valid``.
    """
    if segments is None:
        return SumCount(jnp.sum(total, axis=0), jnp.sum(count, dtype=jnp.int32))
    if num_segments is None:
        raise ValueError("segments need a static num_segments")
    segments = jnp.asarray(segments)
    if segments.shape != count.shape:
        raise ValueError(f"segments must have shape {count.shape}, got {segments.shape}")
    return SumCount(
        jax.ops.segment_sum(total, segments, num_segments),
        jax.ops.segment_sum(count.astype(jnp.int32), segments, num_segments),
    )


def one_step_l2_sum(
    pred_next: ArrayLike,
    true_next: ArrayLike,
    valid: ArrayLike | None = None,
    segments: ArrayLike | None = None,
    num_segments: int | None = None,
) -> SumCount:
    """M1 as a sum: pred_next, true_next (N, A, obs_dim); valid (N,) bool or None.

    Returns SumCount(total: () sum of ||pred - true||_2 over valid (s, a),
    count: () int32 number of those pairs); with ``segments`` (N,) int and a
    static ``num_segments`` S, both per segment: total (S,), count (S,).
    """
    dist = l2_distance(pred_next, true_next)  # (N, A)
    if dist.ndim != 2:
        raise ValueError(f"one_step_l2 expects (N, A, obs_dim) inputs, got {jnp.shape(pred_next)}")
    mask = _state_mask(valid, dist.shape[0])
    per_state = jnp.sum(jnp.where(mask[:, None], dist, jnp.zeros((), dist.dtype)), axis=1)
    count = mask.astype(jnp.int32) * dist.shape[1]
    return _reduce_states(per_state, count, segments, num_segments)


def one_step_l2(pred_next: ArrayLike, true_next: ArrayLike) -> Array:
    """M1: pred_next, true_next (N, A, obs_dim) -> () mean over (s, a) of ||pred - true||_2."""
    dist = l2_distance(pred_next, true_next)
    if dist.ndim != 2:
        raise ValueError(f"one_step_l2 expects (N, A, obs_dim) inputs, got {jnp.shape(pred_next)}")
    return jnp.mean(dist)


def kstep_l2_curve_sum(
    pred_traj: ArrayLike,
    true_traj: ArrayLike,
    valid: ArrayLike | None = None,
    segments: ArrayLike | None = None,
    num_segments: int | None = None,
) -> SumCount:
    """M2 curve as a sum: pred_traj, true_traj (k, N, obs_dim); valid (N,) bool or None.

    Step-major, as ``lax.scan`` stacks a rollout: ``traj[t - 1]`` is the
    observation after t actions. Returns SumCount(total: (k,) per-step sum over
    valid start states of the L2 distance, count: () int32 valid start states);
    with ``segments`` (N,) and ``num_segments`` S: total (S, k), count (S,).
    """
    dist = l2_distance(pred_traj, true_traj)  # (k, N)
    if dist.ndim != 2:
        raise ValueError(f"kstep_l2_curve expects (k, N, obs_dim) inputs, got {jnp.shape(pred_traj)}")
    mask = _state_mask(valid, dist.shape[1])
    per_state = jnp.where(mask[:, None], dist.T, jnp.zeros((), dist.dtype))  # (N, k)
    return _reduce_states(per_state, mask.astype(jnp.int32), segments, num_segments)


def kstep_l2_curve(pred_traj: ArrayLike, true_traj: ArrayLike) -> Array:
    """M2 curve: pred_traj, true_traj (k, N, obs_dim) -> (k,) mean L2 over states per step.

    M2 is the last point, ``curve[-1]``.
    """
    dist = l2_distance(pred_traj, true_traj)
    if dist.ndim != 2:
        raise ValueError(f"kstep_l2_curve expects (k, N, obs_dim) inputs, got {jnp.shape(pred_traj)}")
    return jnp.mean(dist, axis=1)


def one_step_distance_sum(
    dist: ArrayLike,
    valid: ArrayLike | None = None,
    segments: ArrayLike | None = None,
    num_segments: int | None = None,
) -> SumCount:
    """A one-step error as a sum from precomputed distances: dist (N, A); valid (N,) bool or None.

    For distances other than L2 (a world model's own latent distance).
    Returns SumCount(total: () sum of dist over valid (s, a), count: () int32 number of those pairs);
    with ``segments`` (N,) and ``num_segments`` S, both per segment: total (S,), count (S,).
    """
    dist = jnp.asarray(dist)
    if dist.ndim != 2:
        raise ValueError(f"one_step_distance_sum expects (N, A) distances, got {dist.shape}")
    mask = _state_mask(valid, dist.shape[0])
    per_state = jnp.sum(jnp.where(mask[:, None], dist, jnp.zeros((), dist.dtype)), axis=1)
    count = mask.astype(jnp.int32) * dist.shape[1]
    return _reduce_states(per_state, count, segments, num_segments)


def kstep_distance_curve_sum(
    dist: ArrayLike,
    valid: ArrayLike | None = None,
    segments: ArrayLike | None = None,
    num_segments: int | None = None,
) -> SumCount:
    """A k-step curve as a sum from precomputed distances: dist (k, N) step-major; valid (N,) bool or None.

    Returns SumCount(total: (k,) per-step sum over valid start states, count: () int32 valid start
    states); with ``segments`` (N,) and ``num_segments`` S: total (S, k), count (S,).
    """
    dist = jnp.asarray(dist)
    if dist.ndim != 2:
        raise ValueError(f"kstep_distance_curve_sum expects (k, N) distances, got {dist.shape}")
    mask = _state_mask(valid, dist.shape[1])
    per_state = jnp.where(mask[:, None], dist.T, jnp.zeros((), dist.dtype))  # (N, k)
    return _reduce_states(per_state, mask.astype(jnp.int32), segments, num_segments)


def _pair_signs(v: Array, first: np.ndarray, second: np.ndarray) -> Array:
    """sign(v_i - v_j) for the pairs (first[p], second[p]): (..., A) -> (..., P) int32.

    Comparisons rather than a subtraction, so that two distinct values never
    read as a tie (a product of two tiny differences can underflow to 0).
    """
    vi, vj = v[..., first], v[..., second]
    return (vi > vj).astype(jnp.int32) - (vi < vj).astype(jnp.int32)


def kendall_tau_b(x: ArrayLike, y: ArrayLike) -> tuple[Array, Array]:
    """Kendall tau-b with exact ties along the last axis: x, y (..., A) -> (tau, defined), each (...).

    Over the A(A-1)/2 pairs i < j: concordant if sign(x_i - x_j) *
    sign(y_i - y_j) > 0, discordant if < 0; n1 pairs tied in x, n2 tied in y
    (a pair tied in both counts in both);
    tau_b = (C - D) / sqrt((n0 - n1) (n0 - n2)) with n0 = A(A-1)/2.
    ``defined`` is False when a factor is 0: x or y constant, or A < 2; there
    ``tau`` is NaN. ``tau`` has the wider float dtype of x and y (float32 at
    least). Vectorised over the pairs (the pair index lists are static numpy),
    so memory is O(batch * A^2 / 2).
    """
    x, y = jnp.asarray(x), jnp.asarray(y)
    if x.shape != y.shape:
        raise ValueError(f"kendall_tau_b: shapes differ: {x.shape} vs {y.shape}")
    if x.ndim < 1:
        raise ValueError("kendall_tau_b needs at least one axis (the actions)")
    n_actions = x.shape[-1]
    first, second = np.triu_indices(n_actions, k=1)
    n0 = first.size
    sx = _pair_signs(x, first, second)
    sy = _pair_signs(y, first, second)
    c_minus_d = jnp.sum(sx * sy, axis=-1)
    n1 = jnp.sum(sx == 0, axis=-1, dtype=jnp.int32)
    n2 = jnp.sum(sy == 0, axis=-1, dtype=jnp.int32)
    dtype = _float_dtype(x, y)
    # Integer factors, converted before multiplying (their product can pass int32
    # for A above ~300); sqrt and the division are then the only roundings.
    denom_sq = (n0 - n1).astype(dtype) * (n0 - n2).astype(dtype)
    defined = denom_sq > 0
    safe = jnp.where(defined, denom_sq, jnp.ones((), dtype))
    tau = c_minus_d.astype(dtype) / jnp.sqrt(safe)
    return jnp.where(defined, tau, jnp.full((), jnp.nan, dtype)), defined


def action_ranking_agreement(
    true_scores: ArrayLike,
    pred_scores: ArrayLike,
    valid: ArrayLike | None = None,
    segments: ArrayLike | None = None,
    num_segments: int | None = None,
) -> SumCount:
    """M3 as a sum: true_scores, pred_scores (N, A); valid (N,) bool or None.

    ``scores[s, a]`` is the task score of the successor of state s under
    action a (oracle / learned model). Returns SumCount(total: () sum of
    tau-b over the valid states where it is defined, count: () int32 number of
    those states); with ``segments`` (N,) and ``num_segments`` S, per segment
    (total (S,), count (S,)). M3 = total / count, undefined (None) when count
    is 0: use :func:`mean_or_none`. NaN-free by construction.
    """
    true_scores, pred_scores = jnp.asarray(true_scores), jnp.asarray(pred_scores)
    if true_scores.ndim != 2:
        raise ValueError(f"action_ranking_agreement expects (N, A) scores, got {true_scores.shape}")
    tau, defined = kendall_tau_b(true_scores, pred_scores)
    used = defined & _state_mask(valid, tau.shape[0])
    per_state = jnp.where(used, tau, jnp.zeros((), tau.dtype))
    return _reduce_states(per_state, used.astype(jnp.int32), segments, num_segments)


def combine_sums(*parts: SumCount) -> SumCount:
    """Host-side: add chunk sums in float64 and Python ints (exact counts).

    Returns SumCount(total: numpy float64 () or (k,), count: int). Parts split
    per segment (total (S, ...), count (S,)) are summed over their segments
    first.
    """
    if not parts:
        raise ValueError("combine_sums needs at least one part")
    total = 0.0
    count = 0
    for p in parts:
        t, c = np.asarray(p.total, dtype=np.float64), np.asarray(p.count)
        if c.ndim:  # per segment
            t, c = t.sum(axis=0), c.sum()
        total = total + t
        count += int(c)
    return SumCount(np.asarray(total, dtype=np.float64), count)


def scatter_segments(parts: list[SumCount], segment_maps: list[np.ndarray], n_segments: int) -> SumCount:
    """Host-side: chunks' per-segment sums into one per-episode SumCount (float64, int64).

    parts[j]: SumCount(total (S, ...), count (S,)) of chunk j, whose local
    segment i is global episode ``segment_maps[j][i]`` (local segments past
    ``len(segment_maps[j])`` are unused and must be empty). An episode cut by
    a chunk boundary gets the sum of its pieces. Returns SumCount(total
    (n_segments, ...) float64, count (n_segments,) int64).
    """
    if not parts:
        raise ValueError("scatter_segments needs at least one part")
    first = np.asarray(parts[0].total)
    total = np.zeros((n_segments, *first.shape[1:]), np.float64)
    count = np.zeros(n_segments, np.int64)
    for part, where in zip(parts, segment_maps, strict=True):
        m = len(where)
        np.add.at(total, where, np.asarray(part.total, np.float64)[:m])
        np.add.at(count, where, np.asarray(part.count, np.int64)[:m])
    return SumCount(total, count)


def mean_or_none(part: SumCount) -> tuple[float | list[float] | None, int]:
    """Host-side: (mean, count), the mean None when count is 0.

    The mean is a float for a () total and a list of floats for a (k,) total.
    """
    count = int(part.count)
    if count == 0:
        return None, 0
    mean = np.asarray(part.total, dtype=np.float64) / count
    return (float(mean) if mean.ndim == 0 else [float(v) for v in mean]), count

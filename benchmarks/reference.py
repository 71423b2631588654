"""The per-sample reference algorithm: M1, M2, M3 one state and one action at a time.

This is the independent slow path that the jit/vmap kernels in
``wmel_jax.metrics`` are checked against, and the baseline the benchmarks time.
It follows SPEC.md section 6 (and the reference project's Stage-2 script)
literally, in plain Python over callables:

- ``oracle_step(obs, action) -> next_obs`` and ``model_step(obs, action) ->
  next_obs`` map ONE observation (obs_dim,) and ONE action (action_dim,) to the
  next observation; ``score(obs) -> float`` is the task's M3 score;
- M1 loops over states x actions; M2 rolls each model k steps from each state,
  each fed its own previous prediction; M3 recomputes each one-step successor
  (as the reference does: it does not share them with M1), scores it, and takes
  a pair-loop Kendall tau-b per state.

No numpy vectorisation beyond turning one observation into floats: speed is not
the point, independence is. The callables that wrap a real torch checkpoint
(batch-of-1 forward passes) and dm_control physics (one state at a time) belong
in this module too, beside the algorithm, so benchmarks and parity tests can
run the whole reference path from one place.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np

__all__ = [
    "kendall_tau_b",
    "l2",
    "reference_m1",
    "reference_m2_curve",
    "reference_m3",
    "reference_metrics",
]

Step = Callable[[Any, Any], Any]
Rollout = Callable[[Any, Sequence[Any]], Any]
Score = Callable[[Any], float]


def _floats(v: Any) -> list[float]:
    return [float(x) for x in np.asarray(v, dtype=np.float64).reshape(-1)]


def l2(a: Any, b: Any) -> float:
    """Euclidean distance between two observations, in Python floats."""
    fa, fb = _floats(a), _floats(b)
    if len(fa) != len(fb):
        raise ValueError(f"observation length mismatch: {len(fa)} vs {len(fb)}")
    return math.sqrt(sum((p - q) ** 2 for p, q in zip(fa, fb)))


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Kendall tau-b with exact ties; None when undefined (a constant side, or fewer than 2 items).

    Pair loop over i < j: concordant when the two signs agree and neither is
    a tie, discordant when they disagree; n1 (n2) counts pairs tied in x (y).
    tau_b = (C - D) / sqrt((n0 - n1)(n0 - n2)), n0 = n(n-1)/2.
    """
    if len(x) != len(y):
        raise ValueError(f"length mismatch: {len(x)} vs {len(y)}")
    x, y = [float(v) for v in x], [float(v) for v in y]
    n = len(x)
    n0 = n * (n - 1) // 2
    concordant = discordant = tied_x = tied_y = 0
    for i in range(n):
        for j in range(i + 1, n):
            # Signs from comparisons: x[i] - x[j] could round to 0 for two
            # distinct values only through underflow, never through a comparison.
            sx = (x[i] > x[j]) - (x[i] < x[j])
            sy = (y[i] > y[j]) - (y[i] < y[j])
            if sx == 0:
                tied_x += 1
            if sy == 0:
                tied_y += 1
            if sx * sy > 0:
                concordant += 1
            elif sx * sy < 0:
                discordant += 1
    denom_sq = (n0 - tied_x) * (n0 - tied_y)
    if denom_sq == 0:
        return None
    return (concordant - discordant) / math.sqrt(denom_sq)


def reference_m1(states: Sequence[Any], actions: Sequence[Any], oracle_step: Step, model_step: Step) -> float:
    """M1: mean over states x actions of ||model_step(s, a) - oracle_step(s, a)||_2."""
    total, n = 0.0, 0
    for s in states:
        for a in actions:
            total += l2(model_step(s, a), oracle_step(s, a))
            n += 1
    if n == 0:
        raise ValueError("M1 needs at least one state and one action")
    return total / n


def _iterate(step: Step, s: Any, action_sequence: Sequence[Any]) -> list[Any]:
    out, obs = [], s
    for a in action_sequence:
        obs = step(obs, a)
        out.append(obs)
    return out


def reference_m2_curve(
    states: Sequence[Any],
    action_sequence: Sequence[Any],
    oracle_step: Step,
    model_step: Step,
    oracle_rollout: Rollout | None = None,
) -> list[float]:
    """M2 curve: for t = 1..k, the mean over states of the L2 distance after t actions.

    The model is fed its own previous prediction. The oracle is rolled by
    ``oracle_rollout(s, action_sequence) -> (k, obs_dim)`` when given (so it
    can carry its full physics state), else by iterating ``oracle_step``.
    """
    k = len(action_sequence)
    if not states or k == 0:
        raise ValueError("M2 needs at least one state and one action in the sequence")
    sums = [0.0] * k
    for s in states:
        model_traj = _iterate(model_step, s, action_sequence)
        if oracle_rollout is None:
            oracle_traj = _iterate(oracle_step, s, action_sequence)
        else:
            oracle_traj = list(oracle_rollout(s, action_sequence))
            if len(oracle_traj) != k:
                raise ValueError(f"oracle_rollout returned {len(oracle_traj)} steps, expected {k}")
        for t in range(k):
            sums[t] += l2(model_traj[t], oracle_traj[t])
    return [v / len(states) for v in sums]


def reference_m3(
    states: Sequence[Any], actions: Sequence[Any], oracle_step: Step, model_step: Step, score: Score
) -> tuple[float | None, int]:
    """M3: (mean tau-b over states where it is defined, number of those states); None if none."""
    taus = []
    for s in states:
        oracle_scores = [float(score(oracle_step(s, a))) for a in actions]
        model_scores = [float(score(model_step(s, a))) for a in actions]
        tau = kendall_tau_b(oracle_scores, model_scores)
        if tau is not None:
            taus.append(tau)
    if not taus:
        return None, 0
    return sum(taus) / len(taus), len(taus)


def reference_metrics(
    states: Sequence[Any],
    actions: Sequence[Any],
    action_sequence: Sequence[Any],
    oracle_step: Step,
    model_step: Step,
    score: Score,
    oracle_rollout: Rollout | None = None,
) -> dict[str, Any]:
    """All three metrics for one model, per sample, unrounded, with the report's field names.

    states: N observations (obs_dim,); actions: the A actions (action_dim,);
    action_sequence: the k actions of the M2 rollout. Returns
    {m1_l2_onestep, m2_l2_kstep, m2_curve (k floats), m3_action_agreement
    (float or None), m3_states_used}.
    """
    m1 = reference_m1(states, actions, oracle_step, model_step)
    curve = reference_m2_curve(states, action_sequence, oracle_step, model_step, oracle_rollout)
    m3, used = reference_m3(states, actions, oracle_step, model_step, score)
    return {
        "m1_l2_onestep": m1,
        "m2_l2_kstep": curve[-1],
        "m2_curve": curve,
        "m3_action_agreement": m3,
        "m3_states_used": used,
    }

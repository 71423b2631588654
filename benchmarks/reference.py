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

The whole path, as the reference project's Stage-2 script runs it:

- :func:`dm_control_oracle` ``(task, frame_skip) -> (oracle_step, score,
  actions)``: a dm_control env whose state is rebuilt from the observation on
  every call (SPEC section 4), then ``env.step`` ``frame_skip`` times;
- :func:`torch_model_step` ``(path) -> (model_step, action_set)``: an
  adapter-schema ``.pt`` run as batch-of-1 ``torch.no_grad()`` forward passes;
- :func:`collect_states` and :func:`reference_action_sequence`: the seeded
  state batch (``random.Random(seed)`` actions, a reset every 25 steps) and the
  M2 action sequence (``random.Random(seed + 1)``);
- :func:`run_reference`: all of it for one checkpoint, with wall times, and
  a command line (:func:`run_reference_dreamer` for a DreamerV3 ``latest.pt``:
  M1-M3 through the Markovian projection, the latent metrics on its own
  terms, the reward ranking)::

      python -m wmel_jax.benchmarks.reference MODEL.pt --env TASK [--n-states N] [--k-steps K]
          [--seed S] [--states F.npy] [--action-sequence F.npy] [-o out.json]

torch and dm_control are imported inside the functions that need them, so the
algorithm above imports with numpy alone.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

__all__ = [
    "kendall_tau_b",
    "l2",
    "reference_m1",
    "reference_m2_curve",
    "reference_m3",
    "reference_metrics",
    "TASKS",
    "ORACLE_RESET_EVERY",
    "flatten_observation",
    "default_actions",
    "task_score",
    "make_env",
    "write_state",
    "dm_control_oracle",
    "dm_control_oracle_with_reward",
    "torch_model_step",
    "adapter_step",
    "load_adapter",
    "rollout_states",
    "collect_states",
    "reference_action_sequence",
    "run_reference",
    "reference_latent_m1",
    "reference_latent_m2_curve",
    "reference_reward_rank",
    "reference_latent_metrics",
    "load_upstream",
    "upstream_callables",
    "run_reference_latent",
    "reference_recurrent_latent_metrics",
    "load_dreamer",
    "dreamer_callables",
    "run_reference_dreamer",
    "main",
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
    return _mean_defined_tau(
        ([float(score(oracle_step(s, a))) for a in actions], [float(score(model_step(s, a))) for a in actions])
        for s in states
    )


def _mean_defined_tau(pairs: Iterable[tuple[list[float], list[float]]]) -> tuple[float | None, int]:
    """(mean of tau-b over the pairs where it is defined, how many); (None, 0) when none is (SPEC 6)."""
    taus = [tau for tau in (kendall_tau_b(x, y) for x, y in pairs) if tau is not None]
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


# --------------------------------------------------------------------------- #
# The dm_control oracle, per sample (SPEC section 4)
# --------------------------------------------------------------------------- #

#: Supported tasks -> (dm_control domain, task).
TASKS: dict[str, tuple[str, str]] = {
    "cartpole-swingup": ("cartpole", "swingup"),
    "reacher-easy": ("reacher", "easy"),
    "acrobot-swingup": ("acrobot", "swingup"),
}

#: The oracle env is reset after this many env steps, so dm_control's
#: 1000-step time limit never ends an episode under it (a step past the limit
#: would silently return a reset observation). Its state is rewritten on every
#: call, so the reset changes no output. The reference uses 800.
ORACLE_RESET_EVERY = 800

_LEVELS = (-1.0, -0.5, 0.0, 0.5, 1.0)


def _check_task(task: str) -> tuple[str, str]:
    from wmel_jax.errors import WmelError

    try:
        return TASKS[task]
    except KeyError:
        raise WmelError(f"unknown task {task!r}; known tasks: {', '.join(TASKS)}") from None


def default_actions(task: str) -> list[tuple[float, ...]]:
    """The task's default discrete action set, as the reference's ``env.action_space``.

    cartpole/acrobot: the 5 levels (-1, -0.5, 0, 0.5, 1) as 1-tuples; reacher:
    the 9 pairs of {-1, 0, 1}^2 in ``itertools.product`` order.
    """
    _check_task(task)
    if task == "reacher-easy":
        return [tuple(p) for p in itertools.product((-1.0, 0.0, 1.0), repeat=2)]
    return [(level,) for level in _LEVELS]


def _cartpole_score(obs: Sequence[float]) -> float:
    return -float(obs[1])  # -cos(theta): lower is more upright


def _reacher_score(obs: Sequence[float]) -> float:
    tx, ty = float(obs[2]), float(obs[3])
    return (tx * tx + ty * ty) ** 0.5  # finger-to-target distance


def _acrobot_score(obs: Sequence[float]) -> float:
    return -(float(obs[2]) + float(obs[3]))  # -(cos_upper + cos_lower): minus the tip height


_SCORES: dict[str, Callable[[Sequence[float]], float]] = {
    "cartpole-swingup": _cartpole_score,
    "reacher-easy": _reacher_score,
    "acrobot-swingup": _acrobot_score,
}


def task_score(task: str) -> Callable[[Sequence[float]], float]:
    """The task's M3 score ``score(obs) -> float`` (lower is better; SPEC section 4)."""
    _check_task(task)
    return _SCORES[task]


def make_env(task: str, random_seed: int = 0) -> Any:
    """``dm_control.suite.load`` of the task with ``task_kwargs={"random": random_seed}``.

    The reference builds every env with ``{"random": 0}``.
    """
    domain, name = _check_task(task)
    os.environ.setdefault("MUJOCO_GL", "disable")  # never render; must precede the import
    from dm_control import suite

    return suite.load(domain_name=domain, task_name=name, task_kwargs={"random": random_seed})


def flatten_observation(observation: Any) -> tuple[float, ...]:
    """dm_control's observation dict -> a flat tuple of floats, keys in sorted order.

    For the three tasks the sorted order is dm_control's own order
    (``position, velocity``; ``position, to_target, velocity``;
    ``orientations, velocity``).
    """
    out: list[float] = []
    for key in sorted(observation):
        out.extend(float(x) for x in np.asarray(observation[key]).reshape(-1))
    return tuple(out)


def write_state(task: str, physics: Any, obs: Sequence[float]) -> None:
    """Write the physics state that produced the observation ``obs`` into ``physics``.

    cartpole: qpos = [cart_x, atan2(sin, cos)], qvel = [cart_v, theta_dot];
    reacher: qpos, qvel as observed, then the target geom placed at
    finger_xy(qpos) + to_target (it does not enter the dynamics);
    acrobot: shoulder = atan2(sin_u, cos_u), elbow = atan2(sin_l, cos_l) - shoulder.
    Ends with ``physics.forward()``, so derived quantities are current.
    """
    o = [float(x) for x in obs]
    named = physics.named.data
    if task == "cartpole-swingup":
        cart_x, cos_t, sin_t, cart_v, theta_dot = o
        named.qpos["slider"] = cart_x
        named.qpos["hinge_1"] = math.atan2(sin_t, cos_t)
        named.qvel["slider"] = cart_v
        named.qvel["hinge_1"] = theta_dot
        physics.forward()
    elif task == "reacher-easy":
        pos0, pos1, to_x, to_y, vel0, vel1 = o
        physics.data.qpos[:] = (pos0, pos1)
        physics.data.qvel[:] = (vel0, vel1)
        physics.forward()  # finger position from the new qpos
        finger_x, finger_y = (float(v) for v in named.geom_xpos["finger", :2])
        physics.named.model.geom_pos["target", "x"] = finger_x + to_x
        physics.named.model.geom_pos["target", "y"] = finger_y + to_y
        physics.forward()  # geom_xpos of the target, hence to_target, from the new geom_pos
    elif task == "acrobot-swingup":
        sin_u, sin_l, cos_u, cos_l, v_shoulder, v_elbow = o
        upper = math.atan2(sin_u, cos_u)
        lower = math.atan2(sin_l, cos_l)
        # shoulder is the upper arm's world inclination; elbow is relative to it.
        named.qpos["shoulder"] = upper
        named.qpos["elbow"] = lower - upper
        named.qvel["shoulder"] = v_shoulder
        named.qvel["elbow"] = v_elbow
        physics.forward()
    else:
        _check_task(task)


def dm_control_oracle(
    task: str, frame_skip: int = 1, *, reset_every: int = ORACLE_RESET_EVERY
) -> tuple[Step, Callable[[Sequence[float]], float], list[tuple[float, ...]]]:
    """The reference's per-sample oracle: ``(oracle_step, score, default action set)``.

    ``oracle_step(obs, action) -> next_obs`` (tuples of floats) rebuilds the
    physics state from ``obs`` (:func:`write_state`), then calls
    ``env.step(float32 action)`` ``frame_skip`` times and returns the last
    observation, flattened. The env is reset when another call would take it
    past ``reset_every`` steps since the last reset.
    """
    _check_task(task)
    if isinstance(frame_skip, bool) or int(frame_skip) != frame_skip or frame_skip < 1:
        raise ValueError(f"frame_skip must be a positive integer, got {frame_skip!r}")
    frame_skip = int(frame_skip)
    if frame_skip > reset_every:
        raise ValueError(f"frame_skip {frame_skip} exceeds reset_every {reset_every}")
    step_reward = dm_control_oracle_with_reward(task, frame_skip, reset_every=reset_every)

    def oracle_step(obs: Sequence[float], action: Sequence[float]) -> tuple[float, ...]:
        return step_reward(obs, action)[0]

    return oracle_step, task_score(task), default_actions(task)


def dm_control_oracle_with_reward(
    task: str, frame_skip: int = 1, *, reset_every: int = ORACLE_RESET_EVERY
) -> Callable[[Sequence[float], Sequence[float]], tuple[tuple[float, ...], float]]:
    """``oracle_step_reward(obs, action) -> (next_obs, reward)``, per sample.

    As :func:`dm_control_oracle`'s step, also returning the task's reward
    summed over the ``frame_skip`` env.steps the way TD-MPC2's DMC wrapper sums
    it (``reward = 0; for _ in range(2): reward += env.step(a).reward``). The
    env is reset once before use, as ``initialize_episode`` sets task
    parameters the reward reads (reacher-easy's target size).
    """
    _check_task(task)
    if isinstance(frame_skip, bool) or int(frame_skip) != frame_skip or frame_skip < 1:
        raise ValueError(f"frame_skip must be a positive integer, got {frame_skip!r}")
    frame_skip = int(frame_skip)
    if frame_skip > reset_every:
        raise ValueError(f"frame_skip {frame_skip} exceeds reset_every {reset_every}")
    env = make_env(task)
    env.reset()
    steps_since_reset = 0

    def oracle_step_reward(obs: Sequence[float], action: Sequence[float]) -> tuple[tuple[float, ...], float]:
        nonlocal steps_since_reset
        if steps_since_reset + frame_skip > reset_every:
            env.reset()
            steps_since_reset = 0
        write_state(task, env.physics, obs)
        ctrl = np.asarray(action, dtype=np.float32)
        reward = 0.0
        for _ in range(frame_skip):
            ts = env.step(ctrl)
            reward += float(ts.reward)
        steps_since_reset += frame_skip
        return flatten_observation(ts.observation), reward

    return oracle_step_reward


# --------------------------------------------------------------------------- #
# The torch model, batch of 1
# --------------------------------------------------------------------------- #


def _torch_load(path: Path) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``: nothing in the file runs; WmelError if unreadable."""
    from wmel_jax.errors import WmelError

    if not path.is_file():
        raise WmelError(f"checkpoint {str(path)!r} does not exist or is not a file")
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, truncated zips, refused globals
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WmelError(f"cannot load {str(path)!r} as a torch checkpoint: {reason[:200]}") from None


def load_adapter(path: str | os.PathLike) -> tuple[Any, list[tuple[float, ...]], dict[str, Any]]:
    """``(AdapterWorldModel in eval mode, action set as tuples, meta)`` from an adapter ``.pt``.

    Loaded with ``torch.load(path, map_location="cpu", weights_only=True)``:
    nothing in the file is executed. Raises WmelError when the file is missing
    or is not an adapter-schema checkpoint.
    """
    from wmel_jax.converters.tdmpc2_torch import AdapterWorldModel
    from wmel_jax.errors import WmelError

    path = Path(path)
    blob = _torch_load(path)
    if not isinstance(blob, dict) or "model_state" not in blob or "arch" not in blob:
        raise WmelError(
            f"{str(path)!r} is not an adapter-schema checkpoint ({{model_state, arch, action_levels | "
            f"action_set}}); the reference path needs a decoder"
        )
    try:
        arch = {str(k): int(v) for k, v in dict(blob["arch"]).items()}
    except (TypeError, ValueError):
        raise WmelError(f"{str(path)!r}: arch must be a dict of integers") from None
    arch.setdefault("simnorm_dim", 8)
    model = AdapterWorldModel(arch)
    try:
        model.load_state_dict(blob["model_state"])
    except RuntimeError as e:
        raise WmelError(f"{str(path)!r}: model_state does not fit its arch ({str(e).splitlines()[0]})") from None
    model.eval()
    if ("action_levels" in blob) == ("action_set" in blob):
        raise WmelError(f"{str(path)!r} needs exactly one of action_levels and action_set")
    if "action_levels" in blob:
        actions = [(float(level),) for level in blob["action_levels"]]
    else:
        actions = [tuple(float(x) for x in row) for row in blob["action_set"]]
    if any(len(a) != arch["action_dim"] for a in actions):
        raise WmelError(f"{str(path)!r}: the action set does not have action_dim {arch['action_dim']}")
    meta = dict(blob.get("meta") or {})
    return model, actions, meta


def torch_model_step(path: str | os.PathLike) -> tuple[Step, list[tuple[float, ...]]]:
    """``(model_step, action_set)`` for an adapter ``.pt``, exactly the reference's callable.

    ``model_step(obs, action) -> next_obs``: ``torch.tensor([obs])`` and
    ``torch.tensor([action])`` (float32, batch of 1), ``decode(next(encode(obs),
    a))`` under ``torch.no_grad()``, a tuple of floats out. Unlike the
    reference it accepts actions outside the checkpoint's set (an M2 action
    sequence may be given explicitly).
    """
    model, actions, _ = load_adapter(path)
    return adapter_step(model), actions


def adapter_step(model: Any) -> Step:
    """The batch-of-1 ``model_step`` of a loaded :class:`AdapterWorldModel` (see :func:`torch_model_step`)."""
    import torch

    @torch.no_grad()
    def model_step(obs: Sequence[float], action: Sequence[float]) -> tuple[float, ...]:
        obs_t = torch.tensor([tuple(float(x) for x in obs)], dtype=torch.float32)
        act_t = torch.tensor([tuple(float(x) for x in action)], dtype=torch.float32)
        return tuple(float(x) for x in model.predict(obs_t, act_t).squeeze(0))

    return model_step


# --------------------------------------------------------------------------- #
# The seeded state batch and the M2 action sequence (SPEC section 5)
# --------------------------------------------------------------------------- #


def rollout_states(
    task: str,
    n: int,
    seed: int,
    frame_skip: int = 1,
    reset_every: int = 25,
    *,
    actions: Sequence[Sequence[float]] | None = None,
    env_seed: int = 0,
) -> tuple[list[tuple[float, ...]], list[tuple[float, ...] | None]]:
    """The reference's seeded random-action rollout, with the actions it took.

    Returns ``(states, taken)``: ``states[i]`` is the i-th observation visited;
    ``taken[i]`` the action applied to it to reach ``states[i + 1]``, or None
    where the env was reset instead (and for the last state). Loop, as the
    reference: append the observation; stop after n; reset when
    ``(i + 1) % reset_every == 0``, else step with ``rng.choice(actions)``
    (``frame_skip`` env steps with that action), ``rng = random.Random(seed)``.
    ``actions`` defaults to the task's action set; the env is built with
    ``{"random": env_seed}`` (the reference: 0).
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if reset_every < 1 or frame_skip < 1:
        raise ValueError("reset_every and frame_skip must be positive")
    actions = default_actions(task) if actions is None else [tuple(float(x) for x in a) for a in actions]
    rng = random.Random(seed)
    env = make_env(task, env_seed)
    obs = flatten_observation(env.reset().observation)
    states: list[tuple[float, ...]] = []
    taken: list[tuple[float, ...] | None] = []
    for i in range(n):
        states.append(obs)
        if i == n - 1:
            taken.append(None)
            break
        if (i + 1) % reset_every == 0:
            obs = flatten_observation(env.reset().observation)
            taken.append(None)
        else:
            action = rng.choice(actions)
            ctrl = np.asarray(action, dtype=np.float32)
            for _ in range(frame_skip):
                ts = env.step(ctrl)
                if ts.last():  # the next step would silently reset the env
                    raise ValueError(
                        f"reset_every {reset_every} x frame_skip {frame_skip} env steps reach the "
                        f"task's time limit"
                    )
            obs = flatten_observation(ts.observation)
            taken.append(action)
    return states, taken


def collect_states(
    task: str,
    n: int,
    seed: int,
    frame_skip: int = 1,
    reset_every: int = 25,
    *,
    actions: Sequence[Sequence[float]] | None = None,
    env_seed: int = 0,
) -> list[tuple[float, ...]]:
    """The reference's ``collect_states``: n observations of a seeded random-action rollout.

    See :func:`rollout_states`; returns its states only.
    """
    return rollout_states(task, n, seed, frame_skip, reset_every, actions=actions, env_seed=env_seed)[0]


def reference_action_sequence(actions: Sequence[Any], k: int, seed: int) -> list[Any]:
    """The M2 action sequence: ``k`` draws of ``random.Random(seed + 1).choice(actions)``."""
    rng = random.Random(seed + 1)
    return [rng.choice(list(actions)) for _ in range(k)]


# --------------------------------------------------------------------------- #
# One checkpoint, end to end
# --------------------------------------------------------------------------- #


def _as_rows(name: str, array: Any, width: int, what: str) -> list[tuple[float, ...]]:
    from wmel_jax.errors import WmelError

    a = np.asarray(array, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] != width:
        raise WmelError(f"{name} must have shape (n, {width}) ({what}), got {list(a.shape)}")
    if not np.isfinite(a).all():
        raise WmelError(f"{name} contains NaN or infinite values")
    return [tuple(float(x) for x in row) for row in a]


def run_reference(
    model_path: str | os.PathLike,
    task: str,
    *,
    states: Any = None,
    n_states: int = 150,
    k_steps: int = 10,
    seed: int = 0,
    frame_skip: int | None = None,
    action_sequence: Any = None,
    torch_threads: int | None = 1,
) -> dict[str, Any]:
    """M1, M2 (+ curve), M3 of one adapter ``.pt`` by the per-sample reference path.

    states: (N, obs_dim) observations, else :func:`collect_states` (task, n_states,
    seed); action_sequence: (k, action_dim), else :func:`reference_action_sequence`
    (k_steps, seed). The action set (M1, M3, state collection, M2 draws) is
    the checkpoint's. M2 iterates the oracle on its own observations, as the
    reference does (``so = oracle_dyn(so, a)``: the physics state is rebuilt
    from the observation every step). frame_skip: None takes the checkpoint's meta.frame_skip
    (1 if absent). torch_threads: torch's intra-op threads while it runs
    (restored after; None leaves torch's setting): 1 by default, because a
    batch of 1 gains nothing from threads and, on a shared machine, torch's
    OpenMP threads waiting for a descheduled peer made calls up to 100x slower
    (0.13 ms -> 15 ms per call, measured here). Returns the metrics (unrounded, report field names) with
    the configuration, call counts, and ``timings`` {setup_s (load model,
    build env), collect_states_s (0 when states are given), metrics_s, total_s}.
    """
    import torch

    if torch_threads is None:
        return _run_reference(model_path, task, states, n_states, k_steps, seed, frame_skip,
                              action_sequence, torch_threads)
    previous = torch.get_num_threads()
    torch.set_num_threads(int(torch_threads))
    try:
        return _run_reference(model_path, task, states, n_states, k_steps, seed, frame_skip,
                              action_sequence, torch_threads)
    finally:
        torch.set_num_threads(previous)


def _states_and_sequence(task: str, states: Any, n_states: int, seed: int, frame_skip: int,
                         actions: Sequence[Any], action_sequence: Any, k_steps: int,
                         ) -> tuple[list[tuple[float, ...]], list[tuple[float, ...]], float]:
    """The run's states (given, else collected as SPEC section 5) and M2's action sequence (given, else
    drawn); (state rows, sequence rows, seconds spent collecting the states)."""
    from wmel_jax.converters.tasks import KNOWN_TASK_DIMS

    obs_dim, action_dim = KNOWN_TASK_DIMS[task]
    t0 = time.perf_counter()
    if states is None:
        state_rows = collect_states(task, n_states, seed, frame_skip, actions=actions)
    else:
        state_rows = _as_rows("states", states, obs_dim, f"observations of {task}")
    collect_s = time.perf_counter() - t0
    if action_sequence is None:
        sequence = reference_action_sequence(actions, k_steps, seed)
    else:
        sequence = _as_rows("action sequence", action_sequence, action_dim, "one action per row")
    return state_rows, sequence, collect_s


def _run_reference(model_path: Any, task: str, states: Any, n_states: int, k_steps: int, seed: int,
                   frame_skip: int | None, action_sequence: Any, torch_threads: int | None) -> dict[str, Any]:
    from wmel_jax.errors import WmelError

    t_start = time.perf_counter()
    _check_task(task)
    from wmel_jax.converters.tasks import KNOWN_TASK_DIMS

    model, actions, meta = load_adapter(model_path)
    model_step = adapter_step(model)
    obs_dim, action_dim = KNOWN_TASK_DIMS[task]
    if (model.arch["obs_dim"], model.arch["action_dim"]) != (obs_dim, action_dim):
        raise WmelError(
            f"the checkpoint has obs_dim {model.arch['obs_dim']} and action_dim {model.arch['action_dim']}; "
            f"{task} has {obs_dim} and {action_dim}"
        )
    if frame_skip is None:
        frame_skip = int(meta.get("frame_skip", 1) or 1)
    oracle_step, score, _ = dm_control_oracle(task, frame_skip)
    t_setup = time.perf_counter()

    state_rows, sequence, collect_s = _states_and_sequence(task, states, n_states, seed, frame_skip, actions,
                                                           action_sequence, k_steps)

    calls = {"model": 0, "oracle": 0}

    def counted_model(obs: Sequence[float], action: Sequence[float]) -> tuple[float, ...]:
        calls["model"] += 1
        return model_step(obs, action)

    def counted_oracle(obs: Sequence[float], action: Sequence[float]) -> tuple[float, ...]:
        calls["oracle"] += 1
        return oracle_step(obs, action)

    t_metrics = time.perf_counter()
    metrics = reference_metrics(state_rows, actions, sequence, counted_oracle, counted_model, score)
    t_end = time.perf_counter()
    return {
        "model": str(model_path),
        "task": task,
        "frame_skip": frame_skip,
        "n_states": len(state_rows),
        "k_steps": len(sequence),
        "seed": seed,
        "states_given": states is not None,
        "action_set": [list(a) for a in actions],
        "action_sequence": [list(a) for a in sequence],
        **metrics,
        "calls": dict(calls),
        "torch_threads": torch_threads,
        "timings": {
            "setup_s": t_setup - t_start,
            "collect_states_s": collect_s,
            "metrics_s": t_end - t_metrics,
            "total_s": t_end - t_start,
        },
    }


# --------------------------------------------------------------------------- #
# Latent-space metrics and reward ranking of upstream checkpoints, per sample
# --------------------------------------------------------------------------- #

Encode = Callable[[Any], tuple]
NextLatent = Callable[[Any, Any], tuple]
RewardFn = Callable[[Any, Any], float]
StepReward = Callable[[Any, Any], "tuple[Any, float]"]


def reference_latent_m1(
    states: Sequence[Any], actions: Sequence[Any], oracle_step: Step, encode: Encode, next_latent: NextLatent
) -> float:
    """Latent one-step error: mean over states x actions of ||next(encode(s), a) - encode(O(s, a))||_2."""
    total, n = 0.0, 0
    for s in states:
        for a in actions:
            total += l2(next_latent(encode(s), a), encode(oracle_step(s, a)))
            n += 1
    if n == 0:
        raise ValueError("the latent one-step error needs at least one state and one action")
    return total / n


def reference_latent_m2_curve(
    states: Sequence[Any], action_sequence: Sequence[Any], oracle_step: Step, encode: Encode, next_latent: NextLatent
) -> list[float]:
    """Latent k-step curve: for t = 1..k, the mean over states of ||z_t - encode(s_t)||_2.

    ``z_0 = encode(s)``, ``z_t = next(z_{t-1}, a_t)`` (the latent rolled open
    loop, never re-encoded); ``s_t`` the oracle iterated on its own
    observations, as :func:`reference_m2_curve` iterates it.
    """
    k = len(action_sequence)
    if not states or k == 0:
        raise ValueError("the latent k-step curve needs at least one state and one action in the sequence")
    sums = [0.0] * k
    for s in states:
        z, obs = encode(s), s
        for t, a in enumerate(action_sequence):
            z = next_latent(z, a)
            obs = oracle_step(obs, a)
            sums[t] += l2(z, encode(obs))
    return [v / len(states) for v in sums]


def reference_reward_rank(
    states: Sequence[Any], actions: Sequence[Any], oracle_step_reward: StepReward, encode: Encode, reward: RewardFn
) -> tuple[float | None, int]:
    """Reward-ranking agreement: (mean over states of tau-b(true rewards, predicted rewards), states used).

    Per state: the task's true reward of each transition (s, a) and the
    model's ``reward(encode(s), a)`` over the action set; states where tau-b
    is undefined are skipped (M3's rule); None when none remain.
    """
    return _mean_defined_tau(
        ([float(oracle_step_reward(s, a)[1]) for a in actions], [float(reward(encode(s), a)) for a in actions])
        for s in states
    )


def reference_latent_metrics(
    states: Sequence[Any],
    actions: Sequence[Any],
    action_sequence: Sequence[Any],
    oracle_step_reward: StepReward,
    encode: Encode,
    next_latent: NextLatent,
    reward: RewardFn | None = None,
) -> dict[str, Any]:
    """The latent metrics (and the reward ranking when ``reward`` is given), per sample, report field names.

    Returns {m1_latent_onestep, m2_latent_kstep, m2_latent_curve (k floats),
    reward_rank_agreement (float or None), reward_rank_states_used}; the
    last two None without a reward head.
    """

    def oracle_step(obs: Any, action: Any) -> Any:
        return oracle_step_reward(obs, action)[0]

    m1 = reference_latent_m1(states, actions, oracle_step, encode, next_latent)
    curve = reference_latent_m2_curve(states, action_sequence, oracle_step, encode, next_latent)
    rank, used = (None, None)
    if reward is not None:
        rank, used = reference_reward_rank(states, actions, oracle_step_reward, encode, reward)
    return {
        "m1_latent_onestep": m1,
        "m2_latent_kstep": curve[-1],
        "m2_latent_curve": curve,
        "reward_rank_agreement": rank,
        "reward_rank_states_used": used,
    }


def _upstream_config(state: Any) -> Any:
    """The torch mirror's Config, read from an upstream state dict's own shapes.

    Independent of the converter: encoder layers ``_encoder.state.{i}``, the
    dynamics' width, the policy's output (2 x action_dim), the reward head's
    bins, the Q ensemble (current layout, ``_Qs.params.{layer}.*``), the task
    embedding and the action masks (whose row sums are the tasks' action widths).
    """
    from wmel_jax.converters.tdmpc2_torch import Config
    from wmel_jax.errors import WmelError

    def shape(key: str) -> tuple[int, ...]:
        if key not in state:
            raise WmelError(f"not an upstream TD-MPC2 checkpoint the reference path reads: no key {key!r}")
        return tuple(state[key].shape)

    n_enc = 0
    while f"_encoder.state.{n_enc}.weight" in state:
        n_enc += 1
    if n_enc < 2:
        raise WmelError("not an upstream TD-MPC2 checkpoint: fewer than 2 encoder layers")
    task_dim = num_tasks = 0
    if "_task_emb.weight" in state:
        num_tasks, task_dim = shape("_task_emb.weight")
    enc_dim, enc_in = shape("_encoder.state.0.weight")
    action_dims: tuple[int, ...] = ()
    action_dim = shape("_pi.2.weight")[0] // 2
    if num_tasks:
        masks = state["_action_masks"]
        action_dims = tuple(int(round(float(v))) for v in masks.sum(-1))
    return Config(
        obs_dim=enc_in - task_dim,
        action_dim=action_dim,
        enc_dim=enc_dim,
        mlp_dim=shape("_dynamics.0.weight")[0],
        latent_dim=shape(f"_encoder.state.{n_enc - 1}.weight")[0],
        num_enc_layers=n_enc,
        num_q=shape("_Qs.params.0.weight")[0],
        num_bins=shape("_reward.2.weight")[0],
        task_dim=task_dim,
        action_dims=action_dims,
        episodic="_termination.0.weight" in state,
        log_std_min=int(state["log_std_min"]),
        log_std_max=int(state["log_std_min"]) + int(state["log_std_dif"]),
    )


def load_upstream(path: str | os.PathLike) -> Any:
    """The torch mirror :class:`~converters.tdmpc2_torch.WorldModel` of an upstream ``.pt``, in eval mode.

    ``torch.load(path, map_location="cpu", weights_only=True)`` (nothing in the
    file is executed), ``{"model": state_dict}`` or the bare state dict, the
    current Q layout; loaded with ``load_state_dict(strict=True)``.
    """
    from wmel_jax.converters.tdmpc2_torch import WorldModel
    from wmel_jax.errors import WmelError

    path = Path(path)
    blob = _torch_load(path)
    state = blob.get("model", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict) or "_encoder.state.0.weight" not in state:
        raise WmelError(f"{str(path)!r} is not an upstream TD-MPC2 agent checkpoint ({{'model': state_dict}})")
    model = WorldModel(_upstream_config(state))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise WmelError(f"{str(path)!r}: the state dict does not fit its own shapes ({str(e).splitlines()[0]})") from None
    return model.eval()


def upstream_callables(model: Any, task_index: int | None = None) -> tuple[Encode, NextLatent, RewardFn]:
    """Batch-of-1 ``(encode(obs), next_latent(z, a), reward(z, a))`` of a torch mirror WorldModel.

    Each call is one ``torch.no_grad()`` forward pass on a batch of 1,
    float32. A multitask model (``task_index`` given) gets what upstream's
    multitask wrapper and planner give it: the observation zero-padded to the
    model's width, the action zero-padded and multiplied by the task's action
    mask, and the task index.
    """
    import torch

    cfg = model.cfg
    if cfg.multitask != (task_index is not None):
        raise ValueError("a multitask model needs task_index; a single-task model takes none")
    task = None if task_index is None else int(task_index)
    mask = None if task is None else model._action_masks[task]

    def row(values: Any, width: int) -> torch.Tensor:
        x = [float(v) for v in values] + [0.0] * (width - len(values))  # zero-padding (multitask)
        return torch.tensor([x], dtype=torch.float32)

    def action_row(action: Any) -> torch.Tensor:
        a = row(action, cfg.action_dim)
        return a if mask is None else a * mask

    @torch.no_grad()
    def encode(obs: Any) -> tuple[float, ...]:
        return tuple(float(x) for x in model.encode(row(obs, cfg.obs_dim), task).squeeze(0))

    @torch.no_grad()
    def next_latent(z: Any, action: Any) -> tuple[float, ...]:
        z_t = torch.tensor([tuple(float(x) for x in z)], dtype=torch.float32)
        return tuple(float(x) for x in model.next(z_t, action_row(action), task).squeeze(0))

    @torch.no_grad()
    def reward(z: Any, action: Any) -> float:
        z_t = torch.tensor([tuple(float(x) for x in z)], dtype=torch.float32)
        return float(model.reward_value(z_t, action_row(action), task)[0])

    return encode, next_latent, reward


def run_reference_latent(
    model_path: str | os.PathLike,
    task: str,
    *,
    states: Any = None,
    action_sequence: Any = None,
    actions: Any = None,
    frame_skip: int = 2,
    task_name: str | None = None,
    n_states: int = 150,
    k_steps: int = 10,
    seed: int = 0,
    torch_threads: int | None = 1,
) -> dict[str, Any]:
    """Latent metrics and reward-ranking agreement of one upstream ``.pt``, by the per-sample path.

    dm_control for the oracle and the true rewards (one state at a time,
    rewards summed over ``frame_skip`` env.steps: upstream's default is 2),
    the torch mirror for the model (batch-of-1 calls), plain-Python tau-b.
    states: (N, obs_dim) observations of ``task``, else :func:`collect_states`
    (n_states, seed, frame_skip); actions: (A, action_dim), else the task's
    default set (upstream checkpoints have a continuous action space);
    action_sequence: (k, action_dim), else :func:`reference_action_sequence`.
    A multitask checkpoint is run on ``task_name`` (default ``task``), its index
    in upstream's task list for the model's number of tasks (mt30/mt80).
    Returns the metrics (report field names, unrounded) with the configuration
    and ``timings`` {setup_s, collect_states_s, metrics_s, total_s}.
    """
    import torch

    previous = torch.get_num_threads()
    if torch_threads is not None:
        torch.set_num_threads(int(torch_threads))
    try:
        return _run_reference_latent(model_path, task, states, action_sequence, actions, frame_skip,
                                     task_name, n_states, k_steps, seed, torch_threads)
    finally:
        torch.set_num_threads(previous)


def _run_reference_latent(model_path: Any, task: str, states: Any, action_sequence: Any, actions: Any,
                          frame_skip: int, task_name: str | None, n_states: int, k_steps: int, seed: int,
                          torch_threads: int | None) -> dict[str, Any]:
    from wmel_jax.converters.tasks import KNOWN_TASK_DIMS, upstream_task_names
    from wmel_jax.errors import WmelError

    t_start = time.perf_counter()
    _check_task(task)
    obs_dim, action_dim = KNOWN_TASK_DIMS[task]
    model = load_upstream(model_path)
    cfg = model.cfg
    task_index = None
    if cfg.multitask:
        names, _ = upstream_task_names(cfg.num_tasks)
        name = task_name or task
        if names is None or name not in names:
            raise WmelError(f"{name!r} is not in upstream's task list for {cfg.num_tasks} tasks")
        task_index = names.index(name)
        if cfg.obs_dim < obs_dim or cfg.action_dims[task_index] != action_dim:
            raise WmelError(f"the multitask model's widths for {name} do not fit {task}")
    elif (cfg.obs_dim, cfg.action_dim) != (obs_dim, action_dim):
        raise WmelError(f"the checkpoint has obs_dim {cfg.obs_dim} and action_dim {cfg.action_dim}; "
                        f"{task} has {obs_dim} and {action_dim}")
    encode, next_latent, reward = upstream_callables(model, task_index)
    oracle_step_reward = dm_control_oracle_with_reward(task, frame_skip)
    action_set = default_actions(task) if actions is None else _as_rows("actions", actions, action_dim, "action set")
    t_setup = time.perf_counter()
    state_rows, sequence, collect_s = _states_and_sequence(task, states, n_states, seed, frame_skip, action_set,
                                                           action_sequence, k_steps)
    t_metrics = time.perf_counter()
    metrics = reference_latent_metrics(state_rows, action_set, sequence, oracle_step_reward, encode, next_latent, reward)
    t_end = time.perf_counter()
    return {
        "model": str(model_path),
        "task": task,
        "task_index": task_index,
        "frame_skip": int(frame_skip),
        "n_states": len(state_rows),
        "k_steps": len(sequence),
        "seed": seed,
        "action_set": [list(a) for a in action_set],
        "action_sequence": [list(a) for a in sequence],
        **metrics,
        "torch_threads": torch_threads,
        "timings": {
            "setup_s": t_setup - t_start,
            "collect_states_s": collect_s,
            "metrics_s": t_end - t_metrics,
            "total_s": t_end - t_start,
        },
    }


# --------------------------------------------------------------------------- #
# DreamerV3 (NM512/dreamerv3-torch), per sample
# --------------------------------------------------------------------------- #

Observe = Callable[[Any, Any], Any]
Distance = Callable[[Any, Any], float]


def reference_recurrent_latent_metrics(
    states: Sequence[Any],
    actions: Sequence[Any],
    action_sequence: Sequence[Any],
    oracle_step_reward: StepReward,
    encode: Encode,
    next_latent: NextLatent,
    observe: Observe,
    distance: Distance,
    reward: RewardFn | None = None,
) -> dict[str, Any]:
    """The latent metrics of a recurrent model, per sample, with its own distance; report field names.

    - one-step: mean over states x actions of ``distance(p, observe(p, O(s, a)))``
      with ``p = next(encode(s), a)``: the prior against the posterior of the
      oracle's successor given that prior;
    - k-step: ``z_0 = q_0 = encode(s)``; ``z_t = next(z_{t-1}, a_t)`` (the prior
      rolled open loop) against ``q_t = observe(next(q_{t-1}, a_t), s_t)`` (the
      posterior filtered along the oracle's trajectory ``s_t``, the oracle
      iterated on its own observations), mean over states at each step;
    - reward ranking (``reward(z, a)`` given): as :func:`reference_reward_rank`.
    """
    if not states or not actions or not action_sequence:
        raise ValueError("the latent metrics need states, actions and an action sequence")

    def oracle_step(obs: Any, action: Any) -> Any:
        return oracle_step_reward(obs, action)[0]

    total, n = 0.0, 0
    for s in states:
        z = encode(s)
        for a in actions:
            prior = next_latent(z, a)
            total += distance(prior, observe(prior, oracle_step(s, a)))
            n += 1
    k = len(action_sequence)
    sums = [0.0] * k
    for s in states:
        z = post = encode(s)
        obs = s
        for t, a in enumerate(action_sequence):
            z = next_latent(z, a)
            obs = oracle_step(obs, a)
            post = observe(next_latent(post, a), obs)
            sums[t] += distance(z, post)
    curve = [v / len(states) for v in sums]
    rank, used = (None, None)
    if reward is not None:
        rank, used = reference_reward_rank(states, actions, oracle_step_reward, encode, reward)
    return {
        "m1_latent_onestep": total / n,
        "m2_latent_kstep": curve[-1],
        "m2_latent_curve": curve,
        "reward_rank_agreement": rank,
        "reward_rank_states_used": used,
    }


def load_dreamer(path: str | os.PathLike, **given: Any) -> Any:
    """The torch mirror WorldModel of a dreamerv3-torch ``latest.pt``, in eval mode.

    ``torch.load(path, map_location="cpu", weights_only=True)`` (nothing in
    the file is executed); the world model is the ``_wm.`` (or
    ``_wm._orig_mod.``) keys, read by the mirror's own shape reading
    (independent of the converter) and loaded strictly. ``given``: what shapes
    cannot tell (``discrete``, ``act``, ``unimix``, ``symlog_inputs``).
    """
    from wmel_jax.converters import dreamerv3_torch as D
    from wmel_jax.errors import WmelError

    path = Path(path)
    blob = _torch_load(path)
    try:
        state = D._world_model_state(blob)
        model = D.WorldModel(D.config_from_state(state, **given))
        model.load_state_dict(state, strict=True)
    except (ValueError, KeyError, RuntimeError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WmelError(f"{str(path)!r} is not a dreamerv3-torch checkpoint the reference path reads ({reason})") from None
    return model.eval()


def dreamer_callables(model: Any) -> dict[str, Callable]:
    """Batch-of-1 callables of a torch mirror DreamerV3 WorldModel, every stochastic node at its mode.

    ``model_step(obs, a) -> next_obs`` (the Markovian projection), ``encode(obs)``
    (a first frame's posterior), ``next_latent(z, a)`` (the prior step),
    ``observe(prior, obs)`` (the posterior), ``distance(z1, z2)`` (the fraction
    of latent groups whose class differs), ``reward(z, a)`` (the reward head at
    ``next_latent(z, a)``; None without a reward head). Latents are the
    mirror's dicts of batch-1 tensors; each call one ``torch.no_grad()``
    forward pass, float32.
    """
    import torch

    def row(values: Any) -> torch.Tensor:
        return torch.tensor([tuple(float(x) for x in values)], dtype=torch.float32)

    @torch.no_grad()
    def model_step(obs: Any, action: Any) -> tuple[float, ...]:
        return tuple(float(x) for x in model.markovian_step(row(obs), row(action)).squeeze(0))

    @torch.no_grad()
    def encode(obs: Any) -> Any:
        return model.encode(row(obs))

    @torch.no_grad()
    def next_latent(z: Any, action: Any) -> Any:
        return model.latent_step(z, row(action))

    @torch.no_grad()
    def observe(prior: Any, obs: Any) -> Any:
        return model.observe(prior, row(obs))

    def distance(a: Any, b: Any) -> float:
        return float((a["stoch"].argmax(-1) != b["stoch"].argmax(-1)).float().mean())

    @torch.no_grad()
    def reward(z: Any, action: Any) -> float:
        return float(model.reward(model.latent_step(z, row(action)))[0])

    return {"model_step": model_step, "encode": encode, "next_latent": next_latent, "observe": observe,
            "distance": distance, "reward": reward if "reward" in model.heads else None}


def run_reference_dreamer(
    model_path: str | os.PathLike,
    task: str,
    *,
    states: Any = None,
    action_sequence: Any = None,
    actions: Any = None,
    frame_skip: int = 2,
    n_states: int = 150,
    k_steps: int = 10,
    seed: int = 0,
    torch_threads: int | None = 1,
    **given: Any,
) -> dict[str, Any]:
    """M1-M3, the latent metrics and the reward ranking of one DreamerV3 ``latest.pt``, per sample.

    The reference's queries of a DreamerV3 model: M1-M3 (:func:`reference_metrics`)
    through the Markovian projection, the latent metrics by
    :func:`reference_recurrent_latent_metrics`; dm_control for the oracle and
    the true rewards (one state at a time, ``frame_skip`` env.steps: upstream
    trains DMC with 2), the torch mirror batch-of-1. ``actions``: the action
    set (A, action_dim), else the task's default set (a continuous action
    space); states and the M2 sequence as :func:`run_reference_latent`.
    ``given``: what shapes cannot tell (:func:`load_dreamer`). Returns the
    metrics (report field names, unrounded) with the configuration, call
    counts and ``timings`` {setup_s, collect_states_s, metrics_s, latent_s, total_s}.
    """
    import torch

    previous = torch.get_num_threads()
    if torch_threads is not None:
        torch.set_num_threads(int(torch_threads))
    try:
        return _run_reference_dreamer(model_path, task, states, action_sequence, actions, frame_skip, n_states,
                                      k_steps, seed, torch_threads, given)
    finally:
        torch.set_num_threads(previous)


def _run_reference_dreamer(model_path: Any, task: str, states: Any, action_sequence: Any, actions: Any,
                           frame_skip: int, n_states: int, k_steps: int, seed: int, torch_threads: int | None,
                           given: dict[str, Any]) -> dict[str, Any]:
    from wmel_jax.converters.tasks import KNOWN_TASK_DIMS
    from wmel_jax.errors import WmelError

    t_start = time.perf_counter()
    _check_task(task)
    obs_dim, action_dim = KNOWN_TASK_DIMS[task]
    model = load_dreamer(model_path, **given)
    if (model.cfg.obs_dim, model.cfg.num_actions) != (obs_dim, action_dim):
        raise WmelError(f"the checkpoint has obs_dim {model.cfg.obs_dim} and action_dim {model.cfg.num_actions}; "
                        f"{task} has {obs_dim} and {action_dim}")
    fns = dreamer_callables(model)
    oracle_step_reward = dm_control_oracle_with_reward(task, frame_skip)
    oracle_step, score, _ = dm_control_oracle(task, frame_skip)
    action_set = default_actions(task) if actions is None else _as_rows("actions", actions, action_dim, "action set")
    t_setup = time.perf_counter()
    state_rows, sequence, collect_s = _states_and_sequence(task, states, n_states, seed, frame_skip, action_set,
                                                           action_sequence, k_steps)
    calls = {"model": 0}

    def counted_model(obs: Sequence[float], action: Sequence[float]) -> tuple[float, ...]:
        calls["model"] += 1
        return fns["model_step"](obs, action)

    t_metrics = time.perf_counter()
    metrics = reference_metrics(state_rows, action_set, sequence, oracle_step, counted_model, score)
    t_latent = time.perf_counter()
    metrics.update(reference_recurrent_latent_metrics(
        state_rows, action_set, sequence, oracle_step_reward, fns["encode"], fns["next_latent"], fns["observe"],
        fns["distance"], fns["reward"]))
    t_end = time.perf_counter()
    return {
        "model": str(model_path),
        "task": task,
        "frame_skip": int(frame_skip),
        "n_states": len(state_rows),
        "k_steps": len(sequence),
        "seed": seed,
        "action_set": [list(a) for a in action_set],
        "action_sequence": [list(a) for a in sequence],
        **metrics,
        "calls": dict(calls),
        "torch_threads": torch_threads,
        "timings": {
            "setup_s": t_setup - t_start,
            "collect_states_s": collect_s,
            "metrics_s": t_latent - t_metrics,
            "latent_s": t_end - t_latent,
            "total_s": t_end - t_start,
        },
    }


def _load_npy(path: str, what: str) -> np.ndarray:
    from wmel_jax.errors import WmelError

    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise WmelError(f"{what} file {path!r} does not exist") from None
    except (OSError, ValueError) as e:
        raise WmelError(f"cannot read {what} file {path!r} as a .npy array: {str(e).splitlines()[0]}") from None


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m wmel_jax.benchmarks.reference MODEL.pt --env TASK ...``: the reference path on one model."""
    from wmel_jax.errors import EXIT_USAGE, WmelError
    from wmel_jax.fileio import check_writable, write_json

    p = argparse.ArgumentParser(
        prog="python -m wmel_jax.benchmarks.reference",
        description="M1/M2/M3 of one adapter-schema .pt by the per-sample reference path "
        "(torch batch-of-1, dm_control one state at a time).",
    )
    p.add_argument("model", help="adapter-schema torch checkpoint (.pt)")
    p.add_argument("--env", default=None, help=f"task ({', '.join(TASKS)}); default: the checkpoint's meta.task")
    p.add_argument("--n-states", type=int, default=150)
    p.add_argument("--k-steps", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frame-skip", type=int, default=None, help="default: the checkpoint's meta.frame_skip, else 1")
    p.add_argument("--states", default=None, help="(N, obs_dim) .npy of observations instead of sampling")
    p.add_argument("--action-sequence", default=None, help="(k, action_dim) .npy of M2 actions")
    p.add_argument("--torch-threads", type=int, default=1,
                   help="torch intra-op threads (default 1: batch-of-1 calls gain nothing from more)")
    p.add_argument("-o", "--output", default=None, help="write the result as JSON here")
    args = p.parse_args(argv)
    try:
        if args.n_states < 1 or args.k_steps < 1:
            raise WmelError("--n-states and --k-steps must be positive")
        if args.frame_skip is not None and args.frame_skip < 1:
            raise WmelError("--frame-skip must be positive")
        if args.torch_threads < 1:
            raise WmelError("--torch-threads must be positive")
        if args.output:
            check_writable(args.output)
        task = args.env
        if task is None:
            task = load_adapter(args.model)[2].get("task")
            if not task:
                raise WmelError("the checkpoint's meta names no task: pass --env")
        states = _load_npy(args.states, "states") if args.states else None
        sequence = _load_npy(args.action_sequence, "action sequence") if args.action_sequence else None
        result = run_reference(args.model, str(task), states=states, n_states=args.n_states,
                               k_steps=args.k_steps, seed=args.seed, frame_skip=args.frame_skip,
                               action_sequence=sequence, torch_threads=args.torch_threads)
        if args.output:
            write_json(args.output, result)
    except WmelError as e:
        print(f"reference: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    m3 = result["m3_action_agreement"]
    t = result["timings"]
    print(f"{result['task']}  {result['model']}  (N={result['n_states']}, k={result['k_steps']}, "
          f"seed={result['seed']}, frame_skip={result['frame_skip']})")
    print(f"  M1 {result['m1_l2_onestep']:.6f}  M2 {result['m2_l2_kstep']:.6f}  "
          f"M3 {'null' if m3 is None else f'{m3:+.6f}'} ({result['m3_states_used']} states)")
    print("  M2 curve " + " ".join(f"{v:.4f}" for v in result["m2_curve"]))
    print(f"  wall time {t['total_s']:.2f} s: setup {t['setup_s']:.2f}, states {t['collect_states_s']:.2f}, "
          f"metrics {t['metrics_s']:.2f} ({result['calls']['model']} model calls, "
          f"{result['calls']['oracle']} oracle calls)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

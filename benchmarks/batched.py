"""Arm 2 of the benchmark: the best batched CPU alternative a user could write without JAX.

Same metrics as ``wmel-jax eval`` (M1, the M2 curve, M3; SPEC.md section 6),
computed over the whole state batch with the tools a careful PyTorch user
already has:

- the oracle: C MuJoCo through ``mujoco.rollout`` on all cores, on exactly the
  MJCF model dm_control's task loads (:class:`benchmarks.native.NativeRollout`);
  observation <-> physics state conversions in vectorised numpy
  (:class:`NativeTaskOracle`). One rollout of ``N x A`` states for the
  one-step successors (M1, M3), one rollout of ``N`` states for ``k`` steps
  for the trajectory (M2);
- the model: the adapter ``.pt`` loaded into the torch mirror
  (``benchmarks.reference.load_adapter``), float32, ``torch.no_grad()``, on
  all cores, in a few large batched calls: the encoder once per state, the
  dynamics and decoder once per (state, action), then ``k`` batched
  ``predict`` steps for M2 (the model fed its own prediction, as the
  reference feeds it). Chunked over states to bound memory. It can also
  compute the latent-space errors wmel-jax reports (encoder on the oracle's
  successors and trajectory, the latent rolled open loop); the benchmark's
  comparisons leave them out on both arms (``latent=False``, wmel-jax's
  ``--metrics observation``), as the reference computes M1-M3 only;
- the metrics: vectorised numpy, Kendall tau-b per state over all action pairs
  with the reference's tie and undefined rules.

The oracle's answers depend only on the states and actions, so a sweep of
checkpoints computes them once (:func:`native_targets`) and runs
:func:`torch_metrics` per checkpoint, the same sharing wmel-jax does.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import numpy as np

from wmel_jax.benchmarks.native import NativeRollout, default_threads

__all__ = [
    "NativeTaskOracle",
    "NativeTargets",
    "TorchAdapter",
    "native_targets",
    "torch_metrics",
    "kendall_tau_b_rows",
    "score_rows",
    "run_batched",
]

_XML = {"cartpole-swingup": "cartpole.xml", "reacher-easy": "reacher.xml", "acrobot-swingup": "acrobot.xml"}


# --------------------------------------------------------------------------- #
# The oracle: numpy observation <-> state, mujoco.rollout stepping
# --------------------------------------------------------------------------- #


def score_rows(task: str, obs: np.ndarray) -> np.ndarray:
    """The task's M3 score (lower is better; SPEC section 4): obs (..., obs_dim) -> (...)."""
    obs = np.asarray(obs, np.float64)
    if task == "cartpole-swingup":
        return -obs[..., 1]
    if task == "reacher-easy":
        return np.sqrt(obs[..., 2] ** 2 + obs[..., 3] ** 2)
    if task == "acrobot-swingup":
        return -(obs[..., 2] + obs[..., 3])
    raise ValueError(f"unknown task {task!r}")


class NativeTaskOracle:
    """The DMC task oracle as numpy + ``mujoco.rollout``: batched next observations and trajectories.

    Observation <-> state as SPEC.md section 4, in numpy: cartpole
    qpos = [x, atan2(sin, cos)] and the pole's cos/sin from its hinge angle
    (the hinge is the pole's only rotation, so ``xmat`` zz/xz are its cos/sin);
    acrobot shoulder = atan2(sin_u, cos_u), elbow = atan2(sin_l, cos_l) -
    shoulder, and the world-frame inclinations back as shoulder and
    shoulder + elbow; reacher qpos/qvel as observed, the finger position by
    planar forward kinematics of the model's own body offsets, and the target
    (finger + to_target, not physics state) carried through the step.
    """

    def __init__(self, task: str, frame_skip: int = 1, nthread: int | None = None):
        if task not in _XML:
            raise ValueError(f"unknown task {task!r}")
        self.task = task
        self.frame_skip = int(frame_skip)
        self.native = NativeRollout(_XML[task], nthread)
        m = self.native.model
        if task == "reacher-easy":
            # Planar chain: arm (shoulder hinge) -> hand (wrist hinge) -> finger geom; all hinges about z.
            self._arm_xy = np.array(m.body("arm").pos[:2], np.float64)
            self._hand_xy = np.array(m.body("hand").pos[:2], np.float64)
            finger = m.geom("finger")
            self._finger_xy = np.array(m.body("finger").pos[:2], np.float64) + np.array(finger.pos[:2], np.float64)

    @property
    def nthread(self) -> int:
        return self.native.nthread

    def close(self) -> None:
        self.native.close()

    def __enter__(self) -> "NativeTaskOracle":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- observation <-> physics state --------------------------------------

    def _finger(self, qpos: np.ndarray) -> np.ndarray:
        """Reacher finger (x, y) in the world from qpos (..., 2)."""
        a0 = qpos[..., 0]
        a1 = a0 + qpos[..., 1]

        def rot(angle: np.ndarray, xy: np.ndarray) -> np.ndarray:
            c, s = np.cos(angle), np.sin(angle)
            return np.stack([c * xy[0] - s * xy[1], s * xy[0] + c * xy[1]], axis=-1)

        return self._arm_xy + rot(a0, self._hand_xy) + rot(a1, self._finger_xy)

    def qpos_qvel_aux(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """obs (N, obs_dim) -> qpos (N, nq), qvel (N, nv), aux (the reacher target (N, 2), else None)."""
        o = np.asarray(obs, np.float64)
        if self.task == "cartpole-swingup":
            qpos = np.stack([o[:, 0], np.arctan2(o[:, 2], o[:, 1])], axis=-1)
            return qpos, o[:, 3:5], None
        if self.task == "reacher-easy":
            qpos = o[:, 0:2]
            return qpos, o[:, 4:6], self._finger(qpos) + o[:, 2:4]
        shoulder = np.arctan2(o[:, 0], o[:, 2])
        elbow = np.arctan2(o[:, 1], o[:, 3]) - shoulder
        return np.stack([shoulder, elbow], axis=-1), o[:, 4:6], None

    def observe(self, qpos: np.ndarray, qvel: np.ndarray, aux: np.ndarray | None) -> np.ndarray:
        """qpos (..., nq), qvel (..., nv), aux -> observations (..., obs_dim), dm_control's order."""
        if self.task == "cartpole-swingup":
            theta = qpos[..., 1]
            return np.stack([qpos[..., 0], np.cos(theta), np.sin(theta), qvel[..., 0], qvel[..., 1]], axis=-1)
        if self.task == "reacher-easy":
            return np.concatenate([qpos, aux - self._finger(qpos), qvel], axis=-1)
        upper = qpos[..., 0]
        lower = upper + qpos[..., 1]
        return np.stack(
            [np.sin(upper), np.sin(lower), np.cos(upper), np.cos(lower), qvel[..., 0], qvel[..., 1]], axis=-1
        )

    # -- batched answers ---------------------------------------------------------

    def next_obs(self, states: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """O(s, a) for every state and action: states (N, obs_dim), actions (A, action_dim) -> (N, A, obs_dim)."""
        n, a = states.shape[0], actions.shape[0]
        qpos, qvel, aux = self.qpos_qvel_aux(states)
        start = self.native.states(np.repeat(qpos, a, axis=0), np.repeat(qvel, a, axis=0))  # state-major
        control = np.tile(np.asarray(actions, np.float64), (n, 1))[:, None, :]  # (N*A, 1, nu): held
        out = self.native.run(start, control, self.frame_skip)[:, -1]  # (N*A, nstate)
        q, v = self.native.qpos_qvel(out)
        aux_rep = None if aux is None else np.repeat(aux, a, axis=0)
        return self.observe(q, v, aux_rep).reshape(n, a, -1)

    def trajectory(self, states: np.ndarray, sequence: np.ndarray) -> np.ndarray:
        """The open-loop rollout of ``sequence`` (k, action_dim) from every state: (k, N, obs_dim)."""
        qpos, qvel, aux = self.qpos_qvel_aux(states)
        start = self.native.states(qpos, qvel)
        control = np.repeat(np.asarray(sequence, np.float64), self.frame_skip, axis=0)[None]  # (1, k*fs, nu)
        out = self.native.run(start, control, control.shape[1])[:, self.frame_skip - 1 :: self.frame_skip]
        q, v = self.native.qpos_qvel(out)  # (N, k, nq)
        aux_rep = None if aux is None else np.broadcast_to(aux[:, None, :], q.shape[:2] + (2,))
        return np.swapaxes(self.observe(q, v, aux_rep), 0, 1)


@dataclasses.dataclass(frozen=True)
class NativeTargets:
    """The oracle's answers, numpy float64: next_obs (N, A, obs_dim), scores (N, A), trajectory (k, N, obs_dim)."""

    next_obs: np.ndarray
    scores: np.ndarray
    trajectory: np.ndarray
    seconds: float


def native_targets(oracle: NativeTaskOracle, states: np.ndarray, actions: np.ndarray,
                   sequence: np.ndarray) -> NativeTargets:
    """Everything the metrics need from the oracle, once per (states, actions, sequence); timed."""
    t0 = time.perf_counter()
    next_obs = oracle.next_obs(states, actions)
    scores = score_rows(oracle.task, next_obs)
    trajectory = oracle.trajectory(states, sequence)
    return NativeTargets(next_obs, scores, trajectory, time.perf_counter() - t0)


# --------------------------------------------------------------------------- #
# The model: batched torch
# --------------------------------------------------------------------------- #


class TorchAdapter:
    """An adapter-schema ``.pt`` as batched float32 torch calls under ``no_grad``."""

    def __init__(self, path: str | os.PathLike):
        from wmel_jax.benchmarks.reference import load_adapter

        self.model, actions, self.meta = load_adapter(path)
        self.action_set = np.asarray(actions, np.float64)

    def predictions(self, states: np.ndarray, actions: np.ndarray, sequence: np.ndarray,
                    true_next: np.ndarray, true_traj: np.ndarray, latent: bool = True) -> dict[str, np.ndarray]:
        """Everything the metrics need from the model, for one chunk of states.

        states (C, obs_dim), actions (A, action_dim), sequence (k, action_dim),
        true_next (C, A, obs_dim) and true_traj (k, C, obs_dim) the oracle's
        answers. Returns numpy: ``pred_next`` (C, A, obs_dim) =
        decode(next(encode(s), a)); ``pred_traj`` (k, C, obs_dim), the model
        fed its own predictions; ``latent_err`` (C, A) = ||next(encode(s), a) -
        encode(O(s, a))||; ``latent_traj_err`` (k, C) = ||z_t - encode(s_t)||
        with z rolled open loop from encode(s). float32, as the model.
        ``latent=False``: the observation-space predictions only (no latent
        keys, none of their network work: what ``--metrics observation`` does).
        """
        import torch

        n, a = states.shape[0], actions.shape[0]
        f32 = np.float32
        model = self.model
        with torch.no_grad():
            obs = torch.from_numpy(np.ascontiguousarray(states, f32))
            act = torch.from_numpy(np.ascontiguousarray(actions, f32))
            z = model.encode(obs)  # once per state
            z_next = model.next(z.repeat_interleave(a, dim=0), act.repeat(n, 1))  # (C*A, latent), state-major
            pred_next = model.decode(z_next).reshape(n, a, -1)
            pred_traj, o = [], obs
            for action in np.asarray(sequence, f32):
                o = model.predict(o, torch.from_numpy(action).expand(n, -1))  # fed its own prediction
                pred_traj.append(o)
            out = {"pred_next": pred_next.numpy(), "pred_traj": torch.stack(pred_traj).numpy()}
            if not latent:
                return out
            z_true = model.encode(torch.from_numpy(np.ascontiguousarray(true_next.reshape(n * a, -1), f32)))
            out["latent_err"] = torch.linalg.vector_norm(z_next - z_true, dim=-1).reshape(n, a).numpy()
            k = sequence.shape[0]
            z_true_traj = model.encode(torch.from_numpy(np.ascontiguousarray(true_traj.reshape(k * n, -1), f32)))
            z_true_traj = z_true_traj.reshape(k, n, -1)
            latent_traj_err, zt = [], z
            for t, action in enumerate(np.asarray(sequence, f32)):
                zt = model.next(zt, torch.from_numpy(action).expand(n, -1))  # the latent, never re-encoded
                latent_traj_err.append(torch.linalg.vector_norm(zt - z_true_traj[t], dim=-1))
            out["latent_traj_err"] = torch.stack(latent_traj_err).numpy()
            return out


def kendall_tau_b_rows(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Kendall tau-b per row with exact ties: x, y (N, A) -> (tau (N,), defined (N,) bool).

    Signs from comparisons over all pairs i < j; tau_b = sum(sx * sy) /
    sqrt((n0 - n1)(n0 - n2)); undefined (a constant row on either side) where
    the denominator is 0 (tau is 0 there).
    """
    a = x.shape[1]
    i, j = np.triu_indices(a, 1)
    # Comparisons, not subtraction: two distinct values never read as a tie.
    sx = (x[:, i] > x[:, j]).astype(np.int64) - (x[:, i] < x[:, j])
    sy = (y[:, i] > y[:, j]).astype(np.int64) - (y[:, i] < y[:, j])
    n0 = a * (a - 1) // 2
    denom = (n0 - np.sum(sx == 0, axis=1)) * (n0 - np.sum(sy == 0, axis=1))
    defined = denom > 0
    tau = np.where(defined, np.sum(sx * sy, axis=1) / np.sqrt(np.where(defined, denom, 1)), 0.0)
    return tau, defined


def torch_metrics(model: TorchAdapter, task: str, states: np.ndarray, actions: np.ndarray, sequence: np.ndarray,
                  targets: NativeTargets, chunk_states: int = 4096, *, latent: bool = True) -> dict[str, Any]:
    """Every metric wmel-jax reports for an adapter model, against the oracle's answers; unrounded.

    Observation space: m1_l2_onestep, m2_l2_kstep, m2_curve (k floats),
    m3_action_agreement (None when no state has a defined tau-b),
    m3_states_used; latent space (unless ``latent=False``, as
    ``--metrics observation``): m1_latent_onestep, m2_latent_kstep,
    m2_latent_curve. Chunked over states (``chunk_states`` at a time) to bound
    torch's memory; sums in float64.
    """
    n, a, k = states.shape[0], actions.shape[0], sequence.shape[0]
    m1_sum = latent_sum = 0.0
    curve_sum = np.zeros(k)
    latent_curve_sum = np.zeros(k)
    tau_sum, used = 0.0, 0
    for start in range(0, n, chunk_states):
        stop = min(start + chunk_states, n)
        out = model.predictions(states[start:stop], actions, sequence, targets.next_obs[start:stop],
                                targets.trajectory[:, start:stop], latent)
        pred = out["pred_next"].astype(np.float64)  # (C, A, obs_dim)
        m1_sum += float(np.sum(np.linalg.norm(pred - targets.next_obs[start:stop], axis=-1)))
        tau, defined = kendall_tau_b_rows(targets.scores[start:stop], score_rows(task, pred))
        tau_sum += float(np.sum(tau[defined]))
        used += int(np.sum(defined))
        traj = out["pred_traj"].astype(np.float64)  # (k, C, obs_dim)
        curve_sum += np.sum(np.linalg.norm(traj - targets.trajectory[:, start:stop], axis=-1), axis=1)
        if latent:
            latent_sum += float(np.sum(out["latent_err"], dtype=np.float64))
            latent_curve_sum += np.sum(out["latent_traj_err"], axis=1, dtype=np.float64)
    curve = curve_sum / n
    latent_curve = latent_curve_sum / n
    result = {
        "m1_l2_onestep": m1_sum / (n * a),
        "m2_l2_kstep": float(curve[-1]),
        "m2_curve": [float(v) for v in curve],
        "m3_action_agreement": tau_sum / used if used else None,
        "m3_states_used": used,
    }
    if latent:
        result.update(m1_latent_onestep=latent_sum / (n * a), m2_latent_kstep=float(latent_curve[-1]),
                      m2_latent_curve=[float(v) for v in latent_curve])
    return result


def run_batched(model_paths: list[str | os.PathLike], task: str, states: np.ndarray, actions: np.ndarray,
                sequence: np.ndarray, *, frame_skip: int = 1, nthread: int | None = None,
                chunk_states: int = 4096, oracle: NativeTaskOracle | None = None,
                latent: bool = True) -> dict[str, Any]:
    """The whole arm: the oracle once, then every model; metrics and seconds.

    Returns {"metrics": [per model dict], "oracle_s": float, "model_s": [per model float],
    "total_s": float, "threads": int}. ``oracle``: a NativeTaskOracle to reuse
    (its thread pool stays open), else one is built and closed here (its
    set-up is not timed: it is a one-time cost, like loading the model).
    ``latent``: as :func:`torch_metrics`.
    """
    import torch

    threads = int(nthread or default_threads())
    own = oracle is None
    oracle = oracle or NativeTaskOracle(task, frame_skip, threads)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        models = [TorchAdapter(p) for p in model_paths]
        t0 = time.perf_counter()
        targets = native_targets(oracle, states, actions, sequence)
        metrics, model_s = [], []
        for model in models:
            t1 = time.perf_counter()
            metrics.append(torch_metrics(model, task, states, actions, sequence, targets, chunk_states, latent=latent))
            model_s.append(time.perf_counter() - t1)
        total = time.perf_counter() - t0
    finally:
        torch.set_num_threads(previous)
        if own:
            oracle.close()
    return {"metrics": metrics, "oracle_s": targets.seconds, "model_s": model_s, "total_s": total, "threads": threads}

"""C MuJoCo on all cores: ``mujoco.rollout`` over batches of physics states.

The native-MuJoCo side shared by the benchmarks: :mod:`benchmarks.oracle_throughput`
times the MJX oracle against it, and :mod:`benchmarks.batched` (the best batched
alternative without JAX) computes the oracle's answers with it.

:class:`NativeRollout` holds one task model (dm_control's MJCF, exactly the
model the MJX oracle is built from: ``wmel_jax.oracle.base.load_mj_model``),
one ``MjData`` per thread and one persistent ``mujoco.rollout.Rollout``
thread pool; :meth:`NativeRollout.states` turns (qpos, qvel) rows into
``mjSTATE_FULLPHYSICS`` state rows and :meth:`NativeRollout.run` steps them.
numpy and mujoco only: no JAX.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

__all__ = ["NativeRollout", "default_threads"]


def default_threads() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0))


class NativeRollout:
    """``mujoco.rollout`` of one dm_control task model with a persistent pool of ``nthread`` threads.

    Use as a context manager, or call :meth:`close` (the pool's threads).
    """

    def __init__(self, xml_file: str, nthread: int | None = None):
        import mujoco
        import mujoco.rollout

        from wmel_jax.oracle.base import load_mj_model

        self.mujoco = mujoco
        self.model = load_mj_model(xml_file)
        self.nthread = max(int(nthread or default_threads()), 1)
        self.datas = [mujoco.MjData(self.model) for _ in range(self.nthread)]
        self.pool = mujoco.rollout.Rollout(nthread=self.nthread)
        spec = mujoco.mjtState.mjSTATE_FULLPHYSICS
        self._template = np.zeros(mujoco.mj_stateSize(self.model, spec))
        mujoco.mj_getState(self.model, mujoco.MjData(self.model), self._template, spec)

    @property
    def nq(self) -> int:
        return int(self.model.nq)

    @property
    def nv(self) -> int:
        return int(self.model.nv)

    def states(self, qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
        """qpos (N, nq), qvel (N, nv) -> full physics states (N, nstate), the model's defaults elsewhere."""
        qpos = np.asarray(qpos, np.float64)
        states = np.tile(self._template, (qpos.shape[0], 1))
        # mjSTATE_FULLPHYSICS layout: time, qpos, qvel, act, ... (mjtState order).
        states[:, 1 : 1 + self.nq] = qpos
        states[:, 1 + self.nq : 1 + self.nq + self.nv] = np.asarray(qvel, np.float64)
        return states

    def qpos_qvel(self, states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Full physics states (..., nstate) -> (qpos (..., nq), qvel (..., nv))."""
        return states[..., 1 : 1 + self.nq], states[..., 1 + self.nq : 1 + self.nq + self.nv]

    def run(self, states: np.ndarray, control: np.ndarray, nstep: int, out: np.ndarray | None = None) -> np.ndarray:
        """Step each state ``nstep`` times: states (B, nstate), control ([B or 1], [nstep or 1], nu).

        Returns the states after every step, (B, nstep, nstate) (``out`` when given).
        """
        state, _ = self.pool.rollout(self.model, self.datas, states, control, nstep=nstep, state=out)
        return state

    def close(self) -> None:
        self.pool.close()

    def __enter__(self) -> "NativeRollout":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

"""reacher-easy: dm_control ``suite.reacher.easy``.

Observation (6): qpos (shoulder, wrist), to_target = target_xy - finger_xy
(``geom_xpos`` of the target and finger geoms), qvel. The target is not
physics state: the oracle carries target_xy = finger_xy(qpos) + to_target
through a step. Model: reacher.xml, Euler, dt 0.02, contacts disabled,
joint damping 0.01, wrist limited to +-160 degrees.

Reward (``Reacher.get_reward``): 1 when the finger-to-target distance
``|| target_xy - finger_xy ||`` is at most the sum of the two spheres' radii
(``tolerance(dist, (0, radii))``, margin 0: a hard indicator), else 0. The
easy task sets the target's radius to 0.05 at every reset (``_BIG_TARGET``;
the XML's value is not used); the finger's radius is the model's (0.01).
"""

from __future__ import annotations

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np

from wmel_jax.oracle.base import TaskDef
from wmel_jax.oracle.rewards import tolerance

__all__ = ["ReacherEasy"]

#: dm_control suite.reacher._BIG_TARGET: the target radius of reacher-easy.
EASY_TARGET_SIZE = 0.05


@dataclasses.dataclass(frozen=True)
class ReacherEasy(TaskDef):
    name = "reacher-easy"
    xml_file = "reacher.xml"
    obs_dim = 6
    action_dim = 2
    aux_dim = 2  # target (x, y)
    # The shoulder is an unlimited hinge (its angle winds up), the wrist is limited
    # to +-2.8 rad; finger and target stay within 0.42 m of each other in the arena.
    obs_limits = (("shoulder", -1e3, 1e3), ("wrist", -10.0, 10.0), ("to_target_x", -10.0, 10.0),
                  ("to_target_y", -10.0, 10.0), ("shoulder_v", -1e3, 1e3), ("wrist_v", -1e3, 1e3))

    finger_geom: int
    wrist_range: tuple[float, float]
    radii: float  # target radius + finger radius: the reward's bound on the distance

    @classmethod
    def from_model(cls, model) -> "ReacherEasy":
        wrist = model.joint("wrist")
        finger = model.geom("finger")
        return cls(
            finger_geom=finger.id,
            wrist_range=(float(wrist.range[0]), float(wrist.range[1])),
            # As dm_control sums geom_size[['target', 'finger'], 0] (numpy, float64).
            radii=float(np.sum(np.array([EASY_TARGET_SIZE, float(finger.size[0])], np.float64))),
        )

    def default_actions(self) -> np.ndarray:
        return np.array(list(itertools.product((-1.0, 0.0, 1.0), repeat=2)))

    def qpos_qvel_from_obs(self, obs):
        return obs[0:2], obs[4:6]

    def aux_from_obs(self, obs, data):
        return data.geom_xpos[self.finger_geom, :2] + obs[2:4]

    def obs_from_data(self, data, aux):
        to_target = aux - data.geom_xpos[self.finger_geom, :2]
        return jnp.concatenate([data.qpos, to_target, data.qvel])

    def score(self, obs):
        return jnp.linalg.norm(obs[2:4])  # finger-to-target distance

    def reward(self, data, aux):
        finger_to_target = aux - data.geom_xpos[self.finger_geom, :2]
        dist = jnp.sqrt(jnp.sum(finger_to_target * finger_to_target))
        return tolerance(dist, (0.0, self.radii))

    def reset(self, key, dtype):
        # Reacher.initialize_episode: randomize_limited_and_rotational_joints
        # (shoulder is an unlimited hinge: U(-pi, pi); the wrist is limited:
        # uniform within its range), then the target at angle U(0, 2 pi),
        # radius U(0.05, 0.20), placed at (r sin(angle), r cos(angle)).
        k_sh, k_wr, k_ang, k_rad = jax.random.split(key, 4)
        shoulder = jax.random.uniform(k_sh, (), dtype, -np.pi, np.pi)
        wrist = jax.random.uniform(k_wr, (), dtype, *self.wrist_range)
        angle = jax.random.uniform(k_ang, (), dtype, 0.0, 2 * np.pi)
        radius = jax.random.uniform(k_rad, (), dtype, 0.05, 0.20)
        target = jnp.stack([radius * jnp.sin(angle), radius * jnp.cos(angle)])
        return jnp.stack([shoulder, wrist]), jnp.zeros((2,), dtype), target

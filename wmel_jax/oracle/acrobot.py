"""acrobot-swingup: dm_control ``suite.acrobot.swingup``.

Observation (6): ``orientations`` = world-frame xz of upper_arm and lower_arm
(sines), then their zz (cosines), from the bodies' ``xmat``; then qvel
(shoulder, elbow). Model: acrobot.xml, RK4, dt 0.01, constraints disabled.

Reward (``Balance._get_reward``, smooth: swingup is not sparse):
``tolerance(|| site_xpos[target] - site_xpos[tip] ||, bounds=(0, r), margin=1)``
(gaussian, 0.1 one margin out), r the target site's radius (0.2): 1 when the
tip is within the target sphere, decaying smoothly with the distance outside.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from wmel_jax.oracle.base import TaskDef
from wmel_jax.oracle.rewards import tolerance

__all__ = ["AcrobotSwingup"]


@dataclasses.dataclass(frozen=True)
class AcrobotSwingup(TaskDef):
    name = "acrobot-swingup"
    xml_file = "acrobot.xml"
    obs_dim = 6
    action_dim = 1
    # Sines and cosines lie in [-1, 1]; the arms' speeds stay within tens of rad/s.
    obs_limits = (("sin_upper", -1.5, 1.5), ("sin_lower", -1.5, 1.5), ("cos_upper", -1.5, 1.5),
                  ("cos_lower", -1.5, 1.5), ("v_shoulder", -1e3, 1e3), ("v_elbow", -1e3, 1e3))

    upper_body: int
    lower_body: int
    tip_site: int
    target_site: int
    target_radius: float

    @classmethod
    def from_model(cls, model) -> "AcrobotSwingup":
        target = model.site("target")
        return cls(
            upper_body=model.body("upper_arm").id,
            lower_body=model.body("lower_arm").id,
            tip_site=model.site("tip").id,
            target_site=target.id,
            target_radius=float(target.size[0]),
        )

    def default_actions(self) -> np.ndarray:
        return np.array([[-1.0], [-0.5], [0.0], [0.5], [1.0]])

    def qpos_qvel_from_obs(self, obs):
        shoulder = jnp.arctan2(obs[0], obs[2])
        elbow = jnp.arctan2(obs[1], obs[3]) - shoulder  # lower arm's world angle minus the upper's
        return jnp.stack([shoulder, elbow]), obs[4:6]

    def obs_from_data(self, data, aux):
        upper, lower = data.xmat[self.upper_body], data.xmat[self.lower_body]
        orientations = jnp.stack([upper[0, 2], lower[0, 2], upper[2, 2], lower[2, 2]])
        return jnp.concatenate([orientations, data.qvel])

    def score(self, obs):
        return -(obs[2] + obs[3])  # minus the tip's height (both arms 1 long)

    def reward(self, data, aux):
        tip_to_target = data.site_xpos[self.target_site] - data.site_xpos[self.tip_site]
        dist = jnp.sqrt(jnp.sum(tip_to_target * tip_to_target))
        return tolerance(dist, bounds=(0.0, self.target_radius), margin=1.0)

    def reset(self, key, dtype):
        # Balance.initialize_episode: shoulder and elbow U(-pi, pi); qvel stays
        # zero from mj_resetData.
        qpos = jax.random.uniform(key, (2,), dtype, -np.pi, np.pi)
        return qpos, jnp.zeros((2,), dtype), jnp.zeros((0,), dtype)

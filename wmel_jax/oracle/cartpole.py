"""cartpole-swingup: dm_control ``suite.cartpole.swingup``.

Observation (5): cart_x, cos(theta), sin(theta), cart_v, theta_dot, where
cos/sin are the pole body's world rotation entries ``xmat`` zz and xz
(``Physics.bounded_position``). Model: cartpole.xml, RK4, dt 0.01, slider
limited to [-1.8, 1.8].

Reward (``Balance._get_reward``, smooth: swingup is not sparse), in [0, 1]::

    upright        = (cos(theta) + 1) / 2
    centered       = (1 + tolerance(cart_x, margin=2)) / 2
    small_control  = (4 + tolerance(ctrl, margin=1, value_at_margin=0, sigmoid="quadratic")) / 5
    small_velocity = (1 + tolerance(theta_dot, margin=5)) / 2
    reward         = upright * small_control * small_velocity * centered

``ctrl`` is ``physics.control()``, the action being held (``data.ctrl``).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from wmel_jax.oracle.base import TaskDef
from wmel_jax.oracle.rewards import tolerance

__all__ = ["CartpoleSwingup"]


@dataclasses.dataclass(frozen=True)
class CartpoleSwingup(TaskDef):
    name = "cartpole-swingup"
    xml_file = "cartpole.xml"
    obs_dim = 5
    action_dim = 1
    # The slider is limited to +-1.8 m; cos/sin lie on the unit circle; the
    # swing-up's speeds stay within tens of m/s and rad/s.
    obs_limits = (("cart_x", -10.0, 10.0), ("cos(theta)", -1.5, 1.5), ("sin(theta)", -1.5, 1.5),
                  ("cart_v", -1e3, 1e3), ("theta_dot", -1e3, 1e3))

    pole_body: int

    @classmethod
    def from_model(cls, model) -> "CartpoleSwingup":
        return cls(pole_body=model.body("pole_1").id)

    def default_actions(self) -> np.ndarray:
        return np.array([[-1.0], [-0.5], [0.0], [0.5], [1.0]])

    def qpos_qvel_from_obs(self, obs):
        theta = jnp.arctan2(obs[2], obs[1])
        return jnp.stack([obs[0], theta]), obs[3:5]

    def obs_from_data(self, data, aux):
        xmat = data.xmat[self.pole_body]
        return jnp.concatenate([data.qpos[:1], jnp.stack([xmat[2, 2], xmat[0, 2]]), data.qvel])

    def score(self, obs):
        return -obs[1]  # -cos(theta): the pole upright scores lowest

    def reward(self, data, aux):
        upright = (data.xmat[self.pole_body, 2, 2] + 1) / 2  # pole_angle_cosine: xmat zz
        centered = (1 + tolerance(data.qpos[0], margin=2)) / 2
        small_control = tolerance(data.ctrl[0], margin=1, value_at_margin=0, sigmoid="quadratic")
        small_control = (4 + small_control) / 5
        small_velocity = (1 + tolerance(data.qvel[1], margin=5)) / 2  # .min() over the one pole
        return upright * small_control * small_velocity * centered  # dm_control's order of products

    def reset(self, key, dtype):
        # Balance(swing_up=True).initialize_episode: cart 0.01 N(0,1), pole
        # pi + 0.01 N(0,1), qvel 0.01 N(0,1) (one pole: no extra qpos draws).
        k_pos, k_vel = jax.random.split(key)
        noise = 0.01 * jax.random.normal(k_pos, (2,), dtype)
        qpos = noise + jnp.array([0.0, np.pi], dtype)
        qvel = 0.01 * jax.random.normal(k_vel, (2,), dtype)
        return qpos, qvel, jnp.zeros((0,), dtype)

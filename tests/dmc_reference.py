"""dm_control as the reference for the oracle tests: states, next observations, rollouts.

Independent of wmel_jax: the observation -> physics state map is written
here again from SPEC section 4, the physics is dm_control's own
``Environment.step``. Environments are built with an infinite time limit so a
step never turns into a reset.
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "disable")

import numpy as np  # noqa: E402
from dm_control import suite  # noqa: E402

#: task name -> (domain, task) in dm_control.suite
SUITE_NAMES = {
    "cartpole-swingup": ("cartpole", "swingup"),
    "reacher-easy": ("reacher", "easy"),
    "acrobot-swingup": ("acrobot", "swingup"),
}


def load_env(task: str, seed: int):
    domain, name = SUITE_NAMES[task]
    return suite.load(domain, name, task_kwargs={"random": seed, "time_limit": float("inf")})


def obs_vector(timestep) -> np.ndarray:
    """dm_control's observation dict concatenated in its own order."""
    return np.concatenate([np.asarray(v, np.float64).ravel() for v in timestep.observation.values()])


def qpos_qvel(task: str, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SPEC 4: one observation -> (qpos, qvel)."""
    if task == "cartpole-swingup":
        return np.array([obs[0], np.arctan2(obs[2], obs[1])]), obs[3:5]
    if task == "reacher-easy":
        return obs[0:2], obs[4:6]
    if task == "acrobot-swingup":
        shoulder = np.arctan2(obs[0], obs[2])
        return np.array([shoulder, np.arctan2(obs[1], obs[3]) - shoulder]), obs[4:6]
    raise KeyError(task)


def set_state(env, task: str, obs: np.ndarray) -> None:
    """Put dm_control's physics in the state an observation describes (solver warm start reset)."""
    physics = env.physics
    qpos, qvel = qpos_qvel(task, obs)
    with physics.reset_context():
        physics.data.qpos[:] = qpos
        physics.data.qvel[:] = qvel
    if task == "reacher-easy":
        # reset_context ended with mj_forward: the finger's position is current.
        finger = physics.named.data.geom_xpos["finger", :2].copy()
        physics.named.model.geom_pos["target", :2] = finger + obs[2:4]


def next_observations(
    task: str, states: np.ndarray, actions: np.ndarray, max_frame_skip: int = 2, seed: int = 0
) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray], dict[int, np.ndarray]]:
    """env.step with each action from each state.

    Returns ({frame_skip: next obs (N, A, obs_dim)}, {frame_skip: (N, A) bool},
    {frame_skip: (N, A) reward}), the second True where a constraint (a joint
    at its limit) was in play at the start of one of the frame_skip physics
    steps, the third dm_control's ``TimeStep.reward`` summed over the
    frame_skip env.steps (``reward += step.reward``, as TD-MPC2's DMC
    wrapper). Frame skip f is f env.steps with the same action (action
    repeat), so one pass of max_frame_skip steps gives every frame_skip up to it.
    """
    env = load_env(task, seed)
    env.reset()  # reacher: sets the easy task's target size, which the reward reads
    data = env.physics.data
    shape = (len(states), len(actions))
    out = {f: np.zeros(shape + (states.shape[1],)) for f in range(1, max_frame_skip + 1)}
    limit = {f: np.zeros(shape, bool) for f in range(1, max_frame_skip + 1)}
    rewards = {f: np.zeros(shape) for f in range(1, max_frame_skip + 1)}
    for i, s in enumerate(states):
        for a, action in enumerate(actions):
            set_state(env, task, s)
            engaged = False
            total = 0
            for f in range(1, max_frame_skip + 1):
                engaged |= data.nefc > 0  # C MuJoCo makes limit rows only for joints at their limit
                ts = env.step(action)
                total += ts.reward
                out[f][i, a] = obs_vector(ts)
                limit[f][i, a] = engaged
                rewards[f][i, a] = total
    return out, limit, rewards


def rollouts(task: str, states: np.ndarray, action_seq: np.ndarray, frame_skip: int, warmstart: bool = True, seed: int = 0) -> np.ndarray:
    """(k, N, obs_dim): open-loop, each action held for frame_skip env.steps.

    ``warmstart=False`` starts MuJoCo's constraint solver from the unconstrained
    acceleration at every step instead of the previous step's answer; the
    constraint problem is the same, only where the iterative solver starts
    (and so where it stops, within ``opt.tolerance``) changes.
    """
    import mujoco

    env = load_env(task, seed)
    if not warmstart:
        env.physics.model.opt.disableflags |= int(mujoco.mjtDisableBit.mjDSBL_WARMSTART)
    env.reset()
    out = np.zeros((len(action_seq), len(states), states.shape[1]))
    for i, s in enumerate(states):
        set_state(env, task, s)
        for t, action in enumerate(action_seq):
            for _ in range(frame_skip):
                ts = env.step(action)
            out[t, i] = obs_vector(ts)
    return out


def random_action_states(task: str, n: int, actions: np.ndarray, seed: int, reset_every: int = 25) -> np.ndarray:
    """SPEC 5 with dm_control and NumPy: reset, random actions, reset every `reset_every` observations."""
    env = load_env(task, seed)
    rng = np.random.default_rng(seed)
    states = []
    while len(states) < n:
        states.append(obs_vector(env.reset()))
        for _ in range(reset_every - 1):
            states.append(obs_vector(env.step(actions[rng.integers(len(actions))])))
    return np.array(states[:n])


def reset_states(task: str, n: int, seed: int) -> np.ndarray:
    env = load_env(task, seed)
    return np.array([obs_vector(env.reset()) for _ in range(n)])


def stress_states(task: str, n: int, seed: int) -> np.ndarray:
    """States with large velocities, many of them pushing a limited joint past its limit."""
    rng = np.random.default_rng(seed)
    if task == "cartpole-swingup":
        theta = rng.uniform(-np.pi, np.pi, n)
        # Half the carts beyond or near the slider's +-1.8 limit, moving outwards.
        x = np.where(rng.random(n) < 0.5, rng.uniform(-1.7, 1.7, n), np.sign(rng.normal(size=n)) * rng.uniform(1.75, 1.95, n))
        v = rng.normal(0, 4, n) + 3 * np.sign(x) * (np.abs(x) > 1.7)
        return np.stack([x, np.cos(theta), np.sin(theta), v, rng.normal(0, 15, n)], axis=1)
    if task == "reacher-easy":
        limit = np.deg2rad(160)
        wrist = np.where(rng.random(n) < 0.5, rng.uniform(-limit, limit, n), np.sign(rng.normal(size=n)) * rng.uniform(limit - 0.1, limit + 0.15, n))
        shoulder = rng.uniform(-np.pi, np.pi, n)
        radius, angle = rng.uniform(0.05, 0.2, n), rng.uniform(0, 2 * np.pi, n)
        target = np.stack([radius * np.sin(angle), radius * np.cos(angle)], axis=1)
        finger = np.stack(
            [0.12 * np.cos(shoulder) + 0.12 * np.cos(shoulder + wrist), 0.12 * np.sin(shoulder) + 0.12 * np.sin(shoulder + wrist)], axis=1
        )  # approximately: any to_target is a valid observation
        qvel = rng.normal(0, 12, (n, 2))
        qvel[:, 1] += 6 * np.sign(wrist) * (np.abs(wrist) > limit - 0.1)
        return np.concatenate([np.stack([shoulder, wrist], axis=1), target - finger, qvel], axis=1)
    if task == "acrobot-swingup":
        upper, lower = rng.uniform(-np.pi, np.pi, n), rng.uniform(-np.pi, np.pi, n)
        return np.stack([np.sin(upper), np.sin(lower), np.cos(upper), np.cos(lower), rng.normal(0, 8, n), rng.normal(0, 15, n)], axis=1)
    raise KeyError(task)

"""Parity: the converted flax model reproduces the torch model, head by head.

Each case builds a model with the project's torch mirror of the upstream
layout (converters/tdmpc2_torch.py, randomized so no head is trivial), saves
it the way upstream's agent saves (``torch.save({"model": state_dict})``),
converts it, loads it, and compares on a seeded random batch: through the
pure functions un-jitted, through ``jax.jit``, and through ``WorldModel``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import wmel_jax
from wmel_jax.model import networks as F
from wmel_jax.model.world_model import stack_params

# Tolerances (max abs difference, float32 on both sides).
LATENT_ATOL = 1e-5  # encoder / dynamics outputs (SimNorm probabilities)
OBS_ATOL = 1e-4  # decoded observations
REWARD_ATOL = 1e-4  # reward scalars (two-hot inverse of 101 logits)
Q_ATOL = 1e-4  # Q scalars per ensemble member
POLICY_ATOL = 1e-5  # tanh(mu) policy means

BATCH = 16

# (model size, number of tasks); tasks > 0 is a multitask model (task_dim 96).
UPSTREAM_CASES = [(1, 0), (1, 30), (5, 0), (5, 80), (19, 0), (19, 30), (48, 0), (48, 80)]
MULTITASK_DIMS = dict(obs_dim=24, action_dim=6)  # padded maxima, as upstream's multitask wrapper
SINGLE_DIMS = dict(obs_dim=5, action_dim=1)

_NAMES = ("encode", "next_latent", "reward", "q_values", "policy_mean", "decode", "termination")
_plain = {name: getattr(F, name) for name in _NAMES}
_jit = {name: jax.jit(getattr(F, name), static_argnums=0) for name in _NAMES}


def _batch(obs_dim: int, action_dim: int, num_tasks: int, seed: int):
    rng = np.random.default_rng(seed)
    obs = (2.0 * rng.standard_normal((BATCH, obs_dim))).astype(np.float32)
    action = rng.uniform(-1, 1, (BATCH, action_dim)).astype(np.float32)
    task = rng.integers(0, num_tasks, BATCH) if num_tasks else None
    return obs, action, task


def _torch_outputs(model, obs, action, task, *, mask_policy: bool = True):
    t_task = None if task is None else torch.as_tensor(task)
    with torch.no_grad():
        z = model.encode(torch.as_tensor(obs), t_task)
        out = {
            "z": z,
            "next": model.next(z, torch.as_tensor(action), t_task),
            "reward": model.reward_value(z, torch.as_tensor(action), t_task),
            "q": model.Q_values(z, torch.as_tensor(action), t_task),
        }
        if mask_policy:
            out["pi"] = model.pi_mean(z, t_task)
        else:  # what an older-layout multitask file can give: no masks were saved
            zt = model.task_emb(z, t_task)
            out["pi"] = torch.tanh(model._pi(zt).chunk(2, dim=-1)[0])
        if model.cfg.episodic:
            out["termination"] = model.termination(z, t_task)
    return {k: v.numpy() for k, v in out.items()}


def _check_upstream(ckpt, num_tasks: int, seed: int, *, mask_policy: bool = True) -> None:
    model = ckpt.torch_model
    cfg = model.cfg
    obs, action, task = _batch(cfg.obs_dim, cfg.action_dim, num_tasks, seed)
    wm = wmel_jax.load(ckpt.converted)
    a, p = wm.arch, wm.params
    if num_tasks:
        # The test means something only if both sides of torch's max_norm
        # renormalisation are exercised (torch renorms its own weight in place,
        # so read the norms from the saved file).
        norms = np.linalg.norm(np.asarray(p["task_emb"]["embedding"]), axis=-1)[task]
        assert (norms > 1).any() and (norms < 1).any()
    want = _torch_outputs(model, obs, action, task, mask_policy=mask_policy)
    assert want["reward"].std() > 1e-2 and want["q"].std() > 1e-2  # non-trivial heads
    z_ref = want["z"]
    for label, fns in (("un-jitted", _plain), ("jit", _jit)):
        z = fns["encode"](a, p, obs, task)
        assert z.dtype == jnp.float32
        np.testing.assert_allclose(z, want["z"], rtol=0, atol=LATENT_ATOL, err_msg=f"{label}: latent")
        np.testing.assert_allclose(fns["next_latent"](a, p, z_ref, action, task), want["next"],
                                   rtol=0, atol=LATENT_ATOL, err_msg=f"{label}: next latent")
        np.testing.assert_allclose(fns["reward"](a, p, z_ref, action, task), want["reward"],
                                   rtol=0, atol=REWARD_ATOL, err_msg=f"{label}: reward")
        np.testing.assert_allclose(fns["q_values"](a, p, z_ref, action, task), want["q"],
                                   rtol=0, atol=Q_ATOL, err_msg=f"{label}: Q values")
        np.testing.assert_allclose(fns["policy_mean"](a, p, z_ref, task), want["pi"],
                                   rtol=0, atol=POLICY_ATOL, err_msg=f"{label}: policy mean")
        if cfg.episodic:
            np.testing.assert_allclose(fns["termination"](a, p, z_ref, task), want["termination"],
                                       rtol=0, atol=POLICY_ATOL, err_msg=f"{label}: termination")

    # The WorldModel methods (jitted, one task per call for multitask models).
    rows = slice(None) if task is None else task == task[0]
    t0 = None if task is None else int(task[0])
    np.testing.assert_allclose(wm.encode(obs[rows], t0), want["z"][rows], rtol=0, atol=LATENT_ATOL)
    np.testing.assert_allclose(wm.next(z_ref[rows], action[rows], t0), want["next"][rows],
                               rtol=0, atol=LATENT_ATOL)
    np.testing.assert_allclose(wm.reward(z_ref[rows], action[rows], t0), want["reward"][rows],
                               rtol=0, atol=REWARD_ATOL)


# The largest size's multitask case is the slowest and adds no layout the others lack: -m slow.
@pytest.mark.parametrize("size,num_tasks", [pytest.param(*c, marks=pytest.mark.slow) if c == (48, 80) else c
                                            for c in UPSTREAM_CASES])
def test_upstream_current_layout_matches_torch(checkpoints, size, num_tasks):
    dims = MULTITASK_DIMS if num_tasks else SINGLE_DIMS
    ckpt = checkpoints.upstream(size, num_tasks=num_tasks, **dims)
    _check_upstream(ckpt, num_tasks, seed=size)


@pytest.mark.parametrize("size,num_tasks", [(1, 0), (5, 30)])
def test_upstream_older_q_layout_matches_torch(checkpoints, size, num_tasks):
    dims = MULTITASK_DIMS if num_tasks else SINGLE_DIMS
    ckpt = checkpoints.upstream(size, num_tasks=num_tasks, layout="older", **dims)
    # Older files saved no action masks, so the policy mean is unmasked.
    _check_upstream(ckpt, num_tasks, seed=100 + size, mask_policy=not num_tasks)
    wm = wmel_jax.load(ckpt.converted)
    assert wm.header["layout"] == "older"
    assert wm.action_masks is None


def test_episodic_termination_head_matches_torch(checkpoints):
    ckpt = checkpoints.upstream(1, episodic=True)
    assert wmel_jax.load(ckpt.converted).arch.has_termination
    _check_upstream(ckpt, 0, seed=7)


def test_multitask_action_masks_are_converted(checkpoints):
    ckpt = checkpoints.upstream(1, num_tasks=30, **MULTITASK_DIMS)
    wm = wmel_jax.load(ckpt.converted)
    np.testing.assert_array_equal(wm.action_masks, ckpt.torch_model._action_masks.numpy())
    assert wm.task_names is not None and len(wm.task_names) == 30  # upstream mt30 list


@pytest.mark.parametrize("size,obs_dim,action_dim", [(1, 5, 1), (5, 6, 2), (19, 6, 1)])
def test_adapter_schema_matches_torch(checkpoints, size, obs_dim, action_dim):
    ckpt = checkpoints.adapter(size, obs_dim=obs_dim, action_dim=action_dim)
    model = ckpt.torch_model
    rng = np.random.default_rng(size)
    obs = (2.0 * rng.standard_normal((BATCH, obs_dim))).astype(np.float32)
    action = rng.uniform(-1, 1, (BATCH, action_dim)).astype(np.float32)
    with torch.no_grad():
        z = model.encode(torch.as_tensor(obs))
        z_next = model.next(z, torch.as_tensor(action))
        decoded = model.decode(z_next).numpy()
        predicted = model.predict(torch.as_tensor(obs), torch.as_tensor(action)).numpy()
    z, z_next = z.numpy(), z_next.numpy()
    assert predicted.std() > 1e-2

    wm = wmel_jax.load(ckpt.converted)
    a, p = wm.arch, wm.params
    for label, fns in (("un-jitted", _plain), ("jit", _jit)):
        np.testing.assert_allclose(fns["encode"](a, p, obs), z, rtol=0, atol=LATENT_ATOL, err_msg=label)
        np.testing.assert_allclose(fns["next_latent"](a, p, z, action), z_next, rtol=0, atol=LATENT_ATOL,
                                   err_msg=label)
        np.testing.assert_allclose(fns["decode"](a, p, z_next), decoded, rtol=0, atol=OBS_ATOL, err_msg=label)
    np.testing.assert_allclose(wm.encode(obs), z, rtol=0, atol=LATENT_ATOL)
    np.testing.assert_allclose(wm.next(z, action), z_next, rtol=0, atol=LATENT_ATOL)
    np.testing.assert_allclose(wm.decode(z_next), decoded, rtol=0, atol=OBS_ATOL)
    np.testing.assert_allclose(wm.predict(obs, action), predicted, rtol=0, atol=OBS_ATOL)
    assert wm.predict(obs, action).dtype == jnp.float32


def test_vmap_over_stacked_checkpoints_of_one_arch(checkpoints):
    ckpts = [checkpoints.upstream(1, seed=seed) for seed in (0, 1)]
    models = [wmel_jax.load(c.converted) for c in ckpts]
    arch, stacked = stack_params(models)
    obs, action, _ = _batch(5, 1, 0, seed=3)
    z = jax.jit(jax.vmap(lambda p: F.encode(arch, p, obs)))(stacked)
    r = jax.vmap(lambda p, zz: F.reward(arch, p, zz, action))(stacked, z)
    z_next = jax.vmap(lambda p, zz: F.next_latent(arch, p, zz, action))(stacked, z)
    assert z.shape == (2, BATCH, arch.latent_dim) and r.shape == (2, BATCH)
    for i, ckpt in enumerate(ckpts):
        want = _torch_outputs(ckpt.torch_model, obs, action, None)
        np.testing.assert_allclose(z[i], want["z"], rtol=0, atol=LATENT_ATOL)
        np.testing.assert_allclose(z_next[i], want["next"], rtol=0, atol=LATENT_ATOL)
        np.testing.assert_allclose(r[i], want["reward"], rtol=0, atol=REWARD_ATOL)
    # The two checkpoints really differ (else stacking proves nothing).
    assert np.abs(np.asarray(z[0]) - np.asarray(z[1])).max() > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("num_tasks", [0, 80])
def test_upstream_317m_matches_torch(checkpoints, num_tasks):
    dims = MULTITASK_DIMS if num_tasks else SINGLE_DIMS
    ckpt = checkpoints.upstream(317, num_tasks=num_tasks, cache=False, **dims)
    try:
        _check_upstream(ckpt, num_tasks, seed=317)
    finally:  # ~3.5 GB of files: do not leave them in pytest's kept tmp folders
        ckpt.pt.unlink()
        ckpt.converted.unlink()

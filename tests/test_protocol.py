"""The world-model protocol: what a family provides decides its metric spaces; the kernels know no family.

A toy third family (one module, registered in ``FAMILY_MODULES``) is
evaluated by the unchanged kernel and its metrics checked against numpy
arithmetic on the same oracle answers; TD-MPC2's functions are checked
against its own networks.
"""

from __future__ import annotations

import dataclasses
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import wmel_jax
from wmel_jax import evaluate
from wmel_jax.benchmarks.reference import kendall_tau_b
from wmel_jax.errors import WmelError
from wmel_jax.model import networks, protocol, tdmpc2

from conftest import EVAL_CHUNK as CHUNK
from conftest import EVAL_K as K
from conftest import EVAL_N as N

#: float32 kernel sums against float64 numpy on the same float32 predictions.
TOY_ATOL = 1e-5


# --------------------------------------------------------------------------- #
# A toy family: latent = 2 * obs (a pytree), latent_step adds the action to the first latent coordinate
# --------------------------------------------------------------------------- #


@dataclasses.dataclass(frozen=True)
class ToyArch:
    obs_dim: int
    action_dim: int


def _toy_encode(arch, params, task, obs):
    return {"z": 2.0 * jnp.asarray(obs, jnp.float32) * params["gain"]}


def _toy_step(arch, params, task, latent, action):
    shift = jnp.zeros_like(latent["z"]).at[:, 0].set(jnp.asarray(action, jnp.float32)[:, 0])
    return {"z": latent["z"] + shift}


def _toy_decode(arch, params, task, latent):
    return latent["z"] / (2.0 * params["gain"])


def _toy_reward(arch, params, task, latent, action, next_latent):
    return -jnp.sum(next_latent["z"] ** 2, axis=-1)


def _toy_distance(a, b):
    return jnp.max(jnp.abs(a["z"] - b["z"]), axis=-1)  # L-infinity: not the default L2


def _toy_functions(arch):
    import functools

    return protocol.WorldModelFunctions(
        family="toy",
        config=arch,
        encode=functools.partial(_toy_encode, arch),
        latent_step=functools.partial(_toy_step, arch),
        decode=functools.partial(_toy_decode, arch),
        reward=functools.partial(_toy_reward, arch),
        reward_reads_next_latent=True,
        latent_distance=_toy_distance,
    )


@dataclasses.dataclass(frozen=True, eq=False)
class ToyModel:
    arch: ToyArch
    params: dict
    task: str | None = "cartpole-swingup"
    frame_skip: int = 1
    action_set: np.ndarray | None = None
    multitask: bool = False

    def fit_task(self, task, obs_dim, action_dim):
        if (obs_dim, action_dim) != (self.arch.obs_dim, self.arch.action_dim):
            raise WmelError("toy widths do not fit")
        return None


@pytest.fixture()
def toy_family(monkeypatch):
    module = types.ModuleType("wmel_jax_toy_family")
    module.CONFIG_TYPE = ToyArch
    module.functions = _toy_functions
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(protocol, "FAMILY_MODULES", (*protocol.FAMILY_MODULES, module.__name__))
    protocol._families.cache_clear()
    yield module
    protocol._families.cache_clear()


def test_a_third_family_is_one_module_and_the_kernel_asks_only_for_capabilities(toy_family):
    arch = ToyArch(5, 1)
    model = ToyModel(arch, {"gain": jnp.asarray(1.5, jnp.float32)})
    assert protocol.family_of(arch) is toy_family
    problem = evaluate.make_problem("cartpole-swingup", n_states=N, k_steps=K, seed=5)
    targets = evaluate.oracle_targets(problem, CHUNK)
    values, _ = evaluate.model_metrics(model, problem, targets, CHUNK)

    s = problem.states.astype(np.float32).astype(np.float64)
    acts = problem.actions
    pred = s[:, None, :] + np.zeros((1, len(acts), 1))
    pred[:, :, 0] += acts[None, :, 0] / 3.0  # decode(2 g s + a e0) = s + a / (2 g) e0, g = 1.5
    m1 = np.linalg.norm(pred - targets.next_obs, axis=-1).mean()
    np.testing.assert_allclose(values["m1_l2_onestep"], m1, atol=TOY_ATOL)
    # latent one-step, L-infinity between 2 g (s + a/(2g) e0) and 2 g O(s, a): Markovian (no observe)
    lat = np.abs(3.0 * pred - 3.0 * targets.next_obs).max(-1).mean()
    np.testing.assert_allclose(values["m1_latent_onestep"], lat, atol=TOY_ATOL * 10)
    # reward ranking: tau-b of true rewards against -|next latent|^2, per state
    taus = [kendall_tau_b(list(t), list(-(9.0 * p**2).sum(-1))) for t, p in zip(targets.rewards, pred)]
    taus = [t for t in taus if t is not None]
    assert values["reward_rank_states_used"] == len(taus)
    np.testing.assert_allclose(values["reward_rank_agreement"], np.mean(taus), atol=TOY_ATOL)
    # M2: the toy model fed its own predictions: s_k = s + (sum of actions) / 3 e0
    end = s.copy()
    end[:, 0] += problem.action_sequence[:, 0].sum() / 3.0
    np.testing.assert_allclose(values["m2_l2_kstep"], np.linalg.norm(end - targets.trajectory[-1], axis=-1).mean(),
                               atol=TOY_ATOL * 10)
    assert "unavailable" not in values


def test_metric_spaces_follow_what_a_family_provides(toy_family):
    arch = ToyArch(5, 1)
    full = _toy_functions(arch)
    assert full.space_reasons() == {"observation": None, "latent": None, "reward": None}
    no_decoder = dataclasses.replace(full, decode=None, unavailable=(("decode", "no decoder here"),))
    assert no_decoder.space_reasons() == {"observation": "no decoder here", "latent": None, "reward": None}
    no_step = dataclasses.replace(full, latent_step=None)
    # the reward reads the next latent, so without a latent step there is no reward ranking either
    assert no_step.space_reasons() == {"observation": "no latent step", "latent": "no latent step",
                                       "reward": "no latent step"}
    with pytest.raises(WmelError, match="no observation map"):
        no_decoder.obs_step({}, None, jnp.zeros((1, 5)), jnp.zeros((1, 1)))


def test_unknown_configuration_type_is_a_type_error():
    with pytest.raises(TypeError, match="no world-model family"):
        protocol.functions_of(object())


def test_tdmpc2_functions_are_its_networks(checkpoints):
    adapter = wmel_jax.load(checkpoints.adapter(1, obs_dim=5, action_dim=1).converted)
    upstream = wmel_jax.load(checkpoints.upstream(1, obs_dim=5, action_dim=1).converted)
    fa, fu = adapter.functions, upstream.functions
    assert fa is protocol.functions_of(adapter.arch) and fa.family == "tdmpc2"
    assert protocol.family_of(adapter.arch) is tdmpc2
    assert fa.space_reasons() == {"observation": None, "latent": None, "reward": "no reward head"}
    assert fu.space_reasons()["observation"].startswith("no observation decoder")
    assert fu.space_reasons()["reward"] is None and fu.observe is None
    obs = jax.random.normal(jax.random.key(0), (7, 5))
    act = jnp.linspace(-1, 1, 7)[:, None]
    np.testing.assert_array_equal(fa.obs_step(adapter.params, None, obs, act),
                                  networks.predict(adapter.arch, adapter.params, obs, act))
    z = fu.encode(upstream.params, None, obs)
    np.testing.assert_array_equal(fu.reward(upstream.params, None, z, act, None),
                                  networks.reward(upstream.arch, upstream.params, z, act))


def test_tdmpc2_multitask_padding_and_masks_live_in_the_family(checkpoints):
    model = wmel_jax.load(checkpoints.upstream(1, num_tasks=30, obs_dim=24, action_dim=6).converted)
    fns, arch = model.functions, model.arch
    index = 3  # any task: the family pads to the model's widths and applies that task's mask
    task = jnp.asarray(index, jnp.int32)
    obs = jax.random.normal(jax.random.key(1), (3, 5))
    act = jnp.full((3, 1), 0.5)
    z = fns.encode(model.params, task, obs)
    padded = jnp.pad(obs, ((0, 0), (0, arch.obs_dim - 5)))
    np.testing.assert_array_equal(z, networks.encode(arch, model.params, padded, task))
    mask = model.params["action_masks"][index]
    want = networks.next_latent(arch, model.params, z, jnp.pad(act, ((0, 0), (0, arch.action_dim - 1))) * mask, task)
    np.testing.assert_array_equal(fns.latent_step(model.params, task, z, act), want)
    with pytest.raises(WmelError, match="not one of this multitask model"):
        model.fit_task("no-such-task", 5, 1)

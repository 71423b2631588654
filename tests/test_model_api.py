"""The flax building blocks, the Arch/param layout, the WorldModel API and the file format."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import wmel_jax
from wmel_jax.errors import WmelError
from wmel_jax.model import networks as F
from wmel_jax.model import world_model
from wmel_jax.model.arch import Arch, flatten_params, infer_arch, param_shapes
from wmel_jax.model.layers import mish, renormed_embedding, simnorm

REPO = Path(__file__).resolve().parents[1]

# mish / simnorm against torch, float32: a few ulps relative (mish(8) differs
# from torch by 2 ulps), plus an absolute floor near zero.
ACTIVATION_RTOL = 1e-6
ACTIVATION_ATOL = 1e-7
#: mish against float64 over its whole range: 4 float32 ulps (2**-23 relative each).
MISH_F64_RTOL = 4 * 2.0 ** -23
EMBEDDING_ATOL = 1e-7  # renormalised task embedding against torch
X64_OFF_ATOL = 1e-6  # the same model with jax_enable_x64 off vs on (both float32)

ARCHS = {
    "upstream-single": Arch(obs_dim=5, action_dim=1, latent_dim=16, enc_dim=12, mlp_dim=20, num_enc_layers=3,
                            num_bins=101, num_q=3, has_reward=True, has_pi=True, has_termination=True),
    "upstream-multi": Arch(obs_dim=7, action_dim=2, latent_dim=16, enc_dim=12, mlp_dim=20, num_enc_layers=2,
                           task_dim=9, num_tasks=4, num_bins=101, num_q=2, has_reward=True, has_pi=True,
                           has_action_masks=True),
    "adapter": Arch(obs_dim=6, action_dim=2, latent_dim=24, enc_dim=12, mlp_dim=20, num_enc_layers=2,
                    decoder_hidden=10),
}


# --------------------------------------------------------------------------- #
# Layers
# --------------------------------------------------------------------------- #


def test_mish_does_not_overflow_float32():
    x = jnp.array([1e4, -1e4, 88.0, 1e30, -88.0, 0.0], dtype=jnp.float32)
    y = np.asarray(mish(x))
    assert y.dtype == np.float32 and np.isfinite(y).all()
    # Large x: tanh(softplus(x)) == 1, so mish(x) == x. Very negative x: softplus ~ e^x ~ 0.
    np.testing.assert_array_equal(y[[0, 2, 3]], np.float32([1e4, 88.0, 1e30]))
    assert abs(y[1]) == 0.0 and abs(y[4]) < 1e-35 and y[5] == 0.0


def test_mish_is_within_a_few_ulps_of_float64_over_its_range():
    """The exp-and-divide form against mish in float64, from -100 to 100 and over 1e-30..1e30 both signs."""
    x = np.concatenate([np.linspace(-100, 100, 400_001), np.geomspace(1e-30, 1e30, 4_001),
                        -np.geomspace(1e-30, 1e4, 4_001), np.float32([19.99, 20.0, 20.01])]).astype(np.float32)
    x64 = x.astype(np.float64)
    want = np.where(x64 > 700, x64, x64 * np.tanh(np.log1p(np.exp(np.minimum(x64, 700)))))
    got = np.asarray(mish(jnp.asarray(x))).astype(np.float64)
    # Below x = -69 exp(x) nears float32's subnormals, which XLA's CPU code flushes to zero (the
    # composed form's softplus does too): results under 1e-30 in size are asked to be that, not to ulps.
    tiny = np.abs(want) < 1e-30
    np.testing.assert_allclose(got[~tiny], want[~tiny], rtol=MISH_F64_RTOL, atol=0)
    assert np.all(np.abs(got[tiny]) <= 1e-30) and not np.any(np.sign(got[tiny]) * np.sign(want[tiny]) < 0)


def test_mish_and_simnorm_match_torch():
    x = np.random.default_rng(0).normal(0, 5, (32, 24)).astype(np.float32)
    np.testing.assert_allclose(mish(jnp.asarray(x)), torch.nn.functional.mish(torch.as_tensor(x)).numpy(),
                               rtol=ACTIVATION_RTOL, atol=ACTIVATION_ATOL)
    want = torch.softmax(torch.as_tensor(x).reshape(32, 3, 8), -1).reshape(32, 24).numpy()
    got = np.asarray(simnorm(jnp.asarray(x), 8))
    np.testing.assert_allclose(got, want, rtol=ACTIVATION_RTOL, atol=ACTIVATION_ATOL)
    np.testing.assert_allclose(got.reshape(32, 3, 8).sum(-1), 1.0, rtol=0, atol=1e-6)
    # Leading batch axes and a latent of 16 groups (the transposed reduction's layout).
    x = np.random.default_rng(1).normal(0, 5, (4, 5, 128)).astype(np.float32)
    want = torch.softmax(torch.as_tensor(x).reshape(4, 5, 16, 8), -1).reshape(4, 5, 128).numpy()
    np.testing.assert_allclose(simnorm(jnp.asarray(x), 8), want, rtol=ACTIVATION_RTOL, atol=ACTIVATION_ATOL)


def test_task_embedding_renormalises_like_torch_max_norm():
    table = np.random.default_rng(1).normal(0, 1, (6, 5)).astype(np.float32)
    table[0] *= 0.1 / np.linalg.norm(table[0])  # well inside the unit ball: untouched
    table[1] *= 3.0 / np.linalg.norm(table[1])  # outside: scaled to norm 1/(1 + 1e-7 / 3)
    index = np.array([0, 1, 2, 3, 4, 5, 1])
    emb = torch.nn.Embedding(6, 5, max_norm=1)
    with torch.no_grad():
        emb.weight.copy_(torch.as_tensor(table))
        want = emb(torch.as_tensor(index)).numpy()
    got = np.asarray(renormed_embedding(jnp.asarray(table), jnp.asarray(index)))
    np.testing.assert_allclose(got, want, rtol=0, atol=EMBEDDING_ATOL)
    np.testing.assert_allclose(got[0], table[0], rtol=0, atol=0)
    np.testing.assert_allclose(np.linalg.norm(got[1]), 1.0, rtol=0, atol=1e-6)


def test_two_hot_inverse_hand_worked():
    arch = ARCHS["upstream-single"]  # 101 bins over [-10, 10]: bin i is at -10 + 0.2 i
    logits = np.full((3, 101), -1e4, dtype=np.float32)
    logits[0] = 0.0  # uniform softmax: mean bin 0.0, symexp(0) = 0
    logits[1, 60] = 0.0  # one-hot on bin 60 = 2.0: symexp(2) = e^2 - 1 = 6.389056
    logits[2, [45, 46]] = 0.0  # half on -1.0, half on -0.8: -0.9 -> -(e^0.9 - 1) = -1.459603
    np.testing.assert_allclose(F.two_hot_inv(arch, logits), [0.0, 6.389056, -1.459603], rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- #
# Arch and the parameter layout
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_param_shapes_are_what_the_flax_modules_create(name):
    arch = ARCHS[name]
    created = jax.eval_shape(lambda: F.init_params(arch, jax.random.key(0)))
    created = {path: tuple(leaf.shape) for path, leaf in flatten_params(created).items()}
    assert created == param_shapes(arch)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(
        jax.eval_shape(lambda: F.init_params(arch, jax.random.key(0)))))
    # And the shapes alone give the arch back.
    assert infer_arch(created, action_dim=None if arch.has_pi else arch.action_dim) == arch


def test_arch_is_hashable_and_round_trips():
    arch = ARCHS["upstream-multi"]
    assert hash(arch) == hash(Arch.from_dict(json.loads(json.dumps(arch.to_dict()))))
    with pytest.raises(WmelError, match="unknown fields"):
        Arch.from_dict({**arch.to_dict(), "colour": 3})
    with pytest.raises(WmelError, match="must be an integer"):
        Arch.from_dict({**arch.to_dict(), "latent_dim": 16.5})
    with pytest.raises(WmelError, match="multiple of simnorm_dim"):
        Arch.from_dict({**arch.to_dict(), "latent_dim": 12})


# --------------------------------------------------------------------------- #
# WorldModel
# --------------------------------------------------------------------------- #


def test_methods_a_model_lacks_say_what_it_has(checkpoints):
    upstream = wmel_jax.load(checkpoints.upstream(1).converted)
    with pytest.raises(WmelError, match="decode is not available.*encoder, dynamics, reward, pi, q"):
        upstream.decode(np.zeros((2, 128)))
    with pytest.raises(WmelError, match="predict is not available"):
        upstream.predict(np.zeros((2, 5)), np.zeros((2, 1)))
    adapter = wmel_jax.load(checkpoints.adapter(1, obs_dim=5, action_dim=1).converted)
    with pytest.raises(WmelError, match="reward is not available.*encoder, dynamics, decoder"):
        adapter.reward(np.zeros((2, 128)), np.zeros((2, 1)))
    with pytest.raises(WmelError, match=r"obs must have shape \(\.\.\., 5\)"):
        adapter.encode(np.zeros((2, 4)))


def test_jit_compiles_once_per_arch_not_per_checkpoint(checkpoints):
    a, b = (wmel_jax.load(checkpoints.upstream(1, seed=s).converted) for s in (0, 1))
    assert a.arch == b.arch and a.params is not b.params
    obs = np.random.default_rng(0).normal(size=(4, 5))
    a.encode(obs).block_until_ready()
    compiled = world_model._encode._cache_size()
    zb = b.encode(obs)
    assert world_model._encode._cache_size() == compiled
    assert np.abs(np.asarray(zb) - np.asarray(a.encode(obs))).max() > 1e-3  # b's own params were used


def test_float64_inputs_give_float32_outputs(checkpoints):
    wm = wmel_jax.load(checkpoints.adapter(1, obs_dim=5, action_dim=1).converted)
    obs = np.random.default_rng(0).normal(size=(3, 5))  # float64
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(wm.params))
    assert wm.predict(obs, np.zeros((3, 1))).dtype == jnp.float32


def test_multitask_pads_short_inputs_with_zeros_like_upstream(checkpoints):
    wm = wmel_jax.load(checkpoints.upstream(1, num_tasks=30, obs_dim=24, action_dim=6).converted)
    rng = np.random.default_rng(0)
    obs, action = rng.normal(size=(3, 5)), rng.uniform(-1, 1, (3, 1))  # cartpole inside mt30
    padded_obs = np.concatenate([obs, np.zeros((3, 19))], axis=1)
    padded_action = np.concatenate([action, np.zeros((3, 5))], axis=1)
    z = wm.encode(obs, task="cartpole-swingup")
    np.testing.assert_array_equal(z, wm.encode(padded_obs, task=10))
    np.testing.assert_array_equal(wm.next(z, action, task=10), wm.next(z, padded_action, task=10))
    with pytest.raises(WmelError, match="out of range"):
        wm.encode(obs, task=30)


# --------------------------------------------------------------------------- #
# Reading model files
# --------------------------------------------------------------------------- #


def test_load_refuses_bad_files(tmp_path, checkpoints):
    from safetensors.numpy import save_file

    with pytest.raises(WmelError, match="does not exist"):
        wmel_jax.load(tmp_path / "none.safetensors")
    with pytest.raises(WmelError, match="looks like a torch checkpoint.*wmel-jax convert"):
        wmel_jax.load(checkpoints.upstream(1).pt)
    data = checkpoints.upstream(1).converted.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(WmelError, match="not a readable wmel-jax model file"):
        wmel_jax.load(tmp_path / "cut.safetensors")
    save_file({"w": np.zeros(3, np.float32)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(WmelError, match="not a wmel-jax world model"):
        wmel_jax.load(tmp_path / "foreign.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(WmelError, match="not a readable"):
        wmel_jax.load(tmp_path / "junk.safetensors")


def test_safetensors_whose_header_length_starts_with_0x80_is_not_taken_for_torch(tmp_path, checkpoints):
    """A converted file's first byte is its header length's low byte; 0x80 is also the pickle marker."""
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    src = checkpoints.upstream(1).converted
    with safe_open(str(src), framework="numpy") as f:
        metadata = f.metadata()
    tensors = load_file(str(src))
    dst = tmp_path / "x80.safetensors"
    for pad in range(256):  # header sizes step by 1 byte per padding character
        header = json.loads(metadata["wmel-jax"])
        header["meta"] = {"pad": "x" * pad}
        save_file(tensors, str(dst), metadata={**metadata, "wmel-jax": json.dumps(header)})
        if dst.read_bytes()[:1] == b"\x80":
            break
    assert dst.read_bytes()[:1] == b"\x80"
    assert wmel_jax.load(dst).meta["pad"] == "x" * pad
    # A legacy (non-zip) torch pickle is still recognised.
    torch.save({"model": {}}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    assert (tmp_path / "legacy.pt").read_bytes()[:1] == b"\x80"
    with pytest.raises(WmelError, match="looks like a torch checkpoint"):
        wmel_jax.load(tmp_path / "legacy.pt")


def test_load_refuses_a_file_whose_tensors_contradict_its_header(tmp_path, checkpoints):
    from safetensors.numpy import load_file, save_file
    from safetensors import safe_open

    src = checkpoints.upstream(1).converted
    with safe_open(str(src), framework="numpy") as f:
        metadata = f.metadata()
    tensors = load_file(str(src))
    tensors["dynamics/layer_0/linear/bias"] = np.zeros(7, np.float32)
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=metadata)
    with pytest.raises(WmelError, match="does not match its own architecture.*dynamics/layer_0/linear/bias"):
        wmel_jax.load(tmp_path / "bad.safetensors")
    header = json.loads(metadata["wmel-jax"])
    header["format_version"] = 99
    save_file(load_file(str(src)), str(tmp_path / "new.safetensors"),
              metadata={**metadata, "wmel-jax": json.dumps(header)})
    with pytest.raises(WmelError, match="format version 99"):
        wmel_jax.load(tmp_path / "new.safetensors")


# --------------------------------------------------------------------------- #
# A process without torch, with jax_enable_x64 off
# --------------------------------------------------------------------------- #

_NO_TORCH_SCRIPT = r"""
import importlib.abc, json, sys

class BlockTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")

sys.meta_path.insert(0, BlockTorch())
import numpy as np
import wmel_jax
import jax
assert not jax.config.jax_enable_x64
adapter, upstream, obs, action = sys.argv[1:5]
obs, action = np.load(obs), np.load(action)
m = wmel_jax.load(adapter)
z = m.encode(obs)
pred = m.predict(obs, action)
u = wmel_jax.load(upstream)
r = u.reward(u.encode(obs[:, :5]), action[:, :1])
assert "torch" not in sys.modules, "torch got imported"
print(json.dumps({"z": np.asarray(z).tolist(), "pred": np.asarray(pred).tolist(),
                  "reward": np.asarray(r).tolist(), "dtype": str(pred.dtype)}))
"""


def test_load_and_forward_without_torch_and_without_x64(tmp_path, checkpoints):
    adapter = wmel_jax.load(checkpoints.adapter(5, obs_dim=6, action_dim=2).converted)
    upstream = wmel_jax.load(checkpoints.upstream(1).converted)
    rng = np.random.default_rng(0)
    obs, action = rng.normal(size=(4, 6)), rng.uniform(-1, 1, (4, 2))
    np.save(tmp_path / "obs.npy", obs)
    np.save(tmp_path / "action.npy", action)
    env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"}
    out = subprocess.run(
        [sys.executable, "-c", _NO_TORCH_SCRIPT, str(checkpoints.adapter(5, obs_dim=6, action_dim=2).converted),
         str(checkpoints.upstream(1).converted), str(tmp_path / "obs.npy"), str(tmp_path / "action.npy")],
        capture_output=True, text=True, timeout=180, cwd=REPO, env={**env, "PYTHONPATH": str(REPO)},
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["dtype"] == "float32"
    # Same float32 model with x64 off (subprocess) and on (this process).
    np.testing.assert_allclose(got["z"], adapter.encode(obs), rtol=0, atol=X64_OFF_ATOL)
    np.testing.assert_allclose(got["pred"], adapter.predict(obs, action), rtol=0, atol=X64_OFF_ATOL)
    np.testing.assert_allclose(got["reward"], upstream.reward(upstream.encode(obs[:, :5]), action[:, :1]),
                               rtol=0, atol=X64_OFF_ATOL)

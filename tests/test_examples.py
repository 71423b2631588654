"""The shipped example models: the manifest, the files, their conversions, and what they claim.

``wmel_jax/examples/manifest.json`` is written by ``train_examples.py`` together
with the models; these tests check that what ships is what the manifest says
(sha256 of every ``.pt``; every converted file is the conversion of that very
``.pt``), that every converted file loads without torch-specific steps, and
that the reference metrics recorded in the manifest reproduce. Six TD-MPC2
models (a good and a weak one per task) and one DreamerV3 model (cartpole).
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import wmel_jax
from wmel_jax.benchmarks import reference as R

EXAMPLES = Path(wmel_jax.__file__).resolve().parent / "examples"
MANIFEST = json.loads((EXAMPLES / "manifest.json").read_text())
ENTRIES = MANIFEST["models"]
IDS = [f"{e['task']}-{e['quality']}" for e in ENTRIES]
TDMPC2 = [e for e in ENTRIES if e.get("family", "tdmpc2") == "tdmpc2"]
TDMPC2_IDS = [f"{e['task']}-{e['quality']}" for e in TDMPC2]
DREAMER, = [e for e in ENTRIES if e.get("family") == "dreamerv3"]
TASKS = ("cartpole-swingup", "reacher-easy", "acrobot-swingup")

#: Re-running the reference path on a shipped model vs the manifest's numbers.
#: Same machine: identical. Another CPU may round float32 matmuls differently
#: (~1e-7 relative per call, amplified a little by M2's 10 fed-back steps);
#: the issue's kernel-parity tolerances are the yardstick.
M12_RTOL = 1e-4
M3_ATOL = 0.005


def test_manifest_lists_exactly_the_shipped_files():
    listed = {e["pt"] for e in ENTRIES} | {e["converted"] for e in ENTRIES}
    shipped = {p.name for p in EXAMPLES.iterdir() if p.suffix in (".pt", ".safetensors")}
    assert listed == shipped
    assert sorted((e["task"], e["quality"]) for e in ENTRIES) == sorted(
        [(t, q) for t in TASKS for q in ("good", "weak")] + [("cartpole-swingup", "dreamerv3")])
    for e in ENTRIES:
        assert e["pt"] == f"{e['task']}-{e['quality']}.pt"
        assert e["converted"] == f"{e['task']}-{e['quality']}.safetensors"


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_pt_sha256_matches_and_converted_file_is_its_conversion(entry):
    pt = EXAMPLES / entry["pt"]
    digest = hashlib.sha256(pt.read_bytes()).hexdigest()
    assert digest == entry["sha256"]
    assert pt.stat().st_size == entry["size_bytes"]["pt"]
    model = wmel_jax.load(EXAMPLES / entry["converted"])
    assert model.header["source"] == {"file": entry["pt"], "sha256": digest,
                                      "size_bytes": entry["size_bytes"]["pt"]}


@pytest.mark.parametrize("entry", TDMPC2, ids=TDMPC2_IDS)
def test_converted_file_loads_with_task_actions_and_frame_skip(entry):
    model = wmel_jax.load(EXAMPLES / entry["converted"])
    task = entry["task"]
    assert model.schema == "adapter"
    assert model.task == task and model.task_source == "meta.task"
    assert model.frame_skip == 1 == entry["frame_skip"]
    np.testing.assert_array_equal(model.action_set, np.array(R.default_actions(task), dtype=np.float32))
    a = model.arch
    assert (a.enc_dim, a.mlp_dim, a.latent_dim, a.num_enc_layers, a.simnorm_dim) == (256, 384, 128, 2, 8)
    assert a.heads() == ["encoder", "dynamics", "decoder"]
    assert model.meta["quality"] == entry["quality"]
    assert model.meta["training_steps"] == entry["training_steps"]
    assert model.meta["tdmpc2_model_size"] == 1 and model.meta["seed"] == entry["seed"]
    # It runs: one prediction per action from a real state, finite.
    state = np.array(R.collect_states(task, 1, 0), dtype=np.float32)
    pred = np.asarray(model.predict(np.repeat(state, len(model.action_set), 0), model.action_set))
    assert pred.shape == (len(model.action_set), a.obs_dim) and np.isfinite(pred).all()


def test_the_dreamer_example_is_an_upstream_latest_pt_and_its_conversion_loads():
    import torch

    from wmel_jax.model.dreamerv3 import DreamerV3Model

    blob = torch.load(EXAMPLES / DREAMER["pt"], weights_only=True)
    keys = list(blob["agent_state_dict"])
    assert any(k.startswith("_wm.dynamics._cell.") for k in keys)
    assert any(k.startswith("_task_behavior._world_model.") for k in keys)
    model = wmel_jax.load(EXAMPLES / DREAMER["converted"])
    assert isinstance(model, DreamerV3Model) and model.task == "cartpole-swingup"
    assert model.frame_skip == 1 == DREAMER["frame_skip"] == DREAMER["convert"]["frame_skip"]
    a, want = model.arch, DREAMER["architecture"]
    assert (a.stoch, a.classes, a.deter, a.hidden, a.head_units) == (
        want["stoch"], want["discrete"], want["deter"], want["hidden"], want["units"])
    assert (a.encoder_layers, a.encoder_units, a.decoder_layers, a.decoder_units) == (
        want["enc_layers"], want["enc_units"], want["dec_layers"], want["dec_units"])
    state = np.array(R.collect_states("cartpole-swingup", 1, 0), dtype=np.float32)
    actions = np.array(R.default_actions("cartpole-swingup"), dtype=np.float32)
    pred = np.asarray(model.predict(np.repeat(state, len(actions), 0), actions))
    assert pred.shape == (len(actions), 5) and np.isfinite(pred).all()
    ref = DREAMER["reference"]
    for key in ("m1_l2_onestep", "m2_l2_kstep", "m1_latent_mismatch_onestep", "m2_latent_mismatch_kstep"):
        assert math.isfinite(ref[key]), key
    assert DREAMER["size_bytes"]["pt"] < 2_000_000 and DREAMER["size_bytes"]["converted"] < 2_000_000


def test_manifest_records_finite_metrics_and_good_beats_weak():
    by = {(e["task"], e["quality"]): e for e in ENTRIES}
    for task in TASKS:
        good, weak = by[task, "good"]["reference"], by[task, "weak"]["reference"]
        for ref in (good, weak):
            assert ref["n_states"] == 150 and ref["k_steps"] == 10 and ref["seed"] == 0
            assert all(math.isfinite(ref[k]) for k in ("m1_l2_onestep", "m2_l2_kstep"))
        assert good["m1_l2_onestep"] < weak["m1_l2_onestep"], task
        assert good["m2_l2_kstep"] < weak["m2_l2_kstep"], task
        assert good["m3_action_agreement"] is not None and good["m3_action_agreement"] > 0.5, task
        baseline = MANIFEST["identity_baseline"][task]
        assert good["m1_l2_onestep"] < baseline["m1_l2_onestep"], task
        assert baseline["m3_action_agreement"] is None  # copying the state ignores the action


def _check_reproduces(entry):
    got = R.run_reference(EXAMPLES / entry["pt"], entry["task"], n_states=150, k_steps=10, seed=0)
    want = entry["reference"]
    for key in ("m1_l2_onestep", "m2_l2_kstep"):
        assert got[key] == pytest.approx(want[key], rel=M12_RTOL), key
    np.testing.assert_allclose(got["m2_curve"], want["m2_curve"], rtol=M12_RTOL)
    assert got["m3_action_agreement"] == pytest.approx(want["m3_action_agreement"], abs=M3_ATOL)


def test_manifest_metrics_reproduce_cartpole_good():
    entry, = [e for e in ENTRIES if (e["task"], e["quality"]) == ("cartpole-swingup", "good")]
    _check_reproduces(entry)


@pytest.mark.slow
@pytest.mark.parametrize("entry", TDMPC2, ids=TDMPC2_IDS)
def test_manifest_metrics_reproduce(entry):
    _check_reproduces(entry)


@pytest.mark.slow
def test_manifest_metrics_reproduce_dreamer():
    got = R.run_reference_dreamer(EXAMPLES / DREAMER["pt"], DREAMER["task"], frame_skip=1, n_states=150,
                                  k_steps=10, seed=0)
    want = DREAMER["reference"]
    for key in ("m1_l2_onestep", "m2_l2_kstep"):
        assert got[key] == pytest.approx(want[key], rel=M12_RTOL), key
    np.testing.assert_allclose(got["m2_curve"], want["m2_curve"], rtol=M12_RTOL)
    assert got["m3_action_agreement"] == pytest.approx(want["m3_action_agreement"], abs=M3_ATOL)
    assert got["m1_latent_onestep"] == pytest.approx(want["m1_latent_mismatch_onestep"], abs=1e-3)


def test_examples_package_is_torch_free():
    code = "import sys, wmel_jax.examples; assert 'torch' not in sys.modules; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=EXAMPLES.parents[1], check=False)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr

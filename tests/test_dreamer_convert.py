"""``wmel-jax convert`` on DreamerV3 checkpoints: the layouts upstream saves, what is recorded, bad input.

Every bad input is a one-line ``wmel-jax: error: ...``, exit status 2, and no
output file left behind. danijar/dreamerv3's pickles are read by a
numpy-only unpickler: a payload that would run code is refused, not run.
No JAX compilation here: files are read back with the file reader.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from wmel_jax import cli
from wmel_jax.converters import dreamerv3 as DC
from wmel_jax.converters import dreamerv3_torch as T
from wmel_jax.converters.convert import convert
from wmel_jax.errors import WmelError
from wmel_jax.model.fileformat import read_model_file

#: A tiny world model: 4 groups x 32 classes (upstream's class count: no config needed).
TINY = dict(stoch=4, discrete=32, deter=16, hidden=16, units=16, enc_layers=2, enc_units=24, dec_layers=2,
            dec_units=24)


def _cli(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main(["convert", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


def _assert_user_error(capsys, folder: Path, *argv, match: str) -> str:
    before = set(os.listdir(folder))
    code, out, err = _cli(capsys, *argv)
    assert code == 2, (out, err)
    assert err.startswith("wmel-jax: error: ") and err.count("\n") == 1, err
    assert match.lower() in err.lower(), err
    assert set(os.listdir(folder)) == before, "conversion left a file behind"
    return err


@pytest.fixture(scope="module")
def tiny_model():
    return T.build_world_model(T.config_for("cartpole-swingup", **TINY), seed=3)


@pytest.fixture(scope="module")
def tiny_agent_state(tiny_model) -> dict:
    return T.Agent(tiny_model).state_dict()


def _save(folder: Path, blob, name="latest.pt") -> Path:
    path = folder / name
    torch.save(blob, path)
    return path


# --------------------------------------------------------------------------- #
# What upstream saves, and what is recorded
# --------------------------------------------------------------------------- #


def test_every_layout_upstream_saves_converts_to_the_same_parameters(tmp_path, tiny_model):
    plain = T.save_agent(tiny_model, tmp_path / "plain.pt")  # with real Adam states
    compiled = T.save_agent(tiny_model, tmp_path / "compiled.pt", compiled=True)
    bare = _save(tmp_path, T.Agent(tiny_model).state_dict(), "bare.pt")  # the agent state dict alone
    wm_only = _save(tmp_path, tiny_model.state_dict(), "wm.pt")  # agent._wm.state_dict()
    blob = torch.load(plain, weights_only=True)
    assert set(blob) == {"agent_state_dict", "optims_state_dict"} and blob["optims_state_dict"]
    keys = list(blob["agent_state_dict"])
    assert any(k.startswith("_task_behavior._world_model.") for k in keys)
    assert any(k.startswith("_expl_behavior.") for k in keys)
    assert any(k.startswith("_wm._orig_mod.") for k in torch.load(compiled, weights_only=True)["agent_state_dict"])
    flats = {}
    for src in (plain, compiled, bare, wm_only):
        conversion = convert(src, src.with_suffix(".safetensors"))
        header, arch, flat = read_model_file(conversion.dst)
        flats[src.name] = flat
        assert header["family"] == "dreamerv3" and header["format_version"] == 2
        assert arch.obs_keys == ("position", "velocity") and arch.obs_widths == (3, 2)
        assert (arch.stoch, arch.classes, arch.deter, arch.hidden) == (4, 32, 16, 16)
        assert (arch.encoder_layers, arch.encoder_units, arch.decoder_layers, arch.decoder_units) == (2, 24, 2, 24)
        assert arch.head_units == 16 and arch.reward_layers == 2 and arch.cont_layers == 2
        assert (arch.act, arch.unimix, arch.initial, arch.symlog_inputs, arch.norm) == ("SiLU", 0.01, "learned",
                                                                                       True, True)
        assert header["task"] == "cartpole-swingup" and "observation keys" in header["task_source"]
        assert header["frame_skip"] == 2 and "action_repeat 2" in header["frame_skip_source"]
    assert "compile" in read_model_file(compiled.with_suffix(".safetensors"))[0]["layout"]
    ignored = read_model_file(plain.with_suffix(".safetensors"))[0]["ignored"]
    assert ignored["agent_state_dict_keys_outside_the_world_model"] > 0
    assert ignored["top_level_keys"] == ["optims_state_dict"]
    reference = flats["plain.pt"]
    for name, flat in flats.items():
        assert set(flat) == set(reference), name
        for path in flat:
            np.testing.assert_array_equal(flat[path], reference[path], err_msg=f"{name}: {path}")
    # The fused decoder output is the per-key heads in sorted key order; torch (out, in) weights transposed.
    heads = tiny_model.heads["decoder"]._mlp.mean_layer
    want = torch.cat([heads["position"].weight, heads["velocity"].weight], 0).detach().numpy().T
    np.testing.assert_array_equal(reference["decoder/out/kernel"], want)
    np.testing.assert_array_equal(reference["rssm/initial"], tiny_model.dynamics.W.detach().numpy())


def test_cli_summary_frame_skip_and_config(tmp_path, capsys, tiny_model):
    src = T.save_agent(tiny_model, tmp_path / "latest.pt")
    code, out, err = _cli(capsys, src, "--frame-skip", "1")
    assert code == 0, err
    assert out.count("\n") == 1 and "DreamerV3" in out and "latents 4x32" in out and "frame_skip 1" in out
    assert read_model_file(tmp_path / "latest.safetensors")[0]["frame_skip_source"] == "--frame-skip"
    config = tmp_path / "run.yaml"
    config.write_text("action_repeat: 4\nunimix_ratio: 0.0\nencoder: {symlog_inputs: false}\ndyn_stoch: 4\n")
    code, out, err = _cli(capsys, src, "-o", tmp_path / "b.safetensors", "--dreamer-config", config)
    assert code == 0, err
    header, arch, _ = read_model_file(tmp_path / "b.safetensors")
    assert header["frame_skip"] == 4 and "action_repeat" in header["frame_skip_source"]
    assert arch.unimix == 0.0 and arch.symlog_inputs is False and (arch.stoch, arch.classes) == (4, 32)
    # dyn_stoch alone fixes the split: 128 stochastic units = 8 groups x 16 classes
    config.write_text(json.dumps({"dyn_stoch": 8}))
    assert _cli(capsys, src, "-o", tmp_path / "c.safetensors", "--dreamer-config", config)[0] == 0
    arch = read_model_file(tmp_path / "c.safetensors")[1]
    assert (arch.stoch, arch.classes) == (8, 16)


def test_a_small_split_needs_the_config_and_takes_it(tmp_path, capsys):
    model = T.build_world_model(T.config_for("reacher-easy", **{**TINY, "stoch": 6, "discrete": 4}), seed=1)
    src = T.save_agent(model, tmp_path / "latest.pt", optimizer_states=False)
    _assert_user_error(capsys, tmp_path, src, match="pass --dreamer-config with the run's dyn_stoch and dyn_discrete")
    config = tmp_path / "c.yaml"
    config.write_text("dyn_discrete: 4\ndyn_stoch: 6\n")
    assert _cli(capsys, src, "--dreamer-config", config)[0] == 0
    header, arch, _ = read_model_file(tmp_path / "latest.safetensors")
    assert (arch.stoch, arch.classes) == (6, 4) and header["task"] == "reacher-easy"
    assert arch.obs_keys == ("position", "to_target", "velocity")


# --------------------------------------------------------------------------- #
# Bad input: one line, exit 2, nothing written
# --------------------------------------------------------------------------- #


def _broken(state: dict, drop=(), replace=None) -> dict:
    out = {k: v for k, v in state.items() if k not in drop}
    out.update(replace or {})
    return {"agent_state_dict": out}


@pytest.mark.parametrize("case, match", [
    ("missing_gru", "missing key '_wm.dynamics._cell.layers.GRU_linear.weight'"),
    ("missing_norm", "missing key '_wm.encoder._mlp.layers.Encoder_norm1.bias'"),
    ("missing_head_bias", "missing key '_wm.heads.decoder._mlp.mean_layer.velocity.bias'"),
    ("inconsistent", "'_wm.dynamics._obs_out_layers.0.weight' has shape [16, 99]"),
    ("cnn", "image (CNN) encoder or decoder, which is not supported yet"),
    ("extra", "unexpected key '_wm.heads.decoder._mlp.std_layer.weight'"),
    ("nan", "contains NaN"),
    ("not_tensor", "holds a str, not a tensor"),
    ("two_models", "two world models"),
])
def test_bad_world_models_are_one_line_errors(tmp_path, capsys, tiny_agent_state, case, match):
    s = tiny_agent_state
    w = "_wm."
    blob = {
        "missing_gru": lambda: _broken(s, drop=[w + "dynamics._cell.layers.GRU_linear.weight"]),
        "missing_norm": lambda: _broken(s, drop=[w + "encoder._mlp.layers.Encoder_norm1.bias"]),
        "missing_head_bias": lambda: _broken(s, drop=[w + "heads.decoder._mlp.mean_layer.velocity.bias"]),
        "inconsistent": lambda: _broken(s, replace={w + "dynamics._obs_out_layers.0.weight": torch.zeros(16, 99)}),
        "cnn": lambda: _broken(s, replace={w + "encoder._cnn.layers.0.weight": torch.zeros(32, 3, 4, 4)}),
        "extra": lambda: _broken(s, replace={w + "heads.decoder._mlp.std_layer.weight": torch.zeros(5, 24)}),
        "nan": lambda: _broken(s, replace={w + "dynamics.W": torch.full((1, 16), float("nan"))}),
        "not_tensor": lambda: _broken(s, replace={w + "dynamics.W": "zeros"}),
        "two_models": lambda: _broken(s, replace={"_wm._orig_mod.dynamics.W": torch.zeros(1, 16)}),
    }[case]()
    src = _save(tmp_path, blob)
    _assert_user_error(capsys, tmp_path, src, match=match)


@pytest.mark.parametrize("text, match", [
    ("dyn_deter: 999\n", "says dyn_deter 999 but the checkpoint's tensors have 16"),
    ("encoder: {mlp_layers: 5}\n", "says encoder.mlp_layers 5 but the checkpoint's tensors have 2"),
    ("dyn_stoch: 32\ndyn_discrete: 32\n", "says dyn_stoch x dyn_discrete 1024 but the checkpoint's tensors have 128"),
    ("norm: false\n", "says norm False"),
    ("initial: zeros\n", "says initial 'zeros'"),
    ("dyn_discrete: false\n", "continuous latents, which are not supported"),
    ("dyn_discrete: 5\n", "which dyn_discrete 5"),
    ("dyn_rec_depth: 2\n", "dyn_rec_depth other than 1 is not supported"),
    ("encoder: {cnn_keys: image}\n", "an image encoder"),
    ("decoder: {vector_dist: normal}\n", "decoder.vector_dist 'normal' is not supported"),
    ("act: Softsign\n", "activation 'Softsign' is not supported"),
    ("dyn_deterr: 512\n", "unknown key 'dyn_deterr'"),
    ("defaults: {}\n", "looks like upstream's whole configs.yaml"),
    ("- 1\n- 2\n", "must hold a mapping"),
    ("action_repeat: 4\n", "--frame-skip 1 contradicts the config's action_repeat 4"),
])
def test_a_config_that_contradicts_the_shapes_or_is_unsupported_is_an_error(tmp_path, capsys, tiny_model, text,
                                                                           match):
    src = T.save_agent(tiny_model, tmp_path / "latest.pt", optimizer_states=False)
    config = tmp_path / "run.yaml"
    config.write_text(text)
    extra = ["--frame-skip", "1"] if "action_repeat" in text else []
    _assert_user_error(capsys, tmp_path, src, "--dreamer-config", config, *extra, match=match)


def test_other_bad_arguments(tmp_path, capsys, tiny_model, checkpoints):
    src = T.save_agent(tiny_model, tmp_path / "latest.pt", optimizer_states=False)
    _assert_user_error(capsys, tmp_path, src, "--env", "reacher-easy",
                       match="--env reacher-easy has observation keys position (2), to_target (2), velocity (2)")
    _assert_user_error(capsys, tmp_path, src, "--dreamer-config", tmp_path / "none.yaml", match="does not exist")
    config = tmp_path / "c.yaml"
    config.write_text("dyn_discrete: 32\n")
    tdmpc2 = checkpoints.upstream(1, obs_dim=5, action_dim=1).pt
    _assert_user_error(capsys, tmp_path, tdmpc2, "-o", tmp_path / "x.safetensors", "--dreamer-config", config,
                       match="applies to DreamerV3 checkpoints only")


# --------------------------------------------------------------------------- #
# danijar/dreamerv3 pickles: numpy only, nothing executed
# --------------------------------------------------------------------------- #


class _Evil:
    """Unpickling this calls os.system, which would create the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_safe_unpickler_admits_numpy_arrays_and_nothing_else(tmp_path):
    params = {"params": {"enc/linear0/kernel": np.arange(6, dtype=np.float32).reshape(2, 3),
                         "dyn/dyngru/kernel": np.ones((2, 2), np.float64), "step": np.int64(7)},
              "counters": {"updates": 3}}
    ok = tmp_path / "agent.pkl"
    ok.write_bytes(pickle.dumps(params, protocol=4))
    got = DC.safe_unpickle(ok)
    np.testing.assert_array_equal(got["params"]["enc/linear0/kernel"], params["params"]["enc/linear0/kernel"])
    assert got["params"]["step"] == 7 and got["counters"] == {"updates": 3}
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"params": {"x": _Evil(marker)}}))
    with pytest.raises(WmelError, match="refusing to load .*global posix.system is refused.*nothing was executed"):
        DC.safe_unpickle(evil)
    assert not marker.exists()
    objects = tmp_path / "objects.pkl"
    objects.write_bytes(pickle.dumps({"x": np.array([1, "a"], dtype=object)}))
    with pytest.raises(WmelError, match="refusing to load"):
        DC.safe_unpickle(objects)


def test_danijar_checkpoints_are_read_safely_and_refused_in_one_line(tmp_path, capsys):
    ok = tmp_path / "agent.pkl"
    ok.write_bytes(pickle.dumps({"params": {"dyn/dynin0/kernel": np.zeros((4, 4), np.float32)},
                                 "counters": {"updates": 1}}))
    _assert_user_error(capsys, tmp_path, ok, match="danijar/dreamerv3 (JAX) agent checkpoint")
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"params": {"x": _Evil(marker)}}))
    _assert_user_error(capsys, tmp_path, evil, match="nothing was executed")
    assert not marker.exists()
    # A torch checkpoint in torch's legacy (non-zip) format is still torch's, not a plain pickle.
    legacy = tmp_path / "legacy.pt"
    torch.save({"x": torch.zeros(1)}, legacy, _use_new_zipfile_serialization=False)
    assert not DC.is_plain_pickle(legacy) and DC.is_plain_pickle(ok)

"""``wmel-jax convert``: what it records, and what bad input gets.

Every bad input is a one-line ``wmel-jax: error: ...``, exit status 2, and
no output file (nor a temporary one) left behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import wmel_jax
from wmel_jax.converters import tdmpc2_torch as T
from wmel_jax.converters.convert import convert_checkpoint
from wmel_jax.converters.tasks import KNOWN_TASK_DIMS, UPSTREAM_TASK_SETS
from wmel_jax import cli
from wmel_jax.errors import WmelError

REPO = Path(__file__).resolve().parents[1]


def _run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(["convert", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


def _assert_user_error(capsys, folder: Path, before: set[str], *argv, match: str) -> str:
    """Exit 2, one line naming the problem, and nothing new in ``folder``."""
    code, out, err = _run_cli(capsys, *argv)
    assert code == 2, (out, err)
    assert err.startswith("wmel-jax: error: ") and err.count("\n") == 1, err
    assert match.lower() in err.lower(), err
    assert set(os.listdir(folder)) == before, "conversion left a file behind"
    return err


@pytest.fixture(scope="module")
def small_upstream_sd() -> dict:
    """A size-1 upstream state dict to corrupt, one key at a time."""
    return T.upstream_state_dict(T.build_upstream(1, 5, 1, seed=11))


def _save_model(tmp_path: Path, state: dict, name: str = "bad.pt") -> Path:
    path = tmp_path / name
    torch.save({"model": state}, path)
    return path


# --------------------------------------------------------------------------- #
# What a conversion records
# --------------------------------------------------------------------------- #


def test_header_records_source_schema_task_and_frame_skip(checkpoints):
    ckpt = checkpoints.upstream(1)
    wm = wmel_jax.load(ckpt.converted)
    h = wm.header
    assert h["format_version"] == 1 and h["schema"] == "upstream" and h["layout"] == "current"
    assert h["source"]["sha256"] == hashlib.sha256(ckpt.pt.read_bytes()).hexdigest()
    assert h["source"]["size_bytes"] == ckpt.pt.stat().st_size
    assert h["converter"]["version"].startswith(wmel_jax.__version__)
    # obs 5 / action 1 is cartpole-swingup and nothing else in the task table.
    assert wm.task == "cartpole-swingup" and "inferred" in wm.task_source
    assert wm.frame_skip == 2 and "upstream" in h["frame_skip_source"]  # upstream DMC action repeat
    assert wm.action_set is None and h["action_dim"] == 1
    assert h["policy"] == {"log_std_min": -10.0, "log_std_max": 2.0}
    assert wm.schema == "upstream" and wm.meta == {}


def test_adapter_header_keeps_action_set_and_meta(checkpoints):
    ckpt = checkpoints.adapter(5, obs_dim=6, action_dim=2)
    wm = wmel_jax.load(ckpt.converted)
    assert wm.schema == "adapter" and wm.header["layout"] == "adapter"
    assert wm.action_set.shape == (9, 2) and wm.action_set.dtype == np.float32
    assert wm.frame_skip == 1 and wm.header["frame_skip_source"] == "meta.frame_skip"
    assert wm.meta["training_steps"] == 1000
    assert wm.task == "reacher-easy"  # (6, 2) is reacher-easy only


def test_adapter_action_levels_become_one_column_action_set(checkpoints):
    wm = wmel_jax.load(checkpoints.adapter(1, obs_dim=5, action_dim=1).converted)
    np.testing.assert_array_equal(wm.action_set[:, 0], [-1.0, -0.5, 0.0, 0.5, 1.0])
    assert wm.action_set.shape == (5, 1)


def test_task_table_is_the_spec_table():
    assert KNOWN_TASK_DIMS == {"cartpole-swingup": (5, 1), "reacher-easy": (6, 2), "acrobot-swingup": (6, 1)}
    assert len(UPSTREAM_TASK_SETS["mt30"]) == 30 and len(UPSTREAM_TASK_SETS["mt80"]) == 80


def test_task_env_flag_meta_and_ambiguity(tmp_path, checkpoints):
    pt = checkpoints.upstream(1).pt  # obs 5, action 1
    out = tmp_path / "m.safetensors"
    assert wmel_jax.load(convert_checkpoint(pt, out, env="cartpole_swingup")).task == "cartpole-swingup"
    with pytest.raises(WmelError, match="acrobot-swingup, which has obs_dim 6"):
        convert_checkpoint(pt, out, env="acrobot-swingup", force=True)
    with pytest.raises(WmelError, match="unknown task"):
        convert_checkpoint(pt, out, env="walker-walk", force=True)
    # obs 7 / action 3 fits no known task: recorded as unknown, not guessed.
    T.save_upstream(T.build_upstream(1, 7, 3, seed=0), tmp_path / "other.pt")
    wm = wmel_jax.load(convert_checkpoint(tmp_path / "other.pt", tmp_path / "other.safetensors"))
    assert wm.task is None and "no known task" in wm.task_source


def test_adapter_meta_task_is_used_and_checked(tmp_path):
    model = T.build_adapter(1, 6, 1, seed=0, decoder_hidden=32)
    T.save_adapter(model, tmp_path / "a.pt", action_levels=[-1, 0, 1], meta={"task": "dmc_acrobot_swingup"})
    wm = wmel_jax.load(convert_checkpoint(tmp_path / "a.pt", tmp_path / "a.safetensors"))
    assert wm.task == "acrobot-swingup" and wm.task_source == "meta.task"
    assert wm.frame_skip == 1 and "adapter default" in wm.header["frame_skip_source"]
    T.save_adapter(model, tmp_path / "b.pt", action_levels=[-1, 0, 1], meta={"task": "cartpole-swingup"})
    with pytest.raises(WmelError, match="meta.task says cartpole-swingup"):
        convert_checkpoint(tmp_path / "b.pt", tmp_path / "b.safetensors")


def test_multitask_task_is_never_inferred_but_env_selects_it(tmp_path, checkpoints):
    pt = checkpoints.upstream(1, num_tasks=30, obs_dim=24, action_dim=6).pt
    wm = wmel_jax.load(checkpoints.upstream(1, num_tasks=30, obs_dim=24, action_dim=6).converted)
    assert wm.task is None and "not inferred" in wm.task_source
    assert wm.task_names == tuple(UPSTREAM_TASK_SETS["mt30"])
    with pytest.raises(WmelError, match="multitask model"):
        wm.encode(np.zeros((2, 24)))
    chosen = wmel_jax.load(convert_checkpoint(pt, tmp_path / "mt.safetensors", env="cartpole-swingup"))
    assert chosen.task == "cartpole-swingup" and chosen.task_index() == 10
    with pytest.raises(WmelError, match="not one of"):
        convert_checkpoint(pt, tmp_path / "mt2.safetensors", env="no-such-task")


def test_frame_skip_flag_and_its_conflict_with_meta(tmp_path, checkpoints):
    up = checkpoints.upstream(1).pt
    wm = wmel_jax.load(convert_checkpoint(up, tmp_path / "u.safetensors", frame_skip=4))
    assert wm.frame_skip == 4 and wm.header["frame_skip_source"] == "--frame-skip"
    adapter = checkpoints.adapter(1, obs_dim=5, action_dim=1).pt  # meta.frame_skip == 1
    with pytest.raises(WmelError, match="contradicts"):
        convert_checkpoint(adapter, tmp_path / "a.safetensors", frame_skip=2)
    with pytest.raises(WmelError, match="positive integer"):
        convert_checkpoint(up, tmp_path / "z.safetensors", frame_skip=0)


def test_older_tensordict_bookkeeping_entries_are_accepted(tmp_path, small_upstream_sd):
    state = dict(small_upstream_sd)
    for prefix in ("_Qs.params.", "_detach_Qs_params.", "_target_Qs_params."):
        state[prefix + "__batch_size"] = torch.Size([2])
        state[prefix + "__device"] = None
    src = _save_model(tmp_path, state)
    assert wmel_jax.load(convert_checkpoint(src, tmp_path / "m.safetensors")).arch.num_q == 2


def test_bare_state_dict_without_model_wrapper_is_upstream(tmp_path, small_upstream_sd):
    torch.save(dict(small_upstream_sd), tmp_path / "bare.pt")
    assert wmel_jax.load(convert_checkpoint(tmp_path / "bare.pt", tmp_path / "b.safetensors")).schema == "upstream"


def test_layer_sizes_come_from_shapes_not_the_size_table(tmp_path):
    # Like mt30's 19M checkpoint (latent 512 instead of 768): sizes off the table.
    model = T.randomize_(T.WorldModel(T.upstream_config(19, 5, 1, latent_dim=512, enc_dim=640,
                                                        num_q=3)), seed=0)
    T.save_upstream(model, tmp_path / "odd.pt")
    arch = wmel_jax.load(convert_checkpoint(tmp_path / "odd.pt", tmp_path / "odd.safetensors")).arch
    assert (arch.latent_dim, arch.enc_dim, arch.mlp_dim, arch.num_enc_layers, arch.num_q) == (512, 640, 1024, 3, 3)


# --------------------------------------------------------------------------- #
# The command line
# --------------------------------------------------------------------------- #


def test_cli_prints_one_summary_line_and_defaults_the_output_name(tmp_path, capsys, checkpoints):
    src = tmp_path / "agent.pt"
    src.write_bytes(checkpoints.upstream(1).pt.read_bytes())
    code, out, err = _run_cli(capsys, src)
    assert code == 0, err
    assert out.count("\n") == 1 and out.startswith(f"converted {src}")
    assert "cartpole-swingup" in out and str(tmp_path / "agent.safetensors") in out
    assert wmel_jax.load(tmp_path / "agent.safetensors").arch.latent_dim == 128


def test_existing_output_needs_force_and_force_replaces_it(tmp_path, capsys, checkpoints):
    a, b = checkpoints.upstream(1, seed=0).pt, checkpoints.upstream(1, seed=1).pt
    dst = tmp_path / "out.safetensors"
    assert _run_cli(capsys, a, "-o", dst)[0] == 0
    first = dst.read_bytes()
    before = set(os.listdir(tmp_path))
    _assert_user_error(capsys, tmp_path, before, b, "-o", dst, match="exists; pass --force")
    assert dst.read_bytes() == first
    assert _run_cli(capsys, b, "-o", dst, "--force")[0] == 0
    assert set(os.listdir(tmp_path)) == before  # replaced in place, no temporary left
    assert wmel_jax.load(dst).header["source"]["sha256"] == hashlib.sha256(b.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- #
# Bad input
# --------------------------------------------------------------------------- #


def test_missing_file(tmp_path, capsys):
    _assert_user_error(capsys, tmp_path, set(), tmp_path / "nope.pt", match="does not exist")


def test_directory_instead_of_file(tmp_path, capsys):
    (tmp_path / "dir.pt").mkdir()
    _assert_user_error(capsys, tmp_path, {"dir.pt"}, tmp_path / "dir.pt", match="is a directory")


def test_unreadable_file(tmp_path, capsys, checkpoints, monkeypatch):
    src = tmp_path / "locked.pt"
    src.write_bytes(checkpoints.upstream(1).pt.read_bytes())
    src.chmod(0)
    if os.geteuid() == 0:
        # Root reads anything (and an unprivileged user cannot run this venv's
        # interpreter, which lives under /root), so as root the kernel's refusal
        # is simulated where the converter opens the file: the same errno, the
        # same code path from the CLI down.
        from wmel_jax import fileio

        real_open = os.open

        def refuse(path, *args, **kwargs):
            if Path(path) == src:
                raise PermissionError(13, os.strerror(13), str(path))
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(fileio.os, "open", refuse)
    try:
        err = _assert_user_error(capsys, tmp_path, {"locked.pt"}, src, match="cannot read checkpoint")
        assert "permission denied" in err.lower(), err
    finally:
        src.chmod(0o600)


@pytest.mark.parametrize("content,match", [
    (bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)), "not a torch checkpoint"),
    (b"this is a text file, not a checkpoint\n", "not a torch checkpoint"),
    (b"", "is empty"),
], ids=["random-bytes", "text", "empty"])
def test_not_a_torch_checkpoint(tmp_path, capsys, content, match):
    (tmp_path / "x.pt").write_bytes(content)
    _assert_user_error(capsys, tmp_path, {"x.pt"}, tmp_path / "x.pt", match=match)


def test_truncated_checkpoint(tmp_path, capsys, checkpoints):
    data = checkpoints.upstream(1).pt.read_bytes()
    (tmp_path / "t.pt").write_bytes(data[: len(data) // 2])
    _assert_user_error(capsys, tmp_path, {"t.pt"}, tmp_path / "t.pt", match="truncated or corrupt")


class _Payload:
    """Unpickling this would run ``touch <marker>``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("container", ["torch.save", "raw-pickle"])
def test_malicious_pickle_is_refused_not_run(tmp_path, capsys, container):
    marker = tmp_path / "pwned"
    src = tmp_path / "evil.pt"
    if container == "torch.save":
        torch.save({"model": {"_encoder.state.0.weight": _Payload(marker)}}, src)
    else:
        src.write_bytes(pickle.dumps(_Payload(marker), protocol=2))
    err = _assert_user_error(capsys, tmp_path, {"evil.pt"}, src, match="evil.pt")
    assert not marker.exists(), "the pickle payload ran"
    if container == "torch.save":
        assert "refusing to load" in err and "system" in err


def test_missing_key(tmp_path, capsys, small_upstream_sd):
    state = dict(small_upstream_sd)
    del state["_dynamics.1.weight"]
    _save_model(tmp_path, state)
    _assert_user_error(capsys, tmp_path, {"bad.pt"}, tmp_path / "bad.pt", match="missing key '_dynamics.1.weight'")


def test_extra_key(tmp_path, capsys, small_upstream_sd):
    state = dict(small_upstream_sd)
    state["_decoder.0.weight"] = torch.zeros(3, 3)
    _save_model(tmp_path, state)
    _assert_user_error(capsys, tmp_path, {"bad.pt"}, tmp_path / "bad.pt", match="unexpected key '_decoder.0.weight'")


def test_shapes_that_do_not_fit(tmp_path, capsys, small_upstream_sd):
    state = dict(small_upstream_sd)
    # dynamics input must be latent (128) + action (1): give it one column too many.
    w = state["_dynamics.0.weight"]
    state["_dynamics.0.weight"] = torch.zeros(w.shape[0], w.shape[1] + 1)
    _save_model(tmp_path, state)
    err = _assert_user_error(capsys, tmp_path, {"bad.pt"}, tmp_path / "bad.pt", match="'_dynamics.0.weight'")
    assert "[384, 130]" in err and "[384, 129]" in err and "do not fit" in err


def test_q_copy_with_wrong_shape(tmp_path, capsys, small_upstream_sd):
    state = dict(small_upstream_sd)
    state["_target_Qs_params.2.bias"] = torch.zeros(2, 7)
    _save_model(tmp_path, state)
    _assert_user_error(capsys, tmp_path, {"bad.pt"}, tmp_path / "bad.pt", match="_target_Qs_params.2.bias")


@pytest.mark.parametrize("blob,match", [
    ({"state_dict": {"layer.weight": torch.zeros(2)}}, "unknown schema: top-level keys [state_dict]"),
    ({"model": {"fc1.weight": torch.zeros(2)}}, "unknown schema: 'model' holds keys [fc1.weight]"),
    ([torch.zeros(2)], "unknown schema: the checkpoint is a list"),
], ids=["other-dict", "other-model", "list"])
def test_unknown_schema(tmp_path, capsys, blob, match):
    torch.save(blob, tmp_path / "u.pt")
    _assert_user_error(capsys, tmp_path, {"u.pt"}, tmp_path / "u.pt", match=match)


@pytest.mark.parametrize("actions,match", [
    (dict(action_levels=[0.0, 1.0], action_set=[[0.0], [1.0]]), "it has both"),
    (dict(), "it has neither"),
], ids=["both", "neither"])
def test_adapter_needs_exactly_one_action_set(tmp_path, capsys, actions, match):
    model = T.build_adapter(1, 5, 1, seed=0, decoder_hidden=16)
    blob = {"model_state": model.state_dict(), "arch": dict(model.arch), **actions}
    torch.save(blob, tmp_path / "a.pt")
    _assert_user_error(capsys, tmp_path, {"a.pt"}, tmp_path / "a.pt", match=match)


def test_adapter_arch_that_disagrees_with_tensors(tmp_path, capsys):
    model = T.build_adapter(1, 5, 1, seed=0, decoder_hidden=16)
    arch = dict(model.arch, latent_dim=64)
    torch.save({"model_state": model.state_dict(), "arch": arch, "action_levels": [0.0]}, tmp_path / "a.pt")
    _assert_user_error(capsys, tmp_path, {"a.pt"}, tmp_path / "a.pt", match="arch says latent_dim 64")


def test_output_directory_missing(tmp_path, capsys, checkpoints):
    src = checkpoints.upstream(1).pt
    _assert_user_error(capsys, tmp_path, set(), src, "-o", tmp_path / "no" / "m.safetensors",
                       match="does not exist")


def test_without_torch_convert_says_how_to_install(tmp_path, checkpoints):
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from wmel_jax.cli import main\n"
        f"sys.exit(main(['convert', {str(checkpoints.upstream(1).pt)!r}, '-o', "
        f"{str(tmp_path / 'm.safetensors')!r}]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 2, out.stderr
    assert "pip install 'wmel-jax[convert]'" in out.stderr
    assert not (tmp_path / "m.safetensors").exists()


def test_summary_is_json_safe_metadata(checkpoints):
    # The header is plain JSON (no NaN): it round-trips through json with allow_nan=False.
    header = wmel_jax.load(checkpoints.adapter(5, obs_dim=6, action_dim=2).converted).header
    assert json.loads(json.dumps(header, allow_nan=False)) == header

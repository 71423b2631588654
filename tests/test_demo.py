"""``wmel-jax demo`` on the shipped example models (at the suite's small evaluation shape)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import EVAL_CHUNK, EVAL_K, EVAL_N, eval_cli, small_eval_args
from wmel_jax import cli
from wmel_jax.demo import EXAMPLES_DIR, example_models, run_demo

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TASKS = ("cartpole-swingup", "reacher-easy", "acrobot-swingup")


def test_demo_writes_a_report_per_task_and_one_figure(tmp_path, capsys):
    out = tmp_path / "demo"
    code = cli.main(["demo", "--out", str(out), "--n-states", str(EVAL_N), "--k-steps", str(EVAL_K),
                     "--chunk-states", str(EVAL_CHUNK), "--no-cache"])
    stdout = capsys.readouterr().out
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == sorted([*(f"report-{t}.json" for t in TASKS), "demo.png"])
    assert (out / "demo.png").read_bytes()[:8] == PNG_SIGNATURE
    for task in TASKS:
        report = json.loads((out / f"report-{task}.json").read_text())
        cells = {c["model"]: c for c in report["cells"]}
        # cartpole-swingup also has the DreamerV3 example, evaluated in the same run as the TD-MPC2 ones.
        extra = {f"{task}-dreamerv3"} if task == "cartpole-swingup" else set()
        assert set(cells) == {f"{task}-weak", f"{task}-good"} | extra and report["skipped"] == []
        # The shipped models are what they say: the good one predicts better.
        assert cells[f"{task}-good"]["m1_l2_onestep"] < cells[f"{task}-weak"]["m1_l2_onestep"], task
        assert f"{task}-good" in stdout
    dreamer = {c["model"]: c for c in json.loads((out / "report-cartpole-swingup.json").read_text())["cells"]}
    assert dreamer["cartpole-swingup-dreamerv3"]["m1_latent_mismatch_onestep"] is not None


def test_the_shipped_models_of_three_tasks_in_one_command(tmp_path, capsys):
    """Every shipped example (a good and a weak TD-MPC2 model per task, and cartpole's DreamerV3) in one eval.

    Here, after the demo, because it evaluates the same models at the same shapes: its kernels are the
    demo's, already compiled in this process.
    """
    models = sorted(str(p) for p in EXAMPLES_DIR.glob("*.safetensors"))
    per_task = {t: sum(Path(m).name.startswith(t + "-") for m in models)
                for t in ("acrobot-swingup", "cartpole-swingup", "reacher-easy")}
    assert min(per_task.values()) >= 2 and sum(per_task.values()) == len(models), per_task
    report = tmp_path / "r.json"
    code, out, err = eval_cli(*models, *small_eval_args("-o", report, "--figure", tmp_path / "f.png"), capsys=capsys)
    assert code == 0, err
    doc = json.loads(report.read_text())
    tasks = ["acrobot-swingup", "cartpole-swingup", "reacher-easy"]
    assert [g["config"]["env"] for g in doc["groups"]] == tasks and doc["skipped"] == []
    for group in doc["groups"]:  # each model on its own task, its oracle answers once per group
        assert [doc["cells"][i]["env"] for i in group["cells"]] == [group["config"]["env"]] * per_task[group["config"]["env"]]
        assert len(group["config"]["action_set"]) == (9 if group["config"]["env"] == "reacher-easy" else 5)
    assert [line.split(":")[0] for line in out.splitlines() if ": N=150 states in 6 episodes" in line] == tasks
    assert (tmp_path / "f.png").read_bytes()[:8] == PNG_SIGNATURE


def test_a_stale_conversion_is_redone_from_the_pt(tmp_path):
    examples = tmp_path / "examples"
    examples.mkdir()
    entries = [e for e in example_models() if e["task"] == "cartpole-swingup"]
    for e in entries:
        shutil.copy(EXAMPLES_DIR / e["pt"], examples / e["pt"])
        shutil.copy(EXAMPLES_DIR / e["converted"], examples / e["converted"])
    (examples / "manifest.json").write_text(json.dumps({"models": entries}))
    # Another model's conversion under this model's name: its recorded sha256 is not the .pt's.
    shutil.copy(EXAMPLES_DIR / "acrobot-swingup-good.safetensors", examples / entries[0]["converted"])
    said = []
    reports, written = run_demo(tmp_path / "out", n_states=EVAL_N, k_steps=EVAL_K, chunk_states=EVAL_CHUNK,
                                examples_dir=examples, say=said.append)
    assert any(f"converting {entries[0]['pt']}" in s for s in said)
    assert [c["model"] for c in reports[0]["cells"]] == [e["converted"].removesuffix(".safetensors") for e in entries]

"""The benchmark harness: the batched arm computes the same metrics as wmel-jax; targets, writers, CLI.

The real benchmark (``wmel-jax bench``) is never run here (minutes); its
parts are: the batched torch + ``mujoco.rollout`` arm against dm_control and
against wmel-jax on the suite's shared evaluation shape, the target logic on
synthetic measurements, the JSON/markdown/PNG writers on a tiny synthetic
result, the child-process measurement, and the command line.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from wmel_jax.benchmarks import bench as B
from wmel_jax.benchmarks import batched as BT
from wmel_jax.benchmarks import reference as R
from conftest import EVAL_CHUNK, EVAL_K, EVAL_N

TASKS = {"cartpole-swingup": (5, 1), "reacher-easy": (6, 2), "acrobot-swingup": (6, 1)}

#: The numpy + mujoco.rollout oracle against dm_control stepping one state at a
#: time: the same float64 C MuJoCo from the same state, rebuilt from the
#: observation on both sides (atan2, the reacher target's finger + to_target).
#: One step measured <= 4e-16; the k-step rollout, which dm_control iterates on
#: its own observations while the rollout carries the state, <= 3e-14.
ORACLE_ATOL = 1e-11
#: The batched arm against wmel-jax: the eval parity tolerances (tests/test_eval_parity.py).
L2_RTOL = 1e-4
M3_ATOL = 0.005


# --------------------------------------------------------------------------- #
# The batched arm
# --------------------------------------------------------------------------- #


def test_kendall_tau_b_rows_is_the_reference_pair_loop_with_its_tie_and_undefined_rules():
    rng = np.random.default_rng(0)
    # Small integers: many ties; constant rows on either side: undefined.
    x = rng.integers(0, 3, size=(200, 5)).astype(float)
    y = rng.integers(0, 3, size=(200, 5)).astype(float)
    x[0] = 1.0
    y[1] = 2.0
    tau, defined = BT.kendall_tau_b_rows(x, y)
    for i in range(x.shape[0]):
        ref = R.kendall_tau_b(x[i], y[i])
        assert defined[i] == (ref is not None), i
        if ref is not None:
            assert tau[i] == pytest.approx(ref, abs=1e-15), i
    assert not defined[0] and not defined[1]
    # Hand-worked: x = (1, 2, 3), y = (1, 3, 2): C = 2, D = 1, no ties -> 1/3.
    tau, defined = BT.kendall_tau_b_rows(np.array([[1.0, 2, 3]]), np.array([[1.0, 3, 2]]))
    assert defined[0] and tau[0] == pytest.approx(1 / 3)


@pytest.fixture(scope="module")
def dm_states() -> dict[str, np.ndarray]:
    """A few on-task states per task from dm_control's own seeded rollout."""
    return {task: np.asarray(R.collect_states(task, 12, seed=3)) for task in TASKS}


@pytest.mark.parametrize("task", sorted(TASKS))
def test_native_oracle_matches_dm_control_one_step_and_k_steps(task, dm_states):
    states = dm_states[task]
    actions = np.asarray(R.default_actions(task))
    sequence = actions[np.random.default_rng(1).integers(len(actions), size=4)]
    step, _, _ = R.dm_control_oracle(task)
    with BT.NativeTaskOracle(task) as oracle:
        ours = oracle.next_obs(states, actions)
        traj = oracle.trajectory(states, sequence)
    expected = np.array([[step(s, a) for a in actions] for s in states])
    np.testing.assert_allclose(ours, expected, rtol=0, atol=ORACLE_ATOL, err_msg="one step")
    rows = []
    for s in states:
        obs, path = s, []
        for a in sequence:
            obs = step(obs, a)
            path.append(obs)
        rows.append(path)
    np.testing.assert_allclose(traj, np.swapaxes(np.array(rows), 0, 1), rtol=0, atol=ORACLE_ATOL, err_msg="k steps")
    np.testing.assert_allclose(BT.score_rows(task, expected),
                               [[R.task_score(task)(o) for o in row] for row in expected], rtol=0, atol=1e-15)


#: The batched arm's arithmetic is the same code on every task: cartpole by default, the others with ``-m slow``.
_ARM_TASKS = [pytest.param(t, marks=[] if t == "cartpole-swingup" else [pytest.mark.slow]) for t in sorted(TASKS)]


@pytest.mark.parametrize("model_kind", ["example", "random"])
@pytest.mark.parametrize("task", _ARM_TASKS)
def test_batched_arm_computes_the_metrics_wmel_jax_computes(task, model_kind, checkpoints):
    """Same states, actions and sequence: the batched arm's M1/M2/M3 and latent errors are wmel-jax's.

    On the suite's shared evaluation shape (150 states, chunks of 128), so the
    oracle kernels are the ones the eval tests compile; the batched arm is
    chunked the same way (128 + 22), which exercises its chunk sums.
    """
    import wmel_jax
    from wmel_jax import evaluate
    from wmel_jax.demo import EXAMPLES_DIR

    if model_kind == "example":
        pt = EXAMPLES_DIR / f"{task}-good.pt"
        converted = pt.with_suffix(".safetensors")
    else:
        obs_dim, action_dim = TASKS[task]
        ckpt = checkpoints.adapter(1, obs_dim=obs_dim, action_dim=action_dim)
        pt, converted = ckpt.pt, ckpt.converted
    model = wmel_jax.load(converted)
    problem = evaluate.make_problem(task, model.action_set, n_states=EVAL_N, k_steps=EVAL_K, seed=0)
    targets = evaluate.oracle_targets(problem, EVAL_CHUNK)
    ours, _ = evaluate.model_metrics(model, problem, targets, EVAL_CHUNK)
    out = BT.run_batched([pt], task, np.asarray(problem.states), np.asarray(problem.actions),
                         np.asarray(problem.action_sequence), chunk_states=EVAL_CHUNK)
    theirs = out["metrics"][0]
    for key in ("m1_l2_onestep", "m2_l2_kstep", "m2_curve", "m1_latent_onestep", "m2_latent_kstep",
                "m2_latent_curve"):
        np.testing.assert_allclose(theirs[key], ours[key], rtol=L2_RTOL, err_msg=key)
    if ours["m3_action_agreement"] is None:
        assert theirs["m3_action_agreement"] is None
    else:
        assert theirs["m3_action_agreement"] == pytest.approx(ours["m3_action_agreement"], abs=M3_ATOL)
    assert abs(theirs["m3_states_used"] - ours["m3_states_used"]) <= 1  # a near-tie may flip one state
    assert out["oracle_s"] > 0 and len(out["model_s"]) == 1
    # Observation-space only (the benchmark's like-for-like setting): the same numbers, no latent work.
    obs_only = BT.run_batched([pt], task, np.asarray(problem.states), np.asarray(problem.actions),
                              np.asarray(problem.action_sequence), chunk_states=EVAL_CHUNK, latent=False)
    (narrow,) = obs_only["metrics"]
    assert set(narrow) == {"m1_l2_onestep", "m2_l2_kstep", "m2_curve", "m3_action_agreement", "m3_states_used"}
    for key in narrow:
        assert narrow[key] == theirs[key], key


# --------------------------------------------------------------------------- #
# The plan and the target logic
# --------------------------------------------------------------------------- #


def test_quick_plan_measures_every_target_it_can_and_full_adds_the_rest():
    quick = B.make_plan("quick")
    assert ("cartpole-swingup", 1, 10_000) in quick.configs
    assert {t for t, _, _ in quick.configs} == set(B.TASKS)
    assert {s for _, s, _ in quick.configs} == {1, 5}
    assert quick.sweep == ("cartpole-swingup", 10, 10_000)
    assert quick.upstream == ("cartpole-swingup", 150)
    assert quick.cold_process == ("empty", "warm")
    assert quick.runs >= 3
    full = B.make_plan("full")
    assert {n for _, _, n in full.configs} == {150, 1_000, 10_000, 100_000}
    assert {s for _, s, _ in full.configs} == {1, 5, 19}
    assert ("cartpole-swingup", 1, 100_000) in full.memory
    assert full.cold_process == ("empty", "warm", "off")
    narrowed = B.make_plan("quick", tasks=["reacher-easy"], sizes=[5], ns=[300])
    assert narrowed.configs == (("reacher-easy", 5, 300),)
    assert narrowed.sweep is None and narrowed.upstream is None and narrowed.cold_process == ()
    with pytest.raises(ValueError):
        B.make_plan("slow")


def _row(task: str, size: int, n: int, warm: float, ref: float, batched: float) -> dict:
    """A configuration row with every field the writers read (numbers made up)."""
    a = 5
    return {
        "task": task, "size": size, "n_states": n, "n_actions": a, "k_steps": 10, "chunk_states": min(n, 4096),
        "model": "m",
        "reference": {"time_s": ref, "per_state_s": ref / n, "extrapolated_from": 50,
                      "states_per_s": n / ref, "evals_per_s": n * a / ref},
        "batched": {"time_s": batched, "oracle_s": batched / 3, "model_s": 2 * batched / 3,
                    "model_s_by_torch_threads": {"1": batched, "2": 2 * batched / 3}, "first_call_s": batched,
                    "runs": 3, "torch_threads": 2, "mujoco_threads": 2,
                    "states_per_s": n / batched, "evals_per_s": n * a / batched},
        "wmel_jax": {"warm_s": warm, "oracle_s": warm / 4, "model_s": 3 * warm / 4, "oracle_kernel_s": warm / 4,
                     "model_kernel_s": 3 * warm / 4, "cold_s": warm + 10, "compile_s": 10.0,
                     "oracle_compile_s": 9.0, "model_compile_s": 1.0, "runs": 3,
                     "states_per_s": n / warm, "evals_per_s": n * a / warm, "cold_states_per_s": n / (warm + 10),
                     "all_metrics": {"warm_s": 2 * warm, "model_s": 1.75 * warm, "model_kernel_s": 1.75 * warm,
                                     "model_compile_s": 1.0, "kernel_gflop": 2e-5 * n, "kernel_gflop_per_s": 100.0}},
        "ratios": {"wmel_over_reference": ref / warm, "wmel_over_batched": batched / warm,
                   "cold_wmel_over_reference": ref / (warm + 10)},
        "network": {"kernel_gflop": 1e-5 * n, "kernel_gflop_per_s": 100.0, "fraction_of_peak": 0.25,
                    "shape_peak_gflops": 150.0, "shape_peak_rows": 4096, "fraction_of_shape_peak": 0.67,
                    "torch_gflop_per_s": 80.0, "torch_fraction_of_peak": 0.2, "padded_states": n},
        "physics": {"steps": 15 * n, "oracle_steps_per_s": 4e5, "native_steps_per_s": 2e5,
                    "fraction_of_native": 2.0},
        "agreement": {"m1_rel": 1e-7, "m2_curve_rel": 1e-6, "m3_abs": 0.0},
    }


def _result(mode: str = "full", *, warm_10k: float = 0.5, warm_100k: float = 6.0, ref_10k: float = 40.0,
            batched_10k: float = 1.0, sweep_s: float = 5.0, sweep_ref: float = 400.0, cold_empty: float = 12.0,
            cold_warm: float = 3.0, rss_100k_mb: float = 2500.0) -> dict:
    configs = [_row("cartpole-swingup", 1, 150, 0.02, 0.6, 0.04),
               _row("cartpole-swingup", 1, 10_000, warm_10k, ref_10k, batched_10k),
               _row("cartpole-swingup", 1, 100_000, warm_100k, 10 * ref_10k, 10 * batched_10k),
               _row("reacher-easy", 5, 150, 0.05, 1.0, 0.1)]
    return {
        "mode": mode, "command": "wmel-jax bench --" + mode, "wall_s": 100.0,
        "machine": {"cpu": "Test CPU", "cores": 2, "ram_gb": 16.0, "device": "TFRT_CPU_0", "jax": "0", "jaxlib": "0",
                    "mujoco": "0", "torch": "0", "date": "2026-01-01T00:00:00+00:00", "loadavg_start": [1.0, 1.0, 1.0]},
        "plan": {"runs": 3}, "torch_threads_tried": [1, 2],
        "peak": {"n": 2048, "numpy_gflops": 200.0, "jax_gflops": 400.0, "torch_gflops": 200.0, "peak_gflops": 400.0},
        "configs": configs,
        "sweep": {"task": "cartpole-swingup", "n_states": 10_000, "n_actions": 5, "n_checkpoints": 10, "size": 1,
                  "passes": 1,
                  "reference": {"time_s": sweep_ref, "extrapolated_from": 20, "states_per_s": 250.0},
                  "batched": {"time_s": 8.0, "estimated_from_single_checkpoint": True, "states_per_s": 1e4},
                  "wmel_jax": {"warm_s": sweep_s, "cold_s": sweep_s + 10, "states_per_s": 2e4},
                  "ratios": {"wmel_over_reference": sweep_ref / sweep_s, "wmel_over_batched": 8.0 / sweep_s}},
        "upstream": {"task": "cartpole-swingup", "n_states": 150, "size": 1, "metrics_computed": ["m1_latent_onestep"],
                     "reference_latent": {"time_s": 1.0, "extrapolated_from": 20, "states_per_s": 150.0},
                     "wmel_jax": {"warm_s": 0.02, "cold_s": 12.0, "model_compile_s": 0.8, "states_per_s": 7500.0},
                     "ratios": {"wmel_over_reference": 50.0}},
        "cold_process": [
            {"kind": "empty", "cache": "empty", "wall_s": cold_empty, "max_rss_mb": 900.0, "returncode": 0,
             "command": "python -m wmel_jax eval m --env cartpole-swingup", "timings": {"compile_s": 8.0}},
            {"kind": "warm", "cache": "warm", "wall_s": cold_warm, "max_rss_mb": 600.0, "returncode": 0,
             "command": "python -m wmel_jax eval m --env cartpole-swingup", "timings": None},
        ],
        "memory": [{"task": "cartpole-swingup", "size": 1, "n_states": 100_000, "max_rss_mb": rss_100k_mb,
                    "wall_s": 30.0, "returncode": 0, "timings": {"compile_s": 10.0, "run_s": 6.0}}],
    }


def _status(result: dict) -> dict[str, str]:
    return {t["id"]: t["status"] for t in B.evaluate_targets(result)}


def test_targets_pass_when_every_measurement_meets_its_threshold():
    status = _status(_result())
    assert set(status.values()) == {"PASS"}, status
    assert set(status) == {"warm_10k_vs_reference", "warm_10k_vs_batched", "sweep_10k_vs_reference",
                           "eval_cold_empty_cache", "eval_cold_warm_cache", "memory_100k", "linear_100k"}


@pytest.mark.parametrize("change, target", [
    (dict(ref_10k=19.0), "warm_10k_vs_reference"),        # 38x < 40x
    (dict(batched_10k=0.6), "warm_10k_vs_batched"),       # 1.2x < 1.3x
    (dict(sweep_ref=295.0), "sweep_10k_vs_reference"),    # 59x < 60x
    (dict(cold_empty=15.0), "eval_cold_empty_cache"),     # not under 15 s
    (dict(cold_warm=4.5), "eval_cold_warm_cache"),
    (dict(rss_100k_mb=4100.0), "memory_100k"),            # 4.1 GB
    (dict(warm_100k=6.6), "linear_100k"),                 # 6.6 / (10 x 0.5) = 1.32 > 1.3
])
def test_each_target_fails_on_its_own_measurement(change, target):
    status = _status(_result(**change))
    assert status[target] == "FAIL"
    assert [k for k, v in status.items() if v != "PASS"] == [target]


def test_linear_scaling_uses_the_interleaved_10k_runs_when_there_are_some():
    result = _result(warm_100k=6.6)  # 1.32x the separate 10k measurement: FAIL on its own
    big = result["configs"][2]
    big["wmel_jax"]["scaling"] = {"base_n": 10_000, "base_warm_s": 0.6, "ratio_to_linear": 6.6 / 6.0}
    target = next(t for t in B.evaluate_targets(result) if t["id"] == "linear_100k")
    assert target["status"] == "PASS" and target["value"] == pytest.approx(1.1)
    assert "same repetitions" in target["detail"]
    big["wmel_jax"]["scaling"]["ratio_to_linear"] = 1.31
    assert _status(result)["linear_100k"] == "FAIL"


def test_missing_measurements_are_not_measured_and_quick_mode_says_so():
    result = _result("quick")
    result["configs"] = [r for r in result["configs"] if r["n_states"] != 100_000]
    result["memory"] = []
    status = _status(result)
    assert status["memory_100k"] == "not measured in quick mode"
    assert status["linear_100k"] == "not measured in quick mode"
    assert status["warm_10k_vs_reference"] == "PASS"
    empty = _result("full")
    for key in ("configs", "cold_process", "memory"):
        empty[key] = []
    empty["sweep"] = None
    assert set(_status(empty).values()) == {"not measured"}
    failed_child = _result()
    failed_child["cold_process"][0]["returncode"] = 1  # a crashed child measures nothing
    assert _status(failed_child)["eval_cold_empty_cache"] == "not measured"


def test_writers_produce_json_markdown_and_png(tmp_path):
    result = _result()
    result["targets"] = B.evaluate_targets(result)
    paths = B.write_outputs(result, tmp_path)
    assert [p.name for p in paths] == ["bench_full.json", "bench_full.md", "bench_full.png"]
    assert json.loads(paths[0].read_text())["targets"] == result["targets"]
    md = paths[1].read_text()
    assert "| cartpole-swingup | 1 | 10000 |" in md
    assert "scaled linearly to N" in md and "TFRT_CPU_0" in md
    assert "estimated" in md  # the quick sweep's batched arm is labelled
    assert md.count("**PASS**") == 7
    assert "| 10 | 1 | 20,000 |" in md  # the default eval's warm time (all metrics) beside the compared one
    assert "the default eval (latent metrics too, 0 GFLOP) took 1.000 s, x40.0" in md
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_a_narrowed_run_never_replaces_the_modes_results():
    assert B.output_stem("quick") == "bench_quick"
    assert B.output_stem("full", {"tasks": ["cartpole-swingup", "reacher-easy"]}) == "bench_full_cartpole-reacher"
    assert B.output_stem("quick", {"sizes": [5], "n": [300, 1000]}) == "bench_quick_5_300-1000"


def test_network_flops_count_two_in_out_per_linear_layer():
    params = {"encoder": {"layer_0": {"linear": {"kernel": np.zeros((5, 8)), "bias": np.zeros(8)}}},
              "dynamics": {"layer_0": {"linear": {"kernel": np.zeros((9, 4))}}},
              "decoder": {"layer_0": {"kernel": np.zeros((4, 5))}}}
    f = B.network_flops(params)
    assert f == {"encoder": 80.0, "dynamics": 72.0, "decoder": 40.0, "reward": 0.0}
    # n=2 states, a=3 actions, k=1: 2*80 + 6*(72+80+0+40) + 1*2*(72+80) + decoder rollout 1*2*(80+72+40).
    assert B.kernel_flops(f, 2, 3, 1) == 160 + 6 * 192 + 2 * 152 + 2 * 192


def test_run_child_reports_the_childs_own_peak_memory_and_exit_status():
    code = "import sys; b = bytearray(150_000_000); b[::4096] = b'x' * len(b[::4096]); sys.exit(3)"
    out = B.run_child([sys.executable, "-c", code])
    assert out["returncode"] == 3
    assert out["max_rss_mb"] > 150
    small = B.run_child([sys.executable, "-c", "print('hi')"])
    assert small["returncode"] == 0 and small["stdout_tail"] == "hi\n"
    assert small["max_rss_mb"] < out["max_rss_mb"]


# --------------------------------------------------------------------------- #
# The command line
# --------------------------------------------------------------------------- #


def test_bench_help_and_bad_flags():
    ok = subprocess.run([sys.executable, "-m", "wmel_jax", "bench", "--help"], capture_output=True, text=True,
                        timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "--quick" in ok.stdout and "--full" in ok.stdout and "--out" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "wmel_jax", "bench", "--fastest"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2
    assert "unrecognized arguments: --fastest" in bad.stderr
    both = subprocess.run([sys.executable, "-m", "wmel_jax", "bench", "--quick", "--full"], capture_output=True,
                          text=True, timeout=120)
    assert both.returncode == 2


@pytest.mark.parametrize("argv, message", [
    (["--runs", "0"], "--runs must be a positive int"),
    (["--tasks", "walker-walk"], "unknown task(s) walker-walk"),
    (["--n", "1"], "--n values must be at least 2"),
])
def test_bad_values_are_one_line_errors_with_exit_2(argv, message, capsys, tmp_path):
    from wmel_jax import cli

    assert cli.main(["bench", "--out", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not list(tmp_path.iterdir())


def test_missing_torch_is_a_one_line_install_hint(monkeypatch, capsys):
    import importlib.util

    from wmel_jax import cli
    from wmel_jax.commands import bench as cmd

    real = importlib.util.find_spec
    monkeypatch.setattr(cmd.importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    assert cli.main(["bench"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install -e '.[dev]'" in err and "torch" in err

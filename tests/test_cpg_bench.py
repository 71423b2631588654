"""The CPG benchmark's bookkeeping: targets and tables from its own measurements (nothing timed here).

The benchmark itself runs for hours (``python -m wmel_jax.benchmarks.cpg_bench``);
this checks, on a result of the shape it writes, that each target is computed
from the right numbers and that the report renders.
"""

from __future__ import annotations

from wmel_jax.benchmarks import cpg_bench as CB


def _arm(calls, run_s, compile_s=10.0):
    return {"compile_s": compile_s, "run_s": run_s, "plan_calls": calls, "plan_calls_per_s": calls / run_s,
            "success_rate": 0.5, "masked_slot_fraction": 0.05, "rounds": 100}


def _result():
    run = {"planner": "random-shooting", "n": 300, "wall_s": 400.0, "max_rss_mb": 900.0, "load_s": 5.0,
           "command": "wmel-jax cpg ...", "loadavg_before": [1.0, 1, 1], "loadavg_after": [2.0, 2, 2],
           "arms": {"oracle": _arm(20_000, 100.0), "learned_size1": _arm(70_000, 350.0)}}
    large = dict(run, n=1000, max_rss_mb=1500.0, arms={"oracle": _arm(70_000, 350.0),
                                                       "learned_size1": _arm(240_000, 1200.0)})
    return {
        "command": "python -m wmel_jax.benchmarks.cpg_bench",
        "machine": {"cpu": "test cpu", "cores": 2, "ram_gb": 8.0, "backend": "cpu", "jax": "x", "mujoco": "y",
                    "torch": "z", "loadavg_start": [1.0, 1.0, 1.0]},
        "loadavg_end": [1.0, 1.0, 1.0],
        "peak": {"peak_gflops": 200.0},
        # oracle: 200 calls/s against 66 ms per call = 13.2x; learned: 200 calls/s against 200 ms = 40x.
        "reference": {"random-shooting/oracle": {"calls": 30, "mean_ms": 66.0, "median_ms": 65.0},
                      "random-shooting/learned_size1": {"calls": 30, "mean_ms": 200.0, "median_ms": 199.0}},
        "profile": [{"planner": "random-shooting", "chunk": 64, "rows_per_plan_step": 3200,
                     "oracle": {"plan_round_s": 0.1, "physics_steps_per_s": 480_000.0,
                                "raw_step_reward_steps_per_s": 500_000.0, "physics_fraction_of_round": 0.96},
                     "learned_size1": {"plan_round_s": 0.2, "network_gflop_per_round": 30.0, "network_gflops": 150.0,
                                       "layer_shapes_gflops": 180.0, "fraction_of_layer_shapes": 0.83,
                                       "env_round_s_at_most": 0.01, "env_fraction_of_round": 0.05}}],
        "blocks": {"rows": [400, 3200], "steps": 15, "oracle_rows_per_s": [150_000.0, 160_000.0],
                   "learned_rows_per_s": [70_000.0, 83_000.0]},
        "runs": [run],
        "large": large,
    }


def test_targets_come_from_the_runs_own_numbers():
    result = _result()
    targets = {t["target"]: t for t in CB.targets(result)}
    oracle = next(t for k, t in targets.items() if "random-shooting/oracle, n = 300" in k)
    learned = next(t for k, t in targets.items() if "random-shooting/learned_size1, n = 300" in k)
    assert abs(oracle["value"] - 13.2) < 1e-9 and not oracle["met"]
    assert abs(learned["value"] - 40.0) < 1e-9 and not learned["met"]
    wall = next(t for k, t in targets.items() if "< 10 min wall" in k)
    assert wall["value"] == 5.0 + 10.0 + 100.0 + 10.0 + 350.0 and wall["met"]
    memory = next(t for k, t in targets.items() if "peak memory" in k)
    assert memory["value"] == 1.5 and memory["met"]


def test_markdown_renders_every_section():
    result = _result()
    result["targets"] = CB.targets(result)
    text = CB.markdown(result)
    for needle in ("ms per plan call", "calls/s", "Where the time goes", "Targets", "96% of the oracle's raw",
                   "83% of plain matmuls", "Block sizes", "| 3,200 | 160,000 | 83,000 |", "NO", "yes"):
        assert needle in text, needle


def test_listed_runs_keep_their_horizon_and_arms():
    result = _result()
    del result["large"]
    result["runs"].append(dict(result["runs"][0], n=1000, horizon=20, max_rss_mb=1200.0,
                               arms={"learned_size5": _arm(5_000, 100.0)}))
    result["targets"] = CB.targets(result)
    memory = next(t for t in result["targets"] if "peak memory" in t["target"])
    assert "horizon 20" in memory["target"] and memory["value"] == 1.2
    # A short horizon is not the n = 300 wall-time run the target names.
    assert sum("< 10 min wall" in t["target"] for t in result["targets"]) == 1
    assert "| random-shooting | 1000 | 20 | learned_size5 |" in CB.markdown(result)

"""One process, 4 CPU devices: a sharded eval against the one-device run (run by tests/test_distributed_devices.py).

Needs ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` in the
environment before it starts (JAX reads it once). Writes a JSON summary of
the comparisons to the path in argv[1]; the test asserts on it.

Shapes: N = 150 states (not a multiple of 4), k = 10; one device at
``--chunk-states`` 32 (five calls, the last padded) against four devices at
128 (two calls of 32 rows per device, the last one mostly padding): every
device computes exactly the one-device run's chunks. Four devices at 32
(8 rows per device) is the same-flag comparison.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "disable")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

N, K, CHUNK_ONE, CHUNK_FOUR = 150, 10, 32, 128
#: reacher-easy: the cheapest of the three oracles to compile (Euler, one step per env step).
TASK = "reacher-easy"
EXAMPLE = Path(__file__).resolve().parents[1] / "wmel_jax" / "examples" / f"{TASK}-good.safetensors"


def rel(a, b) -> float:
    """Normwise relative difference: max |a - b| / max |a| (0 when equal; a scalar's relative difference), None-aware."""
    if a is None or b is None:
        return 0.0 if a is b else float("inf")
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return float("inf")
    d = float(np.max(np.abs(a - b), initial=0.0))
    return 0.0 if d == 0 else d / max(float(np.max(np.abs(a), initial=0.0)), np.finfo(np.float64).tiny)


def metric_diffs(x: dict, y: dict) -> dict:
    """Per metric field (its interval and per-episode sd too), the normwise relative difference."""
    keys = [k for k, v in x.items() if k != "unavailable" and not k.endswith("_states_used")]
    out = {}
    for k in keys:
        if isinstance(x[k], dict):  # episode_sd: {metric: sd}
            out.update({f"{k}.{m}": rel(x[k][m], y[k].get(m)) for m in x[k]} if isinstance(y[k], dict)
                       else {k: float("inf")})
        else:
            out[k] = rel(x[k], y[k])
    out["states_used_equal"] = all(x[k] == y[k] for k in x if k.endswith("_states_used"))
    return out


def main(path: str) -> None:
    import wmel_jax
    from wmel_jax import distributed, evaluate
    from wmel_jax.commands._common import default_cache_dir, enable_compilation_cache
    from wmel_jax.pipeline import EvalOptions, run_eval

    enable_compilation_cache(default_cache_dir())  # $WMEL_JAX_CACHE_DIR, as the CLI would

    assert len(jax.devices()) == 4, jax.devices()
    model = wmel_jax.load(EXAMPLE)
    summary: dict = {"devices": len(jax.devices())}

    problems, targets, metrics = {}, {}, {}
    for devices, chunk in ((1, CHUNK_ONE), (4, CHUNK_FOUR), (4, CHUNK_ONE)):
        rt = distributed.configure(devices)
        if devices not in problems:  # sampled on these devices
            problems[devices] = evaluate.make_problem(TASK, model.action_set, n_states=N, k_steps=K,
                                                      seed=3)
        problem = problems[devices]
        t = evaluate.oracle_targets(problem, chunk, runtime=rt)
        targets[devices, chunk] = t
        # total_states as the pipeline passes it, so that run_eval below reuses these kernels.
        metrics[devices, chunk] = evaluate.model_metrics(model, problem, t, chunk, runtime=rt, total_states=N)[0]
    one, four = problems[1], problems[4]
    summary["states"] = {"rel": rel(one.states, four.states),
                         "equal_fraction": float(np.mean(one.states == four.states))}
    summary["targets"] = {
        name: {"rel": rel(getattr(targets[1, CHUNK_ONE], name), getattr(targets[4, CHUNK_FOUR], name)),
               "equal_fraction": float(np.mean(getattr(targets[1, CHUNK_ONE], name)
                                              == getattr(targets[4, CHUNK_FOUR], name)))}
        for name in ("next_obs", "scores", "rewards", "trajectory")
    }
    # The same per-device chunk: the parts of one run; the same --chunk-states: smaller device chunks.
    summary["same_device_chunk"] = metric_diffs(metrics[1, CHUNK_ONE], metrics[4, CHUNK_FOUR])
    summary["same_chunk_flag"] = metric_diffs(metrics[1, CHUNK_ONE], metrics[4, CHUNK_ONE])
    # And given the same states, model predictions on the same rows (the oracle's answers held fixed).
    rt4 = distributed.configure(4)
    fixed = evaluate.model_metrics(model, one, targets[1, CHUNK_ONE], CHUNK_FOUR, runtime=rt4, total_states=N)[0]
    summary["same_inputs"] = metric_diffs(metrics[1, CHUNK_ONE], fixed)

    # The pipeline: the report of --devices 4 against --devices 1 (rounded, as written).
    reports = {}
    for devices, chunk in ((1, CHUNK_ONE), (4, CHUNK_FOUR)):
        distributed.configure(devices)
        reports[devices] = run_eval(EvalOptions([str(EXAMPLE)], n_states=N, k_steps=K, seed=3, chunk_states=chunk))
    summary["runtime"] = {d: r["config"]["runtime"] for d, r in reports.items()}
    summary["report_equal"] = all(
        {k: v for k, v in r["config"].items() if k != "runtime"} == {k: v for k, v in reports[1]["config"].items()
                                                                      if k != "runtime"}
        and r["cells"] == reports[1]["cells"]
        for r in reports.values()
    )
    Path(path).write_text(json.dumps(summary, indent=1))


#: The quick check (the suite's): N = 7 states (uneven on 4 devices) in episodes of 3 that cross
#: device parts, k = 3; one device at chunk 2 against four at chunk 8 (2 rows per device).
QUICK_N, QUICK_K, QUICK_ONE, QUICK_FOUR = 7, 3, 2, 8


def quick(path: str) -> None:
    """The model kernel alone (no oracle or sampler to compile): 4 devices against 1, bit for bit.

    The oracle's answers are random arrays of the right shapes (the model
    kernel only compares against them), so the check costs two small model
    compilations.
    """
    import wmel_jax
    from wmel_jax import distributed, evaluate

    assert len(jax.devices()) == 4, jax.devices()
    model = wmel_jax.load(EXAMPLE)
    rng = np.random.default_rng(0)
    obs_dim, a = model.arch.obs_dim, np.asarray(model.action_set).shape[0]  # a single-task model: the task's
    problem = evaluate.make_problem(TASK, model.action_set, k_steps=QUICK_K, seed=3,
                                    states=rng.normal(size=(QUICK_N, obs_dim)),
                                    episode_ids=np.arange(QUICK_N) // 3)
    targets = evaluate.OracleTargets(
        next_obs=rng.normal(size=(QUICK_N, a, obs_dim)), scores=rng.normal(size=(QUICK_N, a)),
        trajectory=rng.normal(size=(QUICK_K, QUICK_N, obs_dim)), timings={}, rewards=rng.normal(size=(QUICK_N, a)),
    )
    out = {}
    for devices, chunk in ((1, QUICK_ONE), (4, QUICK_FOUR)):
        rt = distributed.configure(devices)
        # total_states: a small problem's fast-compile options (the same for both runs).
        sums, _ = evaluate.model_episode_sums(model, problem, targets, chunk, runtime=rt, total_states=QUICK_N)
        metrics, _ = evaluate.model_metrics(model, problem, targets, chunk, runtime=rt, total_states=QUICK_N)
        out[devices] = {"sums": {k: [np.asarray(v.total).tolist(), np.asarray(v.count).tolist()]
                                 for k, v in sums.items()}, "metrics": metrics,
                        "layout": [list(p) for p in rt.layout(QUICK_N, chunk).parts()]}
    Path(path).write_text(json.dumps({"devices": len(jax.devices()), "runs": out, "toy_episodes": toy_episodes()},
                                     indent=1))


def toy_episodes() -> dict:
    """cpg's episode kernel with tests/test_cpg.py's toy env and planner (no physics: compiles in a second).

    7 episodes on 1 device (3 slots), 4 (8 slots: 2 per device, shares of 2) and 3 (3 slots, shares of 3), the
    last share short: "DxE" -> [success, steps, plan_calls, slot_rounds, slots].
    """
    from wmel_jax import distributed
    from wmel_jax.planning import episodes as EP

    out = {}
    sys.path.insert(0, str(Path(__file__).parent))
    from test_cpg import TOY_ACTIONS, TOY_FAST, _toy_kernel

    kernel, _ = _toy_kernel("random-shooting")
    start = np.random.default_rng(0).integers(-6, 7, (7, 2)).astype(np.float64)
    for devices, chunk in ((1, 3), (4, 8), (3, 3)):  # each a compilation: a few
        rt = distributed.Runtime(tuple(jax.devices()[:devices]))
        r = EP.run_arm(kernel, None, None, start, 4, TOY_ACTIONS, 9, chunk, dtype=np.float64,
                       compiler_options=TOY_FAST, runtime=rt)
        out[f"{devices}x{chunk}"] = [r.success.tolist(), r.steps.tolist(), r.plan_calls.tolist(), r.slot_rounds,
                                     r.chunk]
    return out


#: The cpg check: 7 episodes (shares of 2 on 4 devices, the last one short), 20 env steps each,
#: 4 episodes in flight per process (1 slot per device on 4: freed slots take the share's next episode).
CPG_EPISODES, CPG_HORIZON, CPG_CHUNK = 7, 20, 4


def cpg(path: str) -> None:
    """``run_cpg`` (both arms, the shipped reacher example) on 1 device and on 4: the per-episode results.

    No cache (the API enables none): the 4-device run computes its oracle arm, it does not read the first's.
    """
    from wmel_jax import distributed
    from wmel_jax.planning import cpg as C

    assert len(jax.devices()) == 4, jax.devices()
    out: dict = {"devices": len(jax.devices()), "runs": {}}
    opts = C.CPGOptions([str(EXAMPLE)], episodes=CPG_EPISODES, horizon=CPG_HORIZON, chunk_episodes=CPG_CHUNK)
    for devices in (1, 4):
        distributed.configure(devices)
        report = C.run_cpg(opts)[0]
        out["runs"][devices] = {
            "oracle": report["oracle_full"]["results"], "learned": report["learned_full"]["results"],
            "runtime": report["config"]["runtime"], "cpg": report["cpg"], "paired": report["paired"],
            "oracle_from_cache": report["timings"]["oracle_from_cache"],
            "rounds": [report["oracle_scorecard"]["rounds"], report["learned_scorecard"]["rounds"]],
        }
    Path(path).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    mode = sys.argv[2] if len(sys.argv) > 2 else "main"
    {"quick": quick, "cpg": cpg, "main": main}[mode](sys.argv[1])

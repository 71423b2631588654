"""``wmel-jax cpg`` against the per-call reference planner: plan calls/s, whole-run wall time, memory.

One process, one machine, one run (the machine is shared: ratios against a
baseline timed in the same run are what count):

- **reference**: the per-call planner (``wmel_jax.benchmarks.reference_planner``:
  dm_control rebuilt from the observation per call, the torch checkpoint
  batch-of-1) plans ``--reference-calls`` calls per arm and planner, on the
  first states of real episodes (cartpole-swingup); its mean time per call,
  scaled by the plan calls a whole run makes, is its whole-run time
  (a CPG run is a sequence of plan calls: the reference spends its time in them);
- **wmel-jax**: ``wmel-jax cpg`` as a fresh process for each planner and
  episode count (n = 30, 300, ...), both cartpole models in one run (the
  oracle arm once, then each model's learned arm), with an empty kernel cache
  (compilation included, as a first run pays it): the wall time and peak RSS
  of the process, and from its JSON each arm's compile and run seconds and
  plan calls, hence plan calls/s;
- **where the time goes** (one plan round at the run's episodes in flight,
  timed alone): the oracle arm's planner physics against the oracle's raw
  ``step_reward`` throughput on the same rows; the learned arm's planner
  network (FLOPs counted from the layer shapes) against plain float32
  matmuls at the model's layer shapes and a large square matmul (the
  machine's peak), and its env steps; the masked work (slot-rounds planned
  for no episode: the padding of a round's last block, since only running
  episodes are planned) from each run.

Models: size 1 is the shipped cartpole example (``wmel_jax/examples``), size 5
a randomly initialised adapter of TD-MPC2's 5M layout (it fails every
episode: the most plan calls per episode, which is what a throughput
benchmark wants). Writes ``benchmarks/results/cpg_bench.{json,md}``::

    python -m wmel_jax.benchmarks.cpg_bench [--episodes 30,300] [--planners random-shooting,cem]
        [--sizes 1,5] [--sizes-large 1] [--reference-calls 30] [--large 1000] [--out benchmarks/results]

``--large N`` adds one random-shooting run of N episodes with the size-1
model (both arms): its peak memory is the issue's 4 GB target.

``--runs`` replaces the grid above by the runs listed, each
``planner:n:sizes:horizon:arms`` (sizes joined by ``+``; arms ``both``,
``oracle`` or ``learned``), e.g. ``cem:30:1:500:both;random-shooting:30:5:100:learned``.
A run of 1,000 episodes or more is checked against the memory target: its
episodes are chunked (64 in flight on CPU), so its peak is set by the chunk,
not by n or the horizon, and a short horizon measures it as well. Every run
records the load average before and after it.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from wmel_jax.benchmarks import bench as B

TASK = "cartpole-swingup"
#: The issue's targets on this 2-core CPU.
TARGET_SPEEDUP = 50.0
TARGET_N300_WALL_S = 600.0
TARGET_PEAK_GB = 4.0
_T0 = time.perf_counter()


def _say(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:6.0f} s] {msg}", flush=True)


def build_models(folder: Path, sizes: Sequence[int]) -> dict[int, dict[str, str]]:
    """{size: {"pt", "converted"}}: the shipped size-1 example, random adapters for other sizes."""
    from wmel_jax.converters import tdmpc2_torch as T
    from wmel_jax.converters.convert import convert_checkpoint
    from wmel_jax.demo import EXAMPLES_DIR

    out = {}
    for size in sizes:
        if size == 1:
            stem = EXAMPLES_DIR / f"{TASK}-good"
            out[size] = {"pt": str(stem.with_suffix(".pt")), "converted": str(stem.with_suffix(".safetensors"))}
            continue
        model = T.build_adapter(size, 5, 1, seed=size, decoder_hidden=256)
        pt = folder / f"size{size}.pt"
        T.save_adapter(model, pt, meta={"frame_skip": 1, "tdmpc2_model_size": size, "task": TASK},
                       action_levels=[-1.0, -0.5, 0.0, 0.5, 1.0])
        converted = convert_checkpoint(pt, folder / f"size{size}.safetensors", env=TASK)
        out[size] = {"pt": str(pt), "converted": str(converted)}
    return out


def reference_per_call(planner: str, arm: str, pt: str | None, calls: int) -> dict[str, Any]:
    """The per-call reference planner's ms per plan call over ``calls`` calls of real episodes."""
    import torch

    from wmel_jax.benchmarks import reference as R
    from wmel_jax.benchmarks import reference_planner as RP

    torch.set_num_threads(1)  # batch-of-1 calls gain nothing from threads (and lose on a shared machine)
    if arm == "oracle":
        step, actions = RP.oracle_dynamics(TASK), R.default_actions(TASK)
    else:
        step, actions, _ = RP.model_dynamics(pt)
    rp = RP.make_planner(planner, step, R.task_score(TASK), actions, seed=0)
    latencies: list[float] = []
    k = 0
    while len(latencies) < calls:
        env = RP._make_env(TASK, k)
        obs = R.flatten_observation(env.reset().observation)
        # A short horizon: the episode's first plan calls, swinging up from the bottom.
        r = RP.run_episode(TASK, env, obs, rp, horizon=max(15, 4 * (calls - len(latencies))))
        latencies.extend(r["planning_latencies_ms"])
        k += 1
    latencies = latencies[:calls]
    return {"calls": len(latencies), "mean_ms": statistics.fmean(latencies),
            "median_ms": statistics.median(latencies), "episodes_used": k}


def wmel_run(models: Sequence[str], planner: str, n: int, folder: Path, timeout_s: float, horizon: int = 500,
             arms: str = "oracle,learned") -> dict[str, Any]:
    """``wmel-jax cpg`` as a fresh process, empty cache: wall, peak RSS, and each arm's timings and calls."""
    tag = f"{planner}-{n}-{horizon}-{arms.replace(',', '+')}-{len(models)}"
    out = folder / tag
    cache = folder / f"cache-{tag}"
    cmd = [sys.executable, "-m", "wmel_jax", "cpg", *models, "--planner", planner, "--episodes", str(n),
           "--horizon", str(horizon), "--arms", arms, "-o", str(out), "--cache-dir", str(cache), "--force", "-q"]
    load_before = os.getloadavg()
    child = B.run_child(cmd, env=B._child_env(), timeout_s=timeout_s)
    child["loadavg_before"], child["loadavg_after"] = list(load_before), list(os.getloadavg())
    if child["returncode"] != 0:
        raise RuntimeError(f"wmel-jax cpg failed: {child['stderr_tail'][-800:]}")
    reports = [json.loads(p.read_text()) for p in sorted(out.glob("*.cpg.json"))] if out.is_dir() else \
        [json.loads(out.read_text())]
    result_arms = {}
    first = reports[0]
    if first["oracle_scorecard"] is not None:
        result_arms["oracle"] = _arm(first, "oracle")
    for report in reports:
        size = report["training"]["tdmpc2_model_size"]
        if report["learned_scorecard"] is not None:
            result_arms[f"learned_size{size}"] = _arm(report, "learned")
    return {"planner": planner, "n": n, "horizon": horizon, "wall_s": child["wall_s"],
            "max_rss_mb": child["max_rss_mb"], "arms": result_arms,
            "load_s": first["timings"]["load_s"], "command": child["command"],
            "loadavg_before": child["loadavg_before"], "loadavg_after": child["loadavg_after"]}


def _arm(report: dict[str, Any], arm: str) -> dict[str, Any]:
    card = report[f"{arm}_scorecard"]
    t = report["timings"]
    return {"compile_s": t[f"{arm}_compile_s"], "run_s": t[f"{arm}_run_s"], "plan_calls": card["plan_calls"],
            "plan_calls_per_s": card["plan_calls_per_s"], "success_rate": card["success_rate"],
            "masked_slot_fraction": card["masked_slot_fraction"], "rounds": card["rounds"]}


def where_the_time_goes(models: dict[int, dict[str, str]], planner: str, chunk: int, repeats: int = 5
                        ) -> dict[str, Any]:
    """One plan round of each arm at ``chunk`` episodes in flight, its parts timed alone (medians)."""
    import jax
    import jax.numpy as jnp

    import wmel_jax
    from wmel_jax.oracle.base import compiler_options
    from wmel_jax.planning import cpg as C
    from wmel_jax.planning import episodes as EP
    from wmel_jax.planning import planners as P

    oracle = wmel_jax.make_oracle(TASK)
    config = C.PlannerConfig(planner)
    rows = chunk * config.sequences_per_call
    obs = jnp.asarray(EP.start_states(oracle, 0, chunk))
    keys = jax.random.split(jax.random.key(0), chunk)
    left = jnp.full((chunk,), 500)
    actions = jnp.asarray(oracle.actions)
    score = C._task_score(oracle)

    def timed(fn, *args) -> float:
        jax.block_until_ready(fn(*args))
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts)

    out: dict[str, Any] = {"planner": planner, "chunk": chunk, "rows_per_plan_step": rows}
    # Oracle arm: the planner's physics against the oracle's raw step_reward on the same rows, 15 steps.
    plan_oracle = jax.jit(lambda k, o: P.plan(k, oracle.step_reward, score, o, left, actions, config, record=True),
                          compiler_options=compiler_options(rows))
    rollout_rows = jnp.repeat(obs, config.candidates if planner == "random-shooting" else config.samples, axis=0)
    seq = actions[jax.random.randint(jax.random.key(1), (config.horizon, rollout_rows.shape[0]), 0, 5)]

    def raw(o, s):
        return jax.lax.scan(lambda x, a: (oracle.step_reward(x, a)[0], None), o, s)[0]

    raw_rollout = jax.jit(raw, compiler_options=compiler_options(rows))
    t_plan = timed(plan_oracle, keys, obs)
    t_raw = timed(raw_rollout, rollout_rows, seq) * (config.sequences_per_call / rollout_rows.shape[0] * chunk)
    steps = rows * config.horizon
    out["oracle"] = {"plan_round_s": t_plan, "physics_steps_per_s": steps / t_plan,
                     "raw_step_reward_steps_per_s": steps / t_raw, "physics_fraction_of_round": t_raw / t_plan}
    # Learned arms: the planner's network against matmul rates; the env steps of one round.
    from wmel_jax.benchmarks.bench import layer_shapes_peak, network_flops

    for size, files in models.items():
        model = wmel_jax.load(files["converted"])
        omap = C.observation_map(model.arch, oracle.obs_dim)
        plan_model = jax.jit(lambda p, k, o: P.plan(k, lambda x, a: omap(p, None, x, a), score, o, left, actions,
                                                    config))
        t_plan = timed(plan_model, model.params, keys, obs)
        f = network_flops(model.params)
        flop = steps * (f["encoder"] + f["dynamics"] + f["decoder"])
        shape_peak = layer_shapes_peak(model.params, rows)
        env_round = jax.jit(lambda o, s: jax.lax.scan(lambda x, a: (oracle.step_reward(x, a)[0], None), o, s)[0],
                            compiler_options=compiler_options(chunk))
        t_env = timed(env_round, obs, actions[jax.random.randint(jax.random.key(2), (config.horizon, chunk), 0, 5)])
        out[f"learned_size{size}"] = {
            "plan_round_s": t_plan, "network_gflop_per_round": flop / 1e9, "network_gflops": flop / t_plan / 1e9,
            "layer_shapes_gflops": shape_peak["gflops"], "fraction_of_layer_shapes": flop / t_plan / 1e9
            / shape_peak["gflops"], "env_round_s_at_most": t_env, "env_fraction_of_round": t_env / (t_plan + t_env),
        }
    return out


#: Dynamics batch rows at which block_rates times each arm's dynamics (cpg's blocks: 400 oracle, 800-3,200 learned).
BLOCK_ROWS = (200, 400, 800, 1600, 3200)


def block_rates(converted: str, rows_list: Sequence[int] = BLOCK_ROWS, repeats: int = 15) -> dict[str, Any]:
    """Rows/s of each arm's dynamics, rolled 15 steps, at each batch size: what sets cpg's block sizes.

    The oracle's ``step_reward`` (compiled with the options the oracle arm's
    kernel has at the CLI's default episodes in flight, whatever the block)
    and the model's one-step map (``converted``; default options, as the
    learned arm), each the median of ``repeats`` calls after a warm-up, on
    cartpole's start states; the calls go round-robin over the sizes, so
    that each sees the same machine load.
    """
    import jax
    import jax.numpy as jnp

    import wmel_jax
    from wmel_jax.oracle.base import compiler_options
    from wmel_jax.planning import cpg as C
    from wmel_jax.planning import episodes as EP

    oracle = wmel_jax.make_oracle(TASK)
    model = wmel_jax.load(converted)
    omap = C.observation_map(model.arch, oracle.obs_dim)
    actions = jnp.asarray(oracle.actions)
    horizon = C.PlannerConfig().horizon
    options = compiler_options(EP.DEFAULT_CHUNK_EPISODES * C.PlannerConfig().candidates)
    physics = jax.jit(lambda o, s: jax.lax.scan(lambda x, a: (oracle.step_reward(x, a)[0], None), o, s)[0],
                      compiler_options=options)
    network = jax.jit(lambda p, o, s: jax.lax.scan(lambda x, a: (omap(p, None, x, a), None), o, s)[0])
    calls = {}
    for rows in rows_list:
        obs = jnp.asarray(EP.start_states(oracle, 0, rows))
        seq = actions[jax.random.randint(jax.random.key(rows), (horizon, rows), 0, actions.shape[0])]
        model_obs = obs.astype(jnp.float32)
        calls["oracle", rows] = functools.partial(physics, obs, seq)
        calls["learned", rows] = functools.partial(network, model.params, model_obs, seq)
    times: dict[tuple[str, int], list[float]] = {key: [] for key in calls}
    for fn in calls.values():
        jax.block_until_ready(fn())
    for _ in range(repeats):
        for key, fn in calls.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            times[key].append(time.perf_counter() - t0)
    out: dict[str, Any] = {"rows": list(rows_list), "steps": horizon, "repeats": repeats}
    for arm in ("oracle", "learned"):
        out[f"{arm}_rows_per_s"] = [rows * horizon / statistics.median(times[arm, rows]) for rows in rows_list]
    return out


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each checked from this run's own measurements."""
    rows = []
    ref = result["reference"]
    for run in result["runs"]:
        for arm, a in run["arms"].items():
            key = f"{run['planner']}/{arm}"
            if key not in ref:
                continue
            ratio = a["plan_calls_per_s"] * ref[key]["mean_ms"] / 1000.0
            rows.append({"target": f"plan calls/s >= {TARGET_SPEEDUP:g}x the reference: {key}, n = {run['n']}",
                         "value": ratio, "met": ratio >= TARGET_SPEEDUP})
    for run in result["runs"]:
        if (run["planner"] == "random-shooting" and run["n"] == 300 and run.get("horizon", 500) == 500
                and "learned_size1" in run["arms"] and "oracle" in run["arms"]):
            a, o = run["arms"]["learned_size1"], run["arms"]["oracle"]
            wall = run["load_s"] + o["compile_s"] + o["run_s"] + a["compile_s"] + a["run_s"]
            rows.append({"target": "n = 300, random shooting, size 1, both arms: < 10 min wall (cold cache: "
                                   "load + both arms' compile and run, from the process's own timings)",
                         "value": wall, "met": wall < TARGET_N300_WALL_S})
    for large in result["runs"] + ([result["large"]] if result.get("large") else []):
        if large["n"] < 1000:
            continue
        gb = large["max_rss_mb"] / 1000.0
        rows.append({"target": f"n = {large['n']:,} (horizon {large.get('horizon', 500)}; chunked: the peak is "
                               f"the chunk's): peak memory < {TARGET_PEAK_GB:g} GB", "value": gb,
                     "met": gb < TARGET_PEAK_GB})
    return rows


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        "# wmel-jax cpg against the per-call reference planner (cartpole-swingup)",
        "",
        f"`{result['command']}`",
        "",
        f"{m['cpu']} ({m['cores']} cores), {m['ram_gb']:.0f} GB, {m['backend']} backend, jax {m['jax']}, "
        f"mujoco {m['mujoco']}, torch {m['torch']}; load average at start {m['loadavg_start']}, at end "
        f"{result['loadavg_end']}; large-matmul peak {result['peak']['peak_gflops']:.0f} GFLOP/s.",
        "",
        "## Reference: ms per plan call (dm_control + torch batch-of-1)",
        "",
        "| planner / arm | calls timed | mean ms | median ms |",
        "|---|---:|---:|---:|",
    ]
    for key, r in result["reference"].items():
        lines.append(f"| {key} | {r['calls']} | {r['mean_ms']:.1f} | {r['median_ms']:.1f} |")
    lines += ["", "## wmel-jax cpg (fresh process, empty cache)", "",
              "| planner | n | horizon | arm | plan calls | compile s | run s | calls/s | x reference | reference run s "
              "(scaled) | masked | process wall s | peak RSS MB | load before / after |",
              "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for run in result["runs"] + ([result["large"]] if result.get("large") else []):
        for arm, a in run["arms"].items():
            ref = result["reference"].get(f"{run['planner']}/{arm}")
            ratio = f"{a['plan_calls_per_s'] * ref['mean_ms'] / 1000:.1f}" if ref else "-"
            ref_s = f"{a['plan_calls'] * ref['mean_ms'] / 1000:.0f}" if ref else "-"
            lines.append(
                f"| {run['planner']} | {run['n']} | {run.get('horizon', 500)} | {arm} | {a['plan_calls']:,} | "
                f"{a['compile_s']:.1f} | "
                f"{a['run_s']:.1f} | {a['plan_calls_per_s']:.0f} | {ratio} | {ref_s} | "
                f"{100 * a['masked_slot_fraction']:.0f}% | {run['wall_s']:.0f} | {run['max_rss_mb']:.0f} | "
                f"{run['loadavg_before'][0]:.1f} / {run['loadavg_after'][0]:.1f} |")
    if result["profile"]:
        lines += ["", "## Where the time goes (one plan round, timed alone)", ""]
    for w in result["profile"]:
        o = w["oracle"]
        lines.append(f"- {w['planner']}, {w['chunk']} episodes in flight ({w['rows_per_plan_step']:,} rows per plan "
                     f"step): oracle arm {o['plan_round_s']:.3f} s per round, {o['physics_steps_per_s']:,.0f} "
                     f"physics steps/s = {100 * o['physics_fraction_of_round']:.0f}% of the oracle's raw "
                     f"step_reward rate on those rows ({o['raw_step_reward_steps_per_s']:,.0f}/s)")
        for key, v in w.items():
            if key.startswith("learned"):
                lines.append(
                    f"  - {key}: {v['plan_round_s']:.3f} s per round, network {v['network_gflop_per_round']:.1f} "
                    f"GFLOP at {v['network_gflops']:.0f} GFLOP/s = {100 * v['fraction_of_layer_shapes']:.0f}% of "
                    f"plain matmuls at its layer shapes ({v['layer_shapes_gflops']:.0f} GFLOP/s), "
                    f"{100 * v['network_gflops'] / result['peak']['peak_gflops']:.0f}% of the large-matmul peak; "
                    f"env steps at most {100 * v['env_fraction_of_round']:.0f}% of a round")
    if result.get("blocks"):
        b = result["blocks"]
        lines += ["", f"## Block sizes: each arm's dynamics, {b['steps']} steps, rows/s by batch rows "
                  "(the size-1 model)", "", "| rows | oracle rows/s | learned rows/s |", "|---:|---:|---:|"]
        for rows, o, n in zip(b["rows"], b["oracle_rows_per_s"], b["learned_rows_per_s"]):
            lines.append(f"| {rows:,} | {o:,.0f} | {n:,.0f} |")
    lines += ["", "## Targets", "", "| target | value | met |", "|---|---:|---|"]
    for t in result["targets"]:
        lines.append(f"| {t['target']} | {t['value']:.3g} | {'yes' if t['met'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m wmel_jax.benchmarks.cpg_bench", description=__doc__.splitlines()[0])
    p.add_argument("--episodes", default="30,300", help="episode counts of the timed runs (default 30,300)")
    p.add_argument("--planners", default="random-shooting,cem")
    p.add_argument("--sizes", default="1,5", help="model sizes (1: the shipped example; others random)")
    p.add_argument("--sizes-large", default=None,
                   help="model sizes of the runs of 300 episodes or more (default: --sizes); the others' plan "
                   "calls/s are measured at the smaller episode counts")
    p.add_argument("--reference-calls", type=int, default=30, help="plan calls the reference is timed on, per arm")
    p.add_argument("--large", type=int, default=0, help="also run N episodes, random shooting, size 1 (memory)")
    p.add_argument("--chunk", type=int, default=64, help="episodes in flight for the profile (the CLI's CPU default)")
    p.add_argument("--timeout", type=float, default=7200.0, help="seconds per wmel-jax run")
    p.add_argument("--runs", default=None, metavar="SPEC",
                   help="instead of the grid: planner:n:sizes:horizon:arms;... (see the module docstring)")
    p.add_argument("--no-profile", action="store_true",
                   help="skip the one-round profile (where the time goes) and the block-size rates")
    p.add_argument("--profile-only", action="store_true",
                   help="only the profile and the block-size rates: no reference timing, no cpg runs")
    p.add_argument("--out", default=str(B.REPO_ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)
    os.environ.setdefault("MUJOCO_GL", "disable")
    import jax

    jax.config.update("jax_enable_x64", True)
    episodes = [int(x) for x in args.episodes.split(",") if x]
    planners = [x for x in args.planners.split(",") if x]
    sizes = [int(x) for x in args.sizes.split(",") if x]
    runs_spec = []
    for item in (args.runs or "").split(";"):
        if item.strip():
            planner, n, run_sizes, horizon, arms = item.strip().split(":")
            runs_spec.append((planner, int(n), [int(x) for x in run_sizes.split("+")], int(horizon),
                              {"both": "oracle,learned"}.get(arms, arms)))
    if runs_spec:
        planners = list(dict.fromkeys(r[0] for r in runs_spec))
        sizes = sorted({s for r in runs_spec for s in r[2]})
    result: dict[str, Any] = {"command": "python -m wmel_jax.benchmarks.cpg_bench " + " ".join(argv or sys.argv[1:]),
                              "machine": B.machine_info()}
    with tempfile.TemporaryDirectory(prefix="wmel-cpg-bench-") as tmp:
        folder = Path(tmp)
        models = build_models(folder, sizes)
        result["peak"] = B.matmul_peak(2048)
        _say(f"large-matmul peak {result['peak']['peak_gflops']:.0f} GFLOP/s")
        result["reference"] = {}
        timed_arms = {(planner, arm) for planner in planners for arm in ["oracle"] + [f"learned_size{s}" for s in sizes]}
        if runs_spec:
            timed_arms = {(r[0], a) for r in runs_spec for a in
                          (["oracle"] if "oracle" in r[4] else []) + ([f"learned_size{s}" for s in r[2]]
                                                                     if "learned" in r[4] else [])}
        for planner in planners:
            for arm, pt in [("oracle", None)] + [(f"learned_size{s}", models[s]["pt"]) for s in sizes]:
                if (planner, arm) not in timed_arms or args.profile_only:
                    continue
                r = reference_per_call(planner, "oracle" if arm == "oracle" else "learned", pt, args.reference_calls)
                result["reference"][f"{planner}/{arm}"] = r
                _say(f"reference {planner} {arm}: {r['mean_ms']:.1f} ms per plan call ({r['calls']} calls)")
        result["profile"] = []
        for planner in ([] if args.no_profile else planners):
            w = where_the_time_goes({s: models[s] for s in sizes}, planner, args.chunk)
            result["profile"].append(w)
            _say(f"profile {planner}: {json.dumps(w)}")
        if not args.no_profile:
            result["blocks"] = block_rates(models[min(sizes)]["converted"])
            _say(f"block sizes: {json.dumps(result['blocks'])}")
        result["runs"] = []
        if args.profile_only:
            runs_spec, episodes, args.large = [], [], 0
        large_sizes = sizes if args.sizes_large is None else [int(x) for x in args.sizes_large.split(",") if x]
        for planner, n, run_sizes, horizon, arms in runs_spec:
            run = wmel_run([models[s]["converted"] for s in run_sizes], planner, n, folder, args.timeout, horizon,
                           arms)
            result["runs"].append(run)
            _say(f"wmel-jax {planner} n={n} horizon={horizon} {arms}: wall {run['wall_s']:.0f} s, peak "
                 f"{run['max_rss_mb']:.0f} MB, " + ", ".join(f"{k} {v['plan_calls_per_s']:.0f} calls/s"
                                                          for k, v in run["arms"].items()))
        for n in ([] if runs_spec else episodes):
            converted = [models[s]["converted"] for s in (sizes if n < 300 else large_sizes)]
            for planner in planners:
                run = wmel_run(converted, planner, n, folder, args.timeout)
                result["runs"].append(run)
                _say(f"wmel-jax {planner} n={n}: wall {run['wall_s']:.0f} s, peak {run['max_rss_mb']:.0f} MB, "
                     + ", ".join(f"{k} {v['plan_calls_per_s']:.0f} calls/s" for k, v in run["arms"].items()))
        if args.large:
            result["large"] = wmel_run([models[1]["converted"]], "random-shooting", args.large, folder, args.timeout)
            _say(f"wmel-jax large n={args.large}: wall {result['large']['wall_s']:.0f} s, peak "
                 f"{result['large']['max_rss_mb']:.0f} MB")
    result["loadavg_end"] = list(os.getloadavg())
    result["targets"] = targets(result)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from wmel_jax.fileio import write_json

    write_json(out / "cpg_bench.json", result)
    (out / "cpg_bench.md").write_text(markdown(result))
    _say(f"wrote {out / 'cpg_bench.json'} and {out / 'cpg_bench.md'}")
    for t in result["targets"]:
        print(f"  {'met ' if t['met'] else 'MISS'} {t['target']}: {t['value']:.3g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

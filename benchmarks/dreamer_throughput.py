"""DreamerV3 eval throughput: wmel-jax's kernels against the per-sample reference path.

    python -m wmel_jax.benchmarks.dreamer_throughput [--n-states 10000] [--runs 3] [--ref-states 20]
        [--size reference|small] [--out benchmarks/results/dreamer_throughput.json]

One DreamerV3 world model of the reference's size (32x32 latents, deter 512,
hidden 512, 5 x 1024 encoder and decoder: upstream's dmc_proprio), built by
the torch mirror (random weights: throughput does not depend on them), saved
as upstream's ``latest.pt`` and converted; cartpole-swingup, frame skip 2
(upstream's DMC action repeat), the default action set, k = 10, seed 0.

- **wmel-jax**: ``evaluate.model_metrics`` on N states, compiled first, then
  ``--runs`` warm runs (medians), for M1-M3 only (``--metrics
  observation``: what the reference computes) and for every metric (the
  default eval: + the latent mismatch metrics and the reward ranking). The
  oracle's answers (computed once per run, shared by every model) are timed
  apart.
- **reference**: the per-sample path (``benchmarks.reference``: the torch
  mirror batch-of-1, dm_control one state at a time) computing M1-M3 on the
  first ``--ref-states`` states, scaled linearly to N; and the cost of one
  reference-style plan call (random shooting, 50 candidates x horizon 15 =
  750 Markovian projections, batch of 1 each), against 750 projections as one
  batched wmel-jax call (the 50 candidates for 15 steps, a ``lax.scan``).

Reports the load average with every number (the machine may be shared) and
the ratios measured in this one run. Writes JSON and a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
TASK = "cartpole-swingup"
SIZES = {
    "reference": dict(stoch=32, discrete=32, deter=512, hidden=512, units=512, enc_layers=5, enc_units=1024,
                      dec_layers=5, dec_units=1024),
    "small": dict(stoch=4, discrete=32, deter=64, hidden=64, units=64, enc_layers=2, enc_units=128, dec_layers=2,
                  dec_units=128),
}
PLAN_CANDIDATES, PLAN_HORIZON = 50, 15


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m wmel_jax.benchmarks.dreamer_throughput",
                                description=__doc__.splitlines()[0])
    p.add_argument("--n-states", type=int, default=10_000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--ref-states", type=int, default=20)
    p.add_argument("--size", choices=sorted(SIZES), default="reference")
    p.add_argument("--out", default=str(RESULTS / "dreamer_throughput.json"))
    args = p.parse_args(argv)
    os.environ.setdefault("MUJOCO_GL", "disable")

    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    jax.config.update("jax_enable_x64", True)
    import wmel_jax
    from wmel_jax import evaluate
    from wmel_jax.benchmarks import reference as R
    from wmel_jax.converters import dreamerv3_torch as T
    from wmel_jax.converters.convert import convert_checkpoint
    from wmel_jax.fileio import atomic_output, write_json
    from wmel_jax.model import dreamerv3 as D

    torch.set_num_threads(1)  # batch-of-1 calls gain nothing from threads (see reference.run_reference)
    out: dict = {"benchmark": "dreamer_throughput", "size": args.size, "architecture": SIZES[args.size],
                 "task": TASK, "frame_skip": 2, "n_states": args.n_states, "k_steps": 10, "runs": args.runs,
                 "machine": {"platform": platform.platform(), "processor": platform.processor(),
                             "cpus": os.cpu_count(), "device": str(jax.devices()[0]),
                             "jax": jax.__version__, "torch": torch.__version__}}
    with tempfile.TemporaryDirectory(prefix="wmel-dreamer-bench-") as tmp:
        mirror = T.build_world_model(T.config_for(TASK, **SIZES[args.size]), seed=0)
        pt = T.save_agent(mirror, Path(tmp) / "latest.pt", optimizer_states=False)
        model = wmel_jax.load(convert_checkpoint(pt, Path(tmp) / "model.safetensors"))
        out["parameters"] = int(sum(np.asarray(x).size for x in jax.tree.leaves(model.params)))

        t0 = time.perf_counter()
        problem = evaluate.make_problem(TASK, n_states=args.n_states, k_steps=10, seed=0, frame_skip=2)
        targets = evaluate.oracle_targets(problem)
        out["oracle"] = {"states_and_oracle_s": time.perf_counter() - t0, **targets.timings, "load": _load()}
        print(f"oracle: {out['oracle']['oracle_run_s']:.2f} s run ({args.n_states} states), load {_load()}",
              flush=True)

        wmel: dict = {}
        for label, spaces in (("observation", "observation"), ("all", None)):
            t0 = time.perf_counter()
            values, t = evaluate.model_metrics(model, problem, targets, spaces=spaces)
            cold = time.perf_counter() - t0
            warm = []
            for _ in range(args.runs):
                warm.append(evaluate.model_metrics(model, problem, targets, spaces=spaces)[1]["model_run_s"])
            wmel[label] = {"cold_s": cold, "compile_s": t["model_compile_s"], "warm_runs_s": warm,
                           "warm_s": statistics.median(warm), "load": _load(),
                           "m1": values["m1_l2_onestep"], "m2": values["m2_l2_kstep"]}
            print(f"wmel-jax {label}: warm {wmel[label]['warm_s']:.2f} s (median of {args.runs}), "
                  f"compile {t['model_compile_s']:.1f} s, load {_load()}", flush=True)
        out["wmel_jax"] = wmel

        # The per-sample reference path on a subset of the states, scaled linearly.
        ref_model = R.load_dreamer(pt)
        fns = R.dreamer_callables(ref_model)
        oracle_step, score, _ = R.dm_control_oracle(TASK, 2)
        rows = [tuple(float(x) for x in s) for s in problem.states[: args.ref_states]]
        actions = [tuple(float(x) for x in a) for a in problem.actions]
        sequence = [tuple(float(x) for x in a) for a in problem.action_sequence]
        calls = {"model": 0}

        def model_step(obs, action):
            calls["model"] += 1
            return fns["model_step"](obs, action)

        t0 = time.perf_counter()
        ref = R.reference_metrics(rows, actions, sequence, oracle_step, model_step, score)
        ref_s = time.perf_counter() - t0
        per_state = ref_s / len(rows)
        # One projection alone (the model's share of a reference call).
        obs0, a0 = rows[0], actions[0]
        single = []
        for _ in range(50):
            t1 = time.perf_counter()
            fns["model_step"](obs0, a0)
            single.append(time.perf_counter() - t1)
        projection_s = statistics.median(single)
        out["reference"] = {"states_timed": len(rows), "m1_m3_s": ref_s, "model_calls": calls["model"],
                            "per_state_s": per_state, "scaled_to_n_s": per_state * args.n_states,
                            "projection_call_s": projection_s,
                            "plan_call_s": projection_s * PLAN_CANDIDATES * PLAN_HORIZON, "load": _load()}
        print(f"reference: {per_state * 1e3:.1f} ms per state ({len(rows)} timed), one projection "
              f"{projection_s * 1e3:.2f} ms, a plan call ({PLAN_CANDIDATES} x {PLAN_HORIZON}) "
              f"{out['reference']['plan_call_s']:.2f} s, load {_load()}", flush=True)

        # One plan call's 750 projections, batched: the 50 candidates rolled 15 steps in one program.
        fns_j = model.functions

        def rollout(params, obs, plan):
            def step(o, a):
                o = fns_j.obs_step(params, None, o, a)
                return o, o
            return jax.lax.scan(step, obs, plan)[1]

        roll = jax.jit(rollout, compiler_options=D.xla_options() or None)
        start = jnp.broadcast_to(jnp.asarray(problem.states[0], jnp.float32), (PLAN_CANDIDATES, 5))
        plan = jnp.asarray(problem.actions[np.random.default_rng(0).integers(0, 5, (PLAN_HORIZON, PLAN_CANDIDATES))],
                           jnp.float32)
        roll(model.params, start, plan).block_until_ready()
        plans = []
        for _ in range(20):
            t1 = time.perf_counter()
            roll(model.params, start, plan).block_until_ready()
            plans.append(time.perf_counter() - t1)
        out["wmel_jax"]["plan_call_s"] = statistics.median(plans)
        print(f"wmel-jax plan call (750 projections batched): {statistics.median(plans) * 1e3:.1f} ms, "
              f"load {_load()}", flush=True)

    obs_ratio = out["reference"]["scaled_to_n_s"] / wmel["observation"]["warm_s"]
    out["ratios"] = {
        "reference_over_wmel_m1_m3": obs_ratio,
        "reference_over_wmel_default_eval": out["reference"]["scaled_to_n_s"] / wmel["all"]["warm_s"],
        "reference_over_wmel_plan_call": out["reference"]["plan_call_s"] / out["wmel_jax"]["plan_call_s"],
    }
    out["load_at_end"] = _load()
    write_json(args.out, out)
    r, w = out["reference"], out["wmel_jax"]
    md = [
        f"# DreamerV3 throughput ({args.size} size, {out['parameters']:,} parameters), {TASK}, "
        f"N = {args.n_states:,}, k = 10, frame skip 2",
        "",
        f"`python -m wmel_jax.benchmarks.dreamer_throughput --n-states {args.n_states} --runs {args.runs} "
        f"--ref-states {args.ref_states} --size {args.size}`; {out['machine']['processor'] or platform.machine()}, "
        f"{out['machine']['cpus']} CPUs, {out['machine']['device']}; load average at the end {out['load_at_end']}",
        "",
        "| what | seconds | load |",
        "|---|---:|---:|",
        f"| reference path, M1-M3 (batch-of-1 torch + dm_control; {r['states_timed']} states timed, scaled) | "
        f"{r['scaled_to_n_s']:.1f} | {r['load']} |",
        f"| wmel-jax warm, M1-M3 (`--metrics observation`, median of {args.runs}) | "
        f"{w['observation']['warm_s']:.2f} | {w['observation']['load']} |",
        f"| wmel-jax warm, every metric (default eval) | {w['all']['warm_s']:.2f} | {w['all']['load']} |",
        f"| wmel-jax compile (M1-M3 / every metric) | {w['observation']['compile_s']:.1f} / {w['all']['compile_s']:.1f}"
        f" | |",
        f"| the oracle's answers (once per run, shared by every model) | {out['oracle']['oracle_run_s']:.2f} | "
        f"{out['oracle']['load']} |",
        f"| one plan call, reference ({PLAN_CANDIDATES} x {PLAN_HORIZON} projections, batch of 1) | "
        f"{r['plan_call_s']:.2f} | {r['load']} |",
        f"| one plan call, wmel-jax (the same 750 projections, one program) | {w['plan_call_s']:.4f} | |",
        "",
        f"Ratios (this run): reference / wmel-jax = {obs_ratio:.1f}x on M1-M3, "
        f"{out['ratios']['reference_over_wmel_default_eval']:.1f}x against the default eval (which computes more), "
        f"{out['ratios']['reference_over_wmel_plan_call']:.0f}x per plan call.",
    ]
    with atomic_output(Path(args.out).with_suffix(".md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

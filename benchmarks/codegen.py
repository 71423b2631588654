"""XLA:CPU codegen options and tracing of the physics kernels: compile time against run time.

    python -m wmel_jax.benchmarks.codegen                 # the three tasks, 5 timed runs per kernel
    python -m wmel_jax.benchmarks.codegen --tasks cartpole-swingup --runs 3

Justifies :func:`wmel_jax.oracle.base.compiler_options` and the per-state
jitted MJX stages of :class:`~wmel_jax.oracle.base.Physics`. Each task runs in
fresh processes (no persistent cache, nothing traced before), float64:

* ``options``: the oracle's answers (``evaluate._oracle_kernel``: every
  action from every state, and a 10-step rollout) for a chunk of 150 states
  (``wmel-jax eval``'s default) and of 4,096 states (the default chunk), and
  the state sampler for 150 states, each compiled from one traced program
  with three option sets: ``ynn_off`` (XLA:CPU's YNNPACK fusions off, the
  options before this benchmark), ``no_emitters`` (also the MLIR fusion
  emitters off: XLA's classic LLVM emitters), ``no_emitters_o0`` (also the
  backend optimisation level 0, what ``compiler_options(total_states)`` adds
  for problems of at most ``FAST_COMPILE_MAX_STATES`` states). Compile
  seconds (XLA's compilation of the lowered program, once, after one
  discarded compilation that pays the process's one-time costs) and run seconds (median of ``--runs`` calls after a
  warm-up, block_until_ready);
* ``tracing``: seconds to trace and lower (``jax.export``) the oracle kernel
  and the sampler with the per-state MJX stages jitted (as shipped: one trace
  per stage, reused by every call site) and with them inlined (each call site
  re-runs MJX's Python), each in its own process.

Writes ``benchmarks/results/codegen.json``. On the shared 2-core machine the
absolute numbers are noisy; the ratios within one row are what count.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
TASKS = ("cartpole-swingup", "reacher-easy", "acrobot-swingup")
OPTION_SETS = {
    "ynn_off": {"xla_cpu_experimental_ynn_fusion_type": ""},
    "no_emitters": {"xla_cpu_experimental_ynn_fusion_type": "", "xla_cpu_use_fusion_emitters": False},
    "no_emitters_o0": {
        "xla_cpu_experimental_ynn_fusion_type": "",
        "xla_cpu_use_fusion_emitters": False,
        "xla_backend_optimization_level": 0,
    },
}
K_STEPS, SAMPLER_N, RESET_EVERY = 10, 150, 25


def _child(task: str, mode: str, runs: int) -> dict:
    os.environ.setdefault("MUJOCO_GL", "disable")
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np
    from jax import export

    import wmel_jax
    from wmel_jax import evaluate
    from wmel_jax.oracle.base import precision_scope
    from wmel_jax.states import _sampler

    oracle = wmel_jax.make_oracle(task)
    if mode == "inlined":  # the per-state stages called directly: traced at every call site
        import functools

        from wmel_jax.oracle._mjx import mjx

        p = oracle.physics
        p._smooth_state = p._smooth_small_state if p._small_dense else p._smooth_general_state
        p._kinematics_state = functools.partial(mjx.kinematics, p.model)
    jax.jit(lambda x: x + 1).lower(1.0).compile()  # XLA's own one-time start-up, outside the timings

    actions = jnp.asarray(oracle.actions)
    sequence = actions[np.arange(K_STEPS) % len(oracle.actions)]
    episodes = -(-SAMPLER_N // RESET_EVERY)
    key = jax.random.key(0)
    out: dict = {"task": task, "mode": mode}
    with precision_scope("float64"):
        t0 = time.perf_counter()
        oracle_exp = {150: export.export(jax.jit(evaluate._oracle_kernel(oracle)))(
            jax.ShapeDtypeStruct((150, oracle.obs_dim), np.float64), actions, sequence)}
        out["oracle_trace_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        sampler_exp = export.export(jax.jit(_sampler(oracle, episodes, RESET_EVERY)))(key, actions)
        out["sampler_trace_s"] = time.perf_counter() - t0
        if mode == "inlined":
            return out
        oracle_exp[4096] = export.export(jax.jit(evaluate._oracle_kernel(oracle)))(
            jax.ShapeDtypeStruct((4096, oracle.obs_dim), np.float64), actions, sequence)
        states = np.asarray(wmel_jax.sample_states(jax.random.key(1), task, 4096))
        rows = []

        def measure(kernel: str, size: int, exp, args) -> None:
            for name, options in OPTION_SETS.items():
                lowered = jax.jit(exp.call, compiler_options=options).lower(*args)
                t0 = time.perf_counter()
                compiled = lowered.compile()
                compile_s = time.perf_counter() - t0
                jax.block_until_ready(compiled(*args))
                times = []
                for _ in range(runs):
                    t0 = time.perf_counter()
                    jax.block_until_ready(compiled(*args))
                    times.append(time.perf_counter() - t0)
                rows.append({"kernel": kernel, "states": size, "options": name, "compile_s": compile_s,
                             "run_s": statistics.median(times)})
                print(f"  {task} {kernel} {size} {name}: compile {compile_s:.2f} s, run {statistics.median(times) * 1e3:.1f} ms",
                      file=sys.stderr, flush=True)

        # One discarded compilation of a big program first: the first one in a
        # process pays XLA's and LLVM's one-time costs, which would favour
        # whichever option set came second.
        jax.jit(oracle_exp[150].call, compiler_options=OPTION_SETS["no_emitters_o0"]).lower(
            jnp.asarray(states[:150]), actions, sequence).compile()
        for size in (150, 4096):
            measure("oracle", size, oracle_exp[size], (jnp.asarray(states[:size]), actions, sequence))
        measure("sampler", SAMPLER_N, sampler_exp, (key, actions))
        out["rows"] = rows
    return out


def _run_child(task: str, mode: str, runs: int) -> dict:
    cmd = [sys.executable, "-m", "wmel_jax.benchmarks.codegen", "--child", task, mode, "--runs", str(runs)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    sys.stderr.write(done.stderr if done.returncode else "")
    if done.returncode:
        raise RuntimeError(f"child {task} {mode} failed")
    for line in done.stderr.splitlines():
        if line.startswith("  "):
            print(line, flush=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--child", nargs=2, metavar=("TASK", "MODE"), help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(RESULTS / "codegen.json"))
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child[0], args.child[1], args.runs)))
        return 0
    results = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "option_sets": OPTION_SETS,
        "tasks": {},
    }
    for task in args.tasks:
        shipped = _run_child(task, "jitted", args.runs)
        inlined = _run_child(task, "inlined", args.runs)
        results["tasks"][task] = {
            "tracing": {
                "oracle_trace_s": {"jitted_stages": shipped["oracle_trace_s"], "inlined_stages": inlined["oracle_trace_s"]},
                "sampler_trace_s": {"jitted_stages": shipped["sampler_trace_s"], "inlined_stages": inlined["sampler_trace_s"]},
            },
            "options": shipped["rows"],
        }
        print(f"{task}: oracle trace {shipped['oracle_trace_s']:.2f} s (jitted stages) vs {inlined['oracle_trace_s']:.2f} s (inlined); "
              f"sampler {shipped['sampler_trace_s']:.2f} vs {inlined['sampler_trace_s']:.2f} s", flush=True)
    RESULTS.mkdir(exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Oracle throughput: MJX oracle steps/s against MuJoCo's native multi-threaded rollout.

    python -m wmel_jax.benchmarks.oracle_throughput            # N = 1k, 16k, 64k; 10-step scan at 16k
    python -m wmel_jax.benchmarks.oracle_throughput --quick    # N = 1k, 4k; scan at 1k; fewer runs

For each task and precision, on the same seeded states (``sample_states``) and
the same per-state random actions:

* ``oracle``: ``make_oracle(task).step(obs, action)`` (obs -> physics state,
  one env step, observation) and ``rollout(obs, 10 actions)``;
* ``naive``: the textbook MJX kernel, ``jit(vmap(mjx.step))`` per state with
  the same obs <-> state code, to show what the batch-level solver saves
  (up to ``--naive-max`` states: at 64k it takes minutes per call on 2 cores);
* ``native``: ``mujoco.rollout`` on all cores with one persistent thread pool,
  C MuJoCo stepping the same physics states with the same controls. It gets
  the states ready-made (no observation conversion), so it is an upper bound.

Steps/s count environment steps (one state, one action). Every timing is the
median of ``--runs`` calls after a warm-up call; the first call's excess over
the median is reported as compile time. Writes
``benchmarks/results/oracle_throughput[_quick].{json,md}``. On a shared machine
the absolute numbers are noisy; the ratios, measured in one run, are what count.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def _timed(fns: dict[str, Callable[[], Any]], runs: int) -> dict[str, tuple[float, float]]:
    """name -> (first call seconds, median of `runs` further calls).

    The timed calls go round-robin over ``fns`` so that every contender sees
    the same machine load (the machine may be shared): their ratio is what
    a run measures best.
    """
    import jax

    first = {}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        first[name] = time.perf_counter() - t0
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - t0)
    return {name: (first[name], float(np.median(times[name]))) for name in fns}


def _naive_step(oracle, compiler_options: dict | None = None):
    """jit(vmap(per-state: obs -> state, mjx.step x frame_skip, kinematics, obs))."""
    import jax

    from wmel_jax.oracle._mjx import mjx

    p = oracle.physics
    task, m = p.task, p.model

    def one(obs, action):
        qpos, qvel = task.qpos_qvel_from_obs(obs)
        d = p.template.replace(qpos=qpos, qvel=qvel, ctrl=action)
        aux = task.aux_from_obs(obs, mjx.kinematics(m, d)) if task.aux_dim else None
        d = jax.lax.fori_loop(0, oracle.frame_skip, lambda _, x: mjx.step(m, x), d)
        return task.obs_from_data(mjx.kinematics(m, d), aux)

    return jax.jit(jax.vmap(one), compiler_options=compiler_options)


class _Native:
    """C MuJoCo stepping the oracle's physics states, via mujoco.rollout on all cores."""

    def __init__(self, oracle, nthread: int):
        from wmel_jax.benchmarks.native import NativeRollout

        self.oracle = oracle
        self.rollout = NativeRollout(type(oracle.physics.task).xml_file, nthread)

    def states(self, obs) -> np.ndarray:
        """obs (N, obs_dim) -> full physics states (N, nstate), via the oracle's own obs -> qpos, qvel."""
        import jax
        import jax.numpy as jnp

        task = self.oracle.physics.task
        with jax.enable_x64(True):
            qpos, qvel = jax.vmap(task.qpos_qvel_from_obs)(jnp.asarray(np.asarray(obs, np.float64)))
        return self.rollout.states(np.asarray(qpos), np.asarray(qvel))

    def run(self, states: np.ndarray, control: np.ndarray, nstep: int) -> None:
        self.rollout.run(states, control, nstep)

    def close(self) -> None:
        self.rollout.close()


def bench_task(
    task: str, precision: str, sizes: list[int], scan_n: int, scan_k: int, runs: int, nthread: int, naive_max: int
) -> list[dict]:
    import jax
    import jax.numpy as jnp

    import wmel_jax
    from wmel_jax.oracle.base import precision_scope

    oracle = wmel_jax.make_oracle(task, precision=precision)
    n_max = max(max(sizes), scan_n)
    states = wmel_jax.sample_states(jax.random.key(0), task, n_max, precision=precision)
    rng = np.random.default_rng(0)
    actions = oracle.actions[rng.integers(len(oracle.actions), size=n_max)]
    action_seq = oracle.actions[rng.integers(len(oracle.actions), size=scan_k)]
    native = _Native(oracle, nthread)
    naive = _naive_step(oracle)
    fs = oracle.frame_skip
    rows = []
    try:
        for n in sizes:
            obs = states[:n]
            act = jnp.asarray(actions[:n], oracle.dtype)
            nat_states = native.states(obs)
            nat_ctrl = np.repeat(np.asarray(actions[:n], np.float64)[:, None, :], fs, axis=1)

            def naive_call(obs=obs, act=act):
                with precision_scope(precision):
                    return naive(obs, act)

            contenders = {"oracle": lambda: oracle.step(obs, act), "native": lambda: native.run(nat_states, nat_ctrl, fs)}
            if n <= naive_max:  # vmap(mjx.step) runs MJX's solver on every state: minutes at 64k
                contenders["naive"] = naive_call
            t = _timed(contenders, runs)
            naive_t = t.get("naive", (None, None))
            rows.append(_row(task, precision, "step", n, 1, *t["oracle"], *naive_t, t["native"][1]))
            _print(rows[-1])
        obs = states[:scan_n]
        seq = jnp.asarray(action_seq, oracle.dtype)
        nat_states = native.states(obs)
        nat_ctrl = np.repeat(np.asarray(action_seq, np.float64), fs, axis=0)[None]  # shared (1, k*fs, nu)
        t = _timed(
            {
                "oracle": lambda: oracle.rollout(obs, seq),
                "native": lambda: native.run(nat_states, nat_ctrl, scan_k * fs),
            },
            runs,
        )
        rows.append(_row(task, precision, f"rollout{scan_k}", scan_n, scan_k, *t["oracle"], None, None, t["native"][1]))
        _print(rows[-1])
    finally:
        native.close()
    return rows


def _row(task, precision, kind, n, k, first, run, naive_first, naive_run, nat_run) -> dict:
    steps = n * k
    row = {
        "task": task,
        "precision": precision,
        "kind": kind,
        "n_states": n,
        "steps_per_call": steps,
        "oracle_steps_per_s": steps / run,
        "oracle_run_s": run,
        "oracle_compile_s": max(first - run, 0.0),
        "native_steps_per_s": steps / nat_run,
        "native_run_s": nat_run,
        "oracle_over_native": nat_run / run,
        "naive_mjx_steps_per_s": None,
        "naive_mjx_compile_s": None,
        "oracle_over_naive_mjx": None,
    }
    if naive_run is not None:
        row["naive_mjx_steps_per_s"] = steps / naive_run
        row["naive_mjx_compile_s"] = max(naive_first - naive_run, 0.0)
        row["oracle_over_naive_mjx"] = naive_run / run
    return row


def _print(r: dict) -> None:
    naive = "" if r["naive_mjx_steps_per_s"] is None else f"  naive MJX {r['naive_mjx_steps_per_s']:>11,.0f}/s"
    print(
        f"{r['task']:17s} {r['precision']:7s} {r['kind']:9s} N={r['n_states']:>6d}  "
        f"oracle {r['oracle_steps_per_s']:>11,.0f}/s (compile {r['oracle_compile_s']:.1f}s){naive}  "
        f"native {r['native_steps_per_s']:>11,.0f}/s  oracle/native {r['oracle_over_native']:.2f}",
        flush=True,
    )


def _markdown(meta: dict, rows: list[dict]) -> str:
    lines = [
        "# Oracle throughput (provisional: shared machine)",
        "",
        f"{meta['command']}  ",
        f"{meta['machine']}; native: mujoco.rollout with {meta['native_threads']} threads; "
        f"medians of {meta['runs']} runs.",
        "",
        "| task | precision | kind | N | oracle steps/s | oracle/native | naive MJX steps/s | native steps/s | compile s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        naive = "" if r["naive_mjx_steps_per_s"] is None else f"{r['naive_mjx_steps_per_s']:,.0f}"
        lines.append(
            f"| {r['task']} | {r['precision']} | {r['kind']} | {r['n_states']} | {r['oracle_steps_per_s']:,.0f} | "
            f"{r['oracle_over_native']:.2f} | {naive} | {r['native_steps_per_s']:,.0f} | {r['oracle_compile_s']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 1k, 4k; scan at 1k; 3 runs")
    parser.add_argument("--tasks", nargs="+", default=None, help="default: all tasks")
    parser.add_argument("--precision", nargs="+", default=["float64", "float32"], choices=["float64", "float32"])
    parser.add_argument("--runs", type=int, default=None, help="timed calls per measurement (default 5, quick 3)")
    parser.add_argument("--threads", type=int, default=None, help="native threads (default: all cores)")
    parser.add_argument("--naive-max", type=int, default=16384, help="largest N for the vmap(mjx.step) baseline")
    parser.add_argument("--out", type=Path, default=None, help="output stem (default benchmarks/results/oracle_throughput[_quick])")
    args = parser.parse_args(argv)

    import jax

    jax.config.update("jax_enable_x64", True)  # the float64 oracle needs it; float32 runs with it scoped off
    import mujoco

    import wmel_jax
    from wmel_jax.fileio import atomic_output, write_json

    sizes = [1024, 4096] if args.quick else [1024, 16384, 65536]
    scan_n, scan_k = (1024, 10) if args.quick else (16384, 10)
    runs = args.runs or (3 if args.quick else 5)
    nthread = args.threads or len(os.sched_getaffinity(0))
    tasks = args.tasks or wmel_jax.list_tasks()
    stem = args.out or RESULTS / ("oracle_throughput_quick" if args.quick else "oracle_throughput")
    stem.parent.mkdir(parents=True, exist_ok=True)

    rows: list[dict] = []
    for task in tasks:
        for precision in args.precision:
            rows += bench_task(task, precision, sizes, scan_n, scan_k, runs, nthread, args.naive_max)
    meta = {
        "command": "python -m wmel_jax.benchmarks.oracle_throughput " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": f"{platform.processor() or platform.machine()}, {nthread} cores, {platform.system()}",
        "native_threads": nthread,
        "runs": runs,
        "jax": jax.__version__,
        "mujoco": mujoco.__version__,
        "jax_backend": jax.default_backend(),
    }
    write_json(stem.with_suffix(".json"), {"meta": meta, "results": rows})
    with atomic_output(stem.with_suffix(".md"), "w") as f:
        f.write(_markdown(meta, rows))
    print(f"wrote {stem.with_suffix('.json')} and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

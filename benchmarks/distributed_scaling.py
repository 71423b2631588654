"""Strong scaling of ``wmel-jax eval`` and ``wmel-jax cpg`` over processes (and devices) on this machine.

    python -m wmel_jax.benchmarks.distributed_scaling [--what eval,cpg] [--n-states 100000]
        [--cpg-episodes 1000] [--cpg-horizon 50] [--cpg-arms oracle] [--processes 1,2,4]
        [--devices 1,2,4] [--rounds 3] [--no-warm] [--models 1] [--out benchmarks/results/distributed_scaling.json]

The same evaluation (the shipped cartpole-swingup good example, ``--models``
copies of it, N states, k = 10), and the same CPG run of that model
(``--cpg-episodes`` episodes of ``--cpg-horizon`` steps, ``--cpg-arms``),
run as P processes on localhost
(``--coordinator 127.0.0.1:PORT --num-processes P --process-id I``, gloo CPU
collectives) and, in one process, over D devices (``--devices D``: on CPU,
XLA host devices). A shared cache folder is warmed for every configuration
first (its compilation is not timed), then the configurations run
round-robin ``--rounds`` times, so drift on a shared machine hits them
alike; the one-process, one-device run of the same round is the baseline of
each ratio, and the summary gives medians. Measured per run: the wall time
of the command, process 0's ``timings.total_s`` (work: from the first stage
to the report, after Python and JAX started) and its kernels' run time
(kernel: eval's oracle and model kernels, cpg's arms; compilation excluded),
and the load averages before the run. Efficiency per process = speedup / P.
``--no-warm``: no untimed warm-up (a cold cache: work then includes
compilation, the kernel time does not). cpg's oracle arm is never read from
the cache here (its kept results are removed before each run).

Writes ``--out`` (JSON) and prints a table. Expect little on a machine of
few cores: one process already runs XLA's threads on every core.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _base(what: str, models: list[str], args, cache: Path, out: Path) -> list[str]:
    common = ["--cache-dir", str(cache), "-o", str(out), "--force"]
    if what == "eval":
        return [sys.executable, "-m", "wmel_jax", "eval", *models, "--n-states", str(args.n_states), "--k-steps",
                "10", *common]
    return [sys.executable, "-m", "wmel_jax", "cpg", models[0], "--episodes", str(args.cpg_episodes), "--horizon",
            str(args.cpg_horizon), "--arms", args.cpg_arms, *common]


def _kernel_s(what: str, timings: dict) -> float:
    """Seconds process 0 spent running kernels (compilation excluded)."""
    if what == "eval":
        return timings["oracle_run_s"] + timings["model_run_s"]
    return timings.get("oracle_run_s", 0.0) + timings.get("learned_run_s", 0.0)


def _run(what: str, kind: str, count: int, base: list[str], cache: Path, out: Path, timeout: int) -> dict:
    """One run of ``kind`` ("processes" or "devices") with ``count`` of them: wall seconds, process 0's timings."""
    import shutil

    shutil.rmtree(cache / "cpg-oracle", ignore_errors=True)  # cpg computes its oracle arm in every run
    env = dict(os.environ, MUJOCO_GL="disable")
    load = os.getloadavg()
    t0 = time.perf_counter()
    if kind == "devices":
        procs = [subprocess.Popen([*base, "--devices", str(count)], env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True)]
    else:
        port = _free_port()
        procs = [
            subprocess.Popen([*base, "--coordinator", f"127.0.0.1:{port}", "--num-processes", str(count),
                              "--process-id", str(i)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
            for i in range(count)
        ] if count > 1 else [subprocess.Popen(base, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                              text=True)]
    errors = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
        if p.returncode != 0:
            errors.append(err[-2000:])
    wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{what} {kind}={count} failed:\n" + "\n".join(errors))
    report = json.loads(out.read_text())
    timings = report["timings"]
    return {"wall_s": wall, "timings": timings, "kernel_s": _kernel_s(what, timings),
            "runtime": report["config"]["runtime"], "load_avg_1m": load[0], "load_avg_1_5_15": list(load)}


def _summary(rounds: list[dict], configs: list, base: str) -> dict:
    summary = {}
    for kind, count in configs:
        name = f"{kind}={count}"

        def med(f):
            return statistics.median(f(row) for row in rounds)

        speed_work = med(lambda row: row[base]["timings"]["total_s"] / row[name]["timings"]["total_s"])
        speed_kernel = med(lambda row: row[base]["kernel_s"] / row[name]["kernel_s"])
        summary[name] = {
            "median_wall_s": med(lambda row: row[name]["wall_s"]),
            "median_work_s": med(lambda row: row[name]["timings"]["total_s"]),
            "median_kernel_s": med(lambda row: row[name]["kernel_s"]),
            "speedup_wall": med(lambda row: row[base]["wall_s"] / row[name]["wall_s"]),
            "speedup_work": speed_work,
            "speedup_kernel": speed_kernel,
            "efficiency_work": speed_work / count,
            "efficiency_kernel": speed_kernel / count,
            "split": rounds[0][name]["runtime"].get("split", "episodes"),
            "load_avg_1m": [row[name]["load_avg_1m"] for row in rounds],
        }
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m wmel_jax.benchmarks.distributed_scaling",
                                description=__doc__.splitlines()[0])
    p.add_argument("--what", default="eval", help="eval, cpg or eval,cpg")
    p.add_argument("--n-states", type=int, default=100_000)
    p.add_argument("--cpg-episodes", type=int, default=1000)
    p.add_argument("--cpg-horizon", type=int, default=50)
    p.add_argument("--cpg-arms", default="oracle")
    p.add_argument("--processes", default="1,2,4", help="process counts, comma-separated")
    p.add_argument("--devices", default="1,2,4", help="device counts of one process, comma-separated ('' for none)")
    p.add_argument("--models", type=int, default=1, help="copies of the example model evaluated per run")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-warm", action="store_true", help="no untimed warm-up run per configuration")
    p.add_argument("--timeout", type=int, default=1800, help="seconds a run may take")
    p.add_argument("--out", default=str(RESULTS / "distributed_scaling.json"))
    args = p.parse_args(argv)

    from wmel_jax.demo import EXAMPLES_DIR

    model = str(EXAMPLES_DIR / "cartpole-swingup-good.safetensors")
    models = [model] * args.models
    configs = [("processes", int(x)) for x in args.processes.split(",") if x]
    configs += [("devices", int(x)) for x in args.devices.split(",") if x and int(x) > 1]
    baseline = ("processes", 1)
    if baseline not in configs:
        configs.insert(0, baseline)
    base = f"{baseline[0]}={baseline[1]}"
    whats = [w for w in args.what.split(",") if w]
    result = {
        "benchmark": "distributed_scaling",
        "command": "python -m wmel_jax.benchmarks.distributed_scaling " + " ".join(argv or sys.argv[1:]),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()},
        "models": args.models,
        "rounds": args.rounds,
        "warm": not args.no_warm,
    }
    with tempfile.TemporaryDirectory(prefix="wmel-scaling-") as tmp:
        cache = Path(tmp) / "cache"
        for what in whats:
            out = Path(tmp) / f"{what}.json"
            cmd = _base(what, models, args, cache, out)
            warm = {}
            if not args.no_warm:
                for kind, count in configs:  # compile (and cache) every configuration once, untimed
                    warm[f"{kind}={count}"] = _run(what, kind, count, cmd, cache, out, args.timeout)["wall_s"]
                    print(f"{what}: warmed {kind}={count}: {warm[f'{kind}={count}']:.1f} s", flush=True)
            rounds = []
            for r in range(args.rounds):
                row = {}
                for kind, count in configs:
                    row[f"{kind}={count}"] = res = _run(what, kind, count, cmd, cache, out, args.timeout)
                    print(f"{what} round {r}: {kind}={count}: wall {res['wall_s']:.2f} s, work "
                          f"{res['timings']['total_s']:.2f} s, kernels {res['kernel_s']:.2f} s (load "
                          f"{res['load_avg_1m']:.2f})", flush=True)
                rounds.append(row)
            size = ({"n_states": args.n_states} if what == "eval" else
                    {"episodes": args.cpg_episodes, "horizon": args.cpg_horizon, "arms": args.cpg_arms})
            result[what] = {**size, "warm_up_wall_s": warm, "summary": _summary(rounds, configs, base),
                            "runs": rounds}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    for what in whats:
        r = result[what]
        size = f"N = {r['n_states']}" if what == "eval" else \
            f"n = {r['episodes']} episodes x {r['horizon']} steps, arms {r['arms']}"
        print(f"\n{what}: {size}, {args.models} model(s), medians of {args.rounds} rounds, baseline {base}:\n")
        print("| run | split | wall s | work s | kernels s | speedup (work) | speedup (kernels) | "
              "efficiency per process/device (work, kernels) | load (1 min) |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---|")
        for name, s in r["summary"].items():
            loads = ", ".join(f"{x:.1f}" for x in s["load_avg_1m"])
            print(f"| {name} | {s['split']} | {s['median_wall_s']:.2f} | {s['median_work_s']:.2f} | "
                  f"{s['median_kernel_s']:.2f} | {s['speedup_work']:.2f} | {s['speedup_kernel']:.2f} | "
                  f"{s['efficiency_work']:.2f}, {s['efficiency_kernel']:.2f} | {loads} |")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

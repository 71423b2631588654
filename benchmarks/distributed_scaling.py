"""Strong scaling of ``wmel-jax eval`` over processes (and devices) on this machine.

    python -m wmel_jax.benchmarks.distributed_scaling [--n-states 100000] [--processes 1,2,4]
        [--devices 1,2,4] [--rounds 3] [--models 1] [--out benchmarks/results/distributed_scaling.json]

The same evaluation (the shipped cartpole-swingup good example, ``--models``
copies of it, N states, k = 10) run as P processes on localhost
(``--coordinator 127.0.0.1:PORT --num-processes P --process-id I``, gloo CPU
collectives) and, in one process, over D devices (``--devices D``: on CPU,
XLA host devices). A shared cache folder is warmed for every configuration
first (its compilation is not timed), then the configurations run
round-robin ``--rounds`` times, so drift on a shared machine hits them
alike; the one-process, one-device run of the same round is the baseline of
each ratio, and the summary gives medians. Measured per run: the wall time
of the command and process 0's ``timings.total_s`` (from the first stage of
``run_eval`` to its report, after Python and JAX started), and the load
average before the run. Efficiency per process = speedup / P.

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


def _run(kind: str, count: int, models: list[str], n_states: int, cache: Path, out: Path, timeout: int) -> dict:
    """One run of ``kind`` ("processes" or "devices") with ``count`` of them: wall seconds, process 0's timings."""
    base = [sys.executable, "-m", "wmel_jax", "eval", *models, "--n-states", str(n_states), "--k-steps", "10",
            "--cache-dir", str(cache), "-o", str(out), "--force"]
    env = dict(os.environ, MUJOCO_GL="disable")
    load = os.getloadavg()[0]
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
        raise RuntimeError(f"{kind}={count} failed:\n" + "\n".join(errors))
    report = json.loads(out.read_text())
    return {"wall_s": wall, "timings": report["timings"], "runtime": report["config"]["runtime"], "load_avg_1m": load}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m wmel_jax.benchmarks.distributed_scaling",
                                description=__doc__.splitlines()[0])
    p.add_argument("--n-states", type=int, default=100_000)
    p.add_argument("--processes", default="1,2,4", help="process counts, comma-separated")
    p.add_argument("--devices", default="1,2,4", help="device counts of one process, comma-separated ('' for none)")
    p.add_argument("--models", type=int, default=1, help="copies of the example model evaluated per run")
    p.add_argument("--rounds", type=int, default=3)
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
    with tempfile.TemporaryDirectory(prefix="wmel-scaling-") as tmp:
        cache, out = Path(tmp) / "cache", Path(tmp) / "report.json"
        warm = {}
        for kind, count in configs:  # compile (and cache) every configuration once, untimed
            warm[f"{kind}={count}"] = _run(kind, count, models, args.n_states, cache, out, args.timeout)["wall_s"]
            print(f"warmed {kind}={count}: {warm[f'{kind}={count}']:.1f} s", flush=True)
        rounds = []
        for r in range(args.rounds):
            row = {}
            for kind, count in configs:
                row[f"{kind}={count}"] = res = _run(kind, count, models, args.n_states, cache, out, args.timeout)
                print(f"round {r}: {kind}={count}: wall {res['wall_s']:.2f} s, work {res['timings']['total_s']:.2f} s "
                      f"(load {res['load_avg_1m']:.2f})", flush=True)
            rounds.append(row)

    base = f"{baseline[0]}={baseline[1]}"
    summary = {}
    for kind, count in configs:
        name = f"{kind}={count}"
        walls = [row[name]["wall_s"] for row in rounds]
        works = [row[name]["timings"]["total_s"] for row in rounds]
        speed_wall = [row[base]["wall_s"] / row[name]["wall_s"] for row in rounds]
        speed_work = [row[base]["timings"]["total_s"] / row[name]["timings"]["total_s"] for row in rounds]
        summary[name] = {
            "median_wall_s": statistics.median(walls),
            "median_work_s": statistics.median(works),
            "speedup_wall": statistics.median(speed_wall),
            "speedup_work": statistics.median(speed_work),
            "efficiency_work": statistics.median(speed_work) / count,
            "split": rounds[0][name]["runtime"]["split"],
            "load_avg_1m": [row[name]["load_avg_1m"] for row in rounds],
        }
    result = {
        "benchmark": "distributed_scaling",
        "command": "python -m wmel_jax.benchmarks.distributed_scaling " + " ".join(argv or sys.argv[1:]),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()},
        "n_states": args.n_states,
        "models": args.models,
        "rounds": args.rounds,
        "warm_up_wall_s": warm,
        "summary": summary,
        "runs": rounds,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nN = {args.n_states}, {args.models} model(s), medians of {args.rounds} rounds, baseline {base}:\n")
    print("| run | split | wall s | work s | speedup (work) | efficiency per process/device | load (1 min) |")
    print("|---|---|---:|---:|---:|---:|---|")
    for name, s in summary.items():
        loads = ", ".join(f"{x:.1f}" for x in s["load_avg_1m"])
        print(f"| {name} | {s['split']} | {s['median_wall_s']:.2f} | {s['median_work_s']:.2f} | "
              f"{s['speedup_work']:.2f} | {s['efficiency_work']:.2f} | {loads} |")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

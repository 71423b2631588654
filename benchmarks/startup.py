"""``wmel-jax eval`` start-up: a whole process with an empty, a warm and no cache.

    python -m wmel_jax.benchmarks.startup                       # three tasks, 3 rounds
    python -m wmel_jax.benchmarks.startup --tasks cartpole-swingup --rounds 5
    python -m wmel_jax.benchmarks.startup --root /path/to/other/checkout   # the same runs of another version
    python -m wmel_jax.benchmarks.startup --kinds warm --tasks cartpole-swingup   # the 2 s target only

Each round runs, per task, in fresh processes and with the defaults (N = 150,
k = 10) on the shipped size-1 example model ``<task>-good.safetensors``:

* ``cold``: ``--cache-dir`` a new empty folder (everything traced and compiled);
* ``warm``: the same folder again (traced kernels and XLA executables read back);
* ``no_cache``: ``--no-cache``.

Wall seconds are measured around the child process (interpreter start and
imports included); the report's ``timings`` give the breakdown (states_s:
sampling, with the oracle's kernel compiling beside it on a background
thread; oracle_compile_s / model_compile_s: waiting for those kernels;
trace_s / xla_s: tracing and XLA compilation summed over threads). Floors,
measured the same way: ``import jax`` alone, ``import jax, mujoco.mjx``
(MJX imports trimesh, networkx and scipy.spatial at module level, for mesh
geoms the oracle's tasks do not have), and the CLI's own imports. The warm
median is printed against TARGET_WARM_S. Medians over rounds, with the load
average at the start and the end; writes ``benchmarks/results/startup.json``.
On the shared 2-core machine the numbers are noisy: compare rows of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
TASKS = ("cartpole-swingup", "reacher-easy", "acrobot-swingup")
KINDS = ("cold", "warm", "no_cache")
#: Issue 12's target for a warm default run (N = 150, cached kernels), wall seconds.
TARGET_WARM_S = 2.0


def _run(cmd: list[str], root: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(root), "MUJOCO_GL": "disable"}
    env.pop("WMEL_JAX_CACHE_DIR", None)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - t0
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    return wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS,
                        help="which runs (warm alone still fills its cache first, untimed)")
    parser.add_argument("--root", default=str(Path(__file__).resolve().parent.parent),
                        help="the checkout whose wmel_jax runs (default: this one)")
    parser.add_argument("--out", default=str(RESULTS / "startup.json"))
    args = parser.parse_args(argv)
    root = Path(args.root).resolve()
    py = sys.executable
    floors = {"import jax": [], "import jax, mujoco.mjx": [], "CLI imports": []}
    runs: dict[str, dict[str, list]] = {t: {k: [] for k in args.kinds} for t in args.tasks}
    load_start = list(os.getloadavg())
    for r in range(args.rounds):
        floors["import jax"].append(_run([py, "-c", "import jax, jax.numpy"], root))
        floors["import jax, mujoco.mjx"].append(_run([py, "-c", "import jax, jax.numpy; import mujoco.mjx"], root))
        floors["CLI imports"].append(_run([py, "-c", "import wmel_jax.commands.eval, wmel_jax.pipeline, "
                                            "wmel_jax.oracle.base, wmel_jax.model, wmel_jax.report"], root))
        for task in args.tasks:
            model = root / "wmel_jax" / "examples" / f"{task}-good.safetensors"
            with tempfile.TemporaryDirectory(prefix="wmel-startup-") as tmp:
                cache = Path(tmp) / "cache"
                if "cold" not in args.kinds and "warm" in args.kinds:  # fill the cache, untimed
                    _run([py, "-m", "wmel_jax", "eval", str(model), "--env", task, "--cache-dir", str(cache),
                          "-o", str(Path(tmp) / "fill.json")], root)
                for kind in args.kinds:
                    report = Path(tmp) / f"{kind}.json"
                    flags = ["--no-cache"] if kind == "no_cache" else ["--cache-dir", str(cache)]
                    cmd = [py, "-m", "wmel_jax", "eval", str(model), "--env", task, *flags, "-o", str(report)]
                    wall = _run(cmd, root)
                    timings = json.loads(report.read_text())["timings"]
                    runs[task][kind].append({"wall_s": wall, "timings": timings})
                    print(f"round {r + 1} {task} {kind}: {wall:.2f} s wall", flush=True)

    def median_row(rows: list[dict]) -> dict:
        keys = rows[0]["timings"].keys()
        return {
            "wall_s": statistics.median(x["wall_s"] for x in rows),
            "wall_s_all": [round(x["wall_s"], 3) for x in rows],
            "timings": {k: statistics.median(x["timings"].get(k, 0.0) for x in rows) for k in keys},
        }

    results = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "root": str(root),
        "rounds": args.rounds,
        "load_average": {"start": load_start, "end": list(os.getloadavg())},
        "target_warm_s": TARGET_WARM_S,
        "floors_s": {k: statistics.median(v) for k, v in floors.items()},
        "tasks": {t: {k: median_row(v) for k, v in kinds.items()} for t, kinds in runs.items()},
    }
    for name, value in results["floors_s"].items():
        print(f"floor {name}: {value:.2f} s")
    for task, kinds in results["tasks"].items():
        print(f"{task}: " + ", ".join(f"{k} {v['wall_s']:.2f} s" for k, v in kinds.items())
              + (f" (warm target {TARGET_WARM_S:g} s)" if "warm" in kinds else ""))
    print(f"load average: start {results['load_average']['start']}, end {results['load_average']['end']}")
    RESULTS.mkdir(exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

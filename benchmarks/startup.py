"""``wmel-jax eval`` start-up: a whole process with an empty, a warm and no cache.

    python -m wmel_jax.benchmarks.startup                       # three tasks, 3 rounds
    python -m wmel_jax.benchmarks.startup --tasks cartpole-swingup --rounds 5
    python -m wmel_jax.benchmarks.startup --root /path/to/other/checkout   # the same runs of another version
    python -m wmel_jax.benchmarks.startup --kinds warm --tasks cartpole-swingup   # the 2 s target only
    python -m wmel_jax.benchmarks.startup --kinds warm --baseline /path/to/main   # and main's, round by round

Each round runs, per task, in fresh processes and with the defaults (N = 150,
k = 10) on the shipped size-1 example model ``<task>-good.safetensors``:

* ``cold``: ``--cache-dir`` a new empty folder (everything traced and compiled);
* ``warm``: the same folder again (traced kernels and XLA executables read back);
* ``no_cache``: ``--no-cache``.

Every child process is measured twice: wall seconds around it (interpreter
start and imports included) and CPU seconds (user + sys, from ``wait4``),
which a loaded machine inflates much less than wall time (on a shared
machine, wall time is mostly waiting for a core). The report's ``timings``
give the in-process breakdown (states_s: sampling, with the oracle's kernel
compiling beside it on a background thread; oracle_compile_s /
model_compile_s: waiting for those kernels; trace_s / xla_s: tracing and XLA
compilation or executable loading, summed over threads).

Floors, measured the same way in the same rounds: ``python -c pass`` (the
interpreter), ``import jax`` alone, ``import jax, mujoco.mjx`` (what a warm
run no longer imports: MJX pulls trimesh, networkx and scipy.spatial in at
module level), and the CLI's imports (exactly the modules a warm eval imports
before it works). Children run with byte-compiled modules cached, as an
installed package has them (``PYTHONDONTWRITEBYTECODE`` is removed from their
environment: compiling wmel_jax's sources in every process costs ~0.3-0.6 s
here). The warm median is printed against TARGET_WARM_S, with
what is left above the CLI-imports floor. Medians over rounds; the load
average (1, 5, 15 minutes) is recorded at the start, after every round and
at the end. Writes ``benchmarks/results/startup.json`` (``--out``). On a
shared machine compare rows of one run, not runs.
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
#: The modules a warm ``wmel-jax eval`` imports before it starts working (the CLI, the
#: pipeline and its stages, the oracle's task modules, the model loader, the report).
CLI_IMPORTS = ("import wmel_jax.cli, wmel_jax.commands.eval, wmel_jax.pipeline, wmel_jax.evaluate, "
               "wmel_jax.states, wmel_jax.oracle.cartpole, wmel_jax.model, wmel_jax.report, wmel_jax.progress")
FLOORS = {
    "python -c pass": "pass",
    "import jax": "import jax, jax.numpy",
    "import jax, mujoco.mjx": "import jax, jax.numpy; import mujoco.mjx",
    "CLI imports": CLI_IMPORTS,
}


def _run(cmd: list[str], root: Path) -> dict[str, float]:
    """Run ``cmd`` to completion: {"wall_s", "cpu_s" (user + sys of the child and its children)}."""
    env = {**os.environ, "PYTHONPATH": str(root), "MUJOCO_GL": "disable"}
    env.pop("WMEL_JAX_CACHE_DIR", None)
    # As installed: byte-compiled modules are read, not compiled from source in every
    # process (an installed wheel ships them; an editable checkout writes __pycache__).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        child = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - t0
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode:
            err.seek(0)
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{err.read().decode(errors='replace')[-2000:]}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime}


def _median(rows: list[dict], key: str) -> float:
    return statistics.median(x[key] for x in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS,
                        help="which runs (warm alone still fills its cache first, untimed)")
    parser.add_argument("--root", default=str(Path(__file__).resolve().parent.parent),
                        help="the checkout whose wmel_jax runs (default: this one)")
    parser.add_argument("--baseline", default=None,
                        help="another checkout timed in the same rounds, run for run (e.g. main before a change)")
    parser.add_argument("--out", default=str(RESULTS / "startup.json"))
    args = parser.parse_args(argv)
    root = Path(args.root).resolve()
    roots = {"this": root, **({"baseline": Path(args.baseline).resolve()} if args.baseline else {})}
    py = sys.executable
    floors: dict[str, list] = {name: [] for name in FLOORS}
    runs = {label: {t: {k: [] for k in args.kinds} for t in args.tasks} for label in roots}
    load = {"start": list(os.getloadavg()), "rounds": []}
    with tempfile.TemporaryDirectory(prefix="wmel-startup-") as tmp:
        caches = {}
        for label, where in roots.items():
            _run([py, "-c", CLI_IMPORTS], where)  # untimed: writes the checkout's byte-compiled modules
            if "cold" not in args.kinds and "warm" in args.kinds:
                for task in args.tasks:  # fill each task's cache once, untimed
                    caches[label, task] = Path(tmp) / f"cache-{label}-{task}"
                    model = where / "wmel_jax" / "examples" / f"{task}-good.safetensors"
                    _run([py, "-m", "wmel_jax", "eval", str(model), "--env", task, "--cache-dir",
                          str(caches[label, task]), "-o", str(Path(tmp) / "fill.json"), "--force"], where)
        for r in range(args.rounds):
            for name, code in FLOORS.items():
                floors[name].append(_run([py, "-c", code], root))
            for task in args.tasks:
                for label, where in roots.items():
                    model = where / "wmel_jax" / "examples" / f"{task}-good.safetensors"
                    cache = caches.get((label, task)) or Path(tmp) / f"cache-{label}-{task}-{r}"
                    for kind in args.kinds:
                        report = Path(tmp) / f"{label}-{task}-{kind}-{r}.json"
                        flags = ["--no-cache"] if kind == "no_cache" else ["--cache-dir", str(cache)]
                        cmd = [py, "-m", "wmel_jax", "eval", str(model), "--env", task, *flags, "-o", str(report)]
                        row = _run(cmd, where)
                        row["timings"] = json.loads(report.read_text())["timings"]
                        runs[label][task][kind].append(row)
                        print(f"round {r + 1} {label} {task} {kind}: {row['wall_s']:.2f} s wall, "
                              f"{row['cpu_s']:.2f} s CPU", flush=True)
            load["rounds"].append(list(os.getloadavg()))
    load["end"] = list(os.getloadavg())

    def median_row(rows: list[dict]) -> dict:
        keys = rows[0]["timings"].keys()
        return {
            "wall_s": _median(rows, "wall_s"),
            "cpu_s": _median(rows, "cpu_s"),
            "wall_s_all": [round(x["wall_s"], 3) for x in rows],
            "cpu_s_all": [round(x["cpu_s"], 3) for x in rows],
            "timings": {k: statistics.median(x["timings"].get(k, 0.0) for x in rows) for k in keys},
        }

    floor_rows = {
        name: {"wall_s": _median(v, "wall_s"), "cpu_s": _median(v, "cpu_s"),
               "wall_s_all": [round(x["wall_s"], 3) for x in v], "cpu_s_all": [round(x["cpu_s"], 3) for x in v]}
        for name, v in floors.items()
    }
    tasks = {t: {k: median_row(v) for k, v in kinds.items()} for t, kinds in runs["this"].items()}
    cli = floor_rows["CLI imports"]
    for kinds in tasks.values():
        if "warm" in kinds:
            warm = kinds["warm"]
            warm["target_s"] = TARGET_WARM_S
            warm["meets_target"] = warm["wall_s"] <= TARGET_WARM_S
            warm["above_cli_imports_floor"] = {"wall_s": warm["wall_s"] - cli["wall_s"],
                                               "cpu_s": warm["cpu_s"] - cli["cpu_s"]}
    results = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "root": str(root),
        "command": "python -m wmel_jax.benchmarks.startup " + " ".join(argv if argv is not None else sys.argv[1:]),
        "rounds": args.rounds,
        "bytecode": "cached (PYTHONDONTWRITEBYTECODE removed from the children's environment)",
        "load_average": load,
        "target_warm_s": TARGET_WARM_S,
        "floors": floor_rows,
        "tasks": tasks,
    }
    if args.baseline:
        results["baseline"] = {
            "root": str(roots["baseline"]),
            "tasks": {t: {k: median_row(v) for k, v in kinds.items()} for t, kinds in runs["baseline"].items()},
        }
        for task, kinds in results["baseline"]["tasks"].items():
            for kind, row in kinds.items():
                mine = tasks[task][kind]
                # Round by round (the same load): this checkout's time over the baseline's.
                pairs = list(zip(runs["this"][task][kind], runs["baseline"][task][kind]))
                row["ratio_this_over_baseline"] = {
                    m: statistics.median(a[m] / b[m] for a, b in pairs) for m in ("wall_s", "cpu_s")
                }
                print(f"{task} {kind}: baseline {row['wall_s']:.2f} s wall ({row['cpu_s']:.2f} s CPU); this / baseline "
                      f"{row['ratio_this_over_baseline']['wall_s']:.2f} wall, "
                      f"{row['ratio_this_over_baseline']['cpu_s']:.2f} CPU (median of per-round ratios); "
                      f"this {mine['wall_s']:.2f} s")
    for name, row in floor_rows.items():
        print(f"floor {name}: {row['wall_s']:.2f} s wall, {row['cpu_s']:.2f} s CPU")
    for task, kinds in tasks.items():
        print(f"{task}: " + ", ".join(f"{k} {v['wall_s']:.2f} s wall ({v['cpu_s']:.2f} s CPU)" for k, v in kinds.items()))
        if "warm" in kinds:
            warm = kinds["warm"]
            above = warm["above_cli_imports_floor"]
            print(f"  warm median {warm['wall_s']:.2f} s against the {TARGET_WARM_S:g} s target "
                  f"({'met' if warm['meets_target'] else 'not met'}); above the CLI imports' floor: "
                  f"{above['wall_s']:+.2f} s wall, {above['cpu_s']:+.2f} s CPU")
    print(f"load average: start {load['start']}, end {load['end']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

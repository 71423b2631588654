"""The metrics' intervals: calibration, what N buys, and what they cost.

    python -m wmel_jax.benchmarks.intervals calibration           # 40 seeds x 3 tasks at N = 150
    python -m wmel_jax.benchmarks.intervals calibration --seeds 10 --tasks cartpole-swingup
    python -m wmel_jax.benchmarks.intervals cost                  # warm eval at N = 10,000, this checkout vs another
    python -m wmel_jax.benchmarks.intervals cost --baseline /path/to/main/checkout --rounds 5

``calibration`` (results in ``benchmarks/results/intervals_calibration.{json,md}``):
for each task and each shipped example model (good and weak), the value of
M1, M2 and M3 at N = 20,000 (one seeded batch: 800 episodes) is the truth;
then for each of ``--seeds`` independent seeds at N = 150 (6 episodes), with
the same M2 action sequence as the truth's (M2's value depends on it), the
95% interval of each metric is checked against the truth, for

- ``hull``: the reported interval (episodes resampled: bootstrap-t and
  expanded percentile, ``wmel_jax.stats.ratio_intervals``);
- ``percentile``: the plain percentile interval, episodes resampled;
- ``states``: the reported construction, but resampling states as if they
  were independent (an interval that ignores episodes).

Each seed's kernels run once with one unit per state; the episode sums are
those per-state sums added per episode (exactly what a sampled run's kernel
returns). Coverage is reported per task (both models' runs pooled) and per
model, beside the median half-width. The same N = 20,000 per-episode sums
give the half-width table of "what N buys": for N = 150 ... 10,000, the
median half-width over the disjoint blocks of N / 25 episodes of the big batch.

``cost``: ``wmel-jax eval`` of the shipped cartpole model at N = 10,000 with a
warm cache, in fresh processes, alternating between this checkout and
``--baseline`` (a checkout without intervals, e.g. ``git archive main``),
``--rounds`` times; compares the report's in-process ``total_s`` (and the
kernels' run time) and gives this checkout's ``interval_s`` (the bootstrap on
the host). Medians; the load average is recorded with every result (the
machine is shared: ratios of runs made together are what count).
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

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
TASKS = ("cartpole-swingup", "reacher-easy", "acrobot-swingup")
QUALITIES = ("good", "weak")
METRICS = {"m1": "m1_l2_onestep", "m2": "m2_l2_kstep", "m3": "m3_action_agreement"}
TRUTH_N = 20_000
TRUTH_SEED = 1_000_003
SEQUENCE_SEED = 12_345
TABLE_NS = (150, 500, 1_000, 2_500, 5_000, 10_000)
METHODS = ("hull", "percentile")


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _setup(cache_dir: str | None) -> None:
    os.environ.setdefault("MUJOCO_GL", "disable")
    import jax

    jax.config.update("jax_enable_x64", True)
    if cache_dir:
        from wmel_jax import kernel_cache

        kernel_cache.enable(cache_dir)


def _end_point(part) -> tuple[np.ndarray, np.ndarray]:
    """(E,) totals and counts of a metric's sums: M2's last step for the curve."""
    total = np.asarray(part.total, np.float64)
    return (total[:, -1] if total.ndim == 2 else total), np.asarray(part.count, np.float64)


def _per_state_sums(model, problem, chunk: int):
    """The kernel's sums with one unit per state (the problem's states, its episodes dropped)."""
    from wmel_jax import evaluate

    per_state = evaluate.Problem(problem.task, problem.frame_skip, problem.precision, problem.states,
                                 problem.actions, problem.action_sequence, problem.seed)
    targets = evaluate.oracle_targets(per_state, chunk)
    sums, _ = evaluate.model_episode_sums(model, per_state, targets, chunk, total_states=2 * problem.n_states,
                                          spaces=["observation"])
    return sums


def _interval(total: np.ndarray, count: np.ndarray, method: str, seed: int) -> tuple[float, float] | None:
    from wmel_jax import stats

    low, high, _ = stats.ratio_intervals(total[:, None], count[:, None],
                                         stats.EpisodeResampler(total.shape[0], None, seed), method=method)
    if not (np.isfinite(low[0]) and np.isfinite(high[0])):
        return None
    lo, hi = float(low[0]), float(high[0])
    return lo, hi


def calibration(args: argparse.Namespace) -> dict:
    _setup(args.cache_dir)
    import jax

    import wmel_jax
    from wmel_jax import evaluate
    from wmel_jax.demo import EXAMPLES_DIR
    from wmel_jax.states import RESET_EVERY

    out: dict = {"machine": _machine(), "n_states": args.n_states, "seeds": args.seeds, "truth_n": args.truth_n,
                 "tasks": {}, "load_start": _load()}
    t_start = time.perf_counter()
    for task in args.tasks:
        models = {q: wmel_jax.load(EXAMPLES_DIR / f"{task}-{q}.safetensors") for q in QUALITIES}
        actions = np.asarray(models["good"].action_set)
        sequence = evaluate.draw_action_sequence(jax.random.key(SEQUENCE_SEED), actions, evaluate.DEFAULT_K_STEPS)
        t0 = time.perf_counter()
        truth_problem = evaluate.make_problem(task, actions, n_states=args.truth_n, action_sequence=sequence,
                                              seed=TRUTH_SEED)
        truth_targets = evaluate.oracle_targets(truth_problem, args.chunk)
        truth, table = {}, {}
        for q, model in models.items():
            sums, _ = evaluate.model_episode_sums(model, truth_problem, truth_targets, args.chunk,
                                                  total_states=2 * args.truth_n, spaces=["observation"])
            truth[q], table[q] = {}, {}
            for name, metric in METRICS.items():
                total, count = _end_point(sums[name])
                truth[q][metric] = float(total.sum() / count.sum())
                table[q][metric] = _half_width_table(total, count, args.truth_n // truth_problem.n_episodes)
        print(f"[{task}] truth at N={args.truth_n}: {time.perf_counter() - t0:.0f} s, load {_load()}", flush=True)

        runs: dict = {q: {m: {k: [] for k in (*METHODS, "states")} for m in METRICS.values()} for q in QUALITIES}
        t0 = time.perf_counter()
        for seed in range(args.seeds):
            problem = evaluate.make_problem(task, actions, n_states=args.n_states, action_sequence=sequence, seed=seed)
            episode = np.arange(problem.n_states) // RESET_EVERY
            for q, model in models.items():
                sums = _per_state_sums(model, problem, args.chunk)
                for name, metric in METRICS.items():
                    total, count = _end_point(sums[name])
                    ep_total = np.bincount(episode, weights=total)
                    ep_count = np.bincount(episode, weights=count)
                    for method in METHODS:
                        runs[q][metric][method].append(_interval(ep_total, ep_count, method, seed))
                    runs[q][metric]["states"].append(_interval(total, count, "hull", seed))
        print(f"[{task}] {args.seeds} seeds at N={args.n_states}: {time.perf_counter() - t0:.0f} s, "
              f"load {_load()}", flush=True)
        out["tasks"][task] = {"truth": truth, "half_width_by_n": table,
                              "coverage": _coverage(runs, truth), "runs": _plain_runs(runs)}
    out["load_end"] = _load()
    out["wall_s"] = time.perf_counter() - t_start
    return out


def _half_width_table(total: np.ndarray, count: np.ndarray, states_per_episode: int) -> dict:
    """Median interval half-width over disjoint blocks of N / 25 episodes of the big batch, per N."""
    rows = {}
    for n in TABLE_NS:
        per_block = max(2, n // states_per_episode)
        blocks = total.shape[0] // per_block
        if blocks < 1:
            continue
        halves = []
        for b in range(blocks):
            sl = slice(b * per_block, (b + 1) * per_block)
            if count[sl].sum() == 0:
                continue
            ci = _interval(total[sl], count[sl], "hull", b)
            if ci is not None:
                halves.append((ci[1] - ci[0]) / 2)
        rows[str(n)] = {"median_half_width": statistics.median(halves) if halves else None, "blocks": len(halves)}
    return rows


def _coverage(runs: dict, truth: dict) -> dict:
    result: dict = {"per_task": {}, "per_model": {}}
    for metric in METRICS.values():
        for kind in (*METHODS, "states"):
            hits, n = 0, 0
            for q in QUALITIES:
                cis = runs[q][metric][kind]
                q_hits = sum(ci is not None and ci[0] <= truth[q][metric] <= ci[1] for ci in cis)
                result["per_model"].setdefault(q, {}).setdefault(metric, {})[kind] = {
                    "coverage": q_hits / len(cis), "runs": len(cis),
                    "median_half_width": statistics.median((ci[1] - ci[0]) / 2 for ci in cis if ci is not None)
                    if any(ci is not None for ci in cis) else None,
                }
                hits += q_hits
                n += len(cis)
            result["per_task"].setdefault(metric, {})[kind] = {"coverage": hits / n, "runs": n}
    return result


def _plain_runs(runs: dict) -> dict:
    return {q: {m: {k: [None if ci is None else [round(ci[0], 6), round(ci[1], 6)] for ci in v]
                    for k, v in kinds.items()} for m, kinds in metrics.items()} for q, metrics in runs.items()}


def _machine() -> dict:
    import jax

    return {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind)}


def _calibration_markdown(res: dict) -> str:
    lines = [
        f"# Interval calibration: {res['seeds']} seeds at N = {res['n_states']}, truth at N = {res['truth_n']}",
        "",
        f"`python -m wmel_jax.benchmarks.intervals calibration --seeds {res['seeds']}`; "
        f"{res['machine']['platform']}, {res['machine']['cpus']} CPUs, {res['machine']['backend']}; "
        f"load average {res['load_start']} at the start, {res['load_end']} at the end; {res['wall_s'] / 60:.1f} min.",
        "",
        f"Coverage of the N = {res['truth_n']:,} value by 95% intervals (both shipped models of a task pooled):",
        "",
        "| task | metric | reported (episodes) | plain percentile (episodes) | ignoring episodes (states) |",
        "|---|---|---:|---:|---:|",
    ]
    for task, t in res["tasks"].items():
        for metric, kinds in t["coverage"]["per_task"].items():
            lines.append(f"| {task} | {metric} | {kinds['hull']['coverage']:.1%} | {kinds['percentile']['coverage']:.1%}"
                         f" | {kinds['states']['coverage']:.1%} |")
    lines += ["", "Per model (coverage, median half-width):", "",
              "| task | model | metric | reported | half-width | ignoring episodes | half-width |", "|---|---|---|---:|---:|---:|---:|"]
    for task, t in res["tasks"].items():
        for q, metrics in t["coverage"]["per_model"].items():
            for metric, kinds in metrics.items():
                h, s = kinds["hull"], kinds["states"]
                lines.append(f"| {task} | {q} | {metric} | {h['coverage']:.1%} | {h['median_half_width']:.3g} | "
                             f"{s['coverage']:.1%} | {s['median_half_width']:.3g} |")
    lines += ["", f"What N buys: median 95% half-width (reported interval) over disjoint blocks of the N = {res['truth_n']:,} "
              "batch:",
              "", "| task | model | metric | " + " | ".join(f"N={n:,}" for n in TABLE_NS) + " |",
              "|---|---|---|" + "---:|" * len(TABLE_NS)]
    for task, t in res["tasks"].items():
        for q, metrics in t["half_width_by_n"].items():
            for metric, by_n in metrics.items():
                cells = [by_n.get(str(n), {}).get("median_half_width") for n in TABLE_NS]
                lines.append(f"| {task} | {q} | {metric} | " + " | ".join("-" if c is None else f"{c:.3g}" for c in cells)
                             + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- cost


def cost(args: argparse.Namespace) -> dict:
    here = Path(__file__).resolve().parent.parent
    roots = {"intervals": here, "baseline": Path(args.baseline).resolve()}
    model = here / "wmel_jax" / "examples" / "cartpole-swingup-good.safetensors"
    rows: dict = {k: [] for k in roots}
    with tempfile.TemporaryDirectory(prefix="wmel-interval-cost-") as tmp:
        caches = {k: Path(tmp) / f"cache-{k}" for k in roots}

        def run(kind: str) -> dict:
            report = Path(tmp) / f"{kind}.json"
            report.unlink(missing_ok=True)  # an existing output is refused (no --force: the baseline may lack it)
            cmd = [sys.executable, "-m", "wmel_jax", "eval", str(model), "--n-states", str(args.n_states),
                   "--cache-dir", str(caches[kind]), "-o", str(report)]
            env = {**os.environ, "PYTHONPATH": str(roots[kind]), "MUJOCO_GL": "disable"}
            env.pop("WMEL_JAX_CACHE_DIR", None)
            done = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=1800)
            if done.returncode not in (0,):
                raise RuntimeError(f"{kind}: {done.stderr[-2000:]}")
            return json.loads(report.read_text())["timings"]

        for kind in roots:  # warm the caches (compile once)
            run(kind)
        for r in range(args.rounds):
            for kind in (roots if r % 2 == 0 else list(roots)[::-1]):
                t = run(kind)
                t["load"] = _load()
                rows[kind].append(t)
                print(f"round {r + 1} {kind}: total_s {t['total_s']:.3f}, interval_s {t.get('interval_s', 0):.4f}, "
                      f"load {t['load']}", flush=True)

    def med(kind: str, key: str) -> float:
        return statistics.median(t.get(key, 0.0) for t in rows[kind])

    def kernels(t: dict) -> float:
        return t["oracle_run_s"] + t["model_run_s"]

    result = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "n_states": args.n_states, "rounds": args.rounds, "baseline": str(roots["baseline"]),
        "median_total_s": {k: med(k, "total_s") for k in roots},
        "median_run_s": {k: statistics.median(kernels(t) for t in rows[k]) for k in roots},
        "median_interval_s": med("intervals", "interval_s"),
        "runs": rows,
    }
    result["total_ratio"] = result["median_total_s"]["intervals"] / result["median_total_s"]["baseline"]
    result["run_ratio"] = result["median_run_s"]["intervals"] / result["median_run_s"]["baseline"]
    result["interval_share_of_total"] = result["median_interval_s"] / result["median_total_s"]["intervals"]
    print(f"total_s: intervals {result['median_total_s']['intervals']:.3f}, baseline "
          f"{result['median_total_s']['baseline']:.3f} (ratio {result['total_ratio']:.3f}); kernels' run ratio "
          f"{result['run_ratio']:.3f}; interval_s {result['median_interval_s']:.4f} "
          f"({result['interval_share_of_total']:.1%} of the warm eval)")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    cal = sub.add_parser("calibration")
    cal.add_argument("--tasks", nargs="+", default=list(TASKS))
    cal.add_argument("--seeds", type=int, default=40)
    cal.add_argument("--n-states", type=int, default=150)
    cal.add_argument("--truth-n", type=int, default=TRUTH_N)
    cal.add_argument("--chunk", type=int, default=4096)
    cal.add_argument("--cache-dir", default=None, help="kernel cache (default: none)")
    cal.add_argument("--out", default=str(RESULTS / "intervals_calibration"))
    c = sub.add_parser("cost")
    c.add_argument("--baseline", required=True, help="a checkout of wmel-jax without the intervals (e.g. main)")
    c.add_argument("--n-states", type=int, default=10_000)
    c.add_argument("--rounds", type=int, default=5)
    c.add_argument("--out", default=str(RESULTS / "intervals_cost.json"))
    args = parser.parse_args(argv)
    RESULTS.mkdir(exist_ok=True)
    if args.what == "calibration":
        res = calibration(args)
        Path(args.out + ".json").write_text(json.dumps(res, indent=1) + "\n")
        Path(args.out + ".md").write_text(_calibration_markdown(res))
        print(_calibration_markdown(res))
        print(f"wrote {args.out}.json, {args.out}.md")
    else:
        res = cost(args)
        Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

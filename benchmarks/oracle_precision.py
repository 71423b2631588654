"""Does a float32 oracle rank actions like a float64 one? And how much faster is it?

    python -m wmel_jax.benchmarks.oracle_precision            # 10,000 states per task
    python -m wmel_jax.benchmarks.oracle_precision --n 2000   # quicker

For each task: 10,000 seeded states (``sample_states``, float64), every
default action from every state, one env step (k = 1) with a float64 and a
float32 oracle on the same states; score every successor with the task's M3
score and compare, per state, the two orderings of the action set:

* ``states_ordered_differently``: fraction of states where some pair of
  actions is ordered differently (a flip, or a tie on one side only);
* ``kendall_tau_b_mean``: mean Kendall tau-b between the two score vectors
  (SPEC 6, ties counted as ties; states with a constant vector on either side
  skipped), i.e. the M3 a perfect float64 model would get against a float32
  oracle; ``states_skipped``: how many were undefined;
* ``max_abs_obs_diff``: largest difference of the successors themselves.

Speed: ``step_all`` on the same states for each precision, round-robin, median
of ``--runs`` calls after a compile call. Writes
``benchmarks/results/oracle_precision.json`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def pair_signs(scores: np.ndarray) -> np.ndarray:
    """scores (N, A) -> sign(s_i - s_j) for the A(A-1)/2 pairs i < j, (N, P)."""
    i, j = np.triu_indices(scores.shape[1], k=1)
    return np.sign(scores[:, i] - scores[:, j])


def kendall_tau_b(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-row Kendall tau-b of (N, A) score arrays; NaN where undefined (a constant row)."""
    sx, sy = pair_signs(x), pair_signs(y)
    n0 = sx.shape[1]
    n1 = (sx == 0).sum(axis=1)
    n2 = (sy == 0).sum(axis=1)
    denom = np.sqrt((n0 - n1).astype(float) * (n0 - n2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (sx * sy).sum(axis=1) / denom, np.nan)


def measure_task(task: str, n: int, runs: int, seed: int) -> dict:
    import jax
    import jax.numpy as jnp

    import wmel_jax

    o64 = wmel_jax.make_oracle(task, precision="float64")
    o32 = wmel_jax.make_oracle(task, precision="float32")
    states = wmel_jax.sample_states(jax.random.key(seed), task, n, precision="float64")
    states32 = jnp.asarray(np.asarray(states), jnp.float32)  # the same states, rounded once

    calls = {"float64": lambda: o64.step_all(states), "float32": lambda: o32.step_all(states32)}
    first, times, out = {}, {k: [] for k in calls}, {}
    for name, fn in calls.items():
        t0 = time.perf_counter()
        out[name] = np.asarray(jax.block_until_ready(fn()), np.float64)
        first[name] = time.perf_counter() - t0
    for _ in range(runs):
        for name, fn in calls.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - t0)
    run = {k: float(np.median(v)) for k, v in times.items()}

    n_actions = len(o64.actions)
    flat64 = out["float64"].reshape(-1, o64.obs_dim)
    s64 = np.asarray(o64.score(flat64), np.float64).reshape(n, n_actions)
    s32 = np.asarray(o32.score(out["float32"].reshape(-1, o64.obs_dim)), np.float64).reshape(n, n_actions)
    differ = (pair_signs(s64) != pair_signs(s32)).any(axis=1)
    tau = kendall_tau_b(s64, s32)
    # A tie can only appear on one side or the other; count where each side had one.
    ties64 = (pair_signs(s64) == 0).any(axis=1)
    ties32 = (pair_signs(s32) == 0).any(axis=1)
    steps = n * n_actions
    return {
        "task": task,
        "n_states": n,
        "n_actions": n_actions,
        "states_ordered_differently": float(differ.mean()),
        "n_states_ordered_differently": int(differ.sum()),
        "states_with_ties_float64": int(ties64.sum()),
        "states_with_ties_float32": int(ties32.sum()),
        "kendall_tau_b_mean": float(np.nanmean(tau)) if np.isfinite(tau).any() else None,
        "kendall_tau_b_min": float(np.nanmin(tau)) if np.isfinite(tau).any() else None,
        "states_skipped": int(np.isnan(tau).sum()),
        "max_abs_obs_diff": float(np.abs(out["float64"] - out["float32"]).max()),
        "max_abs_score_diff": float(np.abs(s64 - s32).max()),
        "float64_steps_per_s": steps / run["float64"],
        "float32_steps_per_s": steps / run["float32"],
        "float64_over_float32_time": run["float64"] / run["float32"],
        "compile_s": {k: max(first[k] - run[k], 0.0) for k in calls},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="states per task (default 10,000)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tasks", nargs="+", default=None)
    parser.add_argument("--out", type=Path, default=RESULTS / "oracle_precision.json")
    args = parser.parse_args(argv)

    import jax

    jax.config.update("jax_enable_x64", True)
    import wmel_jax
    from wmel_jax.fileio import write_json

    rows = []
    for task in args.tasks or wmel_jax.list_tasks():
        r = measure_task(task, args.n, args.runs, args.seed)
        rows.append(r)
        print(
            f"{task:17s} ordered differently: {r['n_states_ordered_differently']:5d}/{r['n_states']} "
            f"({100 * r['states_ordered_differently']:.2f}%)  tau-b mean {r['kendall_tau_b_mean']:.5f}  "
            f"max |obs diff| {r['max_abs_obs_diff']:.1e}  float64 {r['float64_steps_per_s']:,.0f}/s  "
            f"float32 {r['float32_steps_per_s']:,.0f}/s  (f64/f32 time {r['float64_over_float32_time']:.2f})",
            flush=True,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": "python -m wmel_jax.benchmarks.oracle_precision " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": f"{platform.processor() or platform.machine()}, {platform.system()}",
        "jax_backend": jax.default_backend(),
        "k": 1,
    }
    write_json(args.out, {"meta": meta, "results": rows})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

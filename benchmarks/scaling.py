"""Does wmel-jax's warm time grow linearly with N? (issue 5: N = 100k within 1.3x of linear from 10k)

    python -m wmel_jax.benchmarks.scaling [--runs 3]

One size-1 cartpole-swingup model (the shipped good example), the oracle's
answers and the model's metrics (what ``wmel-jax eval`` computes after
sampling) at N = 10,000 and 100,000, each compiled first, then timed
round-robin ``--runs`` times so that drift hits both sizes alike; medians.
Peak memory at 100k is measured by ``wmel-jax bench --full`` (a child
process). Writes ``benchmarks/results/scaling.json``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SIZES = (10_000, 100_000)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m wmel_jax.benchmarks.scaling", description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--out", default=str(RESULTS / "scaling.json"))
    args = p.parse_args(argv)

    import jax

    jax.config.update("jax_enable_x64", True)
    import wmel_jax
    from wmel_jax import evaluate
    from wmel_jax.demo import EXAMPLES_DIR
    from wmel_jax.fileio import write_json

    model = wmel_jax.load(EXAMPLES_DIR / "cartpole-swingup-good.safetensors")
    problems = {n: evaluate.make_problem("cartpole-swingup", model.action_set, n_states=n, k_steps=10, seed=0)
                for n in SIZES}

    def once(problem) -> float:
        t0 = time.perf_counter()
        targets = evaluate.oracle_targets(problem)
        evaluate.model_metrics(model, problem, targets)  # returns host floats: everything is done
        return time.perf_counter() - t0

    for problem in problems.values():
        once(problem)  # compile
    times: dict[int, list[float]] = {n: [] for n in SIZES}
    for _ in range(args.runs):
        for n, problem in problems.items():
            times[n].append(once(problem))
    med = {n: statistics.median(v) for n, v in times.items()}
    ratio = med[SIZES[1]] / (SIZES[1] / SIZES[0] * med[SIZES[0]])
    result = {
        "benchmark": "scaling",
        "machine": {"platform": platform.platform(), "device": str(jax.devices()[0])},
        "runs": args.runs,
        "seconds": {str(n): v for n, v in times.items()},
        "median_s": {str(n): v for n, v in med.items()},
        "ratio_to_linear": ratio,
        "target": "ratio_to_linear <= 1.3",
        "status": "PASS" if ratio <= 1.3 else "FAIL",
    }
    write_json(args.out, result)
    print(f"warm medians: N=10k {med[SIZES[0]]:.2f} s, N=100k {med[SIZES[1]]:.2f} s; "
          f"100k / (10 x 10k) = {ratio:.2f} ({result['status']}, target <= 1.3); wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

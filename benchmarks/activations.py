"""TD-MPC2's activations: the one-step observation map with each form of Mish and SimNorm.

    python -m wmel_jax.benchmarks.activations                       # size-1 cartpole example, 800/1,600/3,200 rows
    python -m wmel_jax.benchmarks.activations --rows 1600 --repeats 25 --out /tmp/act

The learned arm of ``wmel-jax cpg`` rolls the model's observation map
``decode(next(encode(obs), action))`` over thousands of rows per plan step;
its matmuls are half its time and its element-wise work the other half. This
times that map (15 steps in a ``lax.scan``, as a plan call rolls it) with the
activations of :mod:`wmel_jax.model.layers` against the composed forms they
replaced, in one process, round-robin over the variants so that load drifts
hit both alike:

- ``composed``: Mish as ``x * tanh(softplus(x))`` (exp, log1p and tanh) and
  SimNorm as a softmax over the minor axis of (..., groups, 8);
- ``mish``: the current Mish (one exp and one division), composed SimNorm;
- ``current``: both as :mod:`wmel_jax.model.layers` computes them.

Reported per batch size: the median ms of each variant and the median (and
quartiles) of the per-round ratio to ``composed``, plus the largest
difference of one step's outputs between the variants (float32 rounding).
Then Mish's accuracy: the largest error relative to float64 of each form (and
of torch's, when torch is installed) over [-100, 100] and 1e-30..1e30 of both
signs, results under 1e-30 in size left out (XLA flushes subnormals).
Results in ``benchmarks/results/activations.{json,md}``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
STEPS = 15


def composed_mish(x):
    import jax
    import jax.numpy as jnp

    return x * jnp.tanh(jax.nn.softplus(x))


def composed_simnorm(x, group: int):
    import jax

    shape = x.shape
    return jax.nn.softmax(x.reshape(*shape[:-1], shape[-1] // group, group), axis=-1).reshape(shape)


@contextlib.contextmanager
def activations(mish: Callable | None, simnorm: Callable | None) -> Iterator[None]:
    """Trace the networks with these activations (None: the layers' own)."""
    from wmel_jax.model import layers

    saved = layers.mish, layers.simnorm
    layers.mish = mish or saved[0]
    layers.simnorm = simnorm or saved[1]
    try:
        yield
    finally:
        layers.mish, layers.simnorm = saved


VARIANTS: dict[str, tuple[Callable | None, Callable | None]] = {
    "composed": (composed_mish, composed_simnorm),
    "mish": (None, composed_simnorm),
    "current": (None, None),
}


def rollouts(model_path: str, rows: int) -> tuple[dict[str, Any], tuple, dict[str, float]]:
    """{variant: compiled 15-step rollout}, its arguments, and each variant's one-step difference from current."""
    import jax
    import jax.numpy as jnp

    import wmel_jax
    from wmel_jax.model.protocol import functions_of

    model = wmel_jax.load(model_path)
    fns = functions_of(model.arch)
    rng = np.random.default_rng(0)
    obs = jnp.asarray(rng.normal(size=(rows, model.arch.obs_dim)), jnp.float32)
    acts = jnp.asarray(rng.uniform(-1, 1, size=(STEPS, rows, model.arch.action_dim)), jnp.float32)
    params = jax.tree_util.tree_map(jnp.asarray, model.params)

    def functions():  # fresh function objects per variant: jit caches a trace per function
        def roll(p, o, a):
            def body(x, act):
                y = fns.obs_step(p, None, x, act)
                return y, y
            return jax.lax.scan(body, o, a)[1]

        def one(p, o, a):
            return fns.obs_step(p, None, o, a[0])

        return roll, one

    compiled, first = {}, {}
    for name, (mish, simnorm) in VARIANTS.items():
        roll, one = functions()
        with activations(mish, simnorm):
            compiled[name] = jax.jit(roll).lower(params, obs, acts).compile()
            first[name] = np.asarray(jax.jit(one).lower(params, obs, acts).compile()(params, obs, acts))
    diffs = {name: float(np.max(np.abs(first[name] - first["current"]))) for name in VARIANTS}
    return compiled, (params, obs, acts), diffs


def measure(model_path: str, rows: int, repeats: int) -> dict[str, Any]:
    import jax

    compiled, args, diffs = rollouts(model_path, rows)
    for fn in compiled.values():
        jax.block_until_ready(fn(*args))
    times: dict[str, list[float]] = {name: [] for name in compiled}
    for _ in range(repeats):
        for name, fn in compiled.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[name].append(time.perf_counter() - t0)
    base = np.array(times["composed"])
    out: dict[str, Any] = {"rows": rows, "steps": STEPS, "repeats": repeats, "variants": {}}
    for name, ts in times.items():
        speedup = base / np.array(ts)
        out["variants"][name] = {
            "median_ms": statistics.median(ts) * 1e3,
            "rows_per_s": rows * STEPS / statistics.median(ts),
            "speedup_vs_composed": float(np.median(speedup)),
            "speedup_q25": float(np.quantile(speedup, 0.25)),
            "speedup_q75": float(np.quantile(speedup, 0.75)),
            "one_step_max_abs_diff_vs_current": diffs[name],
        }
    return out


def mish_accuracy() -> dict[str, float]:
    """The largest relative error against float64 of each Mish: composed, current, torch (when installed)."""
    import jax.numpy as jnp

    from wmel_jax.model import layers

    x = np.concatenate([np.linspace(-100, 100, 2_000_001), np.geomspace(1e-30, 1e30, 10_001),
                        -np.geomspace(1e-30, 1e4, 10_001)]).astype(np.float32)
    x64 = x.astype(np.float64)
    want = np.where(x64 > 700, x64, x64 * np.tanh(np.log1p(np.exp(np.minimum(x64, 700)))))
    kept = np.abs(want) >= 1e-30
    forms = {"composed": lambda v: np.asarray(composed_mish(jnp.asarray(v))),
             "current": lambda v: np.asarray(layers.mish(jnp.asarray(v)))}
    try:
        import torch

        forms["torch"] = lambda v: torch.nn.functional.mish(torch.from_numpy(v)).numpy()
    except ImportError:
        pass
    return {name: float(np.max(np.abs(f(x).astype(np.float64) - want)[kept] / np.abs(want[kept])))
            for name, f in forms.items()}


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        "# TD-MPC2 activations: the one-step observation map, 15 steps",
        "",
        f"`{result['command']}`",
        "",
        f"{m.get('cpu')} ({m.get('cores')} cores), jax {m.get('jax')}; load average at start "
        f"{result['loadavg_start']}, at end {result['loadavg_end']}. Model: `{result['model']}`.",
        "",
        "| rows | variant | median ms | rows/s | speedup vs composed (median [q25, q75]) "
        "| one step: max abs diff vs current |",
        "|---:|---|---:|---:|---|---:|",
    ]
    for r in result["sizes"]:
        for name, v in r["variants"].items():
            lines.append(f"| {r['rows']:,} | {name} | {v['median_ms']:.1f} | {v['rows_per_s']:,.0f} | "
                         f"{v['speedup_vs_composed']:.3f} [{v['speedup_q25']:.3f}, {v['speedup_q75']:.3f}] | "
                         f"{v['one_step_max_abs_diff_vs_current']:.2e} |")
    lines += ["", "Mish against float64 over [-100, 100] and 1e-30..1e30 of both signs (results of size "
              "1e-30 or more): largest relative error", "", "| form | max relative error |", "|---|---:|"]
    lines += [f"| {name} | {err:.2e} |" for name, err in result["mish_max_rel_error_vs_float64"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from wmel_jax.benchmarks.bench import machine_info
    from wmel_jax.demo import EXAMPLES_DIR

    p = argparse.ArgumentParser(prog="python -m wmel_jax.benchmarks.activations",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(EXAMPLES_DIR / "cartpole-swingup-good.safetensors"),
                   help="a converted TD-MPC2 model with a decoder (default: the size-1 cartpole example)")
    p.add_argument("--rows", default="800,1600,3200", help="batch rows, comma-separated")
    p.add_argument("--repeats", type=int, default=15, help="timed rounds per batch size (each runs every variant)")
    p.add_argument("--out", default=str(RESULTS), help="folder for activations.{json,md}")
    args = p.parse_args(argv)
    try:
        sizes = [int(x) for x in args.rows.split(",") if x]
        if not sizes or min(sizes) < 1 or args.repeats < 1:
            raise ValueError
    except ValueError:
        print("error: --rows takes positive integers (comma-separated) and --repeats a positive integer",
              file=sys.stderr)
        return 2
    if not Path(args.model).is_file():
        print(f"error: no model file at {args.model}", file=sys.stderr)
        return 2
    result: dict[str, Any] = {"command": " ".join(["python -m wmel_jax.benchmarks.activations", *sys.argv[1:]]),
                              "machine": machine_info(), "model": args.model,
                              "loadavg_start": [round(x, 2) for x in os.getloadavg()], "sizes": []}
    for rows in sizes:
        r = measure(args.model, rows, args.repeats)
        result["sizes"].append(r)
        print(f"[rows {rows:,}] " + ", ".join(f"{k} {v['median_ms']:.1f} ms (x{v['speedup_vs_composed']:.2f})"
                                              for k, v in r["variants"].items()), file=sys.stderr)
    result["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    result["mish_max_rel_error_vs_float64"] = mish_accuracy()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from wmel_jax.fileio import write_json

    write_json(out / "activations.json", result)
    (out / "activations.md").write_text(markdown(result))
    print(f"wrote {out / 'activations.json'} and {out / 'activations.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

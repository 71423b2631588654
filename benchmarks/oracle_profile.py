"""Where an oracle step's time goes, and what each speed-up is worth.

    python -m wmel_jax.benchmarks.oracle_profile                      # reacher-easy, N = 1k, 16k, 64k
    python -m wmel_jax.benchmarks.oracle_profile --task cartpole-swingup --sizes 16384

Two tables, float64, same seeded states (``sample_states``) and actions:

1. Stages of one step at N states, each jitted alone on prepared inputs
   (returning only what the next stage needs): the smooth dynamics
   (mjx.fwd_position ... fwd_acceleration), the constraint solve
   (``vmap(mjx.solve)`` as ``mjx.step`` runs it, against the oracle's exact
   one-row solve), the Euler / RK4 integration, the kinematics refresh.
2. Ablation, step throughput of
   ``naive``        jit(vmap(mjx.step)) per state (the textbook kernel),
   ``+no_ynn``      the same with XLA's CPU YNNPACK fusions off,
   ``+batch_solve`` the oracle's batch-level step (exact one-row solve /
                    MJX solver only where needed), MJX's LAPACK factorisations,
                    YNNPACK off, one batch,
   ``+small_linalg`` + the elementwise Cholesky of the 2x2 mass matrix,
   ``oracle``       + 4,096-state chunks: what ``make_oracle`` runs,
   with MuJoCo's native ``mujoco.rollout`` on all cores as the yardstick.

Timings are medians of ``--runs`` round-robin calls after a compile call; the
compiled HLO size (instructions) is reported beside each variant. Writes
``benchmarks/results/oracle_profile_<task>.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
NO_YNN = {"xla_cpu_experimental_ynn_fusion_type": ""}


def _median_times(fns: dict, runs: int) -> dict[str, float]:
    import jax

    for fn in fns.values():
        jax.block_until_ready(fn())
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(runs):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            times[k].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) for k, v in times.items()}


def _hlo_size(jitted, *args) -> int:
    return sum(1 for line in jitted.lower(*args).compile().as_text().splitlines() if " = " in line)


def stages(oracle, obs, act, runs: int) -> dict[str, float]:
    import jax

    from wmel_jax.oracle._mjx import mjx

    p = oracle.physics
    m = p.model
    d = jax.jit(lambda o, a: p.state(o).replace(ctrl=a))(obs, act)
    smooth = jax.jit(p._smooth, compiler_options=NO_YNN)(d)
    forwarded = jax.jit(p.forward, compiler_options=NO_YNN)(d)
    fns = {
        "smooth dynamics": jax.jit(lambda x: _pick(p._smooth(x), "smooth"), compiler_options=NO_YNN),
        "integrate": jax.jit(lambda x: _pick(p.integrate(x), "state"), compiler_options=NO_YNN),
        "kinematics": jax.jit(lambda x: _pick(p.kinematics(x), "kin"), compiler_options=NO_YNN),
    }
    args = {"smooth dynamics": d, "integrate": forwarded, "kinematics": d}
    if p._has_constraints:
        fns["solve: vmap(mjx.solve)"] = jax.jit(lambda x: jax.vmap(lambda y: mjx.solve(m, y))(x).qacc, compiler_options=NO_YNN)
        fns[f"solve: oracle ({p.solver})"] = jax.jit(lambda x: p._solve(x).qacc, compiler_options=NO_YNN)
        args["solve: vmap(mjx.solve)"] = smooth
        args[f"solve: oracle ({p.solver})"] = smooth
    return _median_times({k: (lambda f=f, a=args[k]: f(a)) for k, f in fns.items()}, runs)


def _pick(d, what: str):
    if what == "smooth":
        return d.qacc_smooth, d._impl.efc_J, d._impl.efc_aref
    if what == "state":
        return d.qpos, d.qvel
    return d.xmat, d.geom_xpos


def ablation(oracle, obs, act, runs: int, nthread: int, naive_max: int) -> tuple[dict[str, float], dict[str, int]]:
    import jax

    from wmel_jax.benchmarks.oracle_throughput import _Native, _naive_step
    from wmel_jax.oracle import base

    n = obs.shape[0]
    variants = {}
    if n <= naive_max:  # vmap(mjx.step) at 64k takes minutes per call here
        variants["naive"] = _naive_step(oracle)
        variants["+no_ynn"] = _naive_step(oracle, NO_YNN)
    task_cls = type(oracle.physics.task)
    lapack = base.Oracle(task_cls, oracle.frame_skip, oracle.precision, factor="lapack")
    lapack._chunk = None
    variants["+batch_solve"] = jax.jit(lapack._step_impl, compiler_options=NO_YNN)
    one_batch = base.Oracle(task_cls, oracle.frame_skip, oracle.precision)
    one_batch._chunk = None
    variants["+small_linalg"] = jax.jit(one_batch._step_impl, compiler_options=NO_YNN)
    variants["oracle"] = oracle._kernels["step"][0]
    native = _Native(oracle, nthread)
    states = native.states(obs)
    ctrl = np.repeat(np.asarray(act, np.float64)[:, None, :], oracle.frame_skip, axis=1)
    fns = {k: (lambda f=f: f(obs, act)) for k, f in variants.items()}
    fns["native"] = lambda: native.run(states, ctrl, oracle.frame_skip)
    try:
        t = _median_times(fns, runs)
    finally:
        native.close()
    sizes = {k: _hlo_size(f, obs, act) for k, f in variants.items()}
    return {k: n / v for k, v in t.items()}, sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="reacher-easy")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 16384, 65536])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--naive-max", type=int, default=16384)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    import wmel_jax
    from wmel_jax.fileio import write_json

    oracle = wmel_jax.make_oracle(args.task)
    nthread = len(os.sched_getaffinity(0))
    all_states = wmel_jax.sample_states(jax.random.key(0), args.task, max(args.sizes))
    rng = np.random.default_rng(0)
    all_actions = jnp.asarray(oracle.actions[rng.integers(len(oracle.actions), size=max(args.sizes))])
    report = {"task": args.task, "precision": "float64", "native_threads": nthread, "runs": args.runs, "sizes": []}
    for n in args.sizes:
        obs, act = all_states[:n], all_actions[:n]
        st = stages(oracle, obs, act, args.runs)
        rates, hlo = ablation(oracle, obs, act, args.runs, nthread, args.naive_max)
        print(f"\n{args.task}, N = {n}: stage times (ms, each jitted alone)")
        for k, v in st.items():
            print(f"  {k:32s} {1e3 * v:9.2f}")
        print("  steps/s (HLO instructions):")
        for k, v in rates.items():
            extra = f" ({hlo[k]} HLO instr.)" if k in hlo else ""
            print(f"  {k:32s} {v:12,.0f}{extra}  x{v / rates['native']:.2f} native")
        report["sizes"].append(
            {"n_states": n, "stage_ms": {k: 1e3 * v for k, v in st.items()}, "steps_per_s": rates, "hlo_instructions": hlo}
        )
    out = args.out or RESULTS / f"oracle_profile_{args.task}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    report["command"] = "python -m wmel_jax.benchmarks.oracle_profile " + " ".join(sys.argv[1:] if argv is None else argv)
    write_json(out, report)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``wmel-jax bench``: wmel-jax against the per-sample reference and the best batched alternative.

    python -m wmel_jax bench [--quick | --full] [--out DIR] [--tasks ...] [--sizes ...] [--n ...]
    python -m wmel_jax.benchmarks.bench ...                      # the same

In ONE process, on the same seeded states, the same models and the same action
sets for every arm (so machine drift hits every arm alike; the arms take turns
within each repetition):

- ``reference``: the per-sample path of ``benchmarks.reference`` (torch
  batch-of-1, dm_control one state at a time, plain-Python tau-b), timed on a
  subset of the states and scaled linearly to N (its cost per state does not
  depend on N); the JSON says ``extrapolated_from`` and the tables say so;
- ``batched``: ``benchmarks.batched``, batched torch plus native
  ``mujoco.rollout`` on all cores, computing the same metrics;
- ``wmel-jax``: ``make_problem`` / ``oracle_targets`` / ``model_metrics``,
  on the same metrics (:data:`COMPARED_SPACES`: M1-M3, as ``--metrics
  observation``; the default, all metrics, timed beside it),
  warm (median of ``runs`` calls after compilation) and cold in-process
  (compilation + run, with a fresh in-process cache and no persistent cache);
  and ``wmel-jax eval`` as fresh processes with an empty, a warm and no
  persistent compilation cache (wall time and peak RSS of the child).

Axes: tasks, model sizes (random-initialised torch-mirror adapters; size 1 is
the shipped example models), N, one checkpoint and a sweep of 10 checkpoints of
one architecture (the oracle's answers shared), and one upstream-layout
(decoder-less) checkpoint. Figures per configuration: seconds, states/s,
(state, action) evaluations/s, ratios, compile time, peak memory, and the
fraction of the machine's measured peak reached (a large float32 matmul for
the network part, native MuJoCo on the same states for the physics part).

Writes ``bench_<mode>.json``, ``bench_<mode>.md`` and ``bench_<mode>.png`` to
``--out`` (default ``benchmarks/results``), atomically, and prints the targets
of issue 5 as PASS / FAIL / not measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import io
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

__all__ = [
    "Plan",
    "make_plan",
    "evaluate_targets",
    "markdown",
    "plot",
    "write_outputs",
    "output_stem",
    "run_child",
    "network_flops",
    "kernel_flops",
    "observation_metrics_flops",
    "layer_shapes_peak",
    "main",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
TASKS = ("cartpole-swingup", "reacher-easy", "acrobot-swingup")
TASK_DIMS = {"cartpole-swingup": (5, 1), "reacher-easy": (6, 2), "acrobot-swingup": (6, 1)}
TARGET_TASK = "cartpole-swingup"
K_STEPS = 10
SEED = 0
GB = 1e9

#: Largest N at which the batched arm's torch is timed with every thread count; above it, the count
#: chosen at the largest smaller N is reused (one call takes tens of seconds there).
THREAD_TRIAL_MAX_N = 10_000
#: Scaling to larger N is judged against this N, timed again in the same repetitions.
SCALING_BASE_N = 10_000

#: The metric spaces every arm computes in the comparisons: M1, M2, M3, exactly what the
#: per-sample reference computes (``wmel-jax eval --metrics observation``; the batched arm
#: with ``latent=False``). The default ``wmel-jax eval``, which adds the latent-space
#: metrics, is timed beside it in every configuration (``wmel_jax.all_metrics``).
COMPARED_SPACES = ("observation",)

#: Issue 5's targets (each checked from this benchmark's own output).
WARM_VS_REFERENCE_MIN = 40.0
WARM_VS_BATCHED_MIN = 1.3
SWEEP_VS_REFERENCE_MIN = 60.0
COLD_EMPTY_CACHE_MAX_S = 15.0
COLD_WARM_CACHE_MAX_S = 4.0
PEAK_MEMORY_100K_MAX_GB = 4.0
LINEAR_SCALING_MAX = 1.3


# --------------------------------------------------------------------------- #
# What to run
# --------------------------------------------------------------------------- #


@dataclasses.dataclass(frozen=True)
class Plan:
    """One benchmark run's axes.

    configs: (task, model size, N) single-checkpoint measurements;
    sweep: (task, number of checkpoints, N) or None; upstream: (task, N) or None;
    reference_subset: states the per-sample reference is timed on (then scaled to N);
    sweep_reference_subset: the same, per sweep checkpoint;
    runs: warm repetitions per measurement (median); sweep_runs: passes over the sweep;
    cold_process: ``wmel-jax eval`` child runs at N = 150 ("empty", "warm", "off" cache);
    memory: (task, size, N) ``wmel-jax eval`` children whose peak RSS is measured.
    """

    mode: str
    configs: tuple[tuple[str, int, int], ...]
    sweep: tuple[str, int, int] | None
    upstream: tuple[str, int] | None
    reference_subset: int
    sweep_reference_subset: int
    runs: int
    sweep_runs: int
    cold_process: tuple[str, ...]
    memory: tuple[tuple[str, int, int], ...]
    matmul_n: int = 2048

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def make_plan(mode: str, tasks: Sequence[str] | None = None, sizes: Sequence[int] | None = None,
              ns: Sequence[int] | None = None, runs: int | None = None) -> Plan:
    """The axes of ``mode`` ("quick" or "full"), narrowed by the debugging overrides.

    quick (under 3 minutes on 2 cores): every task at N = 150 with sizes 1
    and 5, cartpole size 1 at N = 10k (the warm targets), the 10-checkpoint
    sweep at 10k, one upstream checkpoint at N = 150, cold processes with an
    empty and a warm cache. full: N in {150, 1k, 10k, 100k} with size 1,
    {150, 1k, 10k} with size 5, {150, 1k} with size 19 (size 19 at 10k and
    more costs minutes per call on 2 cores, per arm), all tasks; the sweep
    with 3 passes; cold processes also with no cache; peak memory of
    ``wmel-jax eval`` at 10k and 100k. ``tasks`` / ``sizes`` / ``ns`` keep
    only those (``ns`` replaces the N axis for every task and size).
    """
    if mode not in ("quick", "full"):
        raise ValueError(f"mode must be quick or full, got {mode!r}")
    all_tasks = tuple(tasks) if tasks else TASKS
    unknown = [t for t in all_tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {', '.join(unknown)}; known: {', '.join(TASKS)}")
    if mode == "quick":
        default_sizes = (1, 5)
        grid = {(t, s): (150,) for t in TASKS for s in default_sizes}
        grid[(TARGET_TASK, 1)] = (150, 10_000)
    else:
        default_sizes = (1, 5, 19)
        per_size = {1: (150, 1_000, 10_000, 100_000), 5: (150, 1_000, 10_000), 19: (150, 1_000)}
        grid = {(t, s): per_size[s] for t in TASKS for s in default_sizes}
    chosen_sizes = tuple(sizes) if sizes else default_sizes
    for s in chosen_sizes:
        if s not in (1, 5, 19, 48):
            raise ValueError(f"model size must be one of 1, 5, 19, 48; got {s}")
    configs = []
    for t in all_tasks:
        for s in chosen_sizes:
            n_axis = tuple(ns) if ns else grid.get((t, s), ())
            configs += [(t, s, int(n)) for n in n_axis]
    for _, _, n in configs:
        if n < 2:
            raise ValueError(f"N must be at least 2, got {n}")
    quick = mode == "quick"
    sweep_n = 10_000
    if ns:
        sweep_n = max(ns)
    sweep = (TARGET_TASK, 10, sweep_n) if TARGET_TASK in all_tasks and (not sizes or 1 in sizes) else None
    upstream = (TARGET_TASK, 150) if TARGET_TASK in all_tasks else None
    cold = ("empty", "warm") if quick else ("empty", "warm", "off")
    if ns or tasks and TARGET_TASK not in tasks:
        cold = ()  # a debugging run: only what was asked for
    memory = () if quick or ns else tuple((TARGET_TASK, 1, n) for n in (10_000, 100_000) if TARGET_TASK in all_tasks)
    return Plan(
        mode=mode,
        configs=tuple(configs),
        sweep=sweep,
        upstream=upstream,
        reference_subset=50 if quick else 150,
        sweep_reference_subset=20 if quick else 50,
        runs=runs or 3,
        sweep_runs=1 if quick else 3,
        cold_process=cold,
        memory=memory,
        matmul_n=2048,
    )


# --------------------------------------------------------------------------- #
# Small measurement helpers
# --------------------------------------------------------------------------- #


_T0 = time.perf_counter()


def _say(msg: str) -> None:
    """A progress line, stamped with the seconds since the benchmark module loaded."""
    print(f"[{time.perf_counter() - _T0:6.0f} s] {msg}" if msg else "", flush=True)


def _median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


#: Runs argv[1:] as its child and prints that child's wall time, exit status and
#: peak RSS as JSON. The bench starts this small wrapper instead of the command
#: itself because Linux counts the RSS of the process that forked into the
#: child's ru_maxrss (exec keeps the old address space's high-water mark): a
#: child forked from the benchmark would report the benchmark's own memory.
_WRAPPER = """
import json, os, subprocess, sys, time
out, err = open(sys.argv[1], 'wb'), open(sys.argv[2], 'wb')
t0 = time.perf_counter()
proc = subprocess.Popen(sys.argv[3:], stdout=out, stderr=err)
_, status, usage = os.wait4(proc.pid, 0)
wall = time.perf_counter() - t0
print(json.dumps({'wall_s': wall, 'returncode': os.waitstatus_to_exitcode(status), 'max_rss_kb': usage.ru_maxrss}))
"""


def run_child(cmd: Sequence[str], *, env: dict[str, str] | None = None, cwd: str | os.PathLike | None = None,
              timeout_s: float = 1800.0) -> dict[str, Any]:
    """Run ``cmd`` as a fresh process; its wall time, peak RSS and exit status.

    The peak RSS is the command's own (``os.wait4`` in a small wrapper
    process, see ``_WRAPPER``), in MB (10^6 bytes); the wall time is measured
    around the command alone. The last 2,000 characters of its stdout and
    stderr are returned. The run is abandoned after ``timeout_s``.
    """
    with tempfile.TemporaryDirectory(prefix="wmel-child-") as tmp:
        out_path, err_path = Path(tmp) / "stdout", Path(tmp) / "stderr"
        wrapper = subprocess.run([sys.executable, "-c", _WRAPPER, str(out_path), str(err_path), *map(str, cmd)],
                                 capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout_s)
        import json

        try:
            measured = json.loads(wrapper.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise RuntimeError(f"the child-process wrapper failed: {wrapper.stderr.strip()[-500:]}") from None

        def tail(p: Path) -> str:
            return p.read_text(errors="replace")[-2000:] if p.exists() else ""

        return {
            "command": " ".join(shlex.quote(str(c)) for c in cmd),
            "returncode": measured["returncode"],
            "wall_s": measured["wall_s"],
            "max_rss_mb": measured["max_rss_kb"] * 1024 / 1e6,  # Linux: kilobytes
            "stdout_tail": tail(out_path),
            "stderr_tail": tail(err_path),
        }


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.pop("WMEL_JAX_CACHE_DIR", None)  # each child is told its cache explicitly
    env.setdefault("MUJOCO_GL", "disable")
    return env


def machine_info() -> dict[str, Any]:
    """CPU model, cores, RAM, library versions, the JAX device, date and command."""
    import jax
    import jaxlib
    import mujoco

    cpu = platform.processor() or platform.machine()
    ram_gb = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                ram_gb = int(line.split()[1]) * 1024 / GB
                break
    except OSError:
        pass
    try:
        import torch

        torch_version = torch.__version__
    except ImportError:
        torch_version = None
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "ram_gb": ram_gb,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "mujoco": mujoco.__version__,
        "torch": torch_version,
        "numpy": np.__version__,
        "device": ", ".join(str(d) for d in jax.devices()),
        "backend": jax.default_backend(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "loadavg_start": list(os.getloadavg()),
    }


def matmul_peak(n: int, runs: int = 7, torch_threads: int | None = None) -> dict[str, Any]:
    """The machine's float32 matmul rate (GFLOP/s): numpy, jax (jit) and torch, n x n x n, best of ``runs``."""
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    flop = 2.0 * n**3

    def rate(fn: Callable[[], Any]) -> float:
        fn()
        return flop / min(_timed(fn)[1] for _ in range(runs)) / 1e9  # a peak: the best run

    out = {"n": n, "flop": flop, "numpy_gflops": rate(lambda: a @ b)}
    ja, jb = jnp.asarray(a), jnp.asarray(b)
    dot = jax.jit(jnp.matmul)
    out["jax_gflops"] = rate(lambda: dot(ja, jb).block_until_ready())
    try:
        import torch

        previous = torch.get_num_threads()
        if torch_threads:
            torch.set_num_threads(torch_threads)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        out["torch_gflops"] = rate(lambda: ta @ tb)
        torch.set_num_threads(previous)
    except ImportError:
        out["torch_gflops"] = None
    out["peak_gflops"] = max(v for k, v in out.items() if k.endswith("_gflops") and v)
    return out


def layer_shapes_peak(params: dict[str, Any], rows: int, runs: int = 7) -> dict[str, float]:
    """The matmul rate (GFLOP/s) at the model's own layer shapes: the ceiling for its network work.

    A jitted chain of plain float32 matmuls, ``rows`` x (each linear layer's
    in x out), every network of the model once (encoder, dynamics, decoder,
    reward), no elementwise work: what XLA reaches on these skinny shapes,
    which sit far below a large square matmul's rate on a CPU.
    """
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    chains = []
    flop = 0.0
    for name in ("encoder", "dynamics", "decoder", "reward"):
        if name not in params:
            continue
        kernels = [leaf for path, leaf in jax.tree_util.tree_flatten_with_path(params[name])[0]
                   if getattr(path[-1], "key", None) == "kernel"]
        if kernels:
            # float32 explicitly: with jax_enable_x64 a float64 scale would promote the weights.
            chains.append([jnp.asarray(rng.standard_normal(k.shape) / np.sqrt(k.shape[0]), jnp.float32)
                           for k in kernels])
            flop += sum(2.0 * rows * k.shape[0] * k.shape[1] for k in kernels)
    inputs = [jnp.asarray(rng.standard_normal((rows, c[0].shape[0])), jnp.float32) for c in chains]

    @jax.jit
    def run(inputs, chains):
        outs = []
        for x, ws in zip(inputs, chains):
            for w in ws:
                x = x @ w
            outs.append(jnp.sum(x))
        return outs

    jax.block_until_ready(run(inputs, chains))
    seconds = min(_timed(lambda: jax.block_until_ready(run(inputs, chains)))[1] for _ in range(runs))  # best run
    return {"rows": rows, "gflop": flop / 1e9, "gflops": flop / seconds / 1e9}


def network_flops(params: dict[str, Any]) -> dict[str, float]:
    """FLOPs of one forward pass of each network: 2 x in x out per linear layer (``kernel`` leaves).

    Elementwise work (LayerNorm, Mish, SimNorm) is not counted. Returns
    {"encoder", "dynamics", "decoder", "reward"} (0 for a network the model lacks).
    """
    import jax

    out = {}
    for name in ("encoder", "dynamics", "decoder", "reward"):
        total = 0.0
        if name in params:
            for path, leaf in jax.tree_util.tree_flatten_with_path(params[name])[0]:
                if getattr(path[-1], "key", None) == "kernel":
                    total += 2.0 * float(np.prod(leaf.shape[-2:]))
        out[name] = total
    return out


def observation_metrics_flops(flops: dict[str, float], n: int, a: int, k: int) -> float:
    """FLOPs M1/M2/M3 alone need (all the reference computes): encode once per state, next + decode
    per (s, a), and the k-step observation rollout (encode + next + decode per step and state)."""
    e, d, dec = flops["encoder"], flops["dynamics"], flops["decoder"]
    return n * e + n * a * (d + dec) + k * n * (e + d + dec)


def kernel_flops(flops: dict[str, float], n: int, a: int, k: int) -> float:
    """FLOPs of every metric's network work for n states, a actions, k steps (the default model kernel).

    Per state: encode(s); per (s, a): next, encode(O(s, a)), decode and
    reward when present; per (step, state): the latent rollout's next and
    encode of the oracle's trajectory; with a decoder, the observation
    rollout's encode + next + decode. The batched arm with ``latent=True``
    computes exactly the same networks for an adapter model;
    :func:`observation_metrics_flops` is the ``--metrics observation`` kernel's.
    """
    e, d, dec, r = flops["encoder"], flops["dynamics"], flops["decoder"], flops["reward"]
    total = n * e + n * a * (d + e + r + dec) + k * n * (d + e)
    if dec:
        total += k * n * (e + d + dec)
    return total


# --------------------------------------------------------------------------- #
# Models for the run (torch mirror -> .pt -> converted)
# --------------------------------------------------------------------------- #


@dataclasses.dataclass
class BenchModel:
    label: str
    pt: Path
    converted: Path
    size: int


def _default_actions(task: str) -> np.ndarray:
    from wmel_jax.oracle import make_oracle

    return np.asarray(make_oracle(task).actions, np.float64)


def build_models(plan: Plan, folder: Path) -> dict[str, Any]:
    """The checkpoints the plan needs: {(task, size): BenchModel, "sweep": [...], "upstream": BenchModel}.

    Size 1: the shipped example ("good") models. Other sizes: seeded random
    adapters of the TD-MPC2 layout (decoder 256 wide). Sweep: seeded random
    adapters of the size-1 example architecture (decoder 128), so the sweep
    and the size-1 measurement share one compiled kernel. Upstream: a seeded
    random upstream-layout size-1 agent, converted with frame_skip 1 so it
    shares the adapter models' oracle problem.
    """
    from wmel_jax.converters import tdmpc2_torch as T
    from wmel_jax.converters.convert import convert_checkpoint
    from wmel_jax.demo import EXAMPLES_DIR

    def save(model: Any, task: str, name: str, size: int) -> BenchModel:
        obs_dim, action_dim = TASK_DIMS[task]
        actions = _default_actions(task)
        kw = (dict(action_levels=actions[:, 0].tolist()) if action_dim == 1 else dict(action_set=actions.tolist()))
        pt = folder / f"{name}.pt"
        T.save_adapter(model, pt, meta={"frame_skip": 1, "tdmpc2_model_size": size, "task": task}, **kw)
        return BenchModel(name, pt, convert_checkpoint(pt, folder / f"{name}.safetensors", env=task), size)

    out: dict[Any, Any] = {}
    for task, size, _ in plan.configs:
        if (task, size) in out:
            continue
        if size == 1:
            stem = EXAMPLES_DIR / f"{task}-good"
            out[(task, size)] = BenchModel(f"{task}-good (example)", stem.with_suffix(".pt"),
                                           stem.with_suffix(".safetensors"), 1)
        else:
            obs_dim, action_dim = TASK_DIMS[task]
            model = T.build_adapter(size, obs_dim, action_dim, seed=size, decoder_hidden=256)
            out[(task, size)] = save(model, task, f"{task}-size{size}", size)
    if plan.sweep:
        task, count, _ = plan.sweep
        obs_dim, action_dim = TASK_DIMS[task]
        out["sweep"] = [save(T.build_adapter(1, obs_dim, action_dim, seed=100 + i, decoder_hidden=128), task,
                             f"{task}-sweep{i}", 1) for i in range(count)]
    if plan.upstream:
        task, _ = plan.upstream
        obs_dim, action_dim = TASK_DIMS[task]
        pt = folder / f"{task}-upstream1.pt"
        T.save_upstream(T.build_upstream(1, obs_dim, action_dim, seed=0), pt)
        out["upstream"] = BenchModel(f"{task}-upstream size 1 (random)", pt,
                                     convert_checkpoint(pt, folder / f"{task}-upstream1.safetensors",
                                                        env=task, frame_skip=1), 1)
    return out


# --------------------------------------------------------------------------- #
# The arms
# --------------------------------------------------------------------------- #


class ReferenceArm:
    """The per-sample reference path for one task: dm_control oracle built once, models batch-of-1."""

    def __init__(self, task: str, actions: np.ndarray, sequence: np.ndarray):
        from wmel_jax.benchmarks.reference import dm_control_oracle

        self.task = task
        self.oracle_step, self.score, _ = dm_control_oracle(task, 1)
        self.actions = [tuple(float(x) for x in row) for row in actions]
        self.sequence = [tuple(float(x) for x in row) for row in sequence]
        self._steps: dict[Path, Any] = {}  # loaded once: loading is not the reference's per-state cost

    def seconds(self, pt: Path, states: np.ndarray) -> tuple[float, dict[str, Any]]:
        """Seconds for M1/M2/M3 of ``pt`` on ``states`` (torch with 1 thread, as the reference runs)."""
        import torch

        from wmel_jax.benchmarks.reference import adapter_step, load_adapter, reference_metrics

        if pt not in self._steps:
            self._steps[pt] = adapter_step(load_adapter(pt)[0])
        model_step = self._steps[pt]
        rows = [tuple(float(x) for x in s) for s in states]
        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            metrics, seconds = _timed(lambda: reference_metrics(rows, self.actions, self.sequence,
                                                                self.oracle_step, model_step, self.score))
        finally:
            torch.set_num_threads(previous)
        return seconds, metrics


def _ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or den <= 0:
        return None
    return num / den


def _agreement(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, float | None]:
    def rel(key: str) -> float | None:
        a, b = ours.get(key), theirs.get(key)
        if a is None or b is None:
            return None
        return float(np.max(np.abs(np.asarray(a) - np.asarray(b)) / np.maximum(np.abs(np.asarray(b)), 1e-30)))

    m3a, m3b = ours.get("m3_action_agreement"), theirs.get("m3_action_agreement")
    return {
        "m1_rel": rel("m1_l2_onestep"),
        "m2_curve_rel": rel("m2_curve"),
        "m3_abs": None if m3a is None or m3b is None else abs(m3a - m3b),
    }


def _throughput(seconds: float | None, n: int, a: int) -> dict[str, float | None]:
    if not seconds:
        return {"states_per_s": None, "evals_per_s": None}
    return {"states_per_s": n / seconds, "evals_per_s": n * a / seconds}


def _padded(n: int, chunk: int) -> int:
    size = min(n, chunk)
    return -(-n // size) * size


def bench_task(task: str, plan: Plan, models: dict[Any, Any], peak: dict[str, Any], torch_threads: Sequence[int],
               threads: int, chunk: int, compiled: dict[str, float]) -> tuple[list[dict], dict[str, Any]]:
    """Every (size, N) configuration of one task, plus the sweep and upstream runs when they are this task's.

    Returns (config rows, extras {"sweep": ..., "upstream": ..., "sampling_s": ...}).
    ``torch_threads``: the thread counts the batched arm's torch is timed
    with in every repetition; its time is the best setting's median (on a
    machine shared with other work, torch's OpenMP threads can wait for a
    descheduled peer, and the best alternative a user could write would pick
    the faster setting). ``compiled`` collects compile seconds by kernel
    shape, so later measurements on an already compiled shape can state what
    they reuse.
    """
    import torch

    import wmel_jax
    from wmel_jax.benchmarks.batched import NativeTaskOracle, TorchAdapter, native_targets, torch_metrics
    from wmel_jax.evaluate import make_problem, model_metrics, oracle_targets

    configs = [c for c in plan.configs if c[0] == task]
    sweep = plan.sweep if plan.sweep and plan.sweep[0] == task else None
    upstream = plan.upstream if plan.upstream and plan.upstream[0] == task else None
    ns = sorted({n for _, _, n in configs} | ({sweep[2]} if sweep else set()) | ({upstream[1]} if upstream else set()))
    sizes = sorted({s for _, s, _ in configs})
    actions = _default_actions(task)
    n_max = max(ns)
    full, sampling_s = _timed(lambda: make_problem(task, actions, n_states=n_max, k_steps=K_STEPS, seed=SEED))
    _say(f"[{task}] sampled {n_max} states with wmel-jax in {sampling_s:.1f} s (compile included); "
         f"every N uses a prefix of them")
    sequence = np.asarray(full.action_sequence)
    a, k = actions.shape[0], sequence.shape[0]
    extras: dict[str, Any] = {"sampling_s": sampling_s, "n_sampled": n_max, "states": np.asarray(full.states),
                              "sequence": sequence}

    # The reference: seconds per state on a subset, timed in every repetition beside the other arms
    # (its cost per state does not depend on N, so the time scales linearly).
    ref = ReferenceArm(task, actions, sequence)

    wmel = {size: wmel_jax.load(models[(task, size)].converted) for size in sizes}
    torch_models = {size: TorchAdapter(models[(task, size)].pt) for size in sizes}
    flops = {size: network_flops(wmel[size].params) for size in sizes}
    shape_peak = {size: layer_shapes_peak(wmel[size].params, min(n_max, chunk) * a) for size in sizes}
    for size in sizes:
        _say(f"[{task}] size {size}: plain matmuls at the model's layer shapes ({shape_peak[size]['rows']} rows) "
             f"run at {shape_peak[size]['gflops']:.0f} GFLOP/s")
    rows: list[dict] = []
    chosen_threads: dict[int, int] = {}  # size -> the faster torch thread count at the last N
    problems: dict[int, Any] = {}
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(max(torch_threads))
    oracle = NativeTaskOracle(task, 1, threads)
    try:
        for n in ns:
            # The prefix keeps its rollout episodes (the metrics' intervals resample them, as a sampled run's).
            problem = make_problem(task, actions, states=full.states[:n], action_sequence=sequence,
                                   episode_ids=full.episode_ids[:n])
            problems[n] = problem
            states = np.asarray(problem.states)
            n_sizes = [s for s in sizes if (task, s, n) in configs]
            # Cold: the first call on this shape compiles (in-process cache only).
            targets, oracle_first = _timed(lambda: oracle_targets(problem, chunk))
            oracle_compile = targets.timings["oracle_compile_s"]
            compiled.setdefault(f"oracle/{task}/{min(n, chunk)}", oracle_compile)
            model_first, model_compile, ours, all_compile = {}, {}, {}, {}
            for size in n_sizes:
                (ours[size], t), model_first[size] = _timed(
                    lambda: model_metrics(wmel[size], problem, targets, chunk, spaces=COMPARED_SPACES))
                model_compile[size] = t["model_compile_s"]
                compiled.setdefault(f"model/{task}/size{size}/{min(n, chunk)}", model_compile[size])
                # The default eval's kernel (every metric), compiled here, timed warm below.
                all_compile[size] = model_metrics(wmel[size], problem, targets, chunk)[1]["model_compile_s"]
                compiled.setdefault(f"model-all/{task}/size{size}/{min(n, chunk)}", all_compile[size])
            # Batched: one untimed call first (torch's allocator, the rollout pool), as wmel-jax gets its compile.
            nat, batched_first = _timed(lambda: native_targets(oracle, states, actions, sequence))
            theirs, batched_model_first = {}, {}
            for size in n_sizes:
                torch.set_num_threads(chosen_threads.get(size, max(torch_threads)))
                theirs[size], batched_model_first[size] = _timed(
                    lambda: torch_metrics(torch_models[size], task, states, actions, sequence, nat, chunk,
                                          latent=False))
            torch.set_num_threads(max(torch_threads))
            # Warm, round-robin over the arms in every repetition.
            w_oracle, w_oracle_kernel, b_oracle, native_run = [], [], [], []
            subset = min(plan.reference_subset, n)
            r_per_state = {s: [] for s in n_sizes}
            # Linear scaling from 10k is judged on 10k runs taken in the same repetitions (drift cancels).
            base = SCALING_BASE_N if n > SCALING_BASE_N and SCALING_BASE_N in problems else None
            base_warm = {s: [] for s in n_sizes if base and (task, s, base) in configs}
            w_model = {s: [] for s in n_sizes}
            w_model_kernel = {s: [] for s in n_sizes}
            w_all, w_all_kernel = {s: [] for s in n_sizes}, {s: [] for s in n_sizes}
            b_model = {s: {th: [] for th in torch_threads} for s in n_sizes}
            qpos, qvel, _ = oracle.qpos_qvel_aux(states)
            one_step_start = oracle.native.states(np.repeat(qpos, a, axis=0), np.repeat(qvel, a, axis=0))
            one_step_ctrl = np.tile(actions, (n, 1))[:, None, :]
            traj_start = oracle.native.states(qpos, qvel)
            traj_ctrl = sequence[None]
            # Above 10k states a torch call takes tens of seconds: reuse the thread count chosen at a smaller N.
            live_threads = {size: [chosen_threads[size]] for size in n_sizes
                            if n > THREAD_TRIAL_MAX_N and size in chosen_threads}
            for rep in range(plan.runs if n_sizes else 0):  # an N only the sweep or upstream run needs: no rows
                targets, s = _timed(lambda: oracle_targets(problem, chunk))
                w_oracle.append(s)
                w_oracle_kernel.append(targets.timings["oracle_run_s"])
                nat, s = _timed(lambda: native_targets(oracle, states, actions, sequence))
                b_oracle.append(s)
                s1 = _timed(lambda: oracle.native.run(one_step_start, one_step_ctrl, 1))[1]
                s2 = _timed(lambda: oracle.native.run(traj_start, traj_ctrl, k))[1]
                native_run.append(s1 + s2)
                for size in n_sizes:
                    (_, t), s = _timed(lambda: model_metrics(wmel[size], problem, targets, chunk,
                                                             spaces=COMPARED_SPACES))
                    w_model[size].append(s)
                    w_model_kernel[size].append(t["model_run_s"])
                    (_, t), s = _timed(lambda: model_metrics(wmel[size], problem, targets, chunk))
                    w_all[size].append(s)
                    w_all_kernel[size].append(t["model_run_s"])
                    # Every thread count in every repetition, except one whose first call took over twice
                    # the best first call (torch's threads stalled by other work: each call costs seconds).
                    for th in torch_threads if rep == 0 and size not in live_threads else live_threads[size]:
                        torch.set_num_threads(th)
                        _, s = _timed(lambda: torch_metrics(torch_models[size], task, states, actions, sequence,
                                                            nat, chunk, latent=False))
                        b_model[size][th].append(s)
                    r_per_state[size].append(ref.seconds(models[(task, size)].pt, states[:subset])[0] / subset)
                    if size in base_warm:
                        def base_run() -> None:
                            t_base = oracle_targets(problems[base], chunk)
                            model_metrics(wmel[size], problems[base], t_base, chunk, spaces=COMPARED_SPACES)

                        base_warm[size].append(_timed(base_run)[1])
                    if size not in live_threads:
                        best_first = min(b_model[size][th][0] for th in torch_threads)
                        live_threads[size] = [th for th in torch_threads if b_model[size][th][0] <= 2 * best_first]
                    torch.set_num_threads(max(torch_threads))
            padded = _padded(n, chunk)
            oracle_steps = n * a + n * k  # frame_skip 1
            for size in n_sizes:
                per_state = _median(r_per_state[size])
                ref_s = per_state * n
                warm = _median(w_oracle) + _median(w_model[size])
                # Cold as a fresh process would see it: the first calls, plus the compile seconds of any kernel
                # shape an earlier configuration of this run compiled already (N = 10k and 100k share chunks).
                compile_o = compiled[f"oracle/{task}/{min(n, chunk)}"]
                compile_m = compiled[f"model/{task}/size{size}/{min(n, chunk)}"]
                cold = (oracle_first - oracle_compile + compile_o) + (model_first[size] - model_compile[size] + compile_m)
                by_threads = {th: _median(v) for th, v in b_model[size].items() if v}
                best_threads = min(live_threads[size], key=by_threads.get)  # the faster median
                chosen_threads[size] = best_threads
                batched_model = by_threads[best_threads]
                batched = _median(b_oracle) + batched_model
                kflop = observation_metrics_flops(flops[size], padded, a, k)
                tflop = observation_metrics_flops(flops[size], n, a, k)
                all_kflop = kernel_flops(flops[size], padded, a, k)
                row = {
                    "task": task, "size": size, "n_states": n, "n_actions": a, "k_steps": k,
                    "chunk_states": min(n, chunk), "model": models[(task, size)].label,
                    "reference": {"time_s": ref_s, "per_state_s": per_state, "extrapolated_from": subset,
                                  "runs": plan.runs, **_throughput(ref_s, n, a)},
                    "batched": {"time_s": batched, "oracle_s": _median(b_oracle), "model_s": batched_model,
                                "model_s_by_torch_threads": {str(th): v for th, v in by_threads.items()},
                                "first_call_s": batched_first + batched_model_first[size], "runs": plan.runs,
                                "torch_threads": best_threads, "mujoco_threads": threads,
                                **_throughput(batched, n, a)},
                    "wmel_jax": {"warm_s": warm, "oracle_s": _median(w_oracle), "model_s": _median(w_model[size]),
                                 "oracle_kernel_s": _median(w_oracle_kernel),
                                 "model_kernel_s": _median(w_model_kernel[size]),
                                 "cold_s": cold, "compile_s": compile_o + compile_m,
                                 "oracle_compile_s": compile_o, "model_compile_s": compile_m,
                                 "compiled_earlier_in_run": oracle_compile == 0.0 or model_compile[size] == 0.0,
                                 "runs": plan.runs, **_throughput(warm, n, a),
                                 "cold_states_per_s": n / cold,
                                 "all_metrics": {"warm_s": _median(w_oracle) + _median(w_all[size]),
                                                 "model_s": _median(w_all[size]),
                                                 "model_kernel_s": _median(w_all_kernel[size]),
                                                 "model_compile_s": all_compile[size],
                                                 "kernel_gflop": all_kflop / 1e9,
                                                 "kernel_gflop_per_s": all_kflop / _median(w_all_kernel[size]) / 1e9,
                                                 "note": "the default `wmel-jax eval` (latent metrics too), "
                                                         "same oracle answers"}},
                    "ratios": {"wmel_over_reference": _ratio(ref_s, warm),
                               "wmel_over_batched": _ratio(batched, warm),
                               "cold_wmel_over_reference": _ratio(ref_s, cold)},
                    "network": {"kernel_gflop": kflop / 1e9,
                                "kernel_gflop_per_s": kflop / _median(w_model_kernel[size]) / 1e9,
                                "fraction_of_peak": kflop / _median(w_model_kernel[size]) / 1e9 / peak["peak_gflops"],
                                "shape_peak_gflops": shape_peak[size]["gflops"],
                                "shape_peak_rows": shape_peak[size]["rows"],
                                "fraction_of_shape_peak": kflop / _median(w_model_kernel[size]) / 1e9
                                / shape_peak[size]["gflops"],
                                "torch_gflop_per_s": tflop / batched_model / 1e9,
                                "torch_fraction_of_peak": tflop / batched_model / 1e9 / peak["peak_gflops"],
                                "padded_states": padded},
                    "physics": {"steps": oracle_steps,
                                "oracle_steps_per_s": (padded * (a + k)) / _median(w_oracle_kernel),
                                "native_steps_per_s": oracle_steps / min(native_run),
                                "fraction_of_native": (padded * (a + k)) / _median(w_oracle_kernel)
                                / (oracle_steps / min(native_run))},
                    "agreement": _agreement(ours[size], theirs[size]),
                }
                if base_warm.get(size):
                    base_s = _median(base_warm[size])
                    row["wmel_jax"]["scaling"] = {"base_n": base, "base_warm_s": base_s,
                                                  "ratio_to_linear": warm / (base_s * n / base),
                                                  "note": "base runs interleaved with this N's runs"}
                rows.append(row)
                _say(_row_line(row))

            if sweep and n == sweep[2]:
                single = _find(rows, task=task, size=1, n_states=n)
                extras["sweep"] = _bench_sweep(task, plan, models["sweep"], problem, states, actions, sequence,
                                               ref, oracle, chunk, single, compiled)
            if upstream and n == upstream[1]:
                extras["upstream"] = _bench_upstream(task, plan, models["upstream"], problem, full, sequence,
                                                     chunk, compiled)
    finally:
        oracle.close()
        torch.set_num_threads(previous_threads)
    return rows, extras


def _row_line(r: dict) -> str:
    w, b, ref = r["wmel_jax"], r["batched"], r["reference"]
    return (f"[{r['task']}] size {r['size']:>2} N={r['n_states']:>6}: wmel-jax warm {w['warm_s']:.3f} s "
            f"(cold {w['cold_s']:.1f} s, compile {w['compile_s']:.1f} s), batched {b['time_s']:.3f} s, "
            f"reference {ref['time_s']:.1f} s (extrapolated from {ref['extrapolated_from']}); "
            f"x{r['ratios']['wmel_over_reference']:.1f} vs reference, x{r['ratios']['wmel_over_batched']:.2f} vs batched")


def _bench_sweep(task: str, plan: Plan, sweep_models: list[BenchModel], problem: Any, states: np.ndarray,
                 actions: np.ndarray, sequence: np.ndarray, ref: ReferenceArm, oracle: Any, chunk: int,
                 single: dict | None, compiled: dict[str, float]) -> dict[str, Any]:
    """Ten checkpoints of one architecture on one problem: the oracle once, every model after it.

    wmel-jax is measured (``plan.sweep_runs`` passes). The batched arm is
    measured too in full mode, with the torch thread count that was faster
    on the size-1 single-checkpoint measurement of this N (``single``); in
    quick mode it is estimated from that measurement as oracle + checkpoints x
    model (the checkpoints differ only in their weights), and says so.
    """
    import torch

    import wmel_jax
    from wmel_jax.benchmarks.batched import TorchAdapter, native_targets, torch_metrics
    from wmel_jax.evaluate import model_metrics, oracle_targets

    n = problem.n_states
    a = actions.shape[0]
    count = len(sweep_models)
    wmel = [wmel_jax.load(m.converted) for m in sweep_models]
    measure_batched = plan.mode == "full" or single is None
    torch_models = [TorchAdapter(m.pt) for m in sweep_models] if measure_batched else []
    threads = single["batched"]["torch_threads"] if single else torch.get_num_threads()
    passes_w, passes_b, first_compile = [], [], None
    m = min(plan.sweep_reference_subset, n)
    ref_passes: list[float] = []
    ref_seconds: list[list[float]] = []
    model_s_w: list[list[float]] = []
    model_s_b: list[list[float]] = []
    for _ in range(plan.sweep_runs):
        t0 = time.perf_counter()
        targets = oracle_targets(problem, chunk)
        per = []
        compile_s = 0.0
        for model in wmel:
            (_, t), s = _timed(lambda: model_metrics(model, problem, targets, chunk, spaces=COMPARED_SPACES))
            compile_s += t["model_compile_s"]
            per.append(s)
        passes_w.append(time.perf_counter() - t0)
        model_s_w.append(per)
        if first_compile is None:
            first_compile = compile_s + targets.timings["oracle_compile_s"]
        if measure_batched:
            previous = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                t0 = time.perf_counter()
                nat = native_targets(oracle, states, actions, sequence)
                per = []
                for model in torch_models:
                    _, s = _timed(lambda: torch_metrics(model, task, states, actions, sequence, nat, chunk,
                                                        latent=False))
                    per.append(s)
                passes_b.append(time.perf_counter() - t0)
                model_s_b.append(per)
            finally:
                torch.set_num_threads(previous)
        # The reference, each checkpoint on the same subset, in the same pass.
        per = [ref.seconds(mod.pt, states[:m])[0] for mod in sweep_models]
        ref_seconds.append(per)
        ref_passes.append(sum(per))
    ref_total = _median(ref_passes) * n / m
    warm = _median(passes_w)
    if measure_batched:
        batched = {"time_s": _median(passes_b), "model_s": [_median(x) for x in zip(*model_s_b)],
                   "estimated_from_single_checkpoint": False}
    else:
        batched = {"time_s": single["batched"]["oracle_s"] + count * single["batched"]["model_s"],
                   "model_s": None, "estimated_from_single_checkpoint": True}
    shape = min(n, chunk)
    shared = (compiled.get(f"oracle/{task}/{shape}", 0.0) + compiled.get(f"model/{task}/size1/{shape}", 0.0))
    out = {
        "task": task, "n_states": n, "n_actions": a, "n_checkpoints": count, "size": 1,
        "passes": plan.sweep_runs,
        "reference": {"time_s": ref_total, "extrapolated_from": m,
                      "per_checkpoint_subset_s": [_median(x) for x in zip(*ref_seconds)],
                      **_throughput(ref_total / count, n, a)},
        "batched": {**batched, "torch_threads": threads, **_throughput(batched["time_s"] / count, n, a)},
        "wmel_jax": {"warm_s": warm, "model_s": [_median(x) for x in zip(*model_s_w)],
                     "compile_s_in_sweep": first_compile,
                     "cold_s": warm + (first_compile or 0.0) + shared,
                     "compile_s_shared": shared,
                     **_throughput(warm / count, n, a)},
        "ratios": {"wmel_over_reference": _ratio(ref_total, warm), "wmel_over_batched": _ratio(batched["time_s"], warm)},
        "note": ("throughputs are per checkpoint (states x checkpoints / s); the architecture is the size-1 "
                 "example's, so the kernel compiled for the size-1 measurement serves every checkpoint; "
                 "cold_s adds the compile seconds it reuses"),
    }
    est = " (estimated from the single-checkpoint run)" if batched["estimated_from_single_checkpoint"] else ""
    _say(f"[{task}] sweep of {count} checkpoints at N={n}: wmel-jax {warm:.2f} s, batched "
         f"{batched['time_s']:.2f} s{est}, reference {ref_total:.0f} s (extrapolated from {m} states each); "
         f"x{out['ratios']['wmel_over_reference']:.1f} vs reference, x{out['ratios']['wmel_over_batched']:.2f} vs batched")
    return out


def _bench_upstream(task: str, plan: Plan, model: BenchModel, problem: Any, full: Any, sequence: np.ndarray,
                    chunk: int, compiled: dict[str, float]) -> dict[str, Any]:
    """One upstream-layout (decoder-less) checkpoint: latent metrics + reward ranking, and its per-sample reference."""
    import wmel_jax
    from wmel_jax.benchmarks.reference import run_reference_latent
    from wmel_jax.evaluate import model_metrics, oracle_targets

    n = problem.n_states
    a = problem.actions.shape[0]
    wm = wmel_jax.load(model.converted)
    targets = oracle_targets(problem, chunk)
    (metrics, t), first = _timed(lambda: model_metrics(wm, problem, targets, chunk))
    model_compile = t["model_compile_s"]
    oracle_w, model_w = [], []
    for _ in range(plan.runs):
        targets, s = _timed(lambda: oracle_targets(problem, chunk))
        oracle_w.append(s)
        _, s = _timed(lambda: model_metrics(wm, problem, targets, chunk))
        model_w.append(s)
    warm = _median(oracle_w) + _median(model_w)
    oracle_compile = compiled.get(f"oracle/{task}/{min(n, chunk)}", 0.0)
    m = min(plan.sweep_reference_subset, n)
    ref = run_reference_latent(model.pt, task, states=problem.states[:m], action_sequence=sequence,
                               actions=problem.actions, frame_skip=1)
    ref_s = ref["timings"]["metrics_s"] * n / m
    out = {
        "task": task, "n_states": n, "n_actions": a, "schema": "upstream (no decoder)", "size": 1,
        "model": model.label,
        "metrics_computed": sorted(k for k, v in metrics.items() if v is not None and k != "unavailable"),
        "wmel_jax": {"warm_s": warm, "oracle_s": _median(oracle_w), "model_s": _median(model_w),
                     "model_compile_s": model_compile, "oracle_compile_s": oracle_compile,
                     "cold_s": _median(oracle_w) + first + oracle_compile, **_throughput(warm, n, a)},
        "reference_latent": {"time_s": ref_s, "extrapolated_from": m, **_throughput(ref_s, n, a)},
        "ratios": {"wmel_over_reference": _ratio(ref_s, warm)},
    }
    _say(f"[{task}] upstream checkpoint N={n}: wmel-jax warm {warm:.3f} s (model compile {model_compile:.1f} s), "
         f"per-sample latent reference {ref_s:.1f} s (extrapolated from {m}); x{out['ratios']['wmel_over_reference']:.1f}")
    return out


def bench_cold_processes(plan: Plan, model: Path, task: str, folder: Path) -> list[dict]:
    """``wmel-jax eval MODEL --env TASK`` (defaults: N = 150) in fresh processes: empty, warm and no cache."""
    rows = []
    cache = folder / "jax-cache"
    env = _child_env()
    for kind in plan.cold_process:
        report = folder / f"cold-{kind}.json"
        cmd = [sys.executable, "-m", "wmel_jax", "eval", str(model), "--env", task, "-o", str(report)]
        cmd += ["--no-cache"] if kind == "off" else ["--cache-dir", str(cache)]
        child = run_child(cmd, env=env, cwd=REPO_ROOT)
        row = {"cache": {"empty": "empty persistent cache", "warm": "warm persistent cache (same dir again)",
                         "off": "--no-cache"}[kind],
               "kind": kind, "n_states": 150, **child, "timings": _report_timings(report)}
        rows.append(row)
        _say(f"[cold process] wmel-jax eval, {row['cache']}: {child['wall_s']:.1f} s wall, "
             f"peak RSS {child['max_rss_mb']:.0f} MB, exit {child['returncode']}")
    return rows


def _report_timings(path: Path) -> dict[str, float] | None:
    import json

    try:
        return json.loads(path.read_text()).get("timings")
    except (OSError, ValueError):
        return None


def bench_memory(plan: Plan, models: dict[Any, Any], states_for: Callable[[str, int], np.ndarray],
                 sequence_for: Callable[[str], np.ndarray], folder: Path) -> list[dict]:
    """Peak RSS of ``wmel-jax eval`` at large N, each in a fresh process (no persistent cache)."""
    rows = []
    env = _child_env()
    for task, size, n in plan.memory:
        states = folder / f"states-{task}-{n}.npy"
        seq = folder / f"sequence-{task}.npy"
        np.save(states, states_for(task, n), allow_pickle=False)
        np.save(seq, sequence_for(task), allow_pickle=False)
        report = folder / f"memory-{task}-{size}-{n}.json"
        cmd = [sys.executable, "-m", "wmel_jax", "eval", str(models[(task, size)].converted), "--env", task,
               "--states", str(states), "--action-sequence", str(seq), "--no-cache", "-o", str(report)]
        child = run_child(cmd, env=env, cwd=REPO_ROOT)
        row = {"task": task, "size": size, "n_states": n, **child, "timings": _report_timings(report)}
        rows.append(row)
        _say(f"[memory] wmel-jax eval {task} size {size} N={n}: peak RSS {child['max_rss_mb']:.0f} MB, "
             f"{child['wall_s']:.1f} s wall, exit {child['returncode']}")
    return rows


# --------------------------------------------------------------------------- #
# Targets
# --------------------------------------------------------------------------- #


def _find(rows: Sequence[dict], **keys: Any) -> dict | None:
    for r in rows:
        if all(r.get(k) == v for k, v in keys.items()):
            return r
    return None


def evaluate_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 5's targets from a result dict: each {id, target, threshold, value, status, detail}.

    status: "PASS", "FAIL", or "not measured" (with "in quick mode" when the
    mode is quick). Reads ``configs``, ``sweep``, ``cold_process``,
    ``memory`` and ``peak`` as :func:`run` writes them.
    """
    quick = result.get("mode") == "quick"
    configs = result.get("configs") or []
    peak = (result.get("peak") or {}).get("peak_gflops")
    out: list[dict[str, Any]] = []

    def add(tid: str, target: str, threshold: float, value: float | None, ok: Callable[[float], bool],
            detail: str = "") -> None:
        if value is None:
            status = "not measured in quick mode" if quick else "not measured"
        else:
            status = "PASS" if ok(value) else "FAIL"
        out.append({"id": tid, "target": target, "threshold": threshold, "value": value, "status": status,
                    "detail": detail})

    row = _find(configs, task=TARGET_TASK, size=1, n_states=10_000)
    ceiling = ""
    if row and peak:
        nw = row["network"]
        ref_s, oracle_s = row["reference"]["time_s"], row["wmel_jax"]["oracle_s"]
        shape = nw.get("shape_peak_gflops")
        ceiling = (f"; the model kernel ({nw['kernel_gflop']:.0f} GFLOP: M1/M2/M3, as the reference) runs at "
                   f"{nw['kernel_gflop_per_s']:.0f} GFLOP/s = {100 * nw['fraction_of_peak']:.0f}% of the large-matmul "
                   f"peak ({peak:.0f} GFLOP/s)")
        if shape:
            best = nw["kernel_gflop"] / shape + oracle_s
            ceiling += (f" and {100 * nw['fraction_of_shape_peak']:.0f}% of plain matmuls at its own layer shapes "
                        f"({shape:.0f} GFLOP/s); at that rate, with the oracle as measured, the best possible is "
                        f"x{ref_s / best:.0f} vs reference")
        every = row["wmel_jax"].get("all_metrics")
        if every:
            ceiling += (f"; the default eval (latent metrics too, {every['kernel_gflop']:.0f} GFLOP) took "
                        f"{every['warm_s']:.3f} s, x{ref_s / every['warm_s']:.1f}")
    ratio = row["ratios"]["wmel_over_reference"] if row else None
    add("warm_10k_vs_reference", "warm, N = 10k, cartpole, size 1, one checkpoint: >= 40x the reference path",
        WARM_VS_REFERENCE_MIN, ratio, lambda v: v >= WARM_VS_REFERENCE_MIN,
        (f"wmel-jax {row['wmel_jax']['warm_s']:.3f} s vs reference {row['reference']['time_s']:.1f} s "
         f"(extrapolated from {row['reference']['extrapolated_from']} states)" + ceiling) if row else "")
    ratio = row["ratios"]["wmel_over_batched"] if row else None
    add("warm_10k_vs_batched", "warm, N = 10k, cartpole, size 1, one checkpoint: >= 1.3x batched torch + "
        "native MuJoCo", WARM_VS_BATCHED_MIN, ratio, lambda v: v >= WARM_VS_BATCHED_MIN,
        (f"wmel-jax {row['wmel_jax']['warm_s']:.3f} s (oracle {row['wmel_jax']['oracle_s']:.3f} + model "
         f"{row['wmel_jax']['model_s']:.3f}) vs batched {row['batched']['time_s']:.3f} s (mujoco.rollout "
         f"{row['batched']['oracle_s']:.3f} + torch {row['batched']['model_s']:.3f})") if row else "")
    sweep = result.get("sweep")
    ok_sweep = sweep and sweep.get("n_states") == 10_000 and sweep.get("n_checkpoints") == 10
    add("sweep_10k_vs_reference", "sweep of 10 checkpoints, N = 10k: >= 60x the reference",
        SWEEP_VS_REFERENCE_MIN, sweep["ratios"]["wmel_over_reference"] if ok_sweep else None,
        lambda v: v >= SWEEP_VS_REFERENCE_MIN,
        (f"wmel-jax {sweep['wmel_jax']['warm_s']:.2f} s vs reference {sweep['reference']['time_s']:.0f} s "
         f"(extrapolated from {sweep['reference']['extrapolated_from']} states per checkpoint)") if ok_sweep else "")
    cold = {c.get("kind"): c for c in result.get("cold_process") or [] if c.get("returncode") == 0}
    for kind, tid, limit, text in (
        ("empty", "eval_cold_empty_cache", COLD_EMPTY_CACHE_MAX_S,
         "wmel-jax eval, defaults (N = 150), cold process, empty cache: < 15 s"),
        ("warm", "eval_cold_warm_cache", COLD_WARM_CACHE_MAX_S,
         "wmel-jax eval, defaults (N = 150), cold process, warm cache: < 4 s"),
    ):
        c = cold.get(kind)
        detail = ""
        if c:
            t = c.get("timings") or {}
            detail = (f"wall {c['wall_s']:.1f} s (in the report: compile {t.get('compile_s', float('nan')):.1f} s, "
                      f"states {t.get('states_s', float('nan')):.1f} s, run {t.get('run_s', float('nan')):.2f} s)")
        add(tid, text, limit, c["wall_s"] if c else None, lambda v, lim=limit: v < lim, detail)
    mem = _find(result.get("memory") or [], size=1, n_states=100_000)
    if mem and mem.get("returncode") != 0:
        mem = None
    add("memory_100k", "N = 100k, size 1: peak memory < 4 GB", PEAK_MEMORY_100K_MAX_GB,
        mem["max_rss_mb"] / 1e3 if mem else None, lambda v: v < PEAK_MEMORY_100K_MAX_GB,
        f"peak RSS of a `wmel-jax eval` process on {mem['task']}" if mem else "")
    big = _find(configs, task=TARGET_TASK, size=1, n_states=100_000)
    small = _find(configs, task=TARGET_TASK, size=1, n_states=10_000)
    scaling = None
    detail = ""
    interleaved = (big or {}).get("wmel_jax", {}).get("scaling")
    if big and interleaved and interleaved.get("base_n") == 10_000:
        scaling = interleaved["ratio_to_linear"]
        detail = (f"warm {big['wmel_jax']['warm_s']:.2f} s at 100k vs {interleaved['base_warm_s']:.3f} s at 10k "
                  f"timed in the same repetitions (linear: {10 * interleaved['base_warm_s']:.2f} s)")
        if small:
            detail += f"; the separate 10k measurement gave {small['wmel_jax']['warm_s']:.3f} s"
    elif big and small:
        scaling = big["wmel_jax"]["warm_s"] / (10 * small["wmel_jax"]["warm_s"])
        detail = (f"warm {big['wmel_jax']['warm_s']:.2f} s at 100k vs {small['wmel_jax']['warm_s']:.3f} s at 10k "
                  f"(linear: {10 * small['wmel_jax']['warm_s']:.2f} s)")
    add("linear_100k", "N = 100k, size 1: time within 1.3x of linear scaling from N = 10k", LINEAR_SCALING_MAX,
        scaling, lambda v: v <= LINEAR_SCALING_MAX, detail)
    return out


# --------------------------------------------------------------------------- #
# Outputs
# --------------------------------------------------------------------------- #


def _f(x: float | None, fmt: str = ".3g") -> str:
    return "-" if x is None else format(x, fmt)


def markdown(result: dict[str, Any]) -> str:
    """The readable tables of a result dict."""
    m = result["machine"]
    peak = result["peak"]
    lines = [
        f"# wmel-jax bench ({result['mode']} mode"
        + (", only " + "; ".join(f"{k} {' '.join(map(str, v))}" for k, v in result["filters"].items())
           if result.get("filters") else "") + ")",
        "",
        f"`{result['command']}`  ",
        f"{m['cpu']}, {m['cores']} cores, {_f(m.get('ram_gb'), '.0f')} GB RAM; device: {m['device']}; "
        f"jax {m['jax']}, jaxlib {m['jaxlib']}, mujoco {m['mujoco']}, torch {m.get('torch')}; {m['date']}; "
        f"load average (1, 5, 15 min) at start {', '.join(f'{v:.1f}' for v in m.get('loadavg_start', []))}"
        + (f", at end {', '.join(f'{v:.1f}' for v in m['loadavg_end'])}" if m.get("loadavg_end") else "")
        + f" ({m['cores']} cores).  ",
        f"Wall time of the whole run: {result['wall_s']:.0f} s"
        + (f" ({', '.join(f'{k[:-2]} {v:.0f} s' for k, v in result['phases_s'].items())}; of which in-process "
           f"compilation {sum((result.get('compile_s') or {}).values()):.0f} s and state sampling, compile "
           f"included, {sum(v['seconds'] for v in (result.get('sampling') or {}).values()):.0f} s)"
           if result.get("phases_s") else "")
        + ". Timings on a shared machine are noisy: the ratios, measured in one run with the arms taking turns, "
        "are what count.",
        "",
        "Arms: **reference** = per-sample path (torch batch-of-1, dm_control one state at a time), timed on a "
        "subset of the states and scaled linearly to N (column *ref. from*); **batched** = batched torch "
        f"(timed with {' and '.join(map(str, result['torch_threads_tried']))} thread(s) in every repetition, the "
        "faster median counts; a count whose first call took over twice the best is dropped; above N = 10k the "
        "count chosen at 10k is reused) + native `mujoco.rollout` "
        f"({m['cores']} threads), the same metrics; every arm computes M1/M2/M3, what the reference computes "
        "(wmel-jax: `--metrics observation`; *default eval* is wmel-jax's warm time with every metric, the latent "
        "ones too, on the same oracle answers: not part of the ratios); **wmel-jax** warm = median of "
        f"{result['plan']['runs']} runs "
        "after compilation, cold = the first call with its compilation (in-process, no persistent cache; a kernel "
        "shape compiled earlier in the run, e.g. the 4096-state chunk N = 10k and 100k share, is counted with its "
        "compile time). The states are given to every arm: state sampling is not in these times.",
        "",
        "## Single checkpoint",
        "",
        "| task | size | N | reference s | ref. from | batched s | wmel-jax warm s | wmel-jax cold s | compile s "
        "| default eval warm s | states/s wmel-jax | (s,a) evals/s wmel-jax | states/s batched | states/s reference "
        "| wmel-jax / reference | wmel-jax / batched |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["configs"]:
        w, b, ref = r["wmel_jax"], r["batched"], r["reference"]
        lines.append(
            f"| {r['task']} | {r['size']} | {r['n_states']} | {ref['time_s']:.3g} | {ref['extrapolated_from']} "
            f"| {b['time_s']:.3g} | {w['warm_s']:.3g} | {w['cold_s']:.3g} | {w['compile_s']:.3g} "
            f"| {_f((w.get('all_metrics') or {}).get('warm_s'))} "
            f"| {w['states_per_s']:,.0f} | {w['evals_per_s']:,.0f} | {b['states_per_s']:,.0f} "
            f"| {ref['states_per_s']:,.0f} | {_f(r['ratios']['wmel_over_reference'], '.1f')} "
            f"| {_f(r['ratios']['wmel_over_batched'], '.2f')} |"
        )
    s = result.get("sweep")
    if s:
        lines += [
            "",
            f"## Sweep: {s['n_checkpoints']} checkpoints of one architecture ({s['task']}, size {s['size']}, "
            f"N = {s['n_states']})",
            "",
            "The oracle's answers are computed once and shared by every checkpoint (wmel-jax and batched); the "
            "reference recomputes them per checkpoint, as it does. Throughputs are per checkpoint-state.",
            "",
            "| arm | seconds | ref. from | states x checkpoints / s | wmel-jax / arm |",
            "|---|---:|---:|---:|---:|",
            f"| reference | {s['reference']['time_s']:.4g} | {s['reference']['extrapolated_from']} "
            f"| {s['reference']['states_per_s']:,.0f} | {_f(s['ratios']['wmel_over_reference'], '.1f')} |",
            f"| batched{' (estimated: oracle + checkpoints x one model)' if s['batched']['estimated_from_single_checkpoint'] else ''} "
            f"| {s['batched']['time_s']:.4g} | | {s['batched']['states_per_s']:,.0f} "
            f"| {_f(s['ratios']['wmel_over_batched'], '.2f')} |",
            f"| wmel-jax warm | {s['wmel_jax']['warm_s']:.4g} | | {s['wmel_jax']['states_per_s']:,.0f} | 1 |",
            f"| wmel-jax cold | {s['wmel_jax']['cold_s']:.4g} | | | |",
        ]
    u = result.get("upstream")
    if u:
        lines += [
            "",
            f"## Upstream-layout checkpoint ({u['task']}, size {u['size']}, no decoder, N = {u['n_states']})",
            "",
            f"Metrics: {', '.join(u['metrics_computed'])}.",
            "",
            "| arm | seconds | ref. from | states/s |",
            "|---|---:|---:|---:|",
            f"| per-sample latent reference | {u['reference_latent']['time_s']:.3g} "
            f"| {u['reference_latent']['extrapolated_from']} | {u['reference_latent']['states_per_s']:,.0f} |",
            f"| wmel-jax warm | {u['wmel_jax']['warm_s']:.3g} | | {u['wmel_jax']['states_per_s']:,.0f} |",
            f"| wmel-jax cold (model compile {u['wmel_jax']['model_compile_s']:.1f} s) | {u['wmel_jax']['cold_s']:.3g} "
            "| | |",
            "",
            f"wmel-jax / reference: {_f(u['ratios']['wmel_over_reference'], '.1f')}x.",
        ]
    if result.get("cold_process"):
        lines += ["", "## `wmel-jax eval` in a fresh process (defaults: N = 150)", "",
                  "| cache | wall s | peak RSS MB | compile s (report) | states s (report) | exit |",
                  "|---|---:|---:|---:|---:|---:|"]
        for c in result["cold_process"]:
            t = c.get("timings") or {}
            lines.append(f"| {c['cache']} | {c['wall_s']:.2f} | {c['max_rss_mb']:.0f} | {_f(t.get('compile_s'), '.2f')} "
                         f"| {_f(t.get('states_s'), '.2f')} | {c['returncode']} |")
        lines.append("")
        lines.append(f"Command: `{result['cold_process'][0]['command']}` (the cache flag varies).")
    if result.get("memory"):
        lines += ["", "## Peak memory of `wmel-jax eval` at large N (fresh process, no persistent cache)", "",
                  "| task | size | N | peak RSS MB | wall s | compile s | run s | exit |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for c in result["memory"]:
            t = c.get("timings") or {}
            lines.append(f"| {c['task']} | {c['size']} | {c['n_states']} | {c['max_rss_mb']:.0f} | {c['wall_s']:.1f} "
                         f"| {_f(t.get('compile_s'), '.1f')} | {_f(t.get('run_s'), '.2f')} | {c['returncode']} |")
    lines += [
        "",
        "## Fraction of the machine's peak",
        "",
        f"Matmul peak (float32, {peak['n']}^3, best run, the better of the run's start and end): numpy "
        f"{peak['numpy_gflops']:.0f}, jax {peak['jax_gflops']:.0f}, torch {_f(peak.get('torch_gflops'), '.0f')} "
        f"GFLOP/s; peak = {peak['peak_gflops']:.0f} GFLOP/s. "
        "Network FLOPs count 2 x in x out per linear layer (elementwise work not counted), on the states the "
        "kernel computes (the last chunk padded); *matmul at layer shapes* is a chain of plain matmuls with the "
        "model's own layer shapes and the kernel's row count (chunk x actions), the ceiling for such skinny "
        "products on this CPU. Physics: environment steps/s of the wmel-jax oracle kernel "
        "(one-step successors and k-step rollout, padded states) against native `mujoco.rollout` on all cores, "
        "same states and controls (a ratio above 1 means MJX beats C MuJoCo).",
        "",
        "| task | size | N | model kernel GFLOP | wmel-jax GFLOP/s | % of matmul peak | matmul at layer shapes "
        "GFLOP/s | % of that | torch GFLOP/s | torch % of peak | oracle steps/s | native steps/s | oracle / native |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["configs"]:
        nw, ph = r["network"], r["physics"]
        lines.append(
            f"| {r['task']} | {r['size']} | {r['n_states']} | {nw['kernel_gflop']:.3g} | {nw['kernel_gflop_per_s']:.0f} "
            f"| {100 * nw['fraction_of_peak']:.0f} | {_f(nw.get('shape_peak_gflops'), '.0f')} "
            f"| {_f(None if nw.get('fraction_of_shape_peak') is None else 100 * nw['fraction_of_shape_peak'], '.0f')} "
            f"| {nw['torch_gflop_per_s']:.0f} | {100 * nw['torch_fraction_of_peak']:.0f} "
            f"| {ph['oracle_steps_per_s']:,.0f} | {ph['native_steps_per_s']:,.0f} | {ph['fraction_of_native']:.2f} |"
        )
    lines += ["", "## Targets (issue 5)", ""]
    for t in result["targets"]:
        v = t["value"]
        lines.append(f"- **{t['status']}** {t['target']}: {'-' if v is None else f'{v:.3g}'}"
                     + (f" ({t['detail']})" if t["detail"] else ""))
    agree = [r["agreement"] for r in result["configs"]]
    worst = {k: max((a[k] for a in agree if a.get(k) is not None), default=None) for k in (agree[0] if agree else {})}
    if worst:
        lines += ["", "Batched arm vs wmel-jax, worst over the configurations: "
                  + ", ".join(f"{k} {_f(v, '.1e')}" for k, v in worst.items())
                  + " (parity tolerances: M1/M2 1e-4 relative, M3 0.005 absolute)."]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: str | os.PathLike) -> None:
    """A PNG: time vs N per arm (log-log), throughput, ratios, compile time, peak memory, fraction of peak."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from wmel_jax.fileio import atomic_output

    configs = result["configs"]
    fig, axes = plt.subplots(2, 3, figsize=(17, 10))
    colors = {"reference": "tab:red", "batched": "tab:blue", "wmel-jax warm": "tab:green",
              "wmel-jax cold": "tab:olive"}
    markers = {t: mk for t, mk in zip(TASKS, ("o", "s", "^"))}
    device = result["machine"]["device"]

    def series(task: str, size: int) -> list[dict]:
        return sorted((r for r in configs if r["task"] == task and r["size"] == size), key=lambda r: r["n_states"])

    groups = sorted({(r["task"], r["size"]) for r in configs})
    ax = axes[0, 0]
    for task, size in groups:
        rs = series(task, size)
        ns = [r["n_states"] for r in rs]
        for arm, values, style in (
            ("reference", [r["reference"]["time_s"] for r in rs], "--"),
            ("batched", [r["batched"]["time_s"] for r in rs], "-"),
            ("wmel-jax warm", [r["wmel_jax"]["warm_s"] for r in rs], "-"),
            ("wmel-jax cold", [r["wmel_jax"]["cold_s"] for r in rs], ":"),
        ):
            ax.plot(ns, values, style, marker=markers[task], color=colors[arm], alpha=0.4 + 0.6 * (size == 1))
    for arm, c in colors.items():
        ax.plot([], [], color=c, label=arm + (" (extrapolated)" if arm == "reference" else ""))
    for task, mk in markers.items():
        ax.plot([], [], mk, color="gray", label=task)
    ax.set(xscale="log", yscale="log", xlabel="N states", ylabel="seconds",
           title="time vs N per arm (faint: size > 1)")
    ax.legend(fontsize=7)

    ax = axes[0, 1]
    for task, size in groups:
        rs = series(task, size)
        ns = [r["n_states"] for r in rs]
        for arm, key in (("reference", "reference"), ("batched", "batched"), ("wmel-jax warm", "wmel_jax")):
            ax.plot(ns, [r[key]["evals_per_s"] for r in rs], marker=markers[task], color=colors[arm],
                    alpha=0.4 + 0.6 * (size == 1))
    ax.set(xscale="log", yscale="log", xlabel="N states", ylabel="(state, action) evaluations / s",
           title="throughput per arm")

    ax = axes[0, 2]
    for task, size in groups:
        rs = series(task, size)
        ns = [r["n_states"] for r in rs]
        ax.plot(ns, [r["ratios"]["wmel_over_reference"] for r in rs], marker=markers[task], color="tab:red",
                alpha=0.4 + 0.6 * (size == 1))
        ax.plot(ns, [r["ratios"]["wmel_over_batched"] for r in rs], marker=markers[task], color="tab:blue",
                alpha=0.4 + 0.6 * (size == 1))
    ax.axhline(WARM_VS_REFERENCE_MIN, color="tab:red", lw=0.8, ls=":")
    ax.axhline(WARM_VS_BATCHED_MIN, color="tab:blue", lw=0.8, ls=":")
    ax.plot([], [], color="tab:red", label="wmel-jax / reference")
    ax.plot([], [], color="tab:blue", label="wmel-jax / batched")
    ax.set(xscale="log", yscale="log", xlabel="N states", ylabel="speed-up (warm)", title="ratios (dotted: targets)")
    ax.legend(fontsize=7)

    ax = axes[1, 0]
    labels = [f"{r['task'].split('-')[0]} s{r['size']} N{r['n_states']}" for r in configs]
    x = np.arange(len(configs))
    ax.bar(x - 0.2, [r["wmel_jax"]["oracle_compile_s"] for r in configs], 0.4, label="oracle compile")
    ax.bar(x + 0.2, [r["wmel_jax"]["model_compile_s"] for r in configs], 0.4, label="model compile")
    ax.set_xticks(x, labels, rotation=70, fontsize=6)
    ax.set(ylabel="seconds", title="compile time (in-process, first call per shape)")
    ax.legend(fontsize=7)

    ax = axes[1, 1]
    mem = [(f"eval N150 {c['kind']} cache", c["max_rss_mb"]) for c in result.get("cold_process") or []]
    mem += [(f"eval {c['task'].split('-')[0]} N{c['n_states']}", c["max_rss_mb"]) for c in result.get("memory") or []]
    if mem:
        ax.barh([m[0] for m in mem], [m[1] / 1e3 for m in mem], color="tab:purple")
        ax.axvline(PEAK_MEMORY_100K_MAX_GB, color="k", ls=":", lw=0.8)
    ax.set(xlabel="peak RSS, GB", title="peak memory (fresh processes)")
    ax.tick_params(axis="y", labelsize=7)

    ax = axes[1, 2]
    ax.bar(x - 0.2, [100 * r["network"]["fraction_of_peak"] for r in configs], 0.4,
           label=f"model kernel, % of matmul peak ({result['peak']['peak_gflops']:.0f} GFLOP/s)")
    ax.bar(x + 0.2, [100 * r["physics"]["fraction_of_native"] for r in configs], 0.4,
           label="oracle, % of native mujoco.rollout steps/s")
    ax.axhline(100, color="k", lw=0.8, ls=":")
    ax.set_xticks(x, labels, rotation=70, fontsize=6)
    ax.set(ylabel="%", title="fraction of the machine's measured peak")
    ax.legend(fontsize=7)

    fig.suptitle(f"wmel-jax bench ({result['mode']}): {result['machine']['cpu']}, {result['machine']['cores']} cores; "
                 f"device {device}", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    with atomic_output(path, "wb") as f:
        f.write(buf.getvalue())


def output_stem(mode: str, filters: dict[str, Any] | None = None) -> str:
    """``bench_<mode>``; a run narrowed by --tasks/--sizes/--n gets the filters appended, so it never
    replaces the mode's complete results."""
    stem = f"bench_{mode}"
    for key in ("tasks", "sizes", "n"):
        values = (filters or {}).get(key)
        if values:
            stem += "_" + "-".join(str(v).split("-")[0] if key == "tasks" else str(v) for v in values)
    return stem


def write_outputs(result: dict[str, Any], out_dir: str | os.PathLike) -> list[Path]:
    """<stem>.json, .md and .png in ``out_dir`` (:func:`output_stem`), each written atomically; returns the paths."""
    from wmel_jax.fileio import atomic_output, write_json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / output_stem(result["mode"], result.get("filters"))
    paths = [stem.with_suffix(".json"), stem.with_suffix(".md"), stem.with_suffix(".png")]
    write_json(paths[0], result)
    with atomic_output(paths[1], "w") as f:
        f.write(markdown(result))
    plot(result, paths[2])
    return paths


# --------------------------------------------------------------------------- #
# The run
# --------------------------------------------------------------------------- #


def run(plan: Plan, out_dir: str | os.PathLike, command: str, torch_threads: int | None = None,
        chunk: int | None = None, filters: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything in ``plan``, in this process (and its children); writes and returns the result."""
    os.environ.setdefault("MUJOCO_GL", "disable")
    import jax

    jax.config.update("jax_enable_x64", True)  # the float64 oracle, as the CLI runs
    from wmel_jax.evaluate import DEFAULT_CHUNK_STATES

    t_start = time.perf_counter()
    chunk = chunk or DEFAULT_CHUNK_STATES
    machine = machine_info()
    threads = machine["cores"]
    _say(f"wmel-jax bench ({plan.mode}): {machine['cpu']}, {threads} cores, device {machine['device']}")
    with tempfile.TemporaryDirectory(prefix="wmel-bench-") as tmp:
        folder = Path(tmp)
        models, build_s = _timed(lambda: build_models(plan, folder))
        _say(f"built and converted the checkpoints in {build_s:.1f} s")
        torch_threads_tried = (int(torch_threads),) if torch_threads else tuple(sorted({1, threads}))
        _say(f"batched arm: torch timed with {' and '.join(map(str, torch_threads_tried))} thread(s), "
             "the faster counts")
        phases: dict[str, float] = {"build_models_s": build_s}
        peak, phases["matmul_peak_s"] = _timed(lambda: matmul_peak(plan.matmul_n, torch_threads=threads))
        _say(f"matmul peak: numpy {peak['numpy_gflops']:.0f}, jax {peak['jax_gflops']:.0f}, "
             f"torch {_f(peak.get('torch_gflops'), '.0f')} GFLOP/s")
        rows: list[dict] = []
        extras: dict[str, Any] = {}
        compiled: dict[str, float] = {}
        sampled: dict[str, Any] = {}
        task_states: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        tasks = list(dict.fromkeys([t for t, _, _ in plan.configs]
                                   + ([plan.sweep[0]] if plan.sweep else []) + ([plan.upstream[0]] if plan.upstream else [])))
        for task in tasks:
            (r, e), phases[f"{task}_s"] = _timed(
                lambda: bench_task(task, plan, models, peak, torch_threads_tried, threads, chunk, compiled))
            rows += r
            for key in ("sweep", "upstream"):
                if key in e:
                    extras[key] = e[key]
            sampled[task] = {"n": e["n_sampled"], "seconds": e["sampling_s"]}
            task_states[task] = (e["states"], e["sequence"])
        cold_rows: list[dict] = []
        if plan.cold_process:
            model = models[(TARGET_TASK, 1)].converted if (TARGET_TASK, 1) in models else _example(TARGET_TASK)
            cold_rows, phases["cold_processes_s"] = _timed(
                lambda: bench_cold_processes(plan, model, TARGET_TASK, folder))
        memory_rows: list[dict] = []
        if plan.memory:
            memory_rows, phases["memory_s"] = _timed(lambda: bench_memory(
                plan, models, lambda task, n: task_states[task][0][:n], lambda task: task_states[task][1], folder))
        # The peak again at the end; the better of the two is the machine's (the machine may be shared).
        again = matmul_peak(plan.matmul_n, torch_threads=threads)
        peak = {**{k: max(v, again[k]) if k.endswith("_gflops") and v and again.get(k) else v
                   for k, v in peak.items()}, "start": peak, "end": again}
        _apply_peak(rows, peak["peak_gflops"])
    result = {
        "mode": plan.mode,
        "filters": filters or {},
        "command": command,
        "machine": machine,
        "plan": plan.to_dict(),
        "chunk_states": chunk,
        "torch_threads_tried": list(torch_threads_tried),
        "peak": peak,
        "sampling": sampled,
        "configs": rows,
        "sweep": extras.get("sweep"),
        "upstream": extras.get("upstream"),
        "cold_process": cold_rows,
        "memory": memory_rows,
        "compile_s": compiled,
        "phases_s": phases,
        "notes": [
            "reference times are measured on a subset of the states (extrapolated_from) and scaled linearly to N",
            "every arm computes M1/M2/M3 only, as the reference does (wmel-jax: --metrics observation; batched: "
            "latent=False); wmel_jax.all_metrics is the default eval (latent metrics too) on the same oracle "
            "answers, not part of the ratios",
            "cold in-process = first calls in this process (no persistent cache) plus, where an earlier "
            "configuration of the run compiled the same kernel shape already (compiled_earlier_in_run), that "
            "compile time; compile_s (top level) lists each shape once",
        ],
    }
    result["machine"]["loadavg_end"] = list(os.getloadavg())  # how shared the machine was
    result["wall_s"] = time.perf_counter() - t_start
    result["targets"] = evaluate_targets(result)
    paths = write_outputs(result, out_dir)
    print("\n" + markdown(result), flush=True)
    for p in paths:
        _say(f"wrote {p}")
    return result


def _apply_peak(rows: list[dict], peak_gflops: float) -> None:
    """Each row's fractions of the large-matmul peak, against the run's final peak."""
    for r in rows:
        nw = r["network"]
        nw["fraction_of_peak"] = nw["kernel_gflop_per_s"] / peak_gflops
        nw["torch_fraction_of_peak"] = nw["torch_gflop_per_s"] / peak_gflops


def _example(task: str) -> Path:
    from wmel_jax.demo import EXAMPLES_DIR

    return EXAMPLES_DIR / f"{task}-good.safetensors"


def build_parser(prog: str = "python -m wmel_jax.benchmarks.bench") -> argparse.ArgumentParser:
    from wmel_jax.commands.bench import add_arguments  # the flags of ``wmel-jax bench``, declared once

    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return p


def run_from_args(args: argparse.Namespace, command: str) -> int:
    from wmel_jax.errors import WmelError
    from wmel_jax.fileio import check_writable

    if args.runs is not None and args.runs < 1:
        raise WmelError(f"--runs must be a positive int; got {args.runs}")
    if args.torch_threads is not None and args.torch_threads < 1:
        raise WmelError(f"--torch-threads must be a positive int; got {args.torch_threads}")
    if args.n and any(n < 2 for n in args.n):
        raise WmelError(f"--n values must be at least 2; got {args.n}")
    try:
        plan = make_plan(args.mode, args.tasks, args.sizes, args.n, args.runs)
    except ValueError as e:
        raise WmelError(str(e)) from None
    if not plan.configs:
        raise WmelError("nothing to run: the filters leave no configuration")
    out = Path(args.out) if args.out else RESULTS
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WmelError(f"cannot create the output folder {str(out)!r}: {e.strerror or e}") from None
    filters = {"tasks": args.tasks, "sizes": args.sizes, "n": args.n}
    filters = {k: v for k, v in filters.items() if v}
    check_writable(out / f"{output_stem(plan.mode, filters)}.json")
    run(plan, out, command, torch_threads=args.torch_threads, filters=filters)
    return 0  # a FAIL is a measurement, reported in the outputs, not an error of the run


def main(argv: Sequence[str] | None = None) -> int:
    from wmel_jax.errors import EXIT_USAGE, WmelError

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        return run_from_args(args, "python -m wmel_jax.benchmarks.bench " + " ".join(argv))
    except WmelError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    raise SystemExit(main())

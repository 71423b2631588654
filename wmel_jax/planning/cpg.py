"""The Counterfactual Planning Gap end to end: models in, one CPG JSON per model out.

Two arms plan the same episodes (SPEC section 9) with the same planner and
differ only in the dynamics it rolls candidates through:

- the **oracle arm** plans with the MJX oracle; it depends only on (task,
  frame skip, action set, planner, episodes, seed, horizon, precision), so it
  runs once per run and every model of the run is paired with it;
- the **learned arm** plans with each model's observation map
  ``L(s, a) = decode(next(encode(s), a))`` (:func:`observation_map`); its
  kernel is compiled once per architecture, the params an argument.

Both run in the true simulator (the MJX oracle) from the same start states.
:func:`run_cpg` is the Python API beside :func:`wmel_jax.run_eval`; the
reports have the reference's layout (``cpg`` {oracle_success_rate,
learned_success_rate, gap, n_episodes_oracle, n_episodes_learned,
gap_ci_low, gap_ci_high, verdict}, ``config``, ``training``, ``seed``,
``oracle_full`` / ``learned_full`` with per-episode ``results`` {success,
steps, plan_calls}), so ``wmel-jax eval --downstream`` reads them, plus the
paired statistics, success-rate intervals, steps-to-success summaries, the
episodes a +-0.05 interval needs, and timings. With one arm only
(``arms="oracle"`` or ``"learned"``) the other arm's fields, the gap and the
paired statistics are null.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import functools
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from wmel_jax.errors import WmelError
from wmel_jax.planning import stats as S
from wmel_jax.planning.episodes import (
    MAX_HORIZON,
    ArmResult,
    episode_kernel,
    run_arm,
    start_states,
    success_threshold,
)
from wmel_jax.planning.planners import PLANNERS, PlannerConfig

__all__ = [
    "ARMS",
    "DEFAULT_EPISODES",
    "DEFAULT_HORIZON",
    "HALF_WIDTH_TARGET",
    "CPGOptions",
    "observation_map",
    "parse_arms",
    "run_cpg",
    "cpg_downstream",
    "format_cpg_table",
    "output_paths",
]

ARMS = ("oracle", "learned")
DEFAULT_EPISODES = 300
#: Episodes per run: a thousand times the reference's 10 per seed (the per-episode results are a few MB).
MAX_EPISODES = 1_000_000
#: Episodes in flight (default 64 on CPU): a plan step's batch is this times 50 candidates.
MAX_CHUNK_EPISODES = 65_536
DEFAULT_HORIZON = 500
#: The interval half-width the report says how many episodes it takes to reach.
HALF_WIDTH_TARGET = 0.05
SCHEMA_VERSION = "1.0"
#: Seed of the paired bootstrap's resampling (the reference's default).
BOOTSTRAP_SEED = 0


@dataclasses.dataclass
class CPGOptions:
    """What ``wmel-jax cpg`` was asked to do (the CLI's flags, as data)."""

    models: Sequence[str]
    #: Names for the reports, one per model (default: the paths as given).
    labels: Sequence[str] | None = None
    env: str | None = None
    planner: str = "random-shooting"
    episodes: int = DEFAULT_EPISODES
    seed: int = 0
    horizon: int = DEFAULT_HORIZON
    #: "oracle,learned" (default), "oracle" or "learned"; or a sequence of those names.
    arms: str | Sequence[str] = "oracle,learned"
    #: A file for one model, a folder for several (None: write nothing).
    output: str | None = None
    force: bool = False
    figure: str | None = None
    candidates: int = 50
    plan_horizon: int = 15
    iterations: int = 3
    samples: int = 24
    elites: int = 6
    smoothing: float = 0.1
    precision: str | None = None
    #: Episodes in flight per kernel call (bounds memory; None: 64 on CPU, 1,024 on accelerators).
    chunk_episodes: int | None = None

    def planner_config(self) -> PlannerConfig:
        return PlannerConfig(self.planner, self.plan_horizon, self.candidates, self.iterations, self.samples,
                             self.elites, self.smoothing)


def parse_arms(arms: str | Sequence[str]) -> tuple[str, ...]:
    """The arms to run, in ARMS order; WmelError on an unknown or empty list."""
    names = arms.split(",") if isinstance(arms, str) else list(arms)
    names = [str(a).strip() for a in names if str(a).strip()]
    unknown = [a for a in names if a not in ARMS]
    if unknown:
        raise WmelError(f"unknown arm {unknown[0]!r}: --arms takes oracle, learned or both (oracle,learned)")
    if not names:
        raise WmelError("no arm asked for: --arms takes oracle, learned or both (oracle,learned)")
    return tuple(a for a in ARMS if a in names)


def _check_int(value: Any, name: str, low: int = 1, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low or (
        high is not None and value > high
    ):
        bound = f"between {low} and {high:,}" if high is not None else ("positive" if low == 1 else f">= {low}")
        raise WmelError(f"{name} must be an integer {bound}; got {value!r}")
    return int(value)


# --------------------------------------------------------------------------- #
# the arms' dynamics
# --------------------------------------------------------------------------- #


def observation_map(arch: Any, obs_dim: int) -> Callable:
    """The model's one-step observation map ``L(params, task, obs, action) -> next obs``.

    obs: (B, obs_dim) the task's observations, action: (B, action_dim) ->
    (B, obs_dim) float32: the world-model protocol's
    :meth:`~wmel_jax.model.protocol.WorldModelFunctions.obs_step` of the
    model's family (``decode(latent_step(encode(obs), action))``; padding and
    masking for a multitask model are the family's), cut to the task's
    width. The learned arm's only contact with the model.
    """
    from wmel_jax.model.protocol import functions_of

    functions = functions_of(arch)

    def step(params, task, obs, action):
        return functions.obs_step(params, task, obs, action)[..., :obs_dim]

    return step


def _task_score(oracle: Any) -> Callable:
    """The task's score of an observation batch, computed in the oracle's precision (as the reference's floats)."""
    import jax

    task = oracle.physics.task
    dtype = oracle.dtype.name  # a name: part of the kernel's content key

    def score(obs):
        return jax.vmap(task.score)(obs.astype(dtype))

    return score


#: The dynamics rows (slots x sequences rolled together) of an arm's smallest planner block, on CPU.
#: Each round plans only the slots holding an episode, in blocks (wmel_jax.planning.episodes.plan_sizes):
#: the physics would compile once more per block size, so the oracle arm has one narrow size (it
#: steps 400-row blocks at 73% of its 3,200-row rate, and ends a run without planning idle slots);
#: the model compiles in seconds and its rate climbs from 95 k rows/s at 400 rows to 107 k at 800 and
#: 129 k at 3,200, so the learned arm's running slots are planned in the widest blocks that fit, down
#: to 800 rows (rows/s by batch rows:
#: `python -m wmel_jax.benchmarks.cpg_bench --profile-only`, benchmarks/results/cpg_profile.md).
BLOCK_ROWS = {"oracle": 400, "learned": 800}
#: On accelerators a narrow block would leave the device idle: both arms halve from every slot down to this.
BLOCK_ROWS_ACCELERATOR = 8192


def _arm_blocks(arm: str, config: PlannerConfig) -> tuple[int, bool]:
    """(smallest block in slots, halving) of an arm's kernel.

    The block is the largest power of two whose dynamics batches (block x the
    sequences rolled together: random shooting's candidates, one CEM
    iteration's samples) have at most the arm's rows (at least one slot).
    """
    import jax

    cpu = jax.default_backend() == "cpu"
    rows = BLOCK_ROWS[arm] if cpu else BLOCK_ROWS_ACCELERATOR
    together = config.candidates if config.kind == "random-shooting" else config.samples
    block = 1
    while 2 * block * together <= rows:
        block *= 2
    return block, arm == "learned" or not cpu


@functools.lru_cache(maxsize=None)
def _oracle_arm_kernel(oracle: Any, config: PlannerConfig) -> Callable:
    # The oracle plans with the env itself: its plans execute from its own predictions.
    block, halving = _arm_blocks("oracle", config)
    return episode_kernel(oracle, None, _task_score(oracle), config, success_threshold(oracle.task),
                          dynamics_is_env=True, block=block, halving=halving)


@functools.lru_cache(maxsize=None)
def _learned_arm_kernel(arch: Any, oracle: Any, config: PlannerConfig) -> Callable:
    step = observation_map(arch, oracle.obs_dim)

    def dynamics(params, task):
        return lambda obs, action: step(params, task, obs, action)

    # The model compiles in a second: its first plan steps are rolled once per distinct prefix.
    block, halving = _arm_blocks("learned", config)
    return episode_kernel(oracle, dynamics, _task_score(oracle), config, success_threshold(oracle.task),
                          share_prefixes=True, block=block, halving=halving)


#: A run whose plan batches (episodes in flight x sequences per call) have at most this many rows
#: compiles at XLA's backend optimisation level 0: compilation is then most of the run.
FAST_COMPILE_MAX_ROWS = 512


def _compiler_options(arm: str, config: PlannerConfig, chunk: int, arch: Any = None) -> dict[str, Any]:
    """XLA options of an arm's kernel whose plan batches have chunk x sequences rows.

    The oracle arm's work is physics: the oracle's own codegen options
    (:func:`wmel_jax.oracle.base.compiler_options`). The learned arm's is the
    model's matmuls, which XLA's default CPU codegen runs 3x faster than the
    oracle's options do (measured on a size-1 model); its env steps are a
    fiftieth of its rows. Small batches compile at level 0 either way. The
    learned arm of the model architecture ``arch`` also takes its family's
    own options over these (its numerics: DreamerV3's plain float32 dots,
    without which near-ties in its categorical latents flip), as eval's model
    kernel does.
    """
    import jax

    from wmel_jax.oracle.base import compiler_options

    rows = chunk * config.sequences_per_call
    if arm == "oracle":
        return compiler_options(rows)
    options: dict[str, Any] = {}
    if jax.default_backend() == "cpu" and rows <= FAST_COMPILE_MAX_ROWS:
        options = {"xla_cpu_use_fusion_emitters": False, "xla_backend_optimization_level": 0}
    if arch is not None:
        from wmel_jax.model.protocol import functions_of

        options.update(functions_of(arch).xla_options())
    return options


# --------------------------------------------------------------------------- #
# the oracle arm, kept on disk beside the kernel cache
# --------------------------------------------------------------------------- #

_ORACLE_CACHE_FORMAT = 2


def _oracle_key(oracle: Any, config: PlannerConfig, actions: np.ndarray, n: int, seed: int, horizon: int
                ) -> dict[str, Any]:
    """Everything the oracle arm's episodes depend on (not the episodes in flight: results do not)."""
    from wmel_jax import kernel_cache

    return {
        "format": _ORACLE_CACHE_FORMAT,
        "task": oracle.task, "frame_skip": oracle.frame_skip, "precision": oracle.precision,
        "actions": np.asarray(actions, np.float64).tolist(), "planner": config.to_dict(),
        "episodes": n, "seed": seed, "horizon": horizon, "threshold": success_threshold(oracle.task),
        "sources": kernel_cache._source_fingerprint(), "versions": kernel_cache._versions(),
        "context": kernel_cache._trace_context(),
    }


def _oracle_cache_file(key: Mapping[str, Any]) -> Path | None:
    """Where the oracle arm of ``key`` is kept: ``<cache>/cpg-oracle/<sha256>.json``; None without a cache."""
    import hashlib
    import json

    from wmel_jax import kernel_cache

    kernels = kernel_cache.get_directory()
    if kernels is None:
        return None
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return kernels.parent / "cpg-oracle" / f"{digest}.json"


def _read_oracle(path: Path | None, key: Mapping[str, Any]) -> ArmResult | None:
    """The kept oracle arm of ``key``, or None (absent, unreadable, another key, malformed: all ignored)."""
    import json

    if path is None or not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
        if doc.get("key") != json.loads(json.dumps(key)):
            return None
        n = key["episodes"]
        success = np.asarray(doc["success"], bool)
        steps = np.asarray(doc["steps"], np.int64)
        calls = np.asarray(doc["plan_calls"], np.int64)
        if success.shape != (n,) or steps.shape != (n,) or calls.shape != (n,):
            return None
        if steps.min() < 0 or steps.max() > key["horizon"] or calls.min() < 0:
            return None
        return ArmResult(success, steps, calls, int(doc["rounds"]), int(doc["slot_rounds"]), int(doc["planned"]),
                         int(doc["chunk"]), 0.0, float(doc["run_s"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_oracle(path: Path | None, key: Mapping[str, Any], r: ArmResult) -> None:
    """Keep the oracle arm for later runs (best effort: a cache that cannot be written is skipped)."""
    import json

    from wmel_jax import kernel_cache

    if path is None:
        return
    doc = {"key": key, "success": r.success.tolist(), "steps": r.steps.tolist(), "plan_calls": r.plan_calls.tolist(),
           "rounds": r.rounds, "slot_rounds": r.slot_rounds, "planned": r.planned, "chunk": r.chunk, "run_s": r.run_s}
    try:
        path.parent.mkdir(exist_ok=True)
        kernel_cache._atomic_write(path, json.dumps(doc).encode())
    except OSError:
        pass


# --------------------------------------------------------------------------- #
# the run
# --------------------------------------------------------------------------- #


def output_paths(output: str | os.PathLike, labels: Sequence[str]) -> list[Path]:
    """Where each model's report goes: ``output`` itself for one model, ``output/<stem>.cpg.json`` for several."""
    out = Path(output)
    if len(labels) == 1 and not out.is_dir():
        return [out]
    names = [f"{Path(str(label)).stem}.cpg.json" for label in labels]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise WmelError(f"two models would write {str(out / duplicated[0])!r}: give models with different file names")
    return [out / name for name in names]


class _Outputs:
    """The run's files as one :class:`~wmel_jax.fileio.OutputSet`, declared before any work.

    Several models write into a folder; one that does not exist yet is
    created now (so its files can be checked like any other) and removed
    again, if still empty, when the run fails.
    """

    def __init__(self, opts: CPGOptions, labels: Sequence[str], outputs: Any = None):
        from wmel_jax.fileio import OutputSet

        self.owned = outputs is None
        self.set = OutputSet(force=opts.force) if outputs is None else outputs
        self.set.add_inputs(opts.models, "model")
        self.created: Path | None = None
        self.paths: list[Path] = []
        if opts.output:
            out = Path(opts.output)
            if len(labels) > 1 or out.is_dir():
                if out.exists() and not out.is_dir():
                    raise WmelError(f"-o {str(out)!r}: several models write one CPG JSON each, into a folder, "
                                    f"and {str(out)!r} is a file")
                if not out.exists():
                    parent = out.parent if str(out.parent) else Path(".")
                    if not parent.is_dir():
                        raise WmelError(f"cannot create the folder {str(out)!r}: {str(parent)!r} does not exist")
                    out.mkdir()
                    self.created = out
            self.paths = output_paths(out, labels)
        self.figure = opts.figure
        try:
            for p in self.paths:
                self.set.add(p, "CPG JSON (-o)")
            self.set.add(self.figure, "figure (--figure)")
        except BaseException:
            self.discard()
            raise

    def discard(self) -> None:
        """The run failed: remove the folder this run created, if nothing is in it."""
        if self.created is not None:
            with contextlib.suppress(OSError):
                self.created.rmdir()
            self.created = None

    def write(self, reports: Mapping[int, Mapping[str, Any]]) -> None:
        """Stage each report (by input index) and the figure; commit them together when the set is ours."""
        from wmel_jax.fileio import json_text

        for index, report in reports.items():
            if self.paths:
                self.set.write(self.paths[index], json_text(report))
        if self.figure:
            from wmel_jax.planning.figure import render_cpg_png

            self.set.write(self.figure, render_cpg_png(list(reports.values())))
        if self.owned:
            self.set.commit()


def require_observation_map(model: Any) -> None:
    """WmelError unless the model has the observation map the planners roll (encode, latent step, decode)."""
    from wmel_jax.model.protocol import functions_of

    reason = functions_of(model.arch).space_reasons()["observation"]
    if reason is not None:
        raise WmelError(
            f"{reason}, so the observation-space planners cannot plan with it; a latent-space planner is a "
            "later issue"
        )


def run_cpg(
    opts: CPGOptions,
    *,
    say: Callable[[str], None] | None = None,
    progress: Any = None,
) -> list[dict[str, Any]]:
    """The CPG of every model in ``opts.models``: one report per model (also written when asked).

    ``progress``: a :class:`wmel_jax.progress.Progress` (the run's phases:
    loading, start states, each arm with a bar over its episodes, kernels
    compiling), or an older ``(done, total, label)`` callback called between
    kernel calls (plan rounds) with the episodes ended so far, or None
    (silent). User mistakes raise WmelError
    before anything runs; outputs are written only once everything has been
    computed, each atomically, all renamed into place together. A model that
    cannot plan (no decoder, another task) is skipped with its reason beside
    the others (with one model, its reason is the error).
    """
    from wmel_jax.progress import as_progress

    progress = as_progress(progress)
    try:
        with progress.watch_kernels():
            return [report for _, report in _run(opts, say, progress)[0]]
    finally:
        progress.close()


def cpg_downstream(opts: CPGOptions, *, say: Callable[[str], None] | None = None, progress: Any = None,
                   outputs: Any = None) -> list[Any]:
    """The CPG of each model of ``opts`` as eval's downstream pairing: one Downstream (or None) per input model.

    ``eval --cpg``: both arms always; a model the planners cannot use gets
    None (its cell is unpaired) while the others are paired. ``outputs``: the
    caller's :class:`~wmel_jax.fileio.OutputSet`, which the CPG JSONs (when
    ``opts.output``) join: declared now, staged at the end, written when the
    caller commits the set. ``progress``: the caller's (as :func:`run_cpg`'s;
    kernels are noted when the caller watches them).
    """
    from wmel_jax.downstream import Downstream
    from wmel_jax.progress import as_progress

    progress = as_progress(progress)

    opts = dataclasses.replace(opts, arms=ARMS)
    pairs, paths = _run(opts, say, progress, outputs)
    out: list[Any] = [None] * len(opts.models)
    for index, report in pairs:
        cpg = report["cpg"]
        training = report["training"]
        out[index] = Downstream(
            path=str(paths[index]) if paths else "wmel-jax cpg (this run)",
            environment=report["environment"],
            gap=float(cpg["gap"]),
            verdict=cpg["verdict"],
            oracle_success_rate=cpg["oracle_success_rate"],
            learned_success_rate=cpg["learned_success_rate"],
            model_size=training.get("tdmpc2_model_size"),
            seed=report["seed"],
            training_steps=training.get("training_steps"),
        )
    return out


def _run(opts: CPGOptions, say: Callable[[str], None] | None, progress: Any, outputs: Any = None) -> tuple[list[tuple[int, dict[str, Any]]], list[Path]]:
    """(input index and report of each model that planned, the output paths by input index).

    ``outputs``: an :class:`~wmel_jax.fileio.OutputSet` the caller commits
    (``eval --cpg``); None: the run declares and commits its own.
    """
    from wmel_jax.limits import check_seed
    from wmel_jax.pipeline import check_labels
    from wmel_jax.planning.episodes import default_chunk_episodes

    say = say or (lambda msg: print(msg, file=sys.stderr))
    config = opts.planner_config()
    n = _check_int(opts.episodes, "--episodes", 1, MAX_EPISODES)
    horizon = _check_int(opts.horizon, "--horizon", 1, MAX_HORIZON)
    chunk = _check_int(default_chunk_episodes() if opts.chunk_episodes is None else opts.chunk_episodes,
                       "--chunk-episodes", 1, MAX_CHUNK_EPISODES)
    seed = check_seed(opts.seed, "seed (--seed)")
    arms = parse_arms(opts.arms)
    labels = check_labels(opts.models, opts.labels)
    declared = _Outputs(opts, labels, outputs)  # every output checked before any work
    try:
        return _work(opts, say, progress, labels, declared, config, n, horizon, chunk, seed, arms)
    except BaseException:
        declared.discard()
        raise


def _work(opts: CPGOptions, say: Callable[[str], None], progress: Any,
          labels: Sequence[str], declared: _Outputs, config: PlannerConfig, n: int, horizon: int, chunk: int,
          seed: int, arms: tuple[str, ...]) -> tuple[list[tuple[int, dict[str, Any]]], list[Path]]:
    import jax

    from wmel_jax import distributed
    from wmel_jax.oracle import DEFAULT_PRECISION, make_oracle
    from wmel_jax.oracle.base import precision_scope
    from wmel_jax.pipeline import Skips, load_models, resolve_task, select_models

    # Every device of every process runs its share of the episodes (run_arm); process 0 writes.
    rt = distributed.runtime()
    writer = distributed.is_writer()
    from wmel_jax.progress import as_progress

    progress = as_progress(progress if writer else None)  # process 0 alone shows progress
    t_start = time.perf_counter()
    # The pipeline's stages, as eval runs them: a model that cannot plan is skipped with its
    # reason while the others run (with one model, its reason is the error).
    skips = Skips(len(opts.models))
    with progress.phase(f"loading {len(opts.models)} model file(s)"):
        loaded = load_models(opts.models, labels, skips, say)
    task = resolve_task(opts.env, loaded)
    success_threshold(task)
    selection = select_models(loaded, task, skips, env_given=opts.env is not None,
                              requirement=require_observation_map)
    for item in skips.items:
        say(f"skipped {item['model']}: {item['reason']}")
    oracle = make_oracle(task, frame_skip=selection.frame_skip, precision=opts.precision or DEFAULT_PRECISION)
    if selection.actions is not None:
        actions = oracle.validate_actions(selection.actions, "action set row")
    else:
        actions = np.asarray(oracle.actions, np.float64)
    selected = selection.models
    t_loaded = time.perf_counter()

    with precision_scope(oracle.precision):
        with progress.phase(f"{task}: start states of {n:,} episodes"):
            start = start_states(oracle, seed, n)
        t_states = time.perf_counter()

        def show_rounds(ended: int, total: int, rounds: int) -> None:
            progress.bar(ended, total, f"episodes ended, {rounds:,} plan rounds")

        arm_progress = show_rounds if writer else None

        what = f"{n:,} episodes x {horizon:,} steps, {config.describe()}"

        oracle_result, oracle_cached = None, False
        if "oracle" in arms:
            # The oracle arm depends on none of the models: a later run of the same configuration reads it.
            key = _oracle_key(oracle, config, actions, n, seed, horizon)
            kept = _oracle_cache_file(key)
            oracle_result = _read_oracle(kept, key)
            oracle_cached = oracle_result is not None
            if rt.process_count > 1 and not all(distributed.allgather_json(oracle_cached)):
                oracle_result, oracle_cached = None, False  # the arm is one collective run: all compute it, or none
            if oracle_cached:
                progress.note(f"oracle arm read from the cache ({kept})")
            else:
                with progress.phase(f"oracle arm: {what}"):
                    oracle_result = run_arm(_oracle_arm_kernel(oracle, config), None, None, start, seed, actions,
                                            horizon, chunk, dtype=oracle.dtype,
                                            compiler_options=_compiler_options("oracle", config, min(chunk, n)),
                                            progress=arm_progress, runtime=rt)
                if writer:
                    _write_oracle(kept, key, oracle_result)
        learned: list[ArmResult | None] = []
        for i, m in enumerate(selected):
            if "learned" not in arms:
                learned.append(None)
                continue
            from wmel_jax.evaluate import model_task_index

            index = model_task_index(m.model, task)
            task_arg = None if index is None else jax.numpy.asarray(index, jax.numpy.int32)
            which = f" {i + 1}/{len(selected)}" if len(selected) > 1 else ""
            with progress.phase(f"learned arm{which} ({m.label}): {what}"):
                learned.append(run_arm(_learned_arm_kernel(m.model.arch, oracle, config), m.model.params, task_arg,
                                       start, seed, actions, horizon, chunk, dtype=oracle.dtype,
                                       compiler_options=_compiler_options("learned", config, min(chunk, n),
                                                                          m.model.arch),
                                       progress=arm_progress, runtime=rt))
    t_done = time.perf_counter()

    run_config = {
        **config.to_dict(),
        "benchmark_episodes": n,
        "benchmark_horizon": horizon,
        "seed": seed,
        "arms": list(arms),
        "env": task,
        "frame_skip": selection.frame_skip,
        "precision": oracle.precision,
        "action_set": actions.tolist(),
        "action_set_source": selection.action_source,
        "success_threshold": success_threshold(task),
        "success_reward": "the task's true reward of each env step (mean over its frame_skip physics steps)",
        "start_states": "the task's reset distribution; episode k of seed s from a key that is a pure function of "
                        "(s, k), shared by both arms",
        "chunk_episodes": min(chunk, n),
        "runtime": {**rt.describe(), "episode_split": "contiguous shares of ceil(n / devices) episodes per device, "
                    "each with its own slots (ceil(chunk_episodes / devices_per_process))"},
    }
    reports = []
    for m, result in zip(selected, learned):
        timings = {"load_s": t_loaded - t_start, "states_s": t_states - t_loaded, "total_s": t_done - t_start}
        for arm, r in (("oracle", oracle_result), ("learned", result)):
            if r is not None:
                timings[f"{arm}_compile_s"] = r.compile_s
                timings[f"{arm}_run_s"] = r.run_s
        if oracle_result is not None:
            timings["oracle_from_cache"] = oracle_cached  # its run_s is then the run that computed it
        reports.append(_report(m.label, m.model, run_config, config, oracle_result, result, timings))

    # Outputs last: nothing is written unless everything above succeeded; process 0 alone writes.
    if writer:
        declared.write({m.index: r for m, r in zip(selected, reports)})
    return [(m.index, r) for m, r in zip(selected, reports)], declared.paths


# --------------------------------------------------------------------------- #
# the report
# --------------------------------------------------------------------------- #


def _results(r: ArmResult) -> list[dict[str, Any]]:
    return [{"success": bool(s), "steps": int(t), "plan_calls": int(c)}
            for s, t, c in zip(r.success, r.steps, r.plan_calls)]


def _scorecard(r: ArmResult, config: PlannerConfig, dynamics: str) -> dict[str, Any]:
    calls = int(r.plan_calls.sum())
    steps = int(r.steps.sum())
    return {
        "policy_name": f"{config.kind} ({dynamics} dynamics)",
        "episodes": int(r.success.size),
        "success_rate": float(r.success.mean()),
        "average_steps_to_success": float(r.steps[r.success].mean()) if r.success.any() else None,
        # Batched: the arm's run time over its plan calls (each call is not timed alone).
        "average_planning_latency_ms": 1000.0 * r.run_s / calls if calls else None,
        "average_compute_per_decision": config.dynamics_calls_per_plan * calls / steps if steps else None,
        "plan_calls": calls,
        "plan_calls_per_s": calls / r.run_s if r.run_s > 0 else None,
        "rounds": r.rounds,
        "masked_slot_fraction": r.masked_fraction,
    }


def _arm_interval(r: ArmResult | None) -> dict[str, Any] | None:
    if r is None:
        return None
    s, n = int(r.success.sum()), int(r.success.size)
    lo, hi = S.wilson_interval(s, n)
    return {"rate": s / n, "ci_low": lo, "ci_high": hi, "successes": s, "n": n, "method": "Wilson 95%"}


def _report(label: str, model: Any, run_config: dict, config: PlannerConfig, oracle: ArmResult | None,
            learned: ArmResult | None, timings: dict) -> dict[str, Any]:
    from wmel_jax import __version__

    now = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
    n = run_config["benchmark_episodes"]
    both = oracle is not None and learned is not None
    if both:
        cpg = S.gap_interval(oracle.success, learned.success)
        cpg["verdict"] = S.verdict(cpg)
        paired = {
            "bootstrap": {**S.paired_bootstrap(oracle.success, learned.success, seed=BOOTSTRAP_SEED),
                          "method": "paired percentile bootstrap over episode indices"},
            "newcombe": {**S.newcombe_paired(oracle.success, learned.success), "method": "Newcombe (1998) paired"},
            "mcnemar": {**S.mcnemar_exact(oracle.success, learned.success), "method": "exact two-sided McNemar"},
        }
        p_o, p_l = cpg["oracle_success_rate"], cpg["learned_success_rate"]
    else:
        p_o = float(oracle.success.mean()) if oracle is not None else None
        p_l = float(learned.success.mean()) if learned is not None else None
        cpg = {"oracle_success_rate": p_o, "learned_success_rate": p_l, "gap": None,
               "n_episodes_oracle": n if oracle is not None else None,
               "n_episodes_learned": n if learned is not None else None,
               "gap_ci_low": None, "gap_ci_high": None, "verdict": None}
        paired = None
    if both:
        per_arm = S.episodes_for_half_width(p_o, p_l, HALF_WIDTH_TARGET)
        needed = {
            "half_width": HALF_WIDTH_TARGET,
            "current_half_width": (cpg["gap_ci_high"] - cpg["gap_ci_low"]) / 2.0,
            "per_arm": per_arm,
            "still_needed": None if per_arm is None else max(0, per_arm - n),
            "method": "Agresti-Caffo half-width at the observed rates (the reference's power analysis)",
        }
    else:
        needed = None
    meta = dict(model.meta or {})
    training = {
        "training_steps": meta.get("training_steps"),
        "tdmpc2_model_size": meta.get("tdmpc2_model_size"),
        "frame_skip": model.frame_skip,
    }
    if "decoder" in meta:
        training["decoder"] = meta["decoder"]

    def full(r: ArmResult | None, dynamics: str) -> dict[str, Any] | None:
        if r is None:
            return None
        return {"schema_version": SCHEMA_VERSION, "wmel_jax_version": __version__, "generated_at": now,
                "scorecard": _scorecard(r, config, dynamics), "results": _results(r)}

    def steps(r: ArmResult | None) -> dict[str, Any] | None:
        if r is None:
            return None
        return {"steps_to_success": S.steps_summary(r.success, r.steps),
                "plan_calls": S.steps_summary(np.ones_like(r.success), r.plan_calls)}

    return {
        "schema_version": SCHEMA_VERSION,
        "wmel_jax_version": __version__,
        "generated_at": now,
        "environment": "dmc_" + run_config["env"].replace("-", "_"),
        "metric": "counterfactual_planning_gap",
        "learned_model": label,
        "model": {"path": label, "schema": model.schema, "arch": model.arch.to_dict(),
                  "source_sha256": (model.header or {}).get("source_sha256")},
        "cpg": cpg,
        "config": {**run_config, "training_steps": meta.get("training_steps")},
        "training": training,
        "seed": run_config["seed"],
        "smoke_mode": False,
        "varied_init": True,
        "oracle_scorecard": None if oracle is None else _scorecard(oracle, config, "oracle"),
        "learned_scorecard": None if learned is None else _scorecard(learned, config, "learned"),
        "success_intervals": {"oracle": _arm_interval(oracle), "learned": _arm_interval(learned)},
        "paired": paired,
        "episodes_needed": needed,
        "steps": {"oracle": steps(oracle), "learned": steps(learned)},
        "oracle_full": full(oracle, "oracle"),
        "learned_full": full(learned, "learned"),
        "timings": timings,
    }


def _fmt(v: Any, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def format_cpg_table(report: Mapping[str, Any], *, timings: bool = False) -> str:
    """A model's CPG as a few lines of text: rates and intervals, gap, verdict, episodes for +-0.05.

    ``timings``: add where the run's time went (``--timings``): loading, start
    states, each arm's compilation and run, in seconds.
    """
    cfg = report["config"]
    cpg = report["cpg"]
    n = cfg["benchmark_episodes"]
    planner = PlannerConfig(**{"kind": cfg["planner"], "horizon": cfg["plan_horizon"],
                               **({"candidates": cfg["num_candidates"]} if cfg["planner"] == "random-shooting" else
                                  {"iterations": cfg["num_iterations"], "samples": cfg["num_samples"],
                                   "elites": cfg["num_elites"], "smoothing": cfg["smoothing"]})})
    lines = [f"{report['learned_model']}: {cfg['env']}, {planner.describe()}, {n} episodes x {cfg['benchmark_horizon']} "
             f"steps, seed {cfg['seed']}" + (" (small sample)" if n < 30 else "")]
    rows = [["arm", "success", "95% CI (Wilson)", "steps to success: median [IQR]", "plan calls/episode", "calls/s"]]
    for arm in ARMS:
        interval = report["success_intervals"][arm]
        if interval is None:
            rows.append([arm, "not run", "", "", "", ""])
            continue
        st = report["steps"][arm]["steps_to_success"]
        pc = report["steps"][arm]["plan_calls"]
        card = report[f"{arm}_scorecard"]
        rows.append([
            arm,
            f"{interval['rate']:.3f} ({interval['successes']}/{interval['n']})",
            f"[{interval['ci_low']:.3f}, {interval['ci_high']:.3f}]",
            "-" if st["n"] == 0 else f"{st['median']:.0f} [{st['q25']:.0f}, {st['q75']:.0f}]",
            f"{pc['mean']:.1f}",
            _fmt(card.get("plan_calls_per_s"), ".0f"),
        ])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    if cpg["gap"] is None:
        lines.append("  gap: - (one arm only)")
    else:
        lines.append(f"  gap (oracle - learned) {cpg['gap']:+.3f}, 95% CI (Agresti-Caffo) [{cpg['gap_ci_low']:+.3f}, "
                     f"{cpg['gap_ci_high']:+.3f}]: {cpg['verdict']}")
        p = report["paired"]
        lines.append(f"  paired: bootstrap [{p['bootstrap']['ci_low']:+.3f}, {p['bootstrap']['ci_high']:+.3f}], "
                     f"Newcombe [{p['newcombe']['ci_low']:+.3f}, {p['newcombe']['ci_high']:+.3f}], "
                     f"McNemar p = {p['mcnemar']['p_value']:.3g} ({p['mcnemar']['oracle_only']} oracle-only, "
                     f"{p['mcnemar']['learned_only']} learned-only episodes)")
        need = report["episodes_needed"]
        if need["per_arm"] is None:
            lines.append(f"  episodes for a +-{need['half_width']:g} interval: out of reach at these rates")
        else:
            more = need["still_needed"]
            lines.append(f"  episodes for a +-{need['half_width']:g} interval at these rates: {need['per_arm']:,} per "
                         f"arm (now +-{need['current_half_width']:.3f}; "
                         + ("reached)" if more == 0 else f"{more:,} more)"))
    times = report.get("timings") or {}
    if timings and times:
        lines.append("  timings: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                              for k, v in times.items()))
    return "\n".join(lines) + "\n"

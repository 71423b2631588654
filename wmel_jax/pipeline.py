"""``wmel-jax eval`` end to end: model files in, report out.

Resolves the models (converted files; a torch ``.pt`` is converted on the fly
when torch is installed), settles the run's task, frame skip and action set,
builds the :class:`~wmel_jax.evaluate.Problem`, asks the oracle once, scores
every model against its answers, and assembles the report. User mistakes are
:class:`WmelError`; a bad model among several is skipped with its reason while
the others run; nothing is written until everything has been computed.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from wmel_jax.errors import WmelError
from wmel_jax.evaluate import (
    DEFAULT_CHUNK_STATES,
    DEFAULT_K_STEPS,
    DEFAULT_N_STATES,
    check_model_fits,
    interval_config,
    make_problem,
    model_metrics,
    model_spaces,
    oracle_targets,
    precompile_oracle_targets,
    read_episode_ids,
    requested_spaces,
)
from wmel_jax.fileio import atomic_output, check_writable

__all__ = ["EvalOptions", "run_eval", "load_model_file", "read_array_file", "save_array_file"]


@dataclasses.dataclass
class EvalOptions:
    """What ``wmel-jax eval`` was asked to do (the CLI's flags, as data)."""

    models: Sequence[str]
    #: Names for the report's cells, one per model (default: the paths as given).
    labels: Sequence[str] | None = None
    env: str | None = None
    n_states: int = DEFAULT_N_STATES
    k_steps: int = DEFAULT_K_STEPS
    seed: int = 0
    states: str | None = None
    action_sequence: str | None = None
    actions: str | None = None
    save_states: str | None = None
    downstream: Sequence[str] | None = None
    output: str | None = None
    figure: str | None = None
    precision: str | None = None
    chunk_states: int = DEFAULT_CHUNK_STATES
    #: Metric spaces to compute ("observation", "latent", "reward"; a comma-separated
    #: string or a sequence; None or "all": every space the model has).
    metrics: str | Sequence[str] | None = None
    #: A .npy of (N,) integer labels: which rows of ``states`` belong together
    #: (the units the metrics' intervals resample). Only with ``states``.
    episode_ids: str | None = None


def read_array_file(path: str | os.PathLike, what: str) -> np.ndarray:
    """A ``.npy`` array as float64, never unpickling anything."""
    p = Path(path)
    if not p.is_file():
        raise WmelError(f"{what} file {str(path)!r} does not exist" if not p.exists() else f"{what} file {str(path)!r} is not a file")
    try:
        arr = np.load(p, allow_pickle=False)
    except ValueError as e:  # object arrays (pickles) and malformed headers
        raise WmelError(f"{what} file {str(path)!r} is not a plain numeric .npy array ({e})") from None
    except OSError as e:
        raise WmelError(f"cannot read {what} file {str(path)!r}: {e.strerror or e}") from None
    if not isinstance(arr, np.ndarray):  # an .npz archive
        raise WmelError(f"{what} file {str(path)!r} is an .npz archive; give one .npy array")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise WmelError(f"{what} file {str(path)!r} holds {arr.dtype} values, not numbers")
    if arr.ndim != 2:
        raise WmelError(f"{what} file {str(path)!r} must hold a 2-D array; got shape {arr.shape}")
    return arr.astype(np.float64)


def save_array_file(path: str | os.PathLike, arr: np.ndarray) -> None:
    """Write a ``.npy`` atomically."""
    with atomic_output(path, "wb") as f:
        np.save(f, np.asarray(arr), allow_pickle=False)


def _torch_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def load_model_file(path: str, workdir: Path, say: Callable[[str], None]):
    """A WorldModel from a converted file, or from a ``.pt`` converted on the fly."""
    from wmel_jax.model import load

    p = Path(path)
    if not p.exists():
        raise WmelError(f"model file {path!r} does not exist")
    if p.suffix == ".pt":
        if not _torch_available():
            raise WmelError(
                f"{path!r} is a torch checkpoint and torch is not installed: convert it where torch is "
                "(`pip install 'wmel-jax[convert]'; wmel-jax convert`) or install the convert extra"
            )
        from wmel_jax.converters.convert import convert_checkpoint

        dst = workdir / f"{len(list(workdir.iterdir()))}-{p.stem}.safetensors"
        say(f"converting torch checkpoint {path} on the fly (run `wmel-jax convert` once to skip this)")
        convert_checkpoint(p, dst)
        return load(dst)
    return load(p)


def run_eval(
    opts: EvalOptions,
    *,
    say: Callable[[str], None] | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> dict[str, Any]:
    """Evaluate every model in ``opts.models``; returns the report dict (also written when asked)."""
    from wmel_jax.report import build_report, make_cell

    say = say or (lambda msg: print(msg, file=sys.stderr))
    from wmel_jax import kernel_cache

    t_start = time.perf_counter()
    cache_before = kernel_cache.stats()
    for out in (opts.output, opts.figure, opts.save_states):
        if out:
            check_writable(out)
    if not opts.models:
        raise WmelError("give at least one model")
    if opts.labels is not None and len(opts.labels) != len(opts.models):
        raise WmelError(f"{len(opts.labels)} labels for {len(opts.models)} models")
    label = list(opts.labels) if opts.labels is not None else [str(m) for m in opts.models]
    spaces = requested_spaces(opts.metrics)
    if opts.downstream and len(opts.downstream) != len(opts.models):
        raise WmelError(
            f"--downstream takes one file per model, in the same order: got {len(opts.downstream)} "
            f"file(s) for {len(opts.models)} model(s)"
        )
    explicit_states = read_array_file(opts.states, "states") if opts.states else None
    explicit_sequence = read_array_file(opts.action_sequence, "action sequence") if opts.action_sequence else None
    explicit_actions = read_array_file(opts.actions, "action set") if opts.actions else None
    if opts.episode_ids and not opts.states:
        raise WmelError("--episode-ids labels the rows of --states: give both (sampled states have their episodes)")
    explicit_ids = read_episode_ids(opts.episode_ids) if opts.episode_ids else None

    single = len(opts.models) == 1
    skipped: list[dict[str, str]] = []
    loaded: list[tuple[int, str, Any]] = []

    def skip(name: str, reason: str) -> None:
        if single:
            raise WmelError(f"{name}: {reason}")
        skipped.append({"model": name, "reason": reason})  # listed in the table and the report

    with tempfile.TemporaryDirectory(prefix="wmel-jax-") as tmp:
        for i, name in enumerate(opts.models):
            try:
                loaded.append((i, name, load_model_file(name, Path(tmp), say)))
            except WmelError as e:
                skip(name, str(e))
    t_loaded = time.perf_counter()

    # The run's task: --env, else the task recorded at conversion.
    from wmel_jax.oracle import list_tasks

    supported = ", ".join(list_tasks())
    task = opts.env
    if task is None:
        recorded = [(name, m.task) for _, name, m in loaded if m.task]
        if not recorded:
            multitask = [(name, m) for _, name, m in loaded if m.multitask]
            if multitask:
                name, m = multitask[0]
                raise WmelError(
                    f"{name} is a multitask model ({m.arch.num_tasks} tasks) and no task was chosen: "
                    f"pass --env TASK (the oracle supports {supported})"
                )
            raise WmelError(f"no task recorded in the model file(s): pass --env (one of {supported})")
        task = recorded[0][1]
    if task not in list_tasks():
        raise WmelError(f"unknown task {task!r}: the oracle supports {supported}")

    from wmel_jax.downstream import pair_downstream

    downstream = pair_downstream(list(opts.models), opts.downstream, task)

    fitting = []
    for i, name, model in loaded:
        try:
            converted_for = model.task is not None and model.task != task
            try:
                check_model_fits(model, task)
                model_spaces(model.arch, spaces)
            except WmelError as e:
                if converted_for and not model.multitask:
                    raise WmelError(f"{e} (it was converted for {model.task})") from None
                raise
            if opts.env is None and model.multitask and model.task is None:
                raise WmelError(f"multitask model ({model.arch.num_tasks} tasks) with no task chosen: pass --env")
            if converted_for and (not model.multitask or opts.env is None):
                raise WmelError(f"it was converted for {model.task}, not {task}")
        except WmelError as e:
            skip(name, str(e))
        else:
            fitting.append((i, name, model))

    # Frame skip and action set are the models' (the oracle's answers depend on
    # them); a model that disagrees with the run's is skipped, not silently mixed.
    frame_skip = next((m.frame_skip for _, _, m in fitting), 1)
    actions = explicit_actions
    action_source = f"file: {opts.actions}" if opts.actions else None
    if actions is None:
        actions = next((m.action_set for _, _, m in fitting if m.action_set is not None), None)
        action_source = "the checkpoint's" if actions is not None else (
            "the task's default set (the checkpoints have a continuous action space)"
        )
    kept = []
    for i, name, model in fitting:
        if model.frame_skip != frame_skip:
            skip(name, f"frame_skip {model.frame_skip} differs from this run's {frame_skip}; evaluate it separately")
        elif (
            explicit_actions is None
            and model.action_set is not None
            and not np.array_equal(np.asarray(model.action_set, np.float64), np.asarray(actions, np.float64))
        ):
            skip(name, "its action set differs from this run's; evaluate it separately")
        else:
            kept.append((i, name, model))
    fitting = kept
    if not fitting:
        reasons = "; ".join(f"{s['model']}: {s['reason']}" for s in skipped)
        raise WmelError(f"no model could be evaluated ({reasons})")
    if explicit_states is None:
        # The oracle's kernel depends on the problem's shapes only: it compiles on a
        # background thread while the states are sampled (oracle_targets waits for it).
        precompile_oracle_targets(
            task,
            n_states=opts.n_states,
            k_steps=opts.k_steps if explicit_sequence is None else explicit_sequence.shape[0],
            actions=actions,
            frame_skip=frame_skip,
            precision=opts.precision,
            chunk_states=opts.chunk_states,
        )
    problem = make_problem(
        task,
        actions,
        n_states=opts.n_states,
        k_steps=opts.k_steps,
        seed=opts.seed,
        frame_skip=frame_skip,
        precision=opts.precision,
        states=explicit_states,
        action_sequence=explicit_sequence,
        episode_ids=explicit_ids,
    )
    t_problem = time.perf_counter()

    targets = oracle_targets(problem, opts.chunk_states)
    cells = []
    timings: dict[str, float] = {"load_s": t_loaded - t_start, "states_s": t_problem - t_loaded, **targets.timings}
    timings["model_compile_s"] = 0.0
    timings["model_run_s"] = 0.0
    timings["interval_s"] = 0.0
    # States each architecture's kernel will see in this run (its compile options depend on it).
    per_arch = Counter(model.arch for _, _, model in fitting)
    for j, (i, name, model) in enumerate(fitting):
        if progress:
            progress(j, len(fitting), name)
        values, t = model_metrics(
            model, problem, targets, opts.chunk_states, total_states=problem.n_states * per_arch[model.arch],
            spaces=spaces,
        )
        timings["model_compile_s"] += t["model_compile_s"]
        timings["model_run_s"] += t["model_run_s"]
        timings["interval_s"] += t["interval_s"]
        cells.append(make_cell(label[i], values, downstream[i], env=task, model_meta=model.meta))
    if progress:
        progress(len(fitting), len(fitting), "")
    timings["compile_s"] = timings["oracle_compile_s"] + timings["model_compile_s"]
    timings["run_s"] = timings["oracle_run_s"] + timings["model_run_s"]
    # Where compile_s went, summed over threads: tracing and lowering kernels
    # (0 when read from the cache), XLA compiling them (or reading them back).
    cache_after = kernel_cache.stats()
    for name in ("trace_s", "xla_s"):
        timings[name] = cache_after.get(name, 0.0) - cache_before.get(name, 0.0)
    timings["total_s"] = time.perf_counter() - t_start

    config = {
        "env": task,
        "n_states": problem.n_states,
        "k_steps": problem.k_steps,
        "seed": opts.seed,
        "frame_skip": problem.frame_skip,
        "precision": problem.precision,
        "action_set": problem.actions,
        "action_sequence": problem.action_sequence,
        "action_set_source": action_source,
        "metric_spaces_requested": list(spaces),
        "states": "file: " + str(opts.states) if opts.states else "sampled (seeded random-action rollouts)",
        **interval_config(problem, episode_file=opts.episode_ids),
    }
    from wmel_jax.evaluate import METRIC_SPACES

    report = build_report(config, cells, skipped, timings, metric_spaces=METRIC_SPACES)

    # Outputs last, each atomic: an error above leaves none of them behind.
    if opts.save_states:
        save_array_file(opts.save_states, problem.states)
    if opts.output:
        from wmel_jax.report import write_report

        write_report(report, opts.output)
    if opts.figure:
        from wmel_jax.figure import plot_report

        plot_report(report, opts.figure)
    return report

"""``wmel-jax eval`` end to end: model files in, report out, in named stages.

:func:`run_eval` composes the stages, each a function of what the earlier ones
produced, so other commands (``wmel-jax cpg``) reuse the ones they need::

    check_labels, Inputs.read      the options and the user's array files, checked before any work
    load_models     -> [LoadedModel]   converted files (a torch .pt converted on the fly when torch is installed)
    resolve_task    -> task            --env, else the task recorded at conversion
    group_models    -> [(task, models)] without --env: each model on its own task, grouped by
                                       (task, frame skip, action set); per group:
    select_models   -> Selection       the models judged together: fit the task, meet the command's
                                       requirement, share a frame skip and an action set
    build_problem   -> Problem         the seeded states (or the given ones) and M2's actions
    score_models    -> cells           the oracle's answers once, every model's metrics against them
    run_config, build_report, write_outputs

User mistakes are :class:`WmelError`; a bad model among several is skipped
with its reason (:class:`Skips`) while the others run; nothing is written
until everything has been computed.
"""

from __future__ import annotations

import dataclasses
import io
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from wmel_jax.errors import WmelError
from wmel_jax.limits import check_run_numbers
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
from wmel_jax.fileio import OutputSet, atomic_output, check_input, json_text, read_npy_file, temporary_directory

__all__ = [
    "EvalOptions",
    "run_eval",
    "LoadedModel",
    "Skips",
    "Inputs",
    "Selection",
    "check_labels",
    "load_models",
    "resolve_task",
    "select_models",
    "group_models",
    "build_problem",
    "score_models",
    "run_config",
    "declare_outputs",
    "write_outputs",
    "load_model_file",
    "read_array_file",
    "save_array_file",
]


@dataclasses.dataclass
class EvalOptions:
    """What ``wmel-jax eval`` was asked to do (the CLI's flags, as data)."""

    models: Sequence[str]
    #: Names for the report's cells, one per model (default: the paths as given).
    labels: Sequence[str] | None = None
    env: str | None = None
    #: None: DEFAULT_N_STATES, or the rows of ``states`` (a number that contradicts them is an error).
    n_states: int | None = None
    #: None: DEFAULT_K_STEPS, or the rows of ``action_sequence`` (likewise).
    k_steps: int | None = None
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
    #: Replace outputs that exist (never an input, never one output by another).
    force: bool = False
    #: Pair each model with its downstream gap computed in this run (``eval --cpg``): a
    #: ``wmel_jax.planning.cpg.CPGOptions`` (its models are this run's), instead of ``downstream`` files.
    cpg: Any = None
    #: In a run of several processes, what they split: "states" (every process
    #: evaluates every model on its share of the states), "models" (each
    #: evaluates its share of the models on every state), or "auto"
    #: (:func:`wmel_jax.distributed.plan_split`).
    split: str = "auto"


def read_array_file(path: str | os.PathLike, what: str) -> np.ndarray:
    """A ``.npy`` array as float64, never unpickling anything (:func:`wmel_jax.fileio.read_npy_file`)."""
    arr = read_npy_file(path, what)
    if arr.ndim != 2:
        raise WmelError(f"{what} file {str(path)!r} must hold a 2-D array; got shape {arr.shape}")
    return arr.astype(np.float64)


def save_array_file(path: str | os.PathLike, arr: np.ndarray) -> None:
    """Write a ``.npy`` atomically."""
    with atomic_output(path, "wb") as f:
        f.write(npy_bytes(arr))


def npy_bytes(arr: np.ndarray) -> bytes:
    """``arr`` as the bytes of a ``.npy`` file."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(arr), allow_pickle=False)
    return buffer.getvalue()


def _torch_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def load_model_file(path: str, workdir: Path, say: Callable[[str], None]):
    """A WorldModel from a converted file, or from a ``.pt`` converted on the fly."""
    from wmel_jax.model import load

    p = Path(path)
    check_input(p, "model file")  # a missing file, a link loop, a FIFO: one line, never a hang
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


# --------------------------------------------------------------------------- #
# The stages. Each is a function of what the earlier ones produced; ``eval``
# composes them in run_eval, and other commands (``cpg``) reuse the ones they need.
# --------------------------------------------------------------------------- #


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A model file as given, loaded: its position among the inputs, its report label."""

    index: int
    name: str
    label: str
    model: Any


class Skips:
    """Models that cannot be evaluated, with their reasons, while the others run.

    With a single model there is nothing else to run: its reason is the run's
    error (:class:`WmelError`), raised at once.
    """

    def __init__(self, n_models: int):
        self.single = n_models == 1
        self.items: list[dict[str, str]] = []

    def add(self, name: str, reason: str) -> None:
        if self.single:
            raise WmelError(f"{name}: {reason}")
        self.items.append({"model": name, "reason": reason})

    def none_left(self) -> WmelError:
        """The error for a run in which every model was skipped."""
        reasons = "; ".join(f"{s['model']}: {s['reason']}" for s in self.items)
        return WmelError(f"no model could be evaluated ({reasons})")


@dataclasses.dataclass(frozen=True)
class Inputs:
    """The user's array files, read and checked once (None where not given)."""

    states: np.ndarray | None = None
    action_sequence: np.ndarray | None = None
    actions: np.ndarray | None = None
    actions_path: str | None = None
    #: (N,) labels of the states' episodes (``--episode-ids``; only with states).
    episode_ids: np.ndarray | None = None
    episode_ids_path: str | None = None

    @classmethod
    def read(cls, states: str | None, action_sequence: str | None, actions: str | None,
             episode_ids: str | None = None) -> "Inputs":
        if episode_ids and not states:
            raise WmelError("--episode-ids labels the rows of --states: give both (sampled states have their episodes)")
        return cls(
            read_array_file(states, "states") if states else None,
            read_array_file(action_sequence, "action sequence") if action_sequence else None,
            read_array_file(actions, "action set") if actions else None,
            actions,
            read_episode_ids(episode_ids) if episode_ids else None,
            episode_ids,
        )


@dataclasses.dataclass(frozen=True)
class Selection:
    """The models a run evaluates together, and what their oracle answers depend on.

    task, frame_skip and the action set are shared by every model of the
    selection (the oracle's answers depend on them); ``actions`` is None when
    the task's default set is used, and ``action_source`` says where it came from.
    """

    task: str
    frame_skip: int
    actions: np.ndarray | None
    action_source: str
    models: tuple[LoadedModel, ...]


def check_labels(models: Sequence[str], labels: Sequence[str] | None) -> list[str]:
    """The report label of each model: ``labels`` (one per model) or the paths as given."""
    if not models:
        raise WmelError("give at least one model")
    if labels is not None and len(labels) != len(models):
        raise WmelError(f"{len(labels)} labels for {len(models)} models")
    return list(labels) if labels is not None else [str(m) for m in models]


def load_models(
    models: Sequence[str], labels: Sequence[str], skips: Skips, say: Callable[[str], None]
) -> list[LoadedModel]:
    """Every model file that loads (a ``.pt`` converted on the fly); the others go to ``skips``."""
    loaded: list[LoadedModel] = []
    with temporary_directory(prefix="wmel-jax-") as tmp:
        for i, name in enumerate(models):
            try:
                loaded.append(LoadedModel(i, name, labels[i], load_model_file(name, tmp, say)))
            except WmelError as e:
                skips.add(name, str(e))
    return loaded


def resolve_task(env: str | None, loaded: Sequence[LoadedModel]) -> str:
    """The run's task: ``env``, else the first task recorded at conversion; WmelError if none or unknown."""
    from wmel_jax.oracle import list_tasks

    supported = ", ".join(list_tasks())
    task = env
    if task is None:
        recorded = [m.model.task for m in loaded if m.model.task]
        if not recorded:
            multitask = [m for m in loaded if m.model.multitask]
            if multitask:
                m = multitask[0]
                raise WmelError(
                    f"{m.name} is a multitask model ({m.model.arch.num_tasks} tasks) and no task was chosen: "
                    f"pass --env TASK (the oracle supports {supported})"
                )
            raise WmelError(f"no task recorded in the model file(s): pass --env (one of {supported})")
        task = recorded[0]
    if task not in list_tasks():
        raise WmelError(f"unknown task {task!r}: the oracle supports {supported}")
    return task


def select_models(
    loaded: Sequence[LoadedModel],
    task: str,
    skips: Skips,
    *,
    env_given: bool,
    requirement: Callable[[Any], None] | None = None,
    inputs: Inputs = Inputs(),
) -> Selection:
    """The models that can be judged together on ``task``; the others go to ``skips``.

    A model must fit the task (widths, multitask task list and action mask),
    meet ``requirement`` (raises WmelError naming what it lacks, e.g. the
    metric spaces asked for), not have been converted for another task (unless
    ``--env`` picks a multitask model's task), and share the run's frame skip
    and action set: those of the first fitting model, or ``inputs.actions``
    (then every model is judged on that set). WmelError when none is left.
    """
    from wmel_jax.evaluate import check_model_fits

    fitting: list[LoadedModel] = []
    for m in loaded:
        model = m.model
        try:
            converted_for = model.task is not None and model.task != task
            try:
                check_model_fits(model, task)
                if requirement is not None:
                    requirement(model)
            except WmelError as e:
                if converted_for and not model.multitask:
                    raise WmelError(f"{e} (it was converted for {model.task})") from None
                raise
            if not env_given and model.multitask and model.task is None:
                raise WmelError(f"multitask model ({model.arch.num_tasks} tasks) with no task chosen: pass --env")
            if converted_for and (not model.multitask or not env_given):
                raise WmelError(f"it was converted for {model.task}, not {task}")
        except WmelError as e:
            skips.add(m.name, str(e))
        else:
            fitting.append(m)

    # Frame skip and action set are the models' (the oracle's answers depend on
    # them); a model that disagrees with the run's is skipped, not silently mixed.
    frame_skip = next((m.model.frame_skip for m in fitting), 1)
    actions = inputs.actions
    action_source = f"file: {inputs.actions_path}" if inputs.actions is not None else None
    if actions is None:
        actions = next((m.model.action_set for m in fitting if m.model.action_set is not None), None)
        action_source = "the checkpoint's" if actions is not None else (
            "the task's default set (the checkpoints have a continuous action space)"
        )
    kept = []
    for m in fitting:
        model = m.model
        if model.frame_skip != frame_skip:
            skips.add(m.name, f"frame_skip {model.frame_skip} differs from this run's {frame_skip}; evaluate it separately")
        elif (
            inputs.actions is None
            and model.action_set is not None
            and not np.array_equal(np.asarray(model.action_set, np.float64), np.asarray(actions, np.float64))
        ):
            skips.add(m.name, "its action set differs from this run's; evaluate it separately")
        else:
            kept.append(m)
    if not kept:
        raise skips.none_left()
    return Selection(task, frame_skip, actions, action_source, tuple(kept))


def group_models(
    loaded: Sequence[LoadedModel], task: str, *, env_given: bool, inputs: Inputs = Inputs()
) -> list[tuple[str, list[LoadedModel]]]:
    """The groups of models a run evaluates, each on its own problem: [(task, models)].

    With ``--env`` one group: every model on that task (:func:`select_models`
    skips those that do not fit). Without, each model on its own recorded
    task (``task``, the first recorded one, for a model with none), grouped
    by (task, frame skip, action set), since the oracle's answers depend on
    them: each group gets them once. A model without an action set (an
    upstream checkpoint: judged on a discrete set) joins the first group of
    its task and frame skip, or makes its own. Groups in order of their
    first model.
    """
    if env_given:
        return [(task, list(loaded))]
    groups: dict[tuple, list[LoadedModel]] = {}

    def base(m: LoadedModel) -> tuple:
        return (m.model.task or task, m.model.frame_skip)

    for m in loaded:
        if inputs.actions is not None:
            key = (*base(m), None)
        elif m.model.action_set is not None:
            a = np.asarray(m.model.action_set, np.float64)
            key = (*base(m), (a.shape, a.tobytes()))
        else:
            continue
        groups.setdefault(key, []).append(m)
    for m in loaded:
        if inputs.actions is None and m.model.action_set is None:
            key = next((k for k in groups if k[:2] == base(m)), (*base(m), None))
            groups.setdefault(key, []).append(m)
    ordered = sorted(groups.items(), key=lambda kv: min(m.index for m in kv[1]))
    return [(key[0], sorted(members, key=lambda m: m.index)) for key, members in ordered]


def build_problem(
    selection: Selection,
    inputs: Inputs,
    *,
    n_states: int | None,
    k_steps: int | None,
    seed: int,
    precision: str | None,
    chunk_states: int,
):
    """The selection's :class:`~wmel_jax.evaluate.Problem`: the states (sampled or given), M2's actions.

    ``n_states`` / ``k_steps`` None: the defaults, or the rows of the given
    states / action sequence; a number that contradicts those rows is an
    error (it would be ignored). When the states are sampled, the oracle's
    kernel (which depends on the problem's shapes only) compiles on a
    background thread meanwhile.
    """
    given_n = n_states
    sequence = inputs.action_sequence
    if sequence is not None and k_steps is not None and k_steps != sequence.shape[0]:
        raise _contradiction("--k-steps", k_steps, "--action-sequence", sequence.shape[0])
    n_states = DEFAULT_N_STATES if n_states is None else n_states
    k_steps = DEFAULT_K_STEPS if k_steps is None else k_steps
    if inputs.states is None:
        precompile_oracle_targets(
            selection.task,
            n_states=n_states,
            k_steps=k_steps if inputs.action_sequence is None else inputs.action_sequence.shape[0],
            actions=selection.actions,
            frame_skip=selection.frame_skip,
            precision=precision,
            chunk_states=chunk_states,
        )
    problem = make_problem(
        selection.task,
        selection.actions,
        n_states=n_states,
        k_steps=k_steps,
        seed=seed,
        frame_skip=selection.frame_skip,
        precision=precision,
        states=inputs.states,
        action_sequence=inputs.action_sequence,
        episode_ids=inputs.episode_ids,
    )
    if inputs.states is not None and given_n is not None and given_n != problem.n_states:
        raise _contradiction("--n-states", given_n, "--states", problem.n_states)
    return problem


def _contradiction(flag: str, given: int, source: str, rows: int) -> WmelError:
    return WmelError(f"{flag} {given} contradicts {source}, which has {rows} rows; drop {flag}")


def score_models(
    problem,
    selection: Selection,
    downstream: Sequence[Any],
    *,
    spaces: tuple[str, ...],
    chunk_states: int,
    progress: Callable[[int, int, str], None] | None = None,
    say: Callable[[str], None] | None = None,
    runtime: Any = None,
    split: str = "auto",
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """The oracle's answers once, then every selected model's cell; (cells, timings).

    ``downstream``: each input model's pairing (or None), by input position.
    ``runtime`` (default the process's) and ``split``: where the work goes
    (:func:`wmel_jax.distributed.plan_split`); the plan is in
    ``timings["split"]``. Every process returns every cell.

    A metric that came out non-finite is null with its reason, and ``say``
    (default: stderr) warns about it.
    """
    from wmel_jax import distributed
    from wmel_jax.evaluate import non_finite_metrics
    from wmel_jax.progress import as_progress
    from wmel_jax.report import make_cell

    say = say or (lambda msg: print(msg, file=sys.stderr))
    rt = distributed.runtime() if runtime is None else runtime
    progress = as_progress(progress)
    models = selection.models
    plan = distributed.plan_split([_model_cost(m.model) for m in models], problem.n_states, rt.process_count, split)
    # Both splits compute the oracle's answers over every device of the run; split by
    # models, every process then needs all of them.
    with progress.phase(
        f"{problem.task}: the oracle's answers ({problem.n_states} states x {problem.actions.shape[0]} actions, "
        f"{problem.k_steps}-step rollouts)"
    ):
        targets = oracle_targets(problem, chunk_states, runtime=rt, gather=plan.kind == "models")
    timings: dict[str, Any] = {**targets.timings, "model_compile_s": 0.0, "model_run_s": 0.0, "interval_s": 0.0}
    # States each architecture's kernel will see in this run (its compile options depend on it:
    # the whole run's count, so that every split compiles the same programs).
    per_arch = Counter(m.model.arch for m in models)
    mine = [j for j in range(len(models)) if plan.kind == "states" or plan.assignment[j] == rt.process_index]
    where = rt if plan.kind == "states" else rt.local()
    results: dict[int, tuple[dict, dict]] = {}
    for i, j in enumerate(mine):
        m = models[j]
        if progress:
            progress(i, len(mine), m.name)
        results[j] = model_metrics(
            m.model, problem, targets, chunk_states, total_states=problem.n_states * per_arch[m.model.arch],
            spaces=spaces, runtime=where,
        )
    if progress:
        progress(len(mine), len(mine), "")
    if plan.kind == "models":  # every process gets every model's metrics (JSON: floats round-trip exactly)
        shared = distributed.allgather_json([[j, *results[j]] for j in mine])
        results = {j: (values, t) for part in shared for j, values, t in part}
    cells = []
    for j, m in enumerate(models):
        values, t = results[j]
        timings["model_compile_s"] += t["model_compile_s"]
        timings["model_run_s"] += t["model_run_s"]
        timings["interval_s"] += t["interval_s"]
        bad = non_finite_metrics(values)
        if bad and rt.process_index == 0:  # said once, by the process that prints
            say(f"wmel-jax: warning: {m.name}: {', '.join(bad)} came out NaN or infinite (the model's predictions "
                "overflow on these states); reported as null, with the reason under 'unavailable'")
        cells.append(make_cell(m.label, values, downstream[m.index], env=problem.task, model_meta=m.model.meta))
    timings["split"] = plan
    return cells, timings


def _model_cost(model: Any) -> float:
    """A model's relative cost per state: its parameter count (the kernel's work is its matmuls)."""
    import jax

    return float(sum(np.size(x) for x in jax.tree_util.tree_leaves(model.params)))


def run_config(
    problem, selection: Selection, *, seed: int, spaces: tuple[str, ...], states_path: str | None,
    episode_ids_path: str | None = None, runtime: Mapping[str, Any] | None = None,
) -> dict:
    """The report's ``config``: everything needed to rerun the evaluation, and how its intervals were made.

    ``runtime``: where it ran (devices, processes, how the work was split);
    recorded last, it changes none of the numbers beyond the tolerances of
    :mod:`wmel_jax.distributed`.
    """
    extra = {} if runtime is None else {"runtime": dict(runtime)}
    return {
        "env": problem.task,
        "n_states": problem.n_states,
        "k_steps": problem.k_steps,
        "seed": seed,
        "frame_skip": problem.frame_skip,
        "precision": problem.precision,
        "action_set": problem.actions,
        "action_sequence": problem.action_sequence,
        "action_set_source": selection.action_source,
        "metric_spaces_requested": list(spaces),
        "states": "file: " + str(states_path) if states_path else "sampled (seeded random-action rollouts)",
        **interval_config(problem, episode_file=episode_ids_path),
        **extra,
    }


def declare_outputs(opts: EvalOptions) -> OutputSet:
    """The run's outputs, checked before any work against each other and against every input.

    An existing output needs ``opts.force``; an output that is an input, or
    two outputs that are one file, are errors (see :class:`~wmel_jax.fileio.OutputSet`).
    """
    outputs = OutputSet(force=opts.force)
    outputs.add_inputs(opts.models, "model")
    outputs.add_input(opts.states, "--states file")
    outputs.add_input(opts.action_sequence, "--action-sequence file")
    outputs.add_input(opts.actions, "--actions file")
    outputs.add_input(opts.episode_ids, "--episode-ids file")
    outputs.add_inputs(opts.downstream, "--downstream file")
    outputs.add(opts.output, "report (-o)")
    outputs.add(opts.figure, "figure (--figure)")
    outputs.add(opts.save_states, "saved states (--save-states)")
    return outputs


def write_outputs(report: Mapping[str, Any], problem, opts: EvalOptions, outputs: OutputSet | None = None) -> None:
    """The run's files, written last and together: rendered first, then renamed into place at once.

    An error before this, or while rendering (a full disk), leaves none of them behind.
    ``outputs``: the set :func:`declare_outputs` checked before the work (declared now when None).
    In a run of several processes (every one of which checked them), process 0 alone writes them.
    """
    from wmel_jax.distributed import is_writer

    if not is_writer():
        return
    outputs = declare_outputs(opts) if outputs is None else outputs
    if opts.save_states:
        outputs.write(opts.save_states, npy_bytes(problem.states))
    if opts.output:
        outputs.write(opts.output, json_text(report))
    if opts.figure:
        from wmel_jax.figure import figure_format, render_figure

        outputs.write(opts.figure, render_figure([report], figure_format(opts.figure)))
    outputs.commit()


def run_eval(
    opts: EvalOptions,
    *,
    say: Callable[[str], None] | None = None,
    progress: Any = None,
) -> dict[str, Any]:
    """Evaluate every model in ``opts.models``; returns the report dict (also written when asked).

    The stages, in order: check the options and outputs, read the input
    files, load the models, settle the task, group the models (without
    ``--env``, each on its own recorded task: one group per task, frame skip
    and action set), pair the downstream files, and per group: select the
    models that can be judged together, build the problem, score every model
    against the oracle's answers (computed once per group); then assemble the
    report (one block per group) and write the outputs.

    ``progress``: a :class:`wmel_jax.progress.Progress` (phases, the models'
    bar, kernels compiling), or an older ``(done, total, name)`` callback
    over the models, or None.
    """
    from wmel_jax import distributed
    from wmel_jax.progress import as_progress

    say = say or (lambda msg: print(msg, file=sys.stderr))
    # In a run of several processes, process 0 alone says how it goes.
    progress = as_progress(progress if distributed.is_writer() else None)
    try:
        with progress.watch_kernels():
            return _run_eval(opts, say, progress)
    finally:
        progress.close()


def _run_eval(opts: EvalOptions, say: Callable[[str], None], progress) -> dict[str, Any]:
    from wmel_jax import distributed, kernel_cache
    from wmel_jax.downstream import pair_downstream
    from wmel_jax.evaluate import METRIC_SPACES
    from wmel_jax.report import build_group_report

    t_start = time.perf_counter()
    cache_before = kernel_cache.stats()

    rt = distributed.runtime()
    distributed.check_split(opts.split)
    outputs = declare_outputs(opts)  # by every process (the same checks), written by process 0 alone
    check_run_numbers(n_states=opts.n_states, k_steps=opts.k_steps, seed=opts.seed, chunk_states=opts.chunk_states)
    labels = check_labels(opts.models, opts.labels)
    spaces = requested_spaces(opts.metrics)
    if opts.downstream and len(opts.downstream) != len(opts.models):
        raise WmelError(
            f"--downstream takes one file per model, in the same order: got {len(opts.downstream)} "
            f"file(s) for {len(opts.models)} model(s)"
        )
    inputs = Inputs.read(opts.states, opts.action_sequence, opts.actions, opts.episode_ids)

    skips = Skips(len(opts.models))
    with progress.phase(f"loading {len(opts.models)} model file(s)"):
        loaded = load_models(opts.models, labels, skips, say)
    if not loaded:  # every file refused: their reasons, not a task question
        raise skips.none_left()
    t_loaded = time.perf_counter()
    task = resolve_task(opts.env, loaded)
    grouped = group_models(loaded, task, env_given=opts.env is not None, inputs=inputs)
    if len(grouped) > 1:
        given = [flag for flag, value in (("--states", opts.states), ("--action-sequence", opts.action_sequence),
                                          ("--save-states", opts.save_states)) if value]
        if given:
            tasks = ", ".join(dict.fromkeys(t for t, _ in grouped))
            raise WmelError(
                f"{' and '.join(given)} belong to one problem, but these models need {len(grouped)} "
                f"(tasks {tasks}, by task, frame skip and action set): pass --env TASK, or evaluate them separately"
            )
    model_task = {m.index: t for t, members in grouped for m in members}
    fallback = task if len(grouped) == 1 else None
    if opts.cpg is not None:
        from wmel_jax.planning.cpg import cpg_downstream

        if opts.downstream:
            raise WmelError("--cpg computes the downstream gap: give it or --downstream files, not both")
        if len(grouped) > 1:
            tasks = ", ".join(dict.fromkeys(t for t, _ in grouped))
            raise WmelError(
                f"--cpg plans on one task, but these models need {len(grouped)} problems (tasks {tasks}, "
                f"by task, frame skip and action set): pass --env TASK, or evaluate them separately"
            )
        cpg_opts = dataclasses.replace(opts.cpg, models=list(opts.models), labels=labels, env=grouped[0][0])
        downstream = cpg_downstream(cpg_opts, say=say, progress=progress, outputs=outputs)
    else:
        downstream = pair_downstream(
            list(opts.models), opts.downstream, [model_task.get(i, fallback) for i in range(len(opts.models))]
        )

    groups: list[tuple[dict, list]] = []
    problem = None
    timings: dict[str, float] = {"load_s": t_loaded - t_start, "states_s": 0.0}
    for group_task, members in grouped:
        try:
            selection = select_models(
                members, group_task, skips, env_given=opts.env is not None,
                requirement=lambda model: model_spaces(model.arch, spaces), inputs=inputs,
            )
        except WmelError:
            if len(grouped) == 1:
                raise
            continue  # every model of this group was skipped (with its reason); the other groups run
        t0 = time.perf_counter()
        what = (f"checking {inputs.states.shape[0]} given states" if inputs.states is not None else
                f"sampling {DEFAULT_N_STATES if opts.n_states is None else opts.n_states} states (seeded rollouts)")
        with progress.phase(f"{group_task}: {what}"):
            problem = build_problem(
                selection, inputs, n_states=opts.n_states, k_steps=opts.k_steps, seed=opts.seed,
                precision=opts.precision, chunk_states=opts.chunk_states,
            )
        timings["states_s"] += time.perf_counter() - t0
        cells, run_timings = score_models(
            problem, selection, downstream, spaces=spaces, chunk_states=opts.chunk_states, progress=progress, say=say,
            runtime=rt, split=opts.split,
        )
        plan = run_timings.pop("split")
        for name, value in run_timings.items():
            timings[name] = timings.get(name, 0.0) + value
        config = run_config(problem, selection, seed=opts.seed, spaces=spaces, states_path=opts.states,
                            episode_ids_path=opts.episode_ids,
                            runtime={**rt.describe(), "split": plan.kind, "split_reason": plan.reason})
        groups.append((config, cells))
    if not groups:
        raise skips.none_left()

    timings["compile_s"] = timings["oracle_compile_s"] + timings["model_compile_s"]
    timings["run_s"] = timings["oracle_run_s"] + timings["model_run_s"]
    # Where compile_s went, summed over threads: tracing and lowering kernels
    # (0 when read from the cache), XLA compiling them (or reading them back).
    cache_after = kernel_cache.stats()
    for name in ("trace_s", "xla_s"):
        timings[name] = cache_after.get(name, 0.0) - cache_before.get(name, 0.0)
    timings["total_s"] = time.perf_counter() - t_start

    report = build_group_report(groups, skips.items, timings, metric_spaces=METRIC_SPACES)
    write_outputs(report, problem, opts, outputs)
    return report

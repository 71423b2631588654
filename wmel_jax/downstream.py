"""Downstream results: the reference project's Counterfactual Planning Gap JSONs.

A CPG JSON (``results/dmc_*/tdmpc2_cpg*.json`` in the reference project) holds
the planning outcome of one trained model: ``cpg.gap`` = oracle minus learned
planning success rate, with ``cpg.verdict``, both success rates, the
environment (``"dmc_cartpole_swingup"``), the training seed and
``training.tdmpc2_model_size``. Pairing a cell with one lets the report
correlate offline metrics with the gap (SPEC.md section 7).

Pairing rule (``wmel-jax eval MODEL ... --downstream F.json ...``): one
downstream file per model, in the same order; a count mismatch, or a file
whose environment is not the evaluated task, is a user error. Pairing by
position is easy to get wrong, so each pair is checked: when the checkpoint's
``meta`` (training steps, seed, model size) contradicts the CPG file's,
:func:`meta_mismatches` names the fields (the report warns, per pair), and
each pair records the sha256 of its model file, so two cells of one model
file are flagged in the correlation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from wmel_jax.errors import WmelError

__all__ = ["Downstream", "read_downstream", "pair_downstream", "normalize_task", "meta_mismatches", "file_sha256"]


def normalize_task(name: str) -> str:
    """A task name in wmel-jax's spelling: ``"dmc_cartpole_swingup"`` -> ``"cartpole-swingup"``.

    Lower case, the ``dmc`` prefix dropped, underscores as hyphens; a name
    already in that spelling is returned unchanged.
    """
    name = name.strip().lower().replace("_", "-")
    if name.startswith("dmc-"):
        name = name[len("dmc-") :]
    return name


@dataclass(frozen=True)
class Downstream:
    """One downstream CPG result, read from ``path``.

    ``gap`` is always a finite float; the other fields are None when the file
    does not have them (or has them with the wrong type).
    """

    path: str
    environment: str
    gap: float
    verdict: str | None = None
    oracle_success_rate: float | None = None
    learned_success_rate: float | None = None
    model_size: int | None = None
    seed: int | None = None
    training_steps: int | None = None
    #: sha256 of the model file paired with this result (set by :func:`pair_downstream`).
    model_sha256: str | None = None

    @property
    def task(self) -> str:
        """The environment in wmel-jax's task spelling (``cartpole-swingup``)."""
        return normalize_task(self.environment)

    def cell_fields(self) -> dict[str, Any]:
        """The fields a paired report cell carries, in the reference bundle's layout.

        ``gap``, ``verdict``, ``model_size`` and ``seed`` sit flat beside the
        metrics; other numbers go in ``context``, so tools that take every
        numeric cell field for a metric (the reference's ``correlate.py``)
        do not mistake a success rate for one.
        """
        return {
            "gap": self.gap,
            "verdict": self.verdict,
            "model_size": self.model_size,
            "seed": self.seed,
            "context": {
                "downstream_json": self.path,
                "environment": self.environment,
                "oracle_success_rate": self.oracle_success_rate,
                "learned_success_rate": self.learned_success_rate,
                "training_steps": self.training_steps,
                "model_sha256": self.model_sha256,
            },
        }


def _finite_float(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _int_or_none(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return None


def _dict(v: Any) -> Mapping[str, Any]:
    return v if isinstance(v, dict) else {}


def read_downstream(path: str | os.PathLike) -> Downstream:
    """Read one CPG JSON. Bad input raises WmelError naming the file and the problem.

    Errors: missing or unreadable file, not JSON, not a JSON object, no
    ``cpg.gap``, a gap that is not a finite number, no ``environment``.
    """
    from wmel_jax.fileio import read_json_file

    shown = str(path)
    # A regular file of bounded size, parsed with every JSON failure (nesting too deep too) one line.
    data = read_json_file(path, "downstream file")
    if not isinstance(data, dict):
        raise WmelError(f"downstream file {shown!r} is not a JSON object with a cpg.gap")
    cpg = data.get("cpg")
    if not isinstance(cpg, dict) or "gap" not in cpg:
        raise WmelError(f"downstream file {shown!r} has no cpg.gap (not a Counterfactual Planning Gap JSON?)")
    gap = _finite_float(cpg["gap"])
    if gap is None:
        raise WmelError(f"downstream file {shown!r}: cpg.gap is {cpg['gap']!r}, not a finite number")
    environment = data.get("environment")
    if not isinstance(environment, str) or not environment.strip():
        raise WmelError(f"downstream file {shown!r} has no environment, so it cannot be matched to a task")
    training = _dict(data.get("training"))
    config = _dict(data.get("config"))
    verdict = cpg.get("verdict")
    training_steps = training.get("training_steps", config.get("training_steps"))
    return Downstream(
        path=shown,
        environment=environment,
        gap=gap,
        verdict=verdict if isinstance(verdict, str) else None,
        oracle_success_rate=_finite_float(cpg.get("oracle_success_rate")),
        learned_success_rate=_finite_float(cpg.get("learned_success_rate")),
        model_size=_int_or_none(training.get("tdmpc2_model_size")),
        seed=_int_or_none(data.get("seed")),
        training_steps=_int_or_none(training_steps),
    )


def file_sha256(path: str | os.PathLike) -> str | None:
    """sha256 of a file's bytes (streamed), or None when it cannot be read."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


#: The checkpoint ``meta`` fields checked against a CPG file's: (meta key, Downstream attribute).
CHECKED_META = (("training_steps", "training_steps"), ("seed", "seed"), ("tdmpc2_model_size", "model_size"))


def meta_mismatches(meta: Mapping[str, Any] | None, downstream: Downstream) -> dict[str, dict[str, Any]]:
    """The fields where a checkpoint's ``meta`` contradicts its paired CPG file: {field: {checkpoint, downstream}}.

    Fields: training_steps, seed, tdmpc2_model_size (the CPG file's
    ``training.tdmpc2_model_size``). A field missing on either side says
    nothing and is not a mismatch; numbers are compared as integers.
    """
    meta = meta or {}
    out: dict[str, dict[str, Any]] = {}
    for key, attr in CHECKED_META:
        mine, theirs = _int_or_none(meta.get(key)), getattr(downstream, attr)
        if mine is not None and theirs is not None and mine != theirs:
            out[key] = {"checkpoint": mine, "downstream": theirs}
    return out


def pair_downstream(
    models: Sequence[str], downstream_paths: Sequence[str | os.PathLike] | None, task: str | Sequence[str | None]
) -> list[Downstream | None]:
    """The downstream result for each model (None for all when none are given).

    ``downstream_paths`` are one per model, in the models' order. ``task``:
    the task evaluated, or one per model (a run over several tasks; None: not
    checked, a model that is skipped anyway). Raises WmelError on a count
    mismatch or a file whose environment is not its model's task.
    Every file is read and checked before any model is evaluated. Each
    result records the sha256 of its model file (None when it cannot be read:
    the model is then skipped with its own error).
    """
    if not downstream_paths:
        return [None] * len(models)
    if len(downstream_paths) != len(models):
        raise WmelError(
            f"--downstream takes one file per model, in the same order: got {len(downstream_paths)} "
            f"file(s) for {len(models)} model(s)"
        )
    paired = []
    tasks = [task] * len(models) if isinstance(task, str) else list(task)
    for model, path, model_task in zip(models, downstream_paths, tasks, strict=True):
        d = read_downstream(path)
        if model_task is not None and d.task != normalize_task(model_task):
            raise WmelError(
                f"downstream file {d.path!r} (for {model!r}) is for environment {d.environment!r}, "
                f"but the task evaluated is {model_task!r}"
            )
        paired.append(dataclasses.replace(d, model_sha256=file_sha256(model)))
    return paired

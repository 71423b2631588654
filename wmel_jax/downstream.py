"""Downstream results: the reference project's Counterfactual Planning Gap JSONs.

A CPG JSON (``results/dmc_*/tdmpc2_cpg*.json`` in the reference project) holds
the planning outcome of one trained model: ``cpg.gap`` = oracle minus learned
planning success rate, with ``cpg.verdict``, both success rates, the
environment (``"dmc_cartpole_swingup"``), the training seed and
``training.tdmpc2_model_size``. Pairing a cell with one lets the report
correlate offline metrics with the gap (SPEC.md section 7).

Pairing rule (``wmel-jax eval MODEL ... --downstream F.json ...``): one
downstream file per model, in the same order; a count mismatch, or a file
whose environment is not the evaluated task, is a user error.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from wmel_jax.errors import WmelError

__all__ = ["Downstream", "read_downstream", "pair_downstream", "normalize_task"]


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


def pair_downstream(
    models: Sequence[str], downstream_paths: Sequence[str | os.PathLike] | None, task: str
) -> list[Downstream | None]:
    """The downstream result for each model (None for all when none are given).

    ``downstream_paths`` are one per model, in the models' order. Raises
    WmelError on a count mismatch or a file whose environment is not ``task``.
    Every file is read and checked before any model is evaluated.
    """
    if not downstream_paths:
        return [None] * len(models)
    if len(downstream_paths) != len(models):
        raise WmelError(
            f"--downstream takes one file per model, in the same order: got {len(downstream_paths)} "
            f"file(s) for {len(models)} model(s)"
        )
    paired = []
    want = normalize_task(task)
    for model, path in zip(models, downstream_paths):
        d = read_downstream(path)
        if d.task != want:
            raise WmelError(
                f"downstream file {d.path!r} (for {model!r}) is for environment {d.environment!r}, "
                f"but the task evaluated is {task!r}"
            )
        paired.append(d)
    return paired

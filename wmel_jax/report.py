"""The eval report: a JSON document with the reference's field names, and a stdout table.

Layout (values rounded to 6 decimals here and only here; undefined is null)::

    schema_version, wmel_jax_version, generated_at (UTC ISO 8601),
    config   {env, n_states, k_steps, seed, frame_skip, precision, action_set, action_sequence, ...},
    metric_spaces {metric: "observation" | "latent" | "reward"}   (when given)
    cells    [{model, env, m1_l2_onestep, m2_l2_kstep, m2_curve, m3_action_agreement,
               m3_states_used, <more metric fields>,
               unavailable {metric: reason}   (metrics the model cannot have or not asked for: null),
               and when paired: gap, verdict, model_size, seed,
               context {downstream_json, environment, oracle_success_rate,
                        learned_success_rate, training_steps}}],
    within_env_correlation {task: {n_cells, metrics {metric: {rho, ci_low, ci_high,
                            excludes_zero, n_cells, n_resamples, n_resamples_used,
                            confidence, bootstrap_seed, reason}}}},
    pooled_m3_correlation  null, or {metric, tasks, n_cells, note, correlation} (M3 only),
    skipped  [{model, reason}],
    timings  {compile_s, run_s, ...}

A cell may carry metric fields beyond M1-M3 (latent-space metrics, say): they
are written, correlated and tabulated without code changes here. Write with
:func:`write_report` (atomic, ``allow_nan=False``).
"""

from __future__ import annotations

import datetime as _dt
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from wmel_jax.downstream import Downstream
from wmel_jax.fileio import write_json
from wmel_jax.stats import metric_keys, pooled_m3_correlation, within_env_correlation

__all__ = [
    "SCHEMA_VERSION",
    "DECIMALS",
    "CONFIG_KEYS",
    "make_cell",
    "build_report",
    "write_report",
    "format_table",
]

SCHEMA_VERSION = "1.0"
#: Report values are rounded to this many decimals (the reference's rounding).
DECIMALS = 6
#: Required ``config`` fields, in report order.
CONFIG_KEYS = ("env", "n_states", "k_steps", "seed", "frame_skip", "precision", "action_set", "action_sequence")
# Cell fields in report order; the other metric fields follow, then the pairing.
_CELL_HEAD = ("model", "env", "m1_l2_onestep", "m2_l2_kstep", "m2_curve", "m3_action_agreement", "m3_states_used")
_PAIRING_KEYS = ("gap", "verdict", "model_size", "seed", "context")


def _plain(v: Any) -> Any:
    """JSON-ready Python values: arrays to lists, numpy/jax scalars to Python, non-finite floats to None."""
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    if isinstance(v, np.generic):
        return _plain(v.item())
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if hasattr(v, "__array__"):  # numpy and jax arrays
        return _plain(np.asarray(v).tolist())
    raise TypeError(f"cannot put a {type(v).__name__} in a report")


def _rounded(v: Any) -> Any:
    """Round every float in a JSON-ready structure to DECIMALS."""
    if isinstance(v, float):
        return round(v, DECIMALS)
    if isinstance(v, dict):
        return {k: _rounded(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_rounded(x) for x in v]
    return v


def make_cell(
    model: str,
    metrics: Mapping[str, Any],
    downstream: Downstream | None = None,
    env: str | None = None,
) -> dict[str, Any]:
    """One report cell: the model, its metric fields, and its pairing when paired.

    ``metrics``: at least m1_l2_onestep, m2_l2_kstep, m2_curve,
    m3_action_agreement, m3_states_used (any further metric fields are kept).
    Values may be numpy/jax scalars or arrays; they are made plain by
    :func:`build_report`.
    """
    missing = [k for k in _CELL_HEAD[2:] if k not in metrics]
    if missing:
        raise ValueError(f"cell for {model!r} lacks metric fields {missing}")
    reserved = ("model", "env", *(_PAIRING_KEYS if downstream is not None else ()))
    clash = [k for k in metrics if k in reserved]
    if clash:
        raise ValueError(f"metric fields {clash} clash with the cell's own fields")
    cell: dict[str, Any] = {"model": str(model)}
    if env is not None:
        cell["env"] = env
    cell.update(metrics)
    if downstream is not None:
        cell.update(downstream.cell_fields())
    return cell


def _ordered_cell(cell: Mapping[str, Any]) -> dict[str, Any]:
    head = [k for k in _CELL_HEAD if k in cell]
    tail = [k for k in _PAIRING_KEYS if k in cell]
    middle = [k for k in cell if k not in head and k not in tail]
    return {k: cell[k] for k in (*head, *middle, *tail)}


def build_report(
    config: Mapping[str, Any],
    cells: Sequence[Mapping[str, Any]],
    skipped: Iterable[Mapping[str, Any]] = (),
    timings: Mapping[str, float] | None = None,
    *,
    n_resamples: int = 10_000,
    bootstrap_seed: int = 0,
    confidence: float = 0.95,
    generated_at: _dt.datetime | None = None,
    metric_spaces: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The report dict, JSON-ready: plain Python values, floats rounded, undefined as None.

    config: the CONFIG_KEYS fields (more are kept after them). cells: from
    :func:`make_cell`; a cell without ``env`` gets ``config["env"]``.
    skipped: [{model, reason}]. timings: seconds by name (compile_s, run_s...).
    metric_spaces: {metric: space} (where each metric lives), written after
    ``config`` when given.
    Correlations with the gap (``within_env_correlation``, and
    ``pooled_m3_correlation`` when paired cells span several tasks) are
    computed from the unrounded values.
    """
    missing = [k for k in CONFIG_KEYS if k not in config]
    if missing:
        raise ValueError(f"report config lacks {missing}")
    plain_config = _plain({**{k: config[k] for k in CONFIG_KEYS}, **config})
    plain_cells = [_ordered_cell(_plain({"env": config["env"], **cell})) for cell in cells]
    for cell in plain_cells:
        if "model" not in cell:
            raise ValueError("every cell needs a model")
    plain_skipped = [_plain({"model": s["model"], "reason": s["reason"]}) for s in skipped]

    stats_kwargs = dict(n_resamples=n_resamples, seed=bootstrap_seed, confidence=confidence)
    within = within_env_correlation(plain_cells, **stats_kwargs)
    pooled = pooled_m3_correlation(plain_cells, **stats_kwargs)
    for block in within.values():
        for result in block["metrics"].values():
            result["bootstrap_seed"] = bootstrap_seed
    if pooled is not None:
        pooled["correlation"]["bootstrap_seed"] = bootstrap_seed

    from wmel_jax import __version__

    when = generated_at or _dt.datetime.now(_dt.timezone.utc)
    report = {
        "schema_version": SCHEMA_VERSION,
        "wmel_jax_version": __version__,
        "generated_at": when.astimezone(_dt.timezone.utc).isoformat(timespec="seconds"),
        "config": plain_config,
        **({"metric_spaces": _plain(dict(metric_spaces))} if metric_spaces is not None else {}),
        "cells": plain_cells,
        "within_env_correlation": within,
        "pooled_m3_correlation": pooled,
        "skipped": plain_skipped,
        "timings": _plain(dict(timings or {})),
    }
    return _rounded(_plain(report))


def write_report(report: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write the report JSON atomically (NaN or infinity is a bug and raises)."""
    write_json(path, report)
    return Path(path)


# ---------------------------------------------------------------- the table


def _num(v: Any, fmt: str) -> str:
    return "n/a" if v is None else format(v, fmt)


def _metric_header(key: str) -> str:
    return {
        "m1_l2_onestep": "M1 one-step L2",
        "m2_l2_kstep": "M2 k-step L2",
        "m3_action_agreement": "M3 tau-b",
        "m1_latent_onestep": "latent 1-step L2",
        "m2_latent_kstep": "latent k-step L2",
        "reward_rank_agreement": "reward tau-b",
    }.get(key, key)


#: Rank-agreement metrics and the count of states their mean is over.
_STATES_USED = {
    "m3_action_agreement": "m3_states_used",
    "reward_rank_agreement": "reward_rank_states_used",
}
#: Shown in the table for a metric the model cannot have (null, listed under ``unavailable``).
UNAVAILABLE_MARK = "-"


def _columns(rows: list[list[str]], right: Sequence[bool]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right)).rstrip()
        for row in rows
    ]


def _correlation_line(key: str, r: Mapping[str, Any]) -> str:
    if r.get("rho") is None:
        return f"  {key:<22} undefined: {r.get('reason')} (n={r.get('n_cells')})"
    line = f"  {key:<22} rho={r['rho']:+.3f}"
    if r.get("ci_low") is None:
        return f"{line}  interval undefined: {r.get('reason')} (n={r['n_cells']})"
    verdict = "excludes 0" if r["excludes_zero"] else "includes 0"
    return (
        f"{line}  [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]  n={r['n_cells']}  {verdict}"
        f"  ({r['n_resamples_used']}/{r['n_resamples']} resamples)"
    )


def format_table(report: Mapping[str, Any]) -> str:
    """A readable summary of a report for stdout: one row per cell, skipped models, correlations."""
    cfg = report.get("config", {})
    n_states = cfg.get("n_states")
    n_actions = len(cfg.get("action_set") or [])
    lines = [
        f"{cfg.get('env')}: N={n_states} states, k={cfg.get('k_steps')} steps, seed {cfg.get('seed')}, "
        f"frame_skip {cfg.get('frame_skip')}, {n_actions} actions, oracle {cfg.get('precision')}"
    ]
    cells = list(report.get("cells", []))
    if cells:
        # A column no cell can have (all decoder-less, say) is left out; the note below says why.
        keys = [k for k in metric_keys(cells) if not all(k in (c.get("unavailable") or {}) for c in cells)]
        hidden = {
            k: cells[0]["unavailable"][k]
            for k in metric_keys(cells)
            if k not in keys
        }
        paired = any("gap" in c for c in cells)
        header = ["model", *(_metric_header(k) for k in keys)] + (["gap"] if paired else [])
        rows = [header]
        notes: dict[str, list[str]] = {}
        for c in cells:
            row = [str(c.get("model"))]
            unavailable = c.get("unavailable") or {}
            for k in keys:
                v = c.get(k)
                if k in unavailable:
                    row.append(UNAVAILABLE_MARK)
                    notes.setdefault(unavailable[k], []).append(_metric_header(k))
                elif k in _STATES_USED:
                    used = c.get(_STATES_USED[k])
                    row.append(f"{_num(v, '+.3f')} ({used}/{n_states})")
                else:
                    row.append(_num(v, ".6f"))
            if paired:
                row.append(_num(c.get("gap"), "+.2f") if "gap" in c else "-")
            rows.append(row)
        lines += ["", *_columns(rows, [False] + [True] * (len(header) - 1))]
        for k, reason in hidden.items():
            notes.setdefault(reason, []).append(_metric_header(k))
        for reason, metrics in notes.items():
            lines.append(f"not available: {', '.join(dict.fromkeys(metrics))}: {reason}")
        spaces = report.get("metric_spaces") or {}
        shown = [k for k in keys if k in spaces]
        if shown:
            by_space: dict[str, list[str]] = {}
            for k in shown:
                by_space.setdefault(spaces[k], []).append(_metric_header(k))
            lines.append("spaces: " + "; ".join(f"{space}: {', '.join(m)}" for space, m in by_space.items()))
    else:
        lines += ["", "no cells evaluated"]

    skipped = list(report.get("skipped", []))
    if skipped:
        lines += ["", f"skipped ({len(skipped)}):"]
        lines += [f"  {s['model']}: {s['reason']}" for s in skipped]

    for task, block in (report.get("within_env_correlation") or {}).items():
        some = next(iter(block["metrics"].values()), {})
        lines += [
            "",
            f"Spearman(metric, gap) within {task}, {block['n_cells']} paired cells, "
            f"{round(100 * some.get('confidence', 0.95))}% bootstrap interval:",
        ]
        lines += [_correlation_line(k, r) for k, r in block["metrics"].items()]
    pooled = report.get("pooled_m3_correlation")
    if pooled:
        lines += [
            "",
            f"Pooled across {', '.join(pooled['tasks'])} ({pooled['n_cells']} paired cells). {pooled['note']}",
            _correlation_line(pooled["metric"], pooled["correlation"]),
        ]

    timings = report.get("timings") or {}
    if timings:
        lines += ["", "timings: " + ", ".join(f"{k} {_num(v, '.3f')}" for k, v in timings.items())]
    return "\n".join(lines) + "\n"

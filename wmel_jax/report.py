"""The eval report: a JSON document with the reference's field names, and a stdout table.

Layout (values rounded to 6 decimals here and only here; undefined is null)::

    schema_version, wmel_jax_version, generated_at (UTC ISO 8601),
    config   {env, n_states, k_steps, seed, frame_skip, precision, action_set, action_sequence, ...,
              n_episodes, episodes, interval {method, unit, n_units, n_resamples, confidence, seed}},
    metric_spaces {metric: "observation" | "latent" | "reward"}   (when given)
    cells    [{model, env, m1_l2_onestep, m1_l2_onestep_ci [low, high], m2_l2_kstep, m2_l2_kstep_ci,
               m2_curve, m2_curve_ci [[low, high] per step], m3_action_agreement,
               m3_action_agreement_ci, <more metric fields, each with its _ci>,
               counts {n_states, n_episodes, m3_states_used, reward_rank_states_used},
               episode_sd {metric: per-episode sd},
               unavailable {metric: reason}   (metrics the model cannot have or not asked for: null),
               and when paired: gap, verdict, model_size, seed,
               context {downstream_json, environment, oracle_success_rate,
                        learned_success_rate, training_steps, model_sha256,
                        meta_mismatch {field: {checkpoint, downstream}} (when they disagree)}}],
    precision_warnings [{env, model, metric, half_width, limit, basis, n_states, n_episodes,
                         suggested_n_states}],
    within_env_correlation {task: {n_cells, warnings [...], identical_models [[model, ...]],
                            metrics {metric: {rho, ci_low, ci_high, excludes_zero, p_value,
                            p_value_method, n_cells, n_resamples, n_resamples_used, confidence,
                            interval_meaningful, bootstrap_seed, reason}}}},
    pooled_m3_correlation  null, or {metric, tasks, n_cells, note, correlation} (M3 only),
    pairing_warnings [{model, downstream_json, fields {field: {checkpoint, downstream}}}],
    skipped  [{model, reason}],
    timings  {compile_s, run_s, ...}

A cell's top-level numbers are its metrics and nothing else (besides the
downstream ``gap`` and the descriptors ``seed``, ``model_size``), so a tool
that takes every top-level number of a cell for a metric (the reference's
``correlate.py``) finds only metrics: counts live in ``counts``, intervals
are lists. A cell may carry metric fields beyond M1-M3 (latent-space
metrics, say): they are written, correlated and tabulated without code
changes here. Write with :func:`write_report` (atomic, ``allow_nan=False``).
"""

from __future__ import annotations

import datetime as _dt
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from wmel_jax.downstream import Downstream, meta_mismatches
from wmel_jax.fileio import write_json
from wmel_jax.stats import (
    PRECISION_SPREAD_FRACTION,
    RANK_HALF_WIDTH_LIMIT,
    metric_keys,
    pooled_m3_correlation,
    precision_warnings,
    within_env_correlation,
)

__all__ = [
    "SCHEMA_VERSION",
    "DECIMALS",
    "CONFIG_KEYS",
    "make_cell",
    "build_report",
    "build_group_report",
    "group_views",
    "write_report",
    "format_table",
]

SCHEMA_VERSION = "1.0"
#: Report values are rounded to this many decimals (the reference's rounding).
DECIMALS = 6
#: Required ``config`` fields, in report order.
CONFIG_KEYS = ("env", "n_states", "k_steps", "seed", "frame_skip", "precision", "action_set", "action_sequence")
# Metric fields make_cell requires (an interval beside each is optional).
_REQUIRED = ("m1_l2_onestep", "m2_l2_kstep", "m2_curve", "m3_action_agreement", "m3_states_used")
# Cell fields in report order; the other metric fields follow, then the nested objects and the pairing.
_CELL_HEAD = ("model", "env", "m1_l2_onestep", "m1_l2_onestep_ci", "m2_l2_kstep", "m2_l2_kstep_ci",
              "m2_curve", "m2_curve_ci", "m3_action_agreement", "m3_action_agreement_ci")
_NESTED_KEYS = ("counts", "episode_sd", "unavailable")
_PAIRING_KEYS = ("gap", "verdict", "model_size", "seed", "context")
#: Counts a metric's value rests on: kept in the cell's ``counts`` object, not beside the metrics.
_COUNT_KEYS = ("n_states", "n_episodes")


def _is_count(key: str) -> bool:
    return key in _COUNT_KEYS or key.endswith("_states_used")


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
    *,
    model_meta: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One report cell: the model, its metric fields, and its pairing when paired.

    ``metrics``: at least m1_l2_onestep, m2_l2_kstep, m2_curve,
    m3_action_agreement, m3_states_used (any further metric fields, their
    ``*_ci`` intervals and ``episode_sd`` are kept); ``*_states_used``,
    ``n_states`` and ``n_episodes`` go into the cell's ``counts`` object.
    Values may be numpy/jax scalars or arrays; they are made plain by
    :func:`build_report`. ``model_meta``: the checkpoint's ``meta``; when
    paired, the fields where it contradicts the downstream file are recorded
    under ``context.meta_mismatch`` (the report warns).
    """
    missing = [k for k in _REQUIRED if k not in metrics]
    if missing:
        raise ValueError(f"cell for {model!r} lacks metric fields {missing}")
    reserved = ("model", "env", "counts", *(_PAIRING_KEYS if downstream is not None else ()))
    clash = [k for k in metrics if k in reserved]
    if clash:
        raise ValueError(f"metric fields {clash} clash with the cell's own fields")
    cell: dict[str, Any] = {"model": str(model)}
    if env is not None:
        cell["env"] = env
    counts = {k: metrics[k] for k in _COUNT_KEYS if k in metrics}
    for k, v in metrics.items():
        if _is_count(k):
            counts[k] = v
        else:
            cell[k] = v
    cell["counts"] = counts
    if downstream is not None:
        cell.update(downstream.cell_fields())
        mismatch = meta_mismatches(model_meta, downstream)
        if mismatch:
            cell["context"]["meta_mismatch"] = mismatch
    return cell


def _ordered_cell(cell: Mapping[str, Any]) -> dict[str, Any]:
    head = [k for k in _CELL_HEAD if k in cell]
    tail = [k for k in (*_NESTED_KEYS, *_PAIRING_KEYS) if k in cell]
    middle = [k for k in cell if k not in head and k not in tail]
    return {k: cell[k] for k in (*head, *middle, *tail)}


def _by_env(cells: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for cell in cells:
        groups.setdefault(str(cell.get("env")), []).append(cell)
    return groups


def _pairing_warnings(cells: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for cell in cells:
        context = cell.get("context") or {}
        if context.get("meta_mismatch"):
            out.append({"model": cell.get("model"), "downstream_json": context.get("downstream_json"),
                        "fields": context["meta_mismatch"]})
    return out


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
    """The report dict of one group of models (one task, one state batch), JSON-ready.

    Plain Python values, floats rounded, undefined as None. config: the
    CONFIG_KEYS fields (more are kept after them). cells: from
    :func:`make_cell`; a cell without ``env`` gets ``config["env"]``.
    skipped: [{model, reason}]. timings: seconds by name (compile_s, run_s...).
    metric_spaces: {metric: space} (where each metric lives), written after
    ``config`` when given.
    Correlations with the gap (``within_env_correlation``, and
    ``pooled_m3_correlation`` when paired cells span several tasks) are
    computed from the unrounded values. Several groups (models of several
    tasks): :func:`build_group_report`.
    """
    return _assemble(
        [(config, cells)], skipped, timings, n_resamples=n_resamples, bootstrap_seed=bootstrap_seed,
        confidence=confidence, generated_at=generated_at, metric_spaces=metric_spaces,
    )


def build_group_report(
    groups: Sequence[tuple[Mapping[str, Any], Sequence[Mapping[str, Any]]]],
    skipped: Iterable[Mapping[str, Any]] = (),
    timings: Mapping[str, float] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """The report of a run over several groups of models (one per task, frame skip and action set).

    groups: [(config, cells)], each as :func:`build_report` takes them. One
    group gives exactly :func:`build_report`'s report. Several: no top-level
    ``config``; ``groups`` [{config, cells (indices into ``cells``)}] instead,
    every group's cells in one ``cells`` list (each with its ``env``), precision
    warnings per group (each with its ``group``), the correlations over all
    paired cells (within each task; M3 pooled across tasks).
    """
    return _assemble(groups, skipped, timings, **kwargs)


def _assemble(
    groups: Sequence[tuple[Mapping[str, Any], Sequence[Mapping[str, Any]]]],
    skipped: Iterable[Mapping[str, Any]],
    timings: Mapping[str, float] | None,
    *,
    n_resamples: int = 10_000,
    bootstrap_seed: int = 0,
    confidence: float = 0.95,
    generated_at: _dt.datetime | None = None,
    metric_spaces: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    if not groups:
        raise ValueError("a report needs at least one group of models")
    plain_configs, plain_cells, members = [], [], []
    for config, cells in groups:
        missing = [k for k in CONFIG_KEYS if k not in config]
        if missing:
            raise ValueError(f"report config lacks {missing}")
        plain_configs.append(_plain({**{k: config[k] for k in CONFIG_KEYS}, **config}))
        first = len(plain_cells)
        plain_cells += [_ordered_cell(_plain({"env": config["env"], **cell})) for cell in cells]
        members.append(list(range(first, len(plain_cells))))
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
    # Precision is judged within a group: the spread is between models on the same states.
    several = len(groups) > 1
    precision = [
        {"env": plain_configs[g]["env"], **({"group": g} if several else {}), **warning}
        for g, indices in enumerate(members)
        for warning in precision_warnings([plain_cells[i] for i in indices])
    ]

    from wmel_jax import __version__

    when = generated_at or _dt.datetime.now(_dt.timezone.utc)
    where = (
        {"groups": [{"config": c, "cells": m} for c, m in zip(plain_configs, members)]}
        if several else {"config": plain_configs[0]}
    )
    report = {
        "schema_version": SCHEMA_VERSION,
        "wmel_jax_version": __version__,
        "generated_at": when.astimezone(_dt.timezone.utc).isoformat(timespec="seconds"),
        **where,
        **({"metric_spaces": _plain(dict(metric_spaces))} if metric_spaces is not None else {}),
        "cells": plain_cells,
        "precision_warnings": precision,
        "within_env_correlation": within,
        "pooled_m3_correlation": pooled,
        "pairing_warnings": _pairing_warnings(plain_cells),
        "skipped": plain_skipped,
        "timings": _plain(dict(timings or {})),
    }
    return _rounded(_plain(report))


def group_views(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One single-group report view per group of a report ({config, metric_spaces, cells, precision_warnings}).

    A report of one group gives itself; one of several groups gives each
    group's config with its own cells and precision warnings (the table
    prints a block for each, the figure a row of panels).
    """
    if "groups" not in report:
        return [dict(report)]
    cells = report.get("cells", [])
    views = []
    for g, group in enumerate(report["groups"]):
        views.append({
            "config": group["config"],
            "metric_spaces": report.get("metric_spaces"),
            "cells": [cells[i] for i in group["cells"]],
            "precision_warnings": [w for w in report.get("precision_warnings", []) if w.get("group") == g],
        })
    return views


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


def _decimals(half_width: float) -> int:
    """Decimals that show two significant digits of an interval's half-width (0.032 -> 3, 0.7 -> 2)."""
    if not (half_width > 0 and math.isfinite(half_width)):
        return 4
    return int(min(6, max(0, 1 - math.floor(math.log10(half_width)))))


def format_value(value: float | None, ci: Sequence[float] | None = None, signed: bool = False) -> str:
    """A metric as the table prints it: ``0.137 [0.105, 0.169]``, to the precision its interval supports.

    Two significant digits of the half-width set the decimals of the value
    and its interval; without an interval, four significant digits. None is
    "n/a". ``signed``: a leading + on non-negative values (tau-b).
    """
    if value is None:
        return "n/a"
    sign = "+" if signed else ""
    if ci is None or ci[0] is None or ci[1] is None:
        return format(value, f"{sign}.4g")
    d = _decimals((ci[1] - ci[0]) / 2.0)
    return f"{value:{sign}.{d}f} [{ci[0]:{sign}.{d}f}, {ci[1]:{sign}.{d}f}]"


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
    p = r.get("p_value")
    tested = "" if p is None else f"  p={p:.3g} ({r.get('p_value_method')} permutation)"
    if r.get("ci_low") is None:
        return f"{line}{tested}  interval undefined: {r.get('reason')} (n={r['n_cells']})"
    if r.get("interval_meaningful", True):
        verdict = "excludes 0" if r["excludes_zero"] else "includes 0"
    else:
        verdict = "interval not meaningful"
    return (
        f"{line}  [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]{tested}  n={r['n_cells']}  {verdict}"
        f"  ({r['n_resamples_used']}/{r['n_resamples']} resamples)"
    )


def _header_lines(cfg: Mapping[str, Any]) -> list[str]:
    n_states = cfg.get("n_states")
    n_actions = len(cfg.get("action_set") or [])
    n_episodes = cfg.get("n_episodes")
    unit = (cfg.get("interval") or {}).get("unit")
    if n_episodes is not None and unit == "episode":
        where = f"N={n_states} states in {n_episodes} episodes"
    else:
        where = f"N={n_states} states"
    return [
        f"{cfg.get('env')}: {where}, k={cfg.get('k_steps')} steps, seed {cfg.get('seed')}, "
        f"frame_skip {cfg.get('frame_skip')}, {n_actions} actions, oracle {cfg.get('precision')}"
    ]


def _interval_lines(cfg: Mapping[str, Any]) -> list[str]:
    interval = cfg.get("interval") or {}
    unit = interval.get("unit")
    lines = []
    if interval:
        what = "episodes" if unit == "episode" else "states"
        lines.append(
            f"[low, high]: {round(100 * interval.get('confidence', 0.95))}% intervals, a bootstrap over "
            f"{interval.get('n_units')} {what} ({interval.get('n_resamples'):,} resamples, {interval.get('method')})"
        )
        if unit == "state":
            lines.append(
                "  each given state is resampled on its own: if the states come from trajectories, these intervals "
                "are too narrow; say which belong together with --episode-ids F.npy"
            )
    return lines


def _precision_lines(warnings_: Sequence[Mapping[str, Any]]) -> list[str]:
    if not warnings_:
        return []
    lines = [
        "",
        f"precision: {len(warnings_)} interval(s) too wide to rank the models (half-width above "
        f"{PRECISION_SPREAD_FRACTION:g} x the spread between them; above {RANK_HALF_WIDTH_LIMIT:g} for a tau-b):",
    ]
    rows = []
    for w in warnings_:
        n = w.get("suggested_n_states")
        advice = f"about N = {n:,} would bring it under" if n else "no per-episode variation to extrapolate from"
        rows.append([f"  {w['model']}", _metric_header(w["metric"]),
                     f"+-{w['half_width']:.3g} > {w['limit']:.3g} ({w['basis']}):", advice])
    lines += _columns(rows, [False, False, False, False])
    return lines


def format_table(report: Mapping[str, Any], *, timings: bool = False) -> str:
    """A readable summary of a report for stdout: one row per cell with intervals, warnings, correlations.

    One block per group of models (per task): its states, its table, its
    intervals' description and its precision warnings; then the skipped
    models, the pairing warnings and the correlations with the gap.
    ``timings``: add the timings line (``--timings``).
    """
    lines: list[str] = []
    for i, view in enumerate(group_views(report)):
        lines += ([""] if i else []) + _block_lines(view)
    lines += _shared_lines(report, timings)
    return "\n".join(lines) + "\n"


def _block_lines(report: Mapping[str, Any]) -> list[str]:
    """One group's block: header, table, notes, precision warnings."""
    cfg = report.get("config", {})
    n_states = cfg.get("n_states")
    lines = _header_lines(cfg)
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
            counts = c.get("counts") or {}
            for k in keys:
                v = c.get(k)
                if k in unavailable:
                    row.append(UNAVAILABLE_MARK)
                    notes.setdefault(unavailable[k], []).append(_metric_header(k))
                    continue
                text = format_value(v, c.get(f"{k}_ci"), signed=k in _STATES_USED)
                if k in _STATES_USED:
                    used = counts.get(_STATES_USED[k], c.get(_STATES_USED[k]))
                    if used is not None and used != n_states:
                        text += f" ({used}/{n_states})"
                row.append(text)
            if paired:
                row.append(_num(c.get("gap"), "+.2f") if "gap" in c else "-")
            rows.append(row)
        lines += ["", *_columns(rows, [False] + [True] * (len(header) - 1))]
        lines += _interval_lines(cfg)
        for k, reason in hidden.items():
            notes.setdefault(reason, []).append(_metric_header(k))
        for reason, metrics in notes.items():
            lines.append(f"not available: {', '.join(dict.fromkeys(metrics))}: {reason}")
        partial = [k for k in keys if k in _STATES_USED and any(
            (c.get("counts") or {}).get(_STATES_USED[k]) not in (None, n_states) for c in cells)]
        if partial:
            lines.append(f"(used/N): states where tau-b is defined ({', '.join(_metric_header(k) for k in partial)}: "
                         "a constant score over the actions on either side has none)")
        spaces = report.get("metric_spaces") or {}
        shown = [k for k in keys if k in spaces]
        if shown:
            by_space: dict[str, list[str]] = {}
            for k in shown:
                by_space.setdefault(spaces[k], []).append(_metric_header(k))
            lines.append("spaces: " + "; ".join(f"{space}: {', '.join(m)}" for space, m in by_space.items()))
    else:
        lines += ["", "no cells evaluated"]

    lines += _precision_lines(report.get("precision_warnings") or [])
    return lines


def _shared_lines(report: Mapping[str, Any], timings: bool) -> list[str]:
    """What belongs to the whole run: skipped models, pairing warnings, correlations, timings."""
    lines: list[str] = []
    skipped = list(report.get("skipped", []))
    if skipped:
        lines += ["", f"skipped ({len(skipped)}):"]
        lines += [f"  {s['model']}: {s['reason']}" for s in skipped]

    pairing = report.get("pairing_warnings") or []
    if pairing:
        lines += ["", "pairing: these checkpoints' meta contradicts their downstream file (paired by position):"]
        for w in pairing:
            fields = "; ".join(f"{k} {v['checkpoint']} (checkpoint) vs {v['downstream']} (downstream)"
                               for k, v in w["fields"].items())
            lines.append(f"  {w['model']} <- {w['downstream_json']}: {fields}")

    for task, block in (report.get("within_env_correlation") or {}).items():
        some = next(iter(block["metrics"].values()), {})
        lines += [
            "",
            f"Spearman(metric, gap) within {task}, {block['n_cells']} paired cells, "
            f"{round(100 * some.get('confidence', 0.95))}% bootstrap interval over cells, permutation p-value:",
        ]
        lines += [f"  warning: {w}" for w in block.get("warnings") or []]
        lines += [_correlation_line(k, r) for k, r in block["metrics"].items()]
    pooled = report.get("pooled_m3_correlation")
    if pooled:
        lines += [
            "",
            f"Pooled across {', '.join(pooled['tasks'])} ({pooled['n_cells']} paired cells). {pooled['note']}",
            _correlation_line(pooled["metric"], pooled["correlation"]),
        ]

    times = report.get("timings") or {}
    if timings and times:
        lines += ["", "timings: " + ", ".join(f"{k} {_num(v, '.3f')}" for k, v in times.items())]
    return lines

"""The CPG reports as a picture: success rates with intervals, steps-to-success per arm, one PNG.

Drawn with matplotlib's Agg canvas (no pyplot, no global backend switch) and
written atomically, as ``wmel_jax.figure`` draws the eval report.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from wmel_jax.fileio import atomic_output

__all__ = ["plot_cpg", "render_cpg_png"]

_COLOURS = {"oracle": "#4c72b0", "learned": "#dd8452"}


def _name(report: Mapping[str, Any]) -> str:
    """The model file's stem, wrapped to fit under its bars (long names overlapped their neighbours)."""
    import textwrap

    return "\n".join(textwrap.wrap(Path(str(report.get("learned_model"))).stem, 18)) or "?"


def _successful_steps(report: Mapping[str, Any], arm: str) -> list[int] | None:
    full = report.get(f"{arm}_full")
    if not full:
        return None
    return [int(r["steps"]) for r in full["results"] if r["success"]]


def plot_cpg(reports: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Draw the reports of one run (:func:`render_cpg_png`) and write the PNG to ``path`` atomically."""
    data = render_cpg_png(reports)
    path = Path(path)
    with atomic_output(path, "wb") as f:
        f.write(data)
    return path


def render_cpg_png(reports: Sequence[Mapping[str, Any]]) -> bytes:
    """The reports of one run as PNG bytes (for an :class:`~wmel_jax.fileio.OutputSet`).

    Left: each model's oracle and learned success rates with their Wilson 95%
    intervals (the oracle arm is shared by the run's models), the gap and
    verdict under each model's name. Right: the steps to success of the
    successful episodes, per arm (the oracle arm once, then each model's
    learned arm), as box plots over the individual episodes.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not reports:
        raise ValueError("plot_cpg needs at least one report")
    m = len(reports)
    fig = Figure(figsize=(6 + 2.6 * m, 5.2), layout="constrained")
    FigureCanvasAgg(fig)
    rates, steps = fig.subplots(1, 2, width_ratios=[max(m, 1.5), m + 1])
    cfg = reports[0]["config"]
    fig.suptitle(f"{cfg['env']}: {cfg['planner']}, {cfg['benchmark_episodes']} paired episodes x "
                 f"{cfg['benchmark_horizon']} steps, seed {cfg['seed']}")

    width = 0.38
    for i, report in enumerate(reports):
        for j, arm in enumerate(("oracle", "learned")):
            interval = report["success_intervals"][arm]
            if interval is None:
                continue
            x = i + (j - 0.5) * width
            err = [[interval["rate"] - interval["ci_low"]], [interval["ci_high"] - interval["rate"]]]
            rates.bar(x, interval["rate"], width, color=_COLOURS[arm], label=arm if i == 0 else None)
            rates.errorbar(x, interval["rate"], yerr=err, color="black", capsize=4, linewidth=1, marker="o",
                           markersize=3)
    labels = []
    for report in reports:
        cpg = report["cpg"]
        extra = "" if cpg["gap"] is None else f"\ngap {cpg['gap']:+.2f}\n{cpg['verdict']}"
        labels.append(_name(report) + extra)
    rates.set_xticks(range(m), labels, fontsize=8)
    rates.set_ylim(0, 1.05)
    rates.set_ylabel("success rate (95% Wilson interval)")
    rates.legend(loc="lower right", fontsize=8)

    columns, names, colours = [], [], []
    oracle_steps = _successful_steps(reports[0], "oracle")
    if oracle_steps is not None:
        columns.append(oracle_steps)
        names.append("oracle")
        colours.append(_COLOURS["oracle"])
    for report in reports:
        learned_steps = _successful_steps(report, "learned")
        if learned_steps is not None:
            columns.append(learned_steps)
            names.append(f"learned\n{_name(report)}")
            colours.append(_COLOURS["learned"])
    positions = range(1, len(columns) + 1)
    drawn = [(p, c) for p, c in zip(positions, columns) if c]
    if drawn:
        box = steps.boxplot([c for _, c in drawn], positions=[p for p, _ in drawn], widths=0.6, patch_artist=True)
        for patch, (p, _) in zip(box["boxes"], drawn):
            patch.set_facecolor(colours[p - 1])
            patch.set_alpha(0.6)
    for p, c in zip(positions, columns):
        steps.annotate(f"n={len(c)}", (p, 0), xycoords=("data", "axes fraction"), xytext=(0, 4),
                       textcoords="offset points", ha="center", fontsize=7)
    steps.set_xticks(list(positions), names, fontsize=8)
    steps.set_xlim(0.4, len(columns) + 0.6)
    steps.set_ylim(0, cfg["benchmark_horizon"])
    steps.set_ylabel("steps to success (successful episodes)")

    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()

"""The report as a picture: M2 curves per model, M1 and M3 bars, one PNG.

Drawn with matplotlib's Agg canvas directly (no pyplot, no global backend
switch: a caller's interactive session is left alone) and written atomically.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from wmel_jax.fileio import atomic_output

__all__ = ["plot_report", "plot_reports", "render_png"]


def _label(cell: Mapping[str, Any]) -> str:
    name = Path(str(cell.get("model"))).name or str(cell.get("model"))
    if cell.get("gap") is not None:
        name += f"  (gap {cell['gap']:+.2f})"
    return name


def plot_report(report: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Draw one report and write it to ``path`` as a PNG (atomically: nothing on failure).

    Panels: M2, L2 distance vs step for each model (the k-step divergence
    curve; M2 is its last point); M1 one-step L2 per model; M3 tau-b per model
    on a fixed -1..1 axis with 0 marked (undefined M3 is labelled, not drawn).
    The title gives the task, N and k. Colours match across panels.
    """
    return plot_reports([report], path)


def plot_reports(reports: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Several reports (one per task, say) in one PNG: one row of panels per report."""
    png = render_png(reports)
    path = Path(path)
    with atomic_output(path, "wb") as f:
        f.write(png)
    return path


def render_png(reports: Sequence[Mapping[str, Any]]) -> bytes:
    """The PNG of :func:`plot_reports`, as bytes (for an :class:`~wmel_jax.fileio.OutputSet`)."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not reports:
        raise ValueError("plot_reports needs at least one report")
    heights = [4.2 + 0.25 * max(len(r.get("cells", [])), 1) for r in reports]
    fig = Figure(figsize=(14, sum(heights)), layout="constrained")
    FigureCanvasAgg(fig)
    rows = fig.subfigures(len(reports), 1, height_ratios=heights) if len(reports) > 1 else [fig]
    for subfig, report in zip(rows, reports):
        _draw(subfig, report)

    # Rendered fully in memory: a drawing error leaves no file.
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def _draw(fig: Any, report: Mapping[str, Any]) -> None:
    """One report's three panels on a figure or subfigure."""
    cfg = report.get("config", {})
    cells = list(report.get("cells", []))
    colors = [f"C{i % 10}" for i in range(len(cells))]
    labels = [_label(c) for c in cells]

    curve_ax, m1_ax, m3_ax = fig.subplots(1, 3, width_ratios=[1.6, 1, 1])
    fig.suptitle(
        f"{cfg.get('env')}: learned model vs oracle on N={cfg.get('n_states')} states, "
        f"k={cfg.get('k_steps')} steps (seed {cfg.get('seed')})",
        fontsize=13,
    )

    # M2 curves: None (a non-finite distance) becomes a gap in the line.
    k = int(cfg.get("k_steps") or 0)
    positive = []
    for cell, color, label in zip(cells, colors, labels):
        curve = [float("nan") if v is None else float(v) for v in (cell.get("m2_curve") or [])]
        steps = list(range(1, len(curve) + 1))
        curve_ax.plot(steps, curve, marker="o", markersize=3, color=color, label=label)
        positive += [v for v in curve if v == v and v > 0]
    if positive and max(positive) / min(positive) > 100:
        curve_ax.set_yscale("log")
    curve_ax.set_xlabel("step (actions applied open loop)")
    curve_ax.set_ylabel("mean L2 distance to oracle")
    curve_ax.set_title("M2: k-step divergence (M2 = last point)")
    if k:
        curve_ax.set_xticks(range(1, k + 1, max(1, k // 10)))
    curve_ax.grid(alpha=0.3)
    if cells:
        curve_ax.legend(fontsize=8, loc="upper left")

    # Bars, one row per model, top to bottom in report order.
    rows = list(range(len(cells)))[::-1]
    m1 = [c.get("m1_l2_onestep") for c in cells]
    m1_ax.barh(rows, [0.0 if v is None else v for v in m1], color=colors)
    for row, v in zip(rows, m1):
        m1_ax.annotate("n/a" if v is None else f"{v:.4g}", (0 if v is None else v, row),
                       xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
    m1_ax.set_title("M1: one-step L2 (lower is better)")
    m1_ax.set_xlabel("mean L2 distance to oracle")
    m1_ax.margins(x=0.25)

    m3 = [c.get("m3_action_agreement") for c in cells]
    m3_ax.barh(rows, [0.0 if v is None else v for v in m3], color=colors)
    m3_ax.axvline(0.0, color="black", linewidth=1)
    m3_ax.set_xlim(-1.0, 1.0)
    for row, v, c in zip(rows, m3, cells):
        # The label goes on the empty side of zero, so it never leaves the axes.
        text = "undefined" if v is None else f"{v:+.3f} (n={c.get('m3_states_used')})"
        left = v is None or v >= 0
        m3_ax.text(-0.97 if left else 0.97, row, text, va="center", ha="left" if left else "right", fontsize=8)
    m3_ax.set_title("M3: action-ranking tau-b (higher is better)")
    m3_ax.set_xlabel("Kendall tau-b, oracle vs model")

    for ax in (m1_ax, m3_ax):
        ax.set_yticks(rows, [Path(str(c.get("model"))).name for c in cells], fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    m3_ax.tick_params(labelleft=False)  # same rows as M1, named there

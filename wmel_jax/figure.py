"""The report as a picture: every metric with its interval, and the metrics against the gap.

One row of panels per report (per task), each panel drawn only when some model
has its metric:

- observation space: the M2 curve per model with its interval band, M1 bars,
  M3 bars on a fixed -1..1 axis, each bar with its interval as an error bar and
  its value written on it;
- latent space and reward: the latent k-step curve with bands, latent one-step
  bars, reward-ranking bars;
- with downstream results: one panel per correlated metric, the metric (with
  its interval) against the gap, titled with Spearman's rho, its interval and
  the permutation p-value (or why rho is undefined).

Models keep one colour, marker and line style across panels, so overlapping
curves stay apart. Drawn with matplotlib's Agg canvas directly (no pyplot, no
global backend switch: a caller's interactive session is left alone) and
written atomically, in the format the file's extension names (png, pdf, svg).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from wmel_jax.fileio import atomic_output

__all__ = ["FORMATS", "figure_format", "plot_report", "plot_reports", "render_figure", "render_png"]

#: The figure formats, by file extension.
FORMATS = ("png", "pdf", "svg")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")
_LINESTYLES = ("-", "--", "-.", ":")
_TITLE_SIZE = 10
#: Characters per line of a metric-against-gap panel's title (a third of the figure's width).
_GAP_TITLE_WIDTH = 52


def figure_format(path: str | os.PathLike) -> str:
    """The format a figure path asks for, from its extension; WmelError for any other."""
    from wmel_jax.errors import WmelError

    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        shown = f"extension .{suffix}" if suffix else "no extension"
        raise WmelError(f"figure {str(path)!r} has {shown}: give a .png, .pdf or .svg file")
    return suffix


def _name(cell: Mapping[str, Any]) -> str:
    name = Path(str(cell.get("model"))).name or str(cell.get("model"))
    for suffix in (".safetensors", ".pt"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


def _label(cell: Mapping[str, Any]) -> str:
    name = _name(cell)
    if cell.get("gap") is not None:
        name += f"  (gap {cell['gap']:+.2f})"
    return name


def plot_report(report: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Draw one report and write it to ``path`` (atomically: nothing on failure).

    The format is the extension's (``FORMATS``; WmelError for another).
    Panels: see the module docstring; undefined values are labelled, not drawn.
    """
    return plot_reports([report], path)


# Panels: (metric, title, x label, kind); kind "curve" (its k-step end point named after the curve) or "bar"/"rank".
_OBSERVATION_PANELS = (
    ("m2_curve", "M2: k-step divergence (M2 = last point)", "mean L2 distance to oracle", "curve"),
    ("m1_l2_onestep", "M1: one-step L2 (lower is better)", "mean L2 distance to oracle", "bar"),
    ("m3_action_agreement", "M3: action-ranking tau-b (higher is better)", "Kendall tau-b, oracle vs model", "rank"),
)
_LATENT_PANELS = (
    ("m2_latent_curve", "latent k-step divergence", "mean L2 distance in latent space", "curve"),
    ("m1_latent_onestep", "latent one-step L2 (lower is better)", "mean L2 distance in latent space", "bar"),
    ("reward_rank_agreement", "reward-ranking tau-b (higher is better)", "Kendall tau-b, true vs predicted reward",
     "rank"),
)


def _has(cells: Sequence[Mapping[str, Any]], key: str) -> bool:
    return any(c.get(key) is not None for c in cells)


def _correlated(report: Mapping[str, Any]) -> list[tuple[str, str, Mapping[str, Any]]]:
    """(task, metric, correlation result) for every within-task correlation, defined or not.

    An undefined correlation (a constant metric, too few paired cells) is still
    a panel: the points are drawn and the title gives the reason.
    """
    return [(task, metric, result)
            for task, block in (report.get("within_env_correlation") or {}).items()
            for metric, result in block.get("metrics", {}).items()]


def _rows_of(report: Mapping[str, Any]) -> list[list[tuple]]:
    """The panel rows of one report: lists of panel specs, empty rows left out."""
    cells = list(report.get("cells", []))
    rows = []
    for panels in (_OBSERVATION_PANELS, _LATENT_PANELS):
        row = [p for p in panels if _has(cells, p[0])]
        if row:
            rows.append(row)
    if not rows:  # nothing defined: still one row of the observation panels, labelled undefined
        rows.append(list(_OBSERVATION_PANELS))
    correlated = _correlated(report)
    for start in range(0, len(correlated), 3):
        rows.append([("gap", *c) for c in correlated[start : start + 3]])
    return rows


def plot_reports(reports: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Several reports (one per task, say) in one figure, written atomically in the extension's format."""
    data = render_figure(reports, figure_format(path))
    path = Path(path)
    with atomic_output(path, "wb") as f:
        f.write(data)
    return path


def render_png(reports: Sequence[Mapping[str, Any]]) -> bytes:
    """The PNG of :func:`plot_reports`, as bytes."""
    return render_figure(reports, "png")


def render_figure(reports: Sequence[Mapping[str, Any]], fmt: str = "png") -> bytes:
    """The figure of :func:`plot_reports` as bytes in ``fmt`` (FORMATS), for an :class:`~wmel_jax.fileio.OutputSet`.

    A block of panel rows per report (and per group of a report of several groups).
    """
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from wmel_jax.report import group_views

    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}; got {fmt!r}")
    if not reports:
        raise ValueError("plot_reports needs at least one report")
    # A report of several groups (models of several tasks) draws a block per group, each
    # with the correlations of its task (drawn once, with the task's first group).
    views = []
    for report in reports:
        within = dict(report.get("within_env_correlation") or {})
        for view in group_views(report):
            task = (view.get("config") or {}).get("env")
            mine = {task: within.pop(task)} if task in within else {}
            views.append({**view, "within_env_correlation": mine})
    reports = views
    layouts = [_rows_of(r) for r in reports]
    heights = [len(rows) * (3.6 + 0.22 * max(len(r.get("cells", [])), 1)) + 0.6 for r, rows in zip(reports, layouts)]
    fig = Figure(figsize=(15, sum(heights)), layout="constrained")
    FigureCanvasAgg(fig)
    blocks = fig.subfigures(len(reports), 1, height_ratios=heights) if len(reports) > 1 else [fig]
    for subfig, report, rows in zip(blocks, reports, layouts):
        _draw(subfig, report, rows)

    # Rendered fully in memory: a drawing error leaves no file.
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, dpi=110)
    return buffer.getvalue()


def _style(i: int) -> dict[str, Any]:
    return {"color": f"C{i % 10}", "marker": _MARKERS[i % len(_MARKERS)],
            "linestyle": _LINESTYLES[(i // 10) % len(_LINESTYLES)]}


def _draw(fig: Any, report: Mapping[str, Any], rows: list[list[tuple]]) -> None:
    """One report's panel rows on a figure or subfigure."""
    cfg = report.get("config", {})
    cells = list(report.get("cells", []))
    interval = cfg.get("interval") or {}
    sample = f"N={cfg.get('n_states')} states"
    if cfg.get("n_episodes") is not None and interval.get("unit") == "episode":
        sample += f" in {cfg['n_episodes']} episodes"
    conf = round(100 * interval.get("confidence", 0.95))
    fig.suptitle(
        f"{cfg.get('env')}: learned model vs oracle, {sample}, k={cfg.get('k_steps')} steps, seed {cfg.get('seed')}"
        + (f"; bands and bars: {conf}% intervals" if interval else ""),
        fontsize=12,
    )
    width = max(len(r) for r in rows)
    grid = fig.subfigures(len(rows), 1) if len(rows) > 1 else [fig]
    for sub, row in zip(grid, rows):
        axes = sub.subplots(1, width, squeeze=False)[0]
        for ax, spec in zip(axes, row):
            if spec[0] == "gap":
                _gap_panel(ax, cells, *spec[1:])
            else:
                metric, title, xlabel, kind = spec
                if kind == "curve":
                    _curve_panel(ax, cells, metric, title, xlabel, int(cfg.get("k_steps") or 0))
                else:
                    _bar_panel(ax, cells, metric, title, xlabel, rank=kind == "rank")
        for ax in axes[len(row):]:
            ax.set_visible(False)


def _curve_panel(ax: Any, cells: Sequence[Mapping[str, Any]], key: str, title: str, ylabel: str, k: int) -> None:
    positive = []
    for i, cell in enumerate(cells):
        curve = [float("nan") if v is None else float(v) for v in (cell.get(key) or [])]
        if not curve:
            continue
        steps = list(range(1, len(curve) + 1))
        style = _style(i)
        ax.plot(steps, curve, markersize=4, label=_label(cell), **style)
        band = cell.get(f"{key}_ci")
        if band:
            low = [float("nan") if b is None else b[0] for b in band]
            high = [float("nan") if b is None else b[1] for b in band]
            ax.fill_between(steps, low, high, color=style["color"], alpha=0.15, linewidth=0)
            positive += [v for v in low if v == v and v > 0]
        positive += [v for v in curve if v == v and v > 0]
    if positive and max(positive) / min(positive) > 100:
        ax.set_yscale("log")
    ax.set_xlabel("step (actions applied open loop)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=_TITLE_SIZE)
    if k:
        ax.set_xticks(range(1, k + 1, max(1, k // 10)))
    ax.grid(alpha=0.3)
    if any(cell.get(key) for cell in cells):
        ax.legend(fontsize=7, loc="upper left")


def _bar_panel(ax: Any, cells: Sequence[Mapping[str, Any]], key: str, title: str, xlabel: str, *,
               rank: bool) -> None:
    rows = list(range(len(cells)))[::-1]  # top to bottom in report order
    values = [c.get(key) for c in cells]
    colors = [_style(i)["color"] for i in range(len(cells))]
    ax.barh(rows, [0.0 if v is None else v for v in values], color=colors, alpha=0.85)
    for row, value, cell, color in zip(rows, values, cells, colors):
        ci = cell.get(f"{key}_ci")
        if value is not None and ci:
            ax.errorbar([value], [row], xerr=[[value - ci[0]], [ci[1] - value]], fmt="none",
                        ecolor="black", elinewidth=1.2, capsize=4)
    if rank:
        ax.axvline(0.0, color="black", linewidth=1)
        ax.set_xlim(-1.05, 1.05)
        for row, value, cell in zip(rows, values, cells):
            ci = cell.get(f"{key}_ci")
            if value is None:
                text = "undefined"
            elif ci:
                text = f"{value:+.2f} [{ci[0]:+.2f}, {ci[1]:+.2f}]"
            else:
                text = f"{value:+.3f}"
            # Against the bar's foot, on the empty side of zero (a tau-b bar may reach either end).
            positive = value is None or value >= 0
            ax.text(-0.03 if positive else 0.03, row, text, va="center", ha="right" if positive else "left",
                    fontsize=8, bbox={"facecolor": "white", "alpha": 0.75, "linewidth": 0, "pad": 1})
    else:
        for row, value, cell in zip(rows, values, cells):
            ci = cell.get(f"{key}_ci")
            end = 0.0 if value is None else (ci[1] if ci else value)
            text = "n/a" if value is None else f"{value:.3g}"
            ax.annotate(text, (end, row), xytext=(4, 0), textcoords="offset points", va="center", fontsize=8)
        ax.margins(x=0.3)
    ax.set_title(title, fontsize=_TITLE_SIZE)
    ax.set_xlabel(xlabel)
    ax.set_yticks(rows, [_name(c) for c in cells], fontsize=8)
    ax.grid(axis="x", alpha=0.3)


def _gap_panel(ax: Any, cells: Sequence[Mapping[str, Any]], task: str, metric: str,
               result: Mapping[str, Any]) -> None:
    """The metric (x, with its interval) against the gap (y), one point per paired model of ``task``."""
    for i, cell in enumerate(cells):
        value, gap = cell.get(metric), cell.get("gap")
        if value is None or gap is None or str(cell.get("env")) != task:
            continue
        style = _style(i)
        ci = cell.get(f"{metric}_ci")
        xerr = [[value - ci[0]], [ci[1] - value]] if ci else None
        ax.errorbar([value], [gap], xerr=xerr, fmt=style["marker"], color=style["color"], capsize=3,
                    markersize=6, label=_name(cell))
    rho = result.get("rho")
    if rho is None:
        title = f"{metric}: rho undefined ({result.get('reason') or 'no value'})"
    else:
        title = f"{metric}: rho={rho:+.2f}"
        if result.get("ci_low") is not None:
            title += f" [{result['ci_low']:+.2f}, {result['ci_high']:+.2f}]"
        if result.get("p_value") is not None:
            title += f", p={result['p_value']:.2g}"
    title += f", n={result.get('n_cells')}"
    if rho is not None and not result.get("interval_meaningful", True):
        title += " (too few cells)"
    import textwrap

    ax.set_title(textwrap.fill(title, _GAP_TITLE_WIDTH), fontsize=_TITLE_SIZE)  # two lines rather than cut off
    ax.set_xlabel(metric)
    ax.set_ylabel("planning gap (oracle - learned success)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")

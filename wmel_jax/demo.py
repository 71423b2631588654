"""``wmel-jax demo``: evaluate the shipped example models, print the tables, draw the figure.

The examples (``wmel_jax/examples/``, listed in its ``manifest.json``) are six
small TD-MPC2-architecture models, a good and a weak one per task. They ship
as torch checkpoints and as their conversions; the demo uses a conversion when
its header records the sha256 of the shipped ``.pt`` (so it is the conversion
of exactly that file), and otherwise converts the ``.pt`` itself, which needs
torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from wmel_jax.errors import WmelError
from wmel_jax.fileio import OutputSet, json_text, read_json_file, temporary_directory

__all__ = ["EXAMPLES_DIR", "example_models", "run_demo"]

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"


def example_models(examples_dir: Path = EXAMPLES_DIR) -> list[dict[str, Any]]:
    """The manifest's model entries (task, quality, pt, converted, sha256, reference metrics...)."""
    manifest = examples_dir / "manifest.json"
    try:
        return list(read_json_file(manifest, "example manifest")["models"])
    except (WmelError, TypeError, KeyError) as e:
        raise WmelError(f"the example manifest {str(manifest)!r} is missing or unreadable ({e})") from None


def _usable_conversion(entry: dict[str, Any], examples_dir: Path) -> Path | None:
    """The shipped conversion, if it is the conversion of the shipped .pt."""
    from wmel_jax.model.fileformat import read_model_header

    converted = examples_dir / entry["converted"]
    try:
        header, _ = read_model_header(converted)
    except WmelError:
        return None
    return converted if header.get("source", {}).get("sha256") == entry["sha256"] else None


def _resolve(entry: dict[str, Any], examples_dir: Path, workdir: Path, say: Callable[[str], None]) -> Path:
    converted = _usable_conversion(entry, examples_dir)
    if converted is not None:
        return converted
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        raise WmelError(
            f"the shipped conversion of {entry['pt']} is missing or stale and torch is not installed to "
            "convert it: pip install 'wmel-jax[convert]'"
        )
    from wmel_jax.converters.convert import convert_checkpoint

    say(f"converting {entry['pt']} (its shipped conversion is missing or stale)")
    return convert_checkpoint(examples_dir / entry["pt"], workdir / entry["converted"])


def run_demo(
    out_dir: str | Path = "wmel-demo",
    *,
    n_states: int = 150,
    k_steps: int = 10,
    seed: int = 0,
    precision: str | None = None,
    chunk_states: int = 4096,
    examples_dir: Path = EXAMPLES_DIR,
    say: Callable[[str], None] = print,
    progress: Callable[[int, int, str], None] | None = None,
    force: bool = False,
) -> tuple[list[dict[str, Any]], list[Path]]:
    """Evaluate every example model, one report per task; (reports, files written).

    Writes ``report-<task>.json`` per task and one figure, ``demo.png``, with a
    row of panels per task, into ``out_dir`` (created if needed), all together
    once everything is computed. The files of an earlier demo there are
    replaced only with ``force`` (checked before any work).
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise WmelError(f"demo output {str(out)!r} exists and is not a directory")
    entries = example_models(examples_dir)
    tasks = list(dict.fromkeys(e["task"] for e in entries))
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WmelError(f"cannot create the demo output directory {str(out)!r}: {e.strerror or e}") from None
    try:
        return _run_demo(out, entries, tasks, n_states=n_states, k_steps=k_steps, seed=seed, precision=precision,
                         chunk_states=chunk_states, examples_dir=examples_dir, say=say, progress=progress,
                         force=force)
    except BaseException:
        if created:  # leave no empty folder behind
            try:
                out.rmdir()
            except OSError:
                pass
        raise


def _run_demo(out: Path, entries: list[dict[str, Any]], tasks: list[str], *, n_states: int, k_steps: int, seed: int,
              precision: str | None, chunk_states: int, examples_dir: Path, say: Callable[[str], None],
              progress: Callable[[int, int, str], None] | None, force: bool
              ) -> tuple[list[dict[str, Any]], list[Path]]:
    from wmel_jax.figure import render_png
    from wmel_jax.pipeline import EvalOptions, run_eval

    outputs = OutputSet(force=force)
    report_paths = {task: out / f"report-{task}.json" for task in tasks}
    for task, path in report_paths.items():
        outputs.add(path, f"demo report for {task}")
    figure = out / "demo.png"
    outputs.add(figure, "demo figure")
    reports: list[dict[str, Any]] = []
    with temporary_directory(prefix="wmel-demo-") as tmp:
        paths = {e["converted"]: _resolve(e, examples_dir, tmp, say) for e in entries}
        for task in tasks:
            chosen = [e for e in entries if e["task"] == task]
            say(f"\n== {task}: {', '.join(e['quality'] for e in chosen)} ==")
            report = run_eval(
                EvalOptions(
                    models=[str(paths[e["converted"]]) for e in chosen],
                    labels=[Path(e["converted"]).stem for e in chosen],
                    env=task,
                    n_states=n_states,
                    k_steps=k_steps,
                    seed=seed,
                    precision=precision,
                    chunk_states=chunk_states,
                ),
                progress=progress,
            )
            reports.append(report)
            outputs.write(report_paths[task], json_text(report))
            from wmel_jax.report import format_table

            say(format_table(report).rstrip("\n"))
    outputs.write(figure, render_png(reports))
    return reports, outputs.commit()

"""The package as users install it: a wheel with one top-level import package.

``converters/`` and ``benchmarks/`` sit at the top of the source tree but are
installed as ``wmel_jax.converters`` and ``wmel_jax.benchmarks`` (pyproject's
``package-dir``), so nothing named ``converters`` or ``benchmarks`` lands in a
user's environment. The wheel is built here, installed (not editable) into a
new virtual environment, and ``wmel-jax demo`` is run from it, outside the
source tree: the shipped examples and the evaluation path work from the
installed files alone, and evaluation imports neither torch, the converters
nor the benchmarks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: Source folder -> the import package it installs as.
MAPPED = {"wmel_jax": "wmel_jax", "converters": "wmel_jax/converters", "benchmarks": "wmel_jax/benchmarks"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(REPO)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    (path,) = out.glob("wmel_jax-*.whl")
    return path


def test_wheel_has_one_top_level_package_holding_every_module(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"wmel_jax"}, tops
    top_level = next(n for n in names if n.endswith(".dist-info/top_level.txt"))
    assert zipfile.ZipFile(wheel).read(top_level).decode().split() == ["wmel_jax"]
    # Every module of the three source folders, at its installed name (a new
    # subpackage missing from pyproject's package list fails here).
    expected = {
        f"{MAPPED[folder]}/{p.relative_to(REPO / folder).as_posix()}"
        for folder in MAPPED
        for p in (REPO / folder).rglob("*.py")
    }
    assert not expected - set(names), sorted(expected - set(names))
    # The shipped examples travel as package data.
    manifest = json.loads((REPO / "wmel_jax/examples/manifest.json").read_text())
    for entry in manifest["models"]:
        for key in ("pt", "converted"):
            assert f"wmel_jax/examples/{entry[key]}" in names


_CHECK = r"""
import json, sys
from pathlib import Path
import wmel_jax
from wmel_jax import demo
from wmel_jax.cli import main
# Every shipped conversion is the conversion of its shipped .pt: the installed demo needs no torch.
entries = demo.example_models()
usable = {e["converted"]: demo._usable_conversion(e, demo.EXAMPLES_DIR) for e in entries}
model = usable["cartpole-swingup-weak.safetensors"]
code = main(["eval", str(model), "--no-cache", "--n-states", "20", "--k-steps", "3", "-q", "-o", sys.argv[1]])
mods = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "converters", "benchmarks")
              or m.startswith(("wmel_jax.converters", "wmel_jax.benchmarks")))
print(json.dumps({"code": code, "file": wmel_jax.__file__, "models": len(entries),
                  "unusable": sorted(k for k, v in usable.items() if v is None), "modules": mods}))
"""


def test_installed_wheel_evaluates_a_shipped_model_outside_the_source_tree(wheel, tmp_path):
    """The wheel installed into a bare venv: its CLI, its shipped examples, an eval that imports no torch.

    (The demo itself, all seven models, is ``tests/test_demo.py``'s: here one model, cold, is enough to
    run the installed package's whole eval path outside the source tree.)
    """
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # The dependencies (jax, mujoco, ...) come from this environment's site-packages,
    # added as a plain path: its .pth files (the editable install's finder) are not run.
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert (venv / "bin" / "wmel-jax").is_file()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "WMEL_JAX_CACHE_DIR")}
    env["MUJOCO_GL"] = "disable"
    help_out = subprocess.run([str(venv / "bin" / "wmel-jax"), "--help"], capture_output=True, text=True,
                              cwd=tmp_path, env=env, timeout=120)
    assert help_out.returncode == 0 and "demo" in help_out.stdout, help_out.stderr
    run = subprocess.run([str(python), "-c", _CHECK, str(tmp_path / "r.json")], capture_output=True, text=True,
                         cwd=tmp_path, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["code"] == 0
    assert got["models"] == 7 and got["unusable"] == [], got
    assert Path(got["file"]).resolve().is_relative_to(venv.resolve()), got["file"]
    assert got["modules"] == [], "the evaluation path imported torch-facing or benchmark code"
    report = json.loads((tmp_path / "r.json").read_text())
    (cell,) = report["cells"]  # the installed package's own example, not the source tree's
    assert Path(cell["model"]).name == "cartpole-swingup-weak.safetensors", cell["model"]
    assert Path(cell["model"]).resolve().is_relative_to(venv.resolve()) and report["skipped"] == []

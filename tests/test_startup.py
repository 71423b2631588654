"""The warm start: a run whose kernels are all cached imports neither MJX nor flax, and reports the same.

* The oracle's kernels are keyed without MJX: a fresh physics is keyed by its
  configuration and its MuJoCo model's content without building its
  ``mjx.Model``; another task model still changes the key.
* A physics first used inside a trace builds its MJX model there, as concrete
  constants, and computes what one built before the trace computes.
* End to end (subprocesses, tiny sizes; slow): ``wmel-jax eval`` with an empty cache
  folder, then again with the same folder; the second reads every kernel,
  traces none, never imports ``mujoco.mjx``, flax or the networks, and writes
  the same report (all but its time stamp and timings).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from wmel_jax import kernel_cache
from wmel_jax.demo import EXAMPLES_DIR
from wmel_jax.oracle import base, task_class

TASK = "cartpole-swingup"
ROOT = Path(__file__).resolve().parent.parent


def _fresh_physics(task: str = TASK, precision: str = "float64"):
    """A Physics of its own (physics_for's cache shares built ones between tests)."""
    return base.physics_for.__wrapped__(task_class(task), precision)


def test_the_oracle_kernels_key_needs_no_mjx_model():
    import mujoco

    fresh = _fresh_physics()
    assert "model" not in vars(fresh)
    key = kernel_cache.content_key(fresh)
    assert "model" not in vars(fresh), "keying built the MJX model"
    assert key == kernel_cache.content_key(base.physics_for(task_class(TASK), "float64"))
    # Another task model (an edited XML: same names, other numbers): another key, still unbuilt.
    changed = mujoco.MjModel.from_xml_path(str(base.dm_control_suite_dir() / task_class(TASK).xml_file))
    changed.opt.enableflags &= ~int(mujoco.mjtEnableBit.mjENBL_ENERGY)
    changed.opt.timestep *= 0.5
    other = base.Physics(fresh.task, changed, "float64")
    assert kernel_cache.content_key(other) != key and "model" not in vars(other)
    # The paths picked when it is built are the ones asked for by default.
    assert (fresh.solver, fresh.factor) == ("single_row", "elementwise") and "model" in vars(fresh)


def test_a_physics_built_inside_a_trace_computes_what_one_built_before_does():
    built = base.physics_for(task_class(TASK), "float64")
    fresh = _fresh_physics()

    def observe(physics):
        def f(obs):
            d = physics.kinematics(physics.state(obs))
            return physics.observe(d, physics.aux(obs, d))

        return f

    obs = np.array([[0.1, np.cos(0.3), np.sin(0.3), -0.2, 0.5], [-0.4, np.cos(2.0), np.sin(2.0), 1.0, -1.5]])
    with base.precision_scope("float64"):
        want = np.asarray(jax.jit(observe(built))(obs))
        assert "model" not in vars(fresh)
        got = np.asarray(jax.jit(observe(fresh))(obs))  # builds the MJX model while tracing
    assert not any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(fresh.model))
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(got, obs, rtol=0, atol=1e-12)


_PROBE = """
import json, sys
from wmel_jax import cli, kernel_cache
code = cli.main(sys.argv[1:])
watched = ("mujoco.mjx", "flax", "wmel_jax.model.networks", "wmel_jax.model.dreamerv3", "trimesh", "dm_control", "torch")
print(json.dumps({"code": code, "imported": [m for m in watched if m in sys.modules], "stats": kernel_cache.stats()}))
"""


def _eval(cache: Path, report: Path) -> dict:
    model = EXAMPLES_DIR / f"{TASK}-good.safetensors"
    argv = ["eval", str(model), "--env", TASK, "--n-states", "8", "--k-steps", "3", "--cache-dir", str(cache),
            "-o", str(report), "-q"]
    env = {**os.environ, "MUJOCO_GL": "disable"}
    env.pop("WMEL_JAX_CACHE_DIR", None)
    out = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True, timeout=600,
                         cwd=ROOT, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _comparable(report: Path) -> dict:
    data = json.loads(report.read_text())
    data.pop("generated_at")
    data.pop("timings")
    return data


@pytest.mark.slow  # two whole processes, the first tracing and compiling every kernel (85 s at load 9 here)
def test_a_warm_eval_imports_neither_mjx_nor_flax_and_reports_what_a_cold_one_does(tmp_path):
    cache = tmp_path / "cache"
    cold = _eval(cache, tmp_path / "cold.json")
    assert cold["code"] == 0 and cold["stats"].get("traced", 0) >= 3, cold  # sampler, oracle, model (and draws)
    assert "mujoco.mjx" in cold["imported"] and "flax" in cold["imported"]  # a trace needs both
    kernels = sorted(p.name for p in (cache / "kernels").iterdir())
    warm = _eval(cache, tmp_path / "warm.json")
    assert warm["code"] == 0
    assert "traced" not in warm["stats"] and warm["stats"].get("read", 0) == cold["stats"]["written"], warm
    assert warm["imported"] == [], warm["imported"]
    assert sorted(p.name for p in (cache / "kernels").iterdir()) == kernels  # nothing new written
    assert _comparable(tmp_path / "warm.json") == _comparable(tmp_path / "cold.json")


@pytest.mark.parametrize("module", ["wmel_jax.oracle.base", "wmel_jax.model"])
def test_importing_the_eval_path_imports_neither_mjx_nor_flax(module):
    code = f"import sys, {module}; print([m for m in ('mujoco.mjx', 'flax') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"

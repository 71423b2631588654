"""Session-wide test configuration.

The suite runs the way the CLI runs: 64-bit JAX enabled (the float64 oracle
needs it; the model's own arrays stay float32 by construction). Tests that
must see JAX with x64 off, or a process without torch, run in a subprocess.

``checkpoints`` (session scope) builds torch mirror models, saves them the
way upstream does and converts them, once per session; tests share them.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest

# dm_control picks an OpenGL backend on import; the tests never render.
os.environ.setdefault("MUJOCO_GL", "disable")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

#: The one evaluation shape the eval tests share (states, M2 steps, states per
#: chunk: 150 = 128 + a padded chunk of 22; the defaults of the reference), so each task's oracle and model
#: kernels compile once for the whole session.
EVAL_N, EVAL_K, EVAL_CHUNK = 150, 10, 128


# --------------------------------------------------------------------------- #
# One XLA executable cache for the session's processes
# --------------------------------------------------------------------------- #

#: The folder of XLA executables that the session's pytest processes (the xdist workers) share.
SHARED_XLA_ENV = "WMEL_JAX_TEST_SHARED_XLA"
#: Executables that compile faster than this are not worth a file.
SHARED_XLA_MIN_COMPILE_S = 0.5


def pytest_configure(config):
    """The first process (the xdist controller, or a run without xdist) makes the shared folder.

    Workers inherit it through the environment. Only XLA's executables are
    shared (JAX's persistent compilation cache, keyed by the program and
    every compile option, read checksummed by wmel_jax.kernel_cache): every
    test still traces its kernels, and no wmel_jax kernel folder is set, so
    what a test computes and which code paths it runs do not change; a
    program that one worker compiled is read by the other instead of being
    compiled twice.
    """
    import tempfile

    if hasattr(config, "workerinput") or SHARED_XLA_ENV in os.environ:
        return
    folder = tempfile.mkdtemp(prefix="wmel-jax-tests-xla-")
    os.environ[SHARED_XLA_ENV] = folder
    config._wmel_shared_xla = folder


def pytest_unconfigure(config):
    import shutil

    folder = getattr(config, "_wmel_shared_xla", None)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)
        os.environ.pop(SHARED_XLA_ENV, None)


@pytest.fixture(scope="session", autouse=True)
def shared_xla_cache():
    """This process's XLA compilations go through the session's shared folder (see pytest_configure)."""
    from wmel_jax import kernel_cache

    folder = os.environ.get(SHARED_XLA_ENV)
    if folder:
        kernel_cache._install_xla_cache(Path(folder))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", SHARED_XLA_MIN_COMPILE_S)
    yield folder


def eval_cli(*argv, capsys) -> tuple[int, str, str]:
    """``wmel-jax eval ARGV --no-cache`` in process: (exit status, stdout, stderr)."""
    from wmel_jax import cli

    code = cli.main(["eval", *map(str, argv), "--no-cache"])
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_eval_user_error(capsys, folder: Path, *argv, match: str) -> str:
    """``wmel-jax eval ARGV`` fails as a user mistake: exit 2, one stderr line containing ``match``, no file left."""
    before = set(os.listdir(folder))
    code, out, err = eval_cli(*argv, capsys=capsys)
    assert code == 2, (out, err)
    err = without_progress(err)
    assert err.startswith("wmel-jax: error: ") and err.count("\n") == 1, err
    assert match.lower() in err.lower(), err
    assert set(os.listdir(folder)) == before, "a failed eval left a file behind"
    return err


#: The reference correlate.py's cell descriptors (experiments/offline_downstream/correlate.py, DEFAULT_EXCLUDE).
CORRELATE_DESCRIPTORS = frozenset({"epochs", "seed", "hidden", "data_size", "model_size", "env", "planner",
                                   "model", "variant", "cell"})


def correlate_metric_keys(cells, downstream_key: str = "gap") -> set[str]:
    """The keys the reference's correlate.py would correlate with the gap, by its rule.

    Its rule: every top-level key of a cell, except its descriptors and the
    downstream key, whose value is a finite number (an int or float, not a
    bool); lists, dicts, strings and None are passed over.
    """
    import math

    exclude = CORRELATE_DESCRIPTORS | {downstream_key}

    def is_number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    return {k for c in cells for k, v in c.items() if k not in exclude and is_number(v)}


#: How progress lines begin when stderr is not a terminal (wmel_jax.progress).
PROGRESS_PREFIX = "wmel-jax ["


def without_progress(err: str) -> str:
    """stderr without the progress lines (one per phase when stderr is not a terminal)."""
    return "".join(line for line in err.splitlines(keepends=True) if not line.startswith(PROGRESS_PREFIX))


def small_eval_args(*extra) -> list[str]:
    """The suite's shared eval shape as CLI flags (compiled kernels are reused across tests), plus ``extra``."""
    return ["--n-states", str(EVAL_N), "--k-steps", str(EVAL_K), "--chunk-states", str(EVAL_CHUNK), *map(str, extra)]


# --------------------------------------------------------------------------- #
# Converted checkpoints, built once per session (torch mirror -> .pt -> wmel-jax file)
# --------------------------------------------------------------------------- #

@dataclasses.dataclass
class Checkpoint:
    """A torch mirror model, the checkpoint it was saved to, and its conversion."""

    torch_model: Any
    pt: Path
    converted: Path


class CheckpointCache:
    """Builds, saves (the upstream way) and converts each model once per session.

    Keys are the keyword arguments; ``cache=False`` builds in a fresh folder and
    keeps nothing (for the 317M model).
    """

    def __init__(self, root: Path):
        self.root = root
        self._built: dict[tuple, Checkpoint] = {}

    def _build(self, key: tuple, make, save, cache: bool) -> Checkpoint:
        if cache and key in self._built:
            return self._built[key]
        from wmel_jax.converters.convert import convert_checkpoint

        folder = self.root / f"ckpt{len(self._built)}_{abs(hash(key)) % 10**8}"
        folder.mkdir()
        model = make()
        pt = folder / "model.pt"
        save(model, pt)
        converted = convert_checkpoint(pt, folder / "model.safetensors")
        ckpt = Checkpoint(model, pt, converted)
        if cache:
            self._built[key] = ckpt
        return ckpt

    def upstream(self, size: int, *, num_tasks: int = 0, layout: str = "current", seed: int = 0,
                 obs_dim: int = 5, action_dim: int = 1, episodic: bool = False,
                 cache: bool = True) -> Checkpoint:
        from wmel_jax.converters import tdmpc2_torch as T

        key = ("upstream", size, num_tasks, layout, seed, obs_dim, action_dim, episodic)
        return self._build(
            key,
            lambda: T.build_upstream(size, obs_dim, action_dim, seed=seed, num_tasks=num_tasks,
                                     episodic=episodic),
            lambda m, p: T.save_upstream(m, p, layout=layout),
            cache,
        )

    def adapter(self, size: int, *, seed: int = 0, obs_dim: int = 6, action_dim: int = 2,
                cache: bool = True) -> Checkpoint:
        from wmel_jax.converters import tdmpc2_torch as T

        if action_dim == 1:
            actions = dict(action_levels=[-1.0, -0.5, 0.0, 0.5, 1.0])
        else:
            actions = dict(action_set=[[float(i), float(j)] for i in (-1, 0, 1) for j in (-1, 0, 1)])
        key = ("adapter", size, seed, obs_dim, action_dim)
        return self._build(
            key,
            lambda: T.build_adapter(size, obs_dim, action_dim, seed=seed, decoder_hidden=64),
            lambda m, p: T.save_adapter(m, p, meta={"frame_skip": 1, "training_steps": 1000,
                                                   "tdmpc2_model_size": size}, **actions),
            cache,
        )


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> CheckpointCache:
    return CheckpointCache(tmp_path_factory.mktemp("checkpoints"))

"""The kernel cache (wmel_jax.kernel_cache): what is read back, what changes a key, what bad files get.

* Round trips: the oracle's targets, the state sampler and a model's metrics
  computed from kernels read back from the cache are bit-identical to those
  from freshly traced kernels (one small problem, cartpole with frame_skip 3
  so that no other test module shares these kernels).
* Keys: every input that changes a traced program changes the file name
  (oracle configuration, shapes, dtypes, 64-bit mode, closure constants, code,
  package versions, JAX settings, the MuJoCo model); compiler options key the
  in-process and XLA caches.
* Files: a corrupted, truncated, foreign or empty file is ignored and
  replaced; nothing read is unpickled or imported; writes are atomic; an
  unusable cache folder means no cache and one warning line.

Most tests use a tiny kernel made of wmel_jax's own metric functions
(``functools.partial(M.one_step_l2_sum)``: traces and compiles in
milliseconds, and returns a NamedTuple, as the model kernel does).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pickle
import shutil
import sys
import threading
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import wmel_jax
from wmel_jax import evaluate, kernel_cache
from wmel_jax import metrics as M
from wmel_jax.commands import _common
from wmel_jax.demo import EXAMPLES_DIR
from wmel_jax.oracle import base

TASK = "cartpole-swingup"
FRAME_SKIP = 3  # a configuration no other test module compiles
N_STATES, CHUNK, K_STEPS = 6, 4, 3  # two chunks, the second padded

_JAX_CACHE_FLAGS = (
    "jax_compilation_cache_dir",
    "jax_persistent_cache_min_compile_time_secs",
    "jax_persistent_cache_min_entry_size_bytes",
)


def _tiny():
    """A cheap, keyable kernel: M1's chunk sums (pred (3, 2, 4), true (3, 2, 4), valid (3,)) -> SumCount."""
    return functools.partial(M.one_step_l2_sum)


def _tiny_args(dtype=np.float32):
    rng = np.random.default_rng(0)
    pred = rng.normal(size=(3, 2, 4)).astype(dtype)
    true = rng.normal(size=(3, 2, 4)).astype(dtype)
    return pred, true, np.array([True, True, False])


def _delta(before: dict, after: dict) -> dict:
    return {k: after.get(k, 0) - before.get(k, 0) for k in set(before) | set(after) if after.get(k, 0) != before.get(k, 0)}


def _cache_state() -> tuple:
    from jax._src import compilation_cache

    flags = {name: jax.config.values[name] for name in _JAX_CACHE_FLAGS}
    return flags, kernel_cache.get_directory(), compilation_cache._cache


def _restore_cache_state(state: tuple) -> None:
    """Both caches back as they were (JAX's cache object included, so an enclosing fixture's stays on)."""
    from jax._src import compilation_cache

    flags, kernels, xla = state
    kernel_cache.disable()
    for name, value in flags.items():
        jax.config.update(name, value)
    with compilation_cache._cache_initialized_mutex:
        compilation_cache._cache = xla
        compilation_cache._cache_initialized = xla is not None
    kernel_cache.set_directory(kernels)


@pytest.fixture
def restore_jax_cache_config():
    """Put JAX's persistent-cache settings and the kernel folder back as they were."""
    state = _cache_state()
    yield
    _restore_cache_state(state)


@pytest.fixture
def kernels_dir(tmp_path, restore_jax_cache_config):
    """Traced kernels cached in a fresh folder (XLA's executables as they were)."""
    kernel_cache.set_directory(tmp_path)
    return tmp_path


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    """Both caches (kernels and XLA) in one folder for the round-trip tests of this module."""
    state = _cache_state()
    root = kernel_cache.enable(tmp_path_factory.mktemp("kernel-cache"))
    yield root
    _restore_cache_state(state)


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(4)
    theta = rng.uniform(-np.pi, np.pi, N_STATES)
    states = np.stack(
        [rng.uniform(-1, 1, N_STATES), np.cos(theta), np.sin(theta), rng.normal(size=N_STATES), rng.normal(size=N_STATES)],
        axis=1,
    )
    return evaluate.make_problem(TASK, states=states, k_steps=K_STEPS, seed=2, frame_skip=FRAME_SKIP)


# --------------------------------------------------------------------------- #
# round trips: read back == traced, bit for bit
# --------------------------------------------------------------------------- #


def test_oracle_targets_from_a_stored_kernel_are_bit_identical(cache_root, problem):
    kernel = evaluate._oracle_kernel(problem.oracle())
    kernel_cache.clear(kernel)
    s0 = kernel_cache.stats()
    fresh = evaluate.oracle_targets(problem, CHUNK)
    s1 = kernel_cache.stats()
    assert _delta(s0, s1).get("traced") == 1 and _delta(s0, s1).get("written") == 1, _delta(s0, s1)
    assert len(list((cache_root / "kernels").glob("*.kernel"))) >= 1

    kernel_cache.clear(kernel)
    again = evaluate.oracle_targets(problem, CHUNK)
    d = _delta(s1, kernel_cache.stats())
    assert d.get("read") == 1 and "traced" not in d, d
    # The program read back is the one traced: XLA's cache (keyed by the
    # program's text and options) finds its executable instead of compiling.
    assert d.get("xla_read", 0) >= 1 and "xla_written" not in d, d
    for name in ("next_obs", "scores", "trajectory", "rewards"):
        a, b = getattr(fresh, name), getattr(again, name)
        assert a.dtype == b.dtype == np.float64
        np.testing.assert_array_equal(a, b, err_msg=name)


def test_sampled_states_from_a_stored_kernel_are_bit_identical(cache_root):
    from wmel_jax.states import _draws, _sampler, sample_states

    oracle = wmel_jax.make_oracle(TASK, frame_skip=FRAME_SKIP)
    # 5 states: 2 episodes of 3; the draws (a PRNG key in), then the rollouts (key data in).
    kernels = (_draws(2, 2, oracle.actions.shape[0]), _sampler(oracle, 3, str(jax.random.key_impl(jax.random.key(0)))))
    for kernel in kernels:
        kernel_cache.clear(kernel)
    s0 = kernel_cache.stats()
    fresh = np.asarray(sample_states(jax.random.key(5), TASK, 5, reset_every=3, frame_skip=FRAME_SKIP))
    for kernel in kernels:
        kernel_cache.clear(kernel)
    again = np.asarray(sample_states(jax.random.key(5), TASK, 5, reset_every=3, frame_skip=FRAME_SKIP))
    d = _delta(s0, kernel_cache.stats())
    # A PRNG key is an argument of the draws: it must survive the round trip too.
    assert d.get("traced") == 2 and d.get("written") == 2 and d.get("read") == 2, d
    np.testing.assert_array_equal(fresh, again)
    assert not np.array_equal(fresh, np.asarray(sample_states(jax.random.key(6), TASK, 5, reset_every=3, frame_skip=FRAME_SKIP)))


def test_model_metrics_from_a_stored_kernel_are_bit_identical(cache_root, problem):
    model = wmel_jax.load(EXAMPLES_DIR / "cartpole-swingup-good.safetensors")
    targets = evaluate.oracle_targets(problem, CHUNK)
    kernel = evaluate._model_kernel(model.arch, problem.oracle().physics.task.score, evaluate.model_spaces(model.arch))
    kernel_cache.clear(kernel)
    s0 = kernel_cache.stats()
    fresh, _ = evaluate.model_metrics(model, problem, targets, CHUNK)
    kernel_cache.clear(kernel)
    again, _ = evaluate.model_metrics(model, problem, targets, CHUNK)
    d = _delta(s0, kernel_cache.stats())
    # Params (a dict), a None task index and SumCount results cross the round trip.
    assert d.get("traced") == 1 and d.get("written") == 1 and d.get("read") == 1, d
    assert fresh.keys() == again.keys()
    for name in fresh:
        np.testing.assert_array_equal(np.asarray(fresh[name], dtype=object), np.asarray(again[name], dtype=object), err_msg=name)
    assert fresh["m1_l2_onestep"] is not None and fresh["m3_states_used"] > 0


def test_no_cache_computes_what_a_cached_run_computes(cache_root, problem):
    """Without a kernel folder kernels are exported all the same: one program either way."""
    kernel = evaluate._oracle_kernel(problem.oracle())
    try:
        kernel_cache.set_directory(None)
        kernel_cache.clear(kernel)
        s0 = kernel_cache.stats()
        uncached = evaluate.oracle_targets(problem, CHUNK)
        d = _delta(s0, kernel_cache.stats())
        assert d.get("traced") == 1 and "written" not in d, d
        # XLA's cache, still on, finds the executable of the program stored above.
        assert d.get("xla_read", 0) >= 1 and "xla_written" not in d, d
    finally:
        kernel_cache.set_directory(cache_root / "kernels")
    kernel_cache.clear(kernel)
    cached = evaluate.oracle_targets(problem, CHUNK)
    for name in ("next_obs", "scores", "trajectory", "rewards"):
        np.testing.assert_array_equal(getattr(uncached, name), getattr(cached, name), err_msg=name)


# --------------------------------------------------------------------------- #
# keys
# --------------------------------------------------------------------------- #


def _stem(kernel, *args) -> str:
    return kernel_cache.disk_key(kernel, kernel_cache._abstract(tuple(args)))[0]


def test_oracle_configuration_changes_the_key():
    def oracle_key(task, frame_skip, precision):
        oracle = wmel_jax.make_oracle(task, frame_skip=frame_skip, precision=precision)
        dtype = oracle.dtype
        args = (
            jax.ShapeDtypeStruct((4, oracle.obs_dim), dtype),
            jax.ShapeDtypeStruct((5, oracle.action_dim), dtype),
            jax.ShapeDtypeStruct((3, oracle.action_dim), dtype),
        )
        with base.precision_scope(precision):
            return _stem(evaluate._oracle_kernel(oracle), *args)

    keys = {
        oracle_key(TASK, 1, "float64"),
        oracle_key(TASK, 2, "float64"),
        oracle_key("acrobot-swingup", 1, "float64"),
    }
    assert len(keys) == 3
    # Same configuration, same key (a fresh Oracle object would do too: the key is content).
    assert oracle_key(TASK, 1, "float64") in keys
    # float32 changes dtypes AND the 64-bit mode; its key differs from float64's
    # even with the argument dtypes forced equal.
    oracle32 = wmel_jax.make_oracle(TASK, precision="float32")
    oracle64 = wmel_jax.make_oracle(TASK)
    args = (jax.ShapeDtypeStruct((4, 5), np.float32), jax.ShapeDtypeStruct((5, 1), np.float32), jax.ShapeDtypeStruct((3, 1), np.float32))
    assert _stem(evaluate._oracle_kernel(oracle32), *args) != _stem(evaluate._oracle_kernel(oracle64), *args)


def test_physics_solver_and_model_content_change_the_key():
    import mujoco

    task_cls = wmel_jax.oracle.task_class("reacher-easy")
    fast = base.physics_for(task_cls, "float64")
    general = base.physics_for(task_cls, "float64", "mjx", "lapack")
    assert kernel_cache.content_key(fast) != kernel_cache.content_key(general)
    mj_model = base.load_mj_model(task_cls.xml_file)
    same = base.Physics(fast.task, mj_model, "float64")
    assert kernel_cache.content_key(same) == kernel_cache.content_key(fast)
    changed = mujoco.MjModel.from_xml_path(str(base.dm_control_suite_dir() / task_cls.xml_file))
    changed.opt.enableflags &= ~int(mujoco.mjtEnableBit.mjENBL_ENERGY)
    changed.opt.timestep *= 0.5  # e.g. an edited task XML: same names, other numbers
    other = base.Physics(fast.task, changed, "float64")
    assert kernel_cache.content_key(other) != kernel_cache.content_key(fast)


def test_shapes_dtypes_and_x64_change_the_key():
    kernel = _tiny()
    pred, true, valid = _tiny_args()
    base_key = _stem(kernel, pred, true, valid)
    assert _stem(kernel, pred, true, valid) == base_key
    assert _stem(kernel, pred[:2], true[:2], valid[:2]) != base_key
    assert _stem(kernel, pred.astype(np.float64), true.astype(np.float64), valid) != base_key
    with jax.enable_x64(False):  # the same float32 arguments, traced with 64-bit mode off
        assert _stem(kernel, pred, true, valid) != base_key
    with jax.default_matmul_precision("highest"):  # any JAX setting a trace may read
        assert _stem(kernel, pred, true, valid) != base_key


def test_closure_constants_and_code_change_the_key():
    pred, true, valid = _tiny_args()
    add = lambda c: _stem(functools.partial(jnp.add, np.array([c], np.float32)), pred)  # noqa: E731
    assert add(1.0) == add(1.0) and add(1.0) != add(2.0)
    # Closures over other values: model kernels of two architectures, of two tasks' scores, of two
    # metric selections (`--metrics`).
    model = wmel_jax.load(EXAMPLES_DIR / "cartpole-swingup-good.safetensors")
    acro = wmel_jax.load(EXAMPLES_DIR / "acrobot-swingup-good.safetensors")
    cart_score = wmel_jax.make_oracle(TASK).physics.task.score
    acro_score = wmel_jax.make_oracle("acrobot-swingup").physics.task.score
    keys = {
        json.dumps(kernel_cache.content_key(evaluate._model_kernel(arch, score, spaces)))
        for arch in (model.arch, acro.arch)
        for score in (cart_score, acro_score)
        for spaces in (("observation",), ("observation", "latent"))
    }
    assert len(keys) == 8
    # Code objects: the same bytecode with another constant.
    f = lambda x: x * 2.0  # noqa: E731
    g = lambda x: x * 3.0  # noqa: E731
    assert f.__code__.co_code == g.__code__.co_code
    assert kernel_cache._code_key(f.__code__) != kernel_cache._code_key(g.__code__)


def test_a_kernel_outside_the_keyed_packages_is_never_stored(kernels_dir):
    scale = np.float32(3.0)

    def kernel(x):  # code of this test module: not in wmel_jax's source fingerprint
        return x * scale

    with pytest.raises(kernel_cache.Unkeyable):
        kernel_cache.content_key(kernel)
    s0 = kernel_cache.stats()
    out, _ = kernel_cache.compiled(kernel, (np.ones(3, np.float32),))
    np.testing.assert_array_equal(out(np.ones(3, np.float32)), np.full(3, 3.0, np.float32))
    assert _delta(s0, kernel_cache.stats()).get("unkeyable") == 1
    assert list(kernels_dir.iterdir()) == []


def test_wmel_jax_sources_and_versions_change_the_key(tmp_path, monkeypatch):
    package = Path(kernel_cache.__file__).resolve().parent
    copy = tmp_path / "wmel_jax"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__", "*.safetensors", "*.pt"))
    assert kernel_cache.tree_fingerprint(copy) == kernel_cache._source_fingerprint()
    metrics_py = copy / "metrics.py"
    metrics_py.write_text(metrics_py.read_text() + "\n# an edit\n")
    assert kernel_cache.tree_fingerprint(copy) != kernel_cache._source_fingerprint()

    pred, true, valid = _tiny_args()
    before = _stem(_tiny(), pred, true, valid)
    monkeypatch.setattr(kernel_cache, "_source_fingerprint", lambda: kernel_cache.tree_fingerprint(copy))
    assert _stem(_tiny(), pred, true, valid) != before
    monkeypatch.undo()
    versions = dict(kernel_cache._versions())
    for dist in ("jax", "jaxlib", "mujoco", "mujoco-mjx", "dm-control", "python"):
        monkeypatch.setattr(kernel_cache, "_versions", lambda d=dist: {**versions, d: versions[d] + "+other"})
        assert _stem(_tiny(), pred, true, valid) != before, dist


def test_compiler_options_key_the_compiled_kernel(cache_root):
    kernel = _tiny()
    args = _tiny_args()
    kernel_cache.clear(kernel)
    s0 = kernel_cache.stats()
    plain, _ = kernel_cache.compiled(kernel, args)
    fast, _ = kernel_cache.compiled(kernel, args, {"xla_backend_optimization_level": 0})
    again, seconds = kernel_cache.compiled(kernel, args)
    d = _delta(s0, kernel_cache.stats())
    assert plain is not fast and again is plain and seconds == 0.0
    # One traced program (options are not part of it), two XLA executables.
    assert d.get("compiled") == 2 and d.get("traced", 0) + d.get("read", 0) == 2, d
    assert d.get("xla_written", 0) + d.get("xla_read", 0) == 2, d
    np.testing.assert_array_equal(np.asarray(plain(*args).total), np.asarray(fast(*args).total))


# --------------------------------------------------------------------------- #
# files
# --------------------------------------------------------------------------- #


def _stored_file(directory: Path) -> Path:
    files = list(directory.glob("*.kernel"))
    assert len(files) == 1, files
    return files[0]


def _truncate(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _flip(data: bytes) -> bytes:
    b = bytearray(data)
    for i in range(len(b) - 40, len(b) - 20):  # inside the payload
        b[i] ^= 0x5A
    return bytes(b)


@pytest.mark.parametrize("damage", ["truncated", "flipped", "empty", "garbage", "foreign", "stale_key"])
def test_a_bad_kernel_file_is_ignored_and_replaced(kernels_dir, damage):
    kernel = _tiny()
    args = _tiny_args()
    kernel_cache.clear(kernel)
    expected = kernel_cache.compiled(kernel, args)[0](*args)
    path = _stored_file(kernels_dir)
    good = path.read_bytes()
    if damage == "foreign":  # a valid file of another kernel under this name
        other_dir = kernels_dir / "other"
        kernel_cache.set_directory(other_dir)
        kernel_cache.compiled(jnp.negative, (args[0],))
        bad = _stored_file(other_dir).read_bytes()
        kernel_cache.set_directory(kernels_dir)
    elif damage == "stale_key":  # this kernel's file with other key material (e.g. another version)
        at = len(kernel_cache._MAGIC)
        size = int.from_bytes(good[at : at + 8], "little")
        header = json.loads(good[at + 8 : at + 8 + size])
        header["key"]["versions"]["jax"] = "0.0.1"
        blob = json.dumps(header).encode()
        bad = good[:at] + len(blob).to_bytes(8, "little") + blob + good[at + 8 + size :]
    else:
        bad = {"truncated": _truncate, "flipped": _flip, "empty": lambda d: b"", "garbage": lambda d: os.urandom(len(d))}[damage](good)
    path.write_bytes(bad)

    kernel_cache.clear(kernel)
    s0 = kernel_cache.stats()
    out = kernel_cache.compiled(kernel, args)[0](*args)
    d = _delta(s0, kernel_cache.stats())
    assert d.get("rejected") == 1 and d.get("traced") == 1 and d.get("written") == 1, d
    np.testing.assert_array_equal(np.asarray(out.total), np.asarray(expected.total))
    assert path.read_bytes() == good, "the bad file was not replaced by the traced program"
    kernel_cache.clear(kernel)
    s1 = kernel_cache.stats()
    kernel_cache.compiled(kernel, args)
    assert _delta(s1, kernel_cache.stats()).get("read") == 1


@pytest.mark.parametrize("damage", ["truncated", "flipped", "foreign_key"])
def test_a_bad_xla_file_is_ignored_and_replaced(tmp_path, restore_jax_cache_config, recwarn, damage):
    kernel_cache.enable(tmp_path)
    kernel = functools.partial(M.kstep_l2_curve_sum)
    args = (np.ones((2, 3, 4), np.float32), np.zeros((2, 3, 4), np.float32), np.ones(3, bool))
    other = functools.partial(M.l2_distance)
    written = []
    for k, a in ((kernel, args), (other, args[:2])):
        kernel_cache.clear(k)
        kernel_cache.compiled(k, a)
        written.append({p for p in (tmp_path / "xla").glob("jit_call*.xla")} - set().union(*written))
    assert all(len(w) == 1 for w in written), written  # one executable per kernel
    before = {p: p.read_bytes() for p in (tmp_path / "xla").glob("*.xla")}
    entry = kernel_cache._xla_cache_class()(tmp_path / "xla")
    path = next(iter(written[0]))  # the first kernel's executable
    key = path.name[: -len(kernel_cache._XLA_SUFFIX)]
    if damage == "foreign_key":  # another entry's (valid) file under this entry's name
        path.write_bytes(next(before[p] for p in before if p != path))
    else:
        path.write_bytes((_truncate if damage == "truncated" else _flip)(before[path]))
    assert entry.get(key) is None and not path.exists(), "a bad entry must be refused and removed"
    path.write_bytes(next(before[p] for p in before if p != path) if damage == "foreign_key" else _flip(before[path]))
    kernel_cache.clear(kernel)
    s0 = kernel_cache.stats()
    out = kernel_cache.compiled(kernel, args)[0](*args)
    d = _delta(s0, kernel_cache.stats())
    assert d.get("xla_rejected") == 1 and d.get("xla_written") == 1, d
    np.testing.assert_array_equal(np.asarray(out.total), np.full(2, 3 * 2.0, np.float32))  # ||1 - 0|| over 4 dims = 2
    assert entry.get(key) is not None, "the bad entry was not replaced"
    kernel_cache.clear(kernel)
    s1 = kernel_cache.stats()
    kernel_cache.compiled(kernel, args)
    d = _delta(s1, kernel_cache.stats())
    assert d.get("xla_read", 0) >= 1 and "xla_rejected" not in d and "xla_written" not in d, d
    assert not [w for w in recwarn if "compilation cache" in str(w.message)], [str(w.message) for w in recwarn]


def _header_for(directory: Path, kernel, args, payload: bytes, namedtuples=()) -> Path:
    stem, material = kernel_cache.disk_key(kernel, kernel_cache._abstract(tuple(args)))
    path = directory / (stem + kernel_cache._SUFFIX)
    kernel_cache._write(path, material, payload, [list(n) for n in namedtuples])
    return path


class _Trap:
    fired = False

    def __reduce__(self):
        return (_fire, ())


def _fire():
    _Trap.fired = True
    return None


def test_a_pickle_in_the_cache_is_never_unpickled(kernels_dir):
    kernel = _tiny()
    args = _tiny_args()
    _header_for(kernels_dir, kernel, args, pickle.dumps(_Trap()))
    kernel_cache.clear(kernel)
    s0 = kernel_cache.stats()
    kernel_cache.compiled(kernel, args)
    d = _delta(s0, kernel_cache.stats())
    assert d.get("rejected") == 1 and d.get("traced") == 1, d
    assert not _Trap.fired


@pytest.mark.parametrize(
    "named",
    [
        ["os", "system"],  # outside wmel_jax
        ["wmel_jax.no_such_module", "Thing"],  # a module that is not loaded: never imported
        ["wmel_jax.kernel_cache", "enable"],  # not a NamedTuple type
    ],
)
def test_a_stored_program_naming_other_types_is_refused_without_importing(kernels_dir, named):
    kernel = _tiny()
    args = _tiny_args()
    exported = jax.export.export(jax.jit(kernel))(*kernel_cache._abstract(args))
    _header_for(kernels_dir, kernel, args, bytes(exported.serialize()), [named])
    kernel_cache.clear(kernel)
    s0 = kernel_cache.stats()
    kernel_cache.compiled(kernel, args)
    d = _delta(s0, kernel_cache.stats())
    assert d.get("rejected") == 1 and d.get("traced") == 1, d
    assert "wmel_jax.no_such_module" not in sys.modules


def test_concurrent_writers_never_expose_a_partial_file(tmp_path):
    path = tmp_path / "entry.kernel"
    contents = [bytes([i]) * (1 << 20) for i in range(4)]  # 1 MiB each
    path.write_bytes(contents[0])
    stop = threading.Event()
    seen: set[bytes] = set()

    def read():
        while not stop.is_set():
            data = path.read_bytes()
            seen.add(hashlib.sha256(data).digest())

    def write(c):
        for _ in range(10):
            kernel_cache._atomic_write(path, c)

    reader = threading.Thread(target=read)
    reader.start()
    writers = [threading.Thread(target=write, args=(c,)) for c in contents]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    stop.set()
    reader.join()
    assert seen <= {hashlib.sha256(c).digest() for c in contents}, "a reader saw a partly written file"
    assert [p.name for p in tmp_path.iterdir()] == ["entry.kernel"], "temporary files left behind"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "entry.kernel"
    path.write_bytes(b"old")

    def fail(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        kernel_cache._atomic_write(path, b"new" * 1000)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["entry.kernel"]


# --------------------------------------------------------------------------- #
# the CLI's cache folder
# --------------------------------------------------------------------------- #


def test_an_unusable_cache_folder_means_no_cache_and_one_warning(tmp_path, restore_jax_cache_config, capsys):
    kernel_cache.disable()  # as a fresh process starts
    (tmp_path / "a-file").write_text("not a folder")
    before = jax.config.values["jax_compilation_cache_dir"]
    for bad in (tmp_path / "a-file" / "cache", tmp_path / "a-file"):
        assert _common.enable_compilation_cache(bad) is None
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("wmel-jax: warning: cache directory"), err
        assert kernel_cache.get_directory() is None
        assert jax.config.values["jax_compilation_cache_dir"] == before
    # A folder whose kernels/ is taken by a file.
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "kernels").write_text("")
    assert _common.enable_compilation_cache(tmp_path / "root") is None
    assert capsys.readouterr().err.count("\n") == 1


def test_a_read_only_cache_folder_means_no_cache_and_one_warning(tmp_path, restore_jax_cache_config, capsys, monkeypatch):
    root = tmp_path / "ro"
    (root / "kernels").mkdir(parents=True)
    (root / "xla").mkdir()
    for p in (root / "kernels", root / "xla", root):
        p.chmod(0o555)
    if os.geteuid() == 0:  # permissions do not bind root (CI runs as root): the OS's refusal, simulated

        def refuse(*args, **kwargs):
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(kernel_cache.tempfile, "mkstemp", refuse)
    kernel_cache.disable()
    try:
        assert _common.enable_compilation_cache(root) is None
        assert capsys.readouterr().err.count("\n") == 1
        assert kernel_cache.get_directory() is None
    finally:
        for p in (root, root / "kernels", root / "xla"):
            p.chmod(0o755)


def test_cache_folder_defaults_and_the_environment_variable(monkeypatch, tmp_path):
    monkeypatch.delenv(_common.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert _common.default_cache_dir() == tmp_path / "wmel-jax"
    monkeypatch.setenv(_common.CACHE_ENV, str(tmp_path / "elsewhere"))
    assert _common.default_cache_dir() == tmp_path / "elsewhere"
    for off in ("", "off", "OFF", "0", "none"):
        monkeypatch.setenv(_common.CACHE_ENV, off)
        assert _common.default_cache_dir() is None


def test_eval_help_documents_the_cache(capsys):
    from wmel_jax import cli

    with pytest.raises(SystemExit):
        cli.main(["eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for needle in ("--cache-dir DIR", "--no-cache", "WMEL_JAX_CACHE_DIR", "~/.cache/wmel-jax", "DIR/kernels", "DIR/xla"):
        assert needle in text, needle


def test_enable_creates_both_folders_and_caches_xla(tmp_path, restore_jax_cache_config):
    root = _common.enable_compilation_cache(tmp_path / "new" / "cache")
    assert root == tmp_path / "new" / "cache"
    assert kernel_cache.get_directory() == root / "kernels"
    assert jax.config.values["jax_compilation_cache_dir"] == str(root / "xla")
    kernel = functools.partial(M.l2_distance)
    kernel_cache.clear(kernel)
    kernel_cache.compiled(kernel, (np.ones((2, 3), np.float32), np.ones((2, 3), np.float32)))
    assert list((root / "kernels").glob("*.kernel")) and list((root / "xla").glob("*.xla"))


# --------------------------------------------------------------------------- #
# background compilation
# --------------------------------------------------------------------------- #


def test_precompile_is_waited_for_and_compiles_once():
    kernel = functools.partial(M.l2_distance)
    args = (np.ones((5, 3), np.float32), np.zeros((5, 3), np.float32))
    kernel_cache.clear(kernel)
    s0 = kernel_cache.stats()
    future = kernel_cache.precompile(kernel, args)
    got, _ = kernel_cache.compiled(kernel, args)
    future.result()
    assert _delta(s0, kernel_cache.stats()).get("compiled") == 1
    np.testing.assert_allclose(np.asarray(got(*args)), np.full(5, np.sqrt(3.0), np.float32))


def test_the_oracle_kernel_precompiled_during_sampling_is_the_one_oracle_targets_uses(problem):
    kernel = evaluate._oracle_kernel(problem.oracle())
    kernel_cache.clear(kernel)
    s0 = kernel_cache.stats()
    future = evaluate.precompile_oracle_targets(
        TASK, n_states=N_STATES, k_steps=K_STEPS, actions=problem.actions, frame_skip=FRAME_SKIP, chunk_states=CHUNK
    )
    targets = evaluate.oracle_targets(problem, CHUNK)
    future.result()
    d = _delta(s0, kernel_cache.stats())
    assert d.get("compiled") == 1, d  # compiled once: oracle_targets waited for it or reused it
    assert d.get("traced", 0) + d.get("read", 0) == 1, d
    assert targets.next_obs.shape == (N_STATES, len(problem.actions), 5)
    # Arguments make_problem would refuse start nothing.
    assert evaluate.precompile_oracle_targets(TASK, n_states=0, k_steps=K_STEPS) is None
    assert evaluate.precompile_oracle_targets(TASK, n_states=5, k_steps=K_STEPS, actions=[[3.0]]) is None


def test_a_failed_precompile_raises_in_the_caller():
    kernel = functools.partial(M.l2_distance)
    bad = (np.ones((5, 3), np.float32), np.ones((5, 4), np.float32))  # l2_distance refuses different shapes
    future = kernel_cache.precompile(kernel, bad)
    with pytest.raises(ValueError, match="shapes differ"):
        kernel_cache.compiled(kernel, bad)
    assert isinstance(future.exception(), ValueError)  # kept in the future, not raised in the thread

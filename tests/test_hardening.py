"""Issue 13, items 1-10: what an attacker or a careless user gets (the attack files are built here).

Each test pins one item; none needs more than the suite's shared evaluation
shape (conftest.EVAL_*), so kernels compile once for the session. The tests
whose failure mode is a hang (a FIFO, Ctrl-C) or a memory bomb (a sparse file
declaring gigabytes, a cache entry linked to /dev/zero) run the code in a
subprocess with a timeout and a resident-memory watchdog, and read its peak
memory from ``os.wait4``; the FIFO tests that run in this process unblock
any reader after a few seconds, so even broken code cannot hang the suite.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from wmel_jax import cli, fileio, limits
from wmel_jax.errors import WmelError
from wmel_jax.model.fileformat import read_model_file, write_model_file

from conftest import EVAL_K as K
from conftest import EVAL_N as N
from conftest import assert_eval_user_error, eval_cli, small_eval_args, without_progress

REPO = Path(__file__).resolve().parents[1]
#: Peak resident memory a memory-bomb test's process may reach (the issue's bound).
MAX_PEAK_BYTES = 500 * 2**20
#: A FIFO or Ctrl-C test's process must be done within this many seconds.
HANG_S = 8.0


@pytest.fixture(scope="module")
def model(checkpoints) -> Path:
    """A random size-1 adapter model with cartpole's widths (the suite's shared kernels)."""
    return checkpoints.adapter(1, obs_dim=5, action_dim=1, seed=0).converted


def _variant(src: Path, dst: Path, header=None, params=None) -> Path:
    """A copy of the model file ``src`` with its header and/or flat params changed by the given functions."""
    h, _, p = read_model_file(src)
    h = dict(h)
    p = {k: np.array(v) for k, v in p.items()}
    if header:
        header(h)
    if params:
        params(p)
    h.pop("format_version")
    return write_model_file(dst, p, h)


def _one_line_error(err: str, match: str) -> None:
    err = without_progress(err)
    assert err.startswith("wmel-jax: error: ") and err.count("\n") == 1, err
    assert match.lower() in err.lower(), err


def _cli(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


# --------------------------------------------------------------------------- #
# Subprocesses with a deadline, a memory watchdog and their peak memory
# --------------------------------------------------------------------------- #


def _group_rss(pgid: int) -> int:
    """Resident bytes of every process in the process group ``pgid``."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[2]) != pgid:
                continue
            with open(f"/proc/{entry.name}/status") as f:
                total += next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
        except (OSError, StopIteration, ValueError, IndexError):
            continue
    return total


#: Runs argv[2:] and writes its peak resident memory (bytes) to argv[1]. The
#: peak of a process started straight from this test process would not do: a
#: child's ru_maxrss counts the parent's memory it was forked (or vforked) from.
_PEAK_LAUNCHER = (
    "import os, subprocess, sys\n"
    "p = subprocess.Popen(sys.argv[2:])\n"
    "_, status, usage = os.wait4(p.pid, 0)\n"
    "open(sys.argv[1], 'w').write(str(usage.ru_maxrss * 1024))\n"
    "sys.exit(os.waitstatus_to_exitcode(status))\n"
)


def _run_bounded(argv, *, cwd, timeout, env=None, on_start=None, peak=False):
    """Run ``argv``; kill it past ``timeout`` s or 4x MAX_PEAK_BYTES of memory. (rc, stdout, stderr, peak bytes).

    ``peak``: measure the command's peak resident memory (``ru_maxrss`` of
    the command, run by a small launcher); else the peak is None.
    ``on_start(proc)`` runs once the process is started (to send it signals).
    """
    full_env = {**os.environ, "MUJOCO_GL": "disable", "PYTHONPATH": str(REPO), **(env or {})}
    peak_file = Path(cwd) / ".peak"
    if peak:
        argv = [sys.executable, "-c", _PEAK_LAUNCHER, str(peak_file), *argv]
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    killed = []
    done = threading.Event()

    def watchdog():
        while not done.wait(0.1):
            if time.monotonic() - t0 > timeout or _group_rss(proc.pid) > 4 * MAX_PEAK_BYTES:
                killed.append(True)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                return

    threading.Thread(target=watchdog, daemon=True).start()
    try:
        if on_start is not None:
            on_start(proc)
        out, err = proc.communicate()
    finally:
        done.set()
    assert not killed, f"killed: over {timeout} s or memory (stderr: {err[-2000:]})"
    measured = None
    if peak:
        measured = int(peak_file.read_text())
        peak_file.unlink()
    return proc.returncode, out, err, measured


@contextlib.contextmanager
def _unblocking(fifo: Path, after_s: float = HANG_S):
    """A thread that, after ``after_s``, opens ``fifo`` for writing and closes it: a blocked reader gets EOF."""
    stop = threading.Event()

    def unblock():
        if stop.wait(after_s):
            return
        while not stop.is_set():
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # no reader (yet)
                time.sleep(0.05)
                continue
            os.close(fd)
            time.sleep(0.05)

    thread = threading.Thread(target=unblock, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)


# --------------------------------------------------------------------------- #
# 1. Data loss: existing outputs, outputs that are inputs, outputs that are each other
# --------------------------------------------------------------------------- #


def test_item1_an_existing_output_needs_force_checked_before_any_work(tmp_path, capsys, model, monkeypatch):
    from wmel_jax import pipeline

    report = tmp_path / "report.json"
    report.write_text("previous\n")
    report.chmod(0o444)
    monkeypatch.setattr(pipeline, "load_models", lambda *a, **k: pytest.fail("work started before the checks"))
    err = assert_eval_user_error(capsys, tmp_path, model, *small_eval_args("-o", report), match="exists; pass --force")
    assert str(report) in err and report.read_text() == "previous\n"
    monkeypatch.undo()
    code, _, err = eval_cli(model, *small_eval_args("-o", report, "--force"), capsys=capsys)
    assert code == 0, err
    assert json.loads(report.read_text())["cells"][0]["model"] == str(model)


@pytest.mark.parametrize("case", ["model", "model-via-symlink", "model-via-hardlink", "states", "report-is-figure"])
def test_item1_an_output_that_is_an_input_or_another_output_is_always_refused(tmp_path, capsys, model, case):
    work = tmp_path / "w"
    work.mkdir()
    local = work / "m.safetensors"
    local.write_bytes(model.read_bytes())
    before = local.read_bytes()
    states = work / "s.npy"
    np.save(states, np.zeros((N, 5)) + [0, 1, 0, 0, 0])
    out = {"model": local, "model-via-symlink": work / "link.json", "model-via-hardlink": work / "hard.json",
           "states": states, "report-is-figure": work / "r.png"}[case]
    if case == "model-via-symlink":
        out.symlink_to(local)
    if case == "model-via-hardlink":
        os.link(local, out)
    if case == "states":
        argv = ("--states", states, "--save-states", states)
        match = "is the --states file"
    elif case == "report-is-figure":
        argv = ("-o", out, "--figure", out)
        match = "are the same file"
    else:
        argv = ("-o", out)
        match = "is the model"
    err = assert_eval_user_error(capsys, work, local, *argv, "--force", match=match)
    assert "never replaces an input" in err or "same file" in err
    assert local.read_bytes() == before


def test_item1_convert_never_writes_over_its_source(tmp_path, capsys, checkpoints):
    src = tmp_path / "m.pt"
    src.write_bytes(checkpoints.adapter(1, obs_dim=5, action_dim=1, seed=0).pt.read_bytes())
    os.link(src, tmp_path / "same.safetensors")
    before = src.read_bytes()
    code, _, err = _cli(capsys, "convert", src, "-o", tmp_path / "same.safetensors", "--force")
    assert code == 2
    _one_line_error(err, "is the checkpoint")
    assert src.read_bytes() == before


def _demo_examples(tmp_path: Path) -> Path:
    """A one-task copy of the shipped examples (cartpole: the suite's shared kernels)."""
    import shutil

    from wmel_jax.demo import EXAMPLES_DIR, example_models

    examples = tmp_path / "examples"
    examples.mkdir()
    entries = [e for e in example_models() if e["task"] == "cartpole-swingup"]
    for e in entries:
        shutil.copy(EXAMPLES_DIR / e["pt"], examples / e["pt"])
        shutil.copy(EXAMPLES_DIR / e["converted"], examples / e["converted"])
    (examples / "manifest.json").write_text(json.dumps({"models": entries}))
    return examples


def test_item1_a_second_demo_into_the_same_folder_needs_force(tmp_path, capsys):
    from wmel_jax.demo import run_demo

    examples = _demo_examples(tmp_path)
    out = tmp_path / "out"
    kwargs = dict(n_states=N, k_steps=K, chunk_states=128, examples_dir=examples, say=lambda s: None)
    _, written = run_demo(out, **kwargs)
    assert sorted(p.name for p in written) == ["demo.png", "report-cartpole-swingup.json"]
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(WmelError, match="exists; pass --force"):
        run_demo(out, **kwargs)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first
    (out / "demo.png").write_bytes(b"stale")
    run_demo(out, **kwargs, force=True)
    assert (out / "demo.png").read_bytes()[:4] == b"\x89PNG"
    # The command line: one line, before any work, nothing created.
    code, _, err = _cli(capsys, "demo", "--out", out, "--no-cache")
    assert code == 2
    _one_line_error(err, "pass --force")


# --------------------------------------------------------------------------- #
# 2. Links and devices: a link is written through, a device never replaced
# --------------------------------------------------------------------------- #


def test_item2_an_output_link_is_written_through_and_stays_a_link(tmp_path, capsys, model):
    target = tmp_path / "target.json"
    target.write_text("old\n")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    dangling = tmp_path / "fig-link.png"
    dangling.symlink_to(tmp_path / "fig.png")  # does not exist yet
    code, _, err = eval_cli(model, *small_eval_args("-o", link, "--figure", dangling, "--force"), capsys=capsys)
    assert code == 0, err
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert json.loads(target.read_text())["cells"][0]["model"] == str(model)
    assert dangling.is_symlink() and (tmp_path / "fig.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("kind", ["device", "link-to-device", "fifo", "directory", "link-loop"])
def test_item2_a_device_fifo_or_folder_is_never_an_output(tmp_path, capsys, model, kind):
    path = tmp_path / "out"
    if kind == "device":
        path = Path("/dev/null")
    elif kind == "link-to-device":
        path.symlink_to("/dev/null")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    else:
        path.symlink_to(path)
    match = {"device": "is a character device, not a regular file", "link-to-device": "symbolic link to a character",
             "fifo": "is a FIFO", "directory": "is a directory", "link-loop": "symbolic link loop"}[kind]
    assert_eval_user_error(capsys, tmp_path, model, *small_eval_args("-o", path, "--force"), match=match)
    assert Path("/dev/null").is_char_device()
    if kind == "fifo":
        assert stat.S_ISFIFO(os.lstat(path).st_mode)


# --------------------------------------------------------------------------- #
# 3. Outputs as a set: all rendered, then all renamed; a full disk leaves none
# --------------------------------------------------------------------------- #


def test_item3_a_full_disk_leaves_no_output_and_the_old_files(tmp_path, capsys, model, monkeypatch):
    report, figure = tmp_path / "r.json", tmp_path / "f.png"
    report.write_text("previous\n")
    real = fileio._write_all
    calls = []

    def full_disk(fd, data):
        calls.append(len(data))
        if len(calls) == 2:  # the second output: the report is complete in its temporary by then
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd, data)

    monkeypatch.setattr(fileio, "_write_all", full_disk)
    err = assert_eval_user_error(capsys, tmp_path, model, *small_eval_args("-o", report, "--figure", figure, "--force"),
                                 match="No space left on device")
    assert "no output was written" in err and len(calls) == 2
    assert report.read_text() == "previous\n" and not figure.exists()


def test_item3_outputs_are_all_rendered_before_any_is_renamed_and_a_failed_rename_restores(tmp_path, monkeypatch):
    paths = [tmp_path / f"{i}.out" for i in range(3)]
    paths[0].write_text("old 0")
    outputs = fileio.OutputSet(force=True)
    for p in paths:
        outputs.add(p, "output")
        outputs.write(p, f"new {p.name}")
    real_replace = os.replace
    seen = []

    def replace(src, dst):
        seen.append(sorted(q.name for q in tmp_path.iterdir() if q.name.endswith(".tmp")))
        if len(seen) == 3:  # the last rename fails: the first two are undone
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_replace(src, dst)

    monkeypatch.setattr(fileio.os, "replace", replace)
    with pytest.raises(WmelError, match=r"cannot write the output .*2\.out.*no output was written"):
        outputs.commit()
    monkeypatch.undo()
    assert len(seen[0]) == 3, "a rename happened before every output was rendered"
    assert sorted(q.name for q in tmp_path.iterdir()) == ["0.out"] and paths[0].read_text() == "old 0"


# --------------------------------------------------------------------------- #
# 4 and 5. Crafted model headers: nothing read before the header is checked; bounded numbers
# --------------------------------------------------------------------------- #


def _craft(src: Path, dst: Path, edit, extend_to: int | None = None) -> Path:
    """``src``'s bytes with its safetensors header JSON changed by ``edit``; sparse-extended to ``extend_to``."""
    data = src.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    body = data[8 + n :]
    edit(header, len(body))
    blob = json.dumps(header).encode()
    with open(dst, "wb") as f:
        f.write(len(blob).to_bytes(8, "little") + blob + body)
        if extend_to is not None:
            f.truncate(extend_to)  # sparse: costs no disk
    return dst


def _wmel_header(edit):
    def apply(header, _):
        h = json.loads(header["__metadata__"]["wmel-jax"])
        edit(h)
        header["__metadata__"]["wmel-jax"] = json.dumps(h)

    return apply


def test_item4_item5_crafted_headers_cost_no_memory_and_are_one_line(tmp_path, model):
    def junk(elements):
        def edit(header, body_bytes):
            header["junk"] = {"dtype": "F32", "shape": [elements], "data_offsets": [body_bytes, body_bytes + 4 * elements]}
        return edit

    def scaled(header, _):  # names and shapes that fit the architecture, 16 GB of them
        h = json.loads(header["__metadata__"]["wmel-jax"])
        h["arch"]["enc_dim"] = 2**20
        h["arch"]["decoder_hidden"] = 2**20
        header["__metadata__"]["wmel-jax"] = json.dumps(h)
        from wmel_jax.model.arch import Arch, param_shapes

        at = 0
        for name, shape in param_shapes(Arch.from_dict(h["arch"])).items():
            size = 4 * math.prod(shape)
            header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [at, at + size]}
            at += size

    size = model.stat().st_size
    files = [
        _craft(model, tmp_path / "junk5e8.safetensors", junk(500_000_000), extend_to=size + 2_000_000_000),
        _craft(model, tmp_path / "junk1e12.safetensors", junk(10**12)),
        _craft(model, tmp_path / "scaled.safetensors", scaled),
        _craft(model, tmp_path / "skip.safetensors", _wmel_header(lambda h: h.update(frame_skip=10**9))),
    ]
    rc, out, err, peak = _run_bounded(
        [sys.executable, "-m", "wmel_jax", "eval", *map(str, files), "--no-cache", *small_eval_args()],
        cwd=tmp_path, timeout=120, peak=True,
    )
    assert rc == 2, err
    _one_line_error(err, "no model could be evaluated")
    assert "junk5e8.safetensors' does not match its own architecture: unexpected key 'junk'" in err
    assert "junk1e12.safetensors' does not match its own architecture: unexpected key 'junk'" in err
    assert "of parameters, more than the 4.0 GiB a model may have" in err
    assert "frame_skip must be a positive int of at most 100; got 1,000,000,000" in err
    assert peak < MAX_PEAK_BYTES, f"peak memory {peak / 2**20:.0f} MB"


@pytest.mark.parametrize("flag,value,match", [
    ("--n-states", 10**9, "n_states (--n-states) must be a positive int of at most 1,000,000"),
    ("--k-steps", 10**6, "k_steps (--k-steps) must be a positive int of at most 1,000"),
    ("--chunk-states", 10**9, "--chunk-states must be a positive int of at most 65,536"),
    ("--seed", -1, "seed (--seed) must be an int from 0 to 2**63 - 1"),
])
def test_item5_cli_numbers_are_bounded(tmp_path, capsys, model, flag, value, match):
    argv = small_eval_args()
    if flag in argv:
        argv[argv.index(flag) + 1] = str(value)
    else:
        argv += [flag, str(value)]
    assert_eval_user_error(capsys, tmp_path, model, *argv, match=match)


def test_item5_the_problem_size_is_bounded_before_sampling():
    with pytest.raises(WmelError, match="more than the 20,000,000 wmel-jax keeps"):
        limits.check_problem_size(limits.MAX_N_STATES, limits.MAX_ACTIONS, 10)
    with pytest.raises(WmelError, match="frame_skip must be a positive int of at most 100"):
        from wmel_jax.oracle import make_oracle

        make_oracle("cartpole-swingup", frame_skip=10**9)


_SPIN = textwrap.dedent("""
    import sys, types
    from wmel_jax import cli, fileio

    def run(args):
        import jax, jax.numpy as jnp
        with fileio.temporary_directory(prefix="wmel-spin-") as tmp:
            (tmp / "partial").write_text("x")
            spin = jax.jit(lambda x: jax.lax.while_loop(lambda c: c[0] >= 0, lambda c: (c[0] * 0, c[1] + 1), x))
            print(tmp, flush=True)
            spin((jnp.int32(0), jnp.int32(0)))[1].block_until_ready()  # never returns
        return 0

    mod = types.ModuleType("spin_command")
    mod.HELP, mod.add_arguments, mod.run = "spin", lambda parser: None, run
    sys.modules["spin_command"] = mod
    cli.SUBCOMMANDS["spin"] = "spin_command"
    sys.argv = ["wmel-jax", "spin"]
    sys.exit(cli.main())
""")


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_item5_ctrl_c_stops_a_compiled_loop_within_seconds_cleaning_up(tmp_path, sig, code):
    """An XLA loop never returns to Python: the watcher ends the process and removes the temporaries."""
    script = tmp_path / "spin.py"
    script.write_text(_SPIN)
    stamps = {}

    def interrupt(proc):
        stamps["tmp"] = Path(proc.stdout.readline().strip())  # printed just before the loop starts
        time.sleep(0.5)
        stamps["sent"] = time.monotonic()
        proc.send_signal(sig)

    rc, _, err, _ = _run_bounded([sys.executable, str(script)], cwd=tmp_path, timeout=60, on_start=interrupt)
    took = time.monotonic() - stamps["sent"]
    assert rc == code and err.endswith("wmel-jax: interrupted\n") and err.count("interrupted") == 1, (rc, err)
    assert took < 2.5, f"{took:.1f} s to stop"
    assert stamps["tmp"].name.startswith("wmel-spin-") and not stamps["tmp"].exists(), "the temporary folder was left"


def test_item5_ctrl_c_during_an_eval_leaves_nothing_behind(tmp_path, model):
    work, tmp = tmp_path / "work", tmp_path / "tmp"
    work.mkdir()
    tmp.mkdir()
    pt = work / "m.pt"  # converted on the fly: a temporary folder in flight
    pt.write_bytes(model.with_suffix(".pt").read_bytes())
    stamps = {}

    def interrupt(proc):
        time.sleep(6.0)  # imports done; converting, tracing or compiling (the cache is off)
        stamps["alive"] = proc.poll() is None
        stamps["sent"] = time.monotonic()
        proc.send_signal(signal.SIGINT)

    rc, _, err, _ = _run_bounded(
        [sys.executable, "-m", "wmel_jax", "eval", "m.pt", "--n-states", "100000", "--no-cache", "-o", "r.json",
         "--figure", "f.png", "--save-states", "s.npy"],
        cwd=work, timeout=90, env={"TMPDIR": str(tmp)}, on_start=interrupt,
    )
    took = time.monotonic() - stamps["sent"]
    assert stamps["alive"], "the eval finished before it could be interrupted"
    assert rc == 130 and err.endswith("wmel-jax: interrupted\n"), (rc, err)
    assert took < 2.5, f"{took:.1f} s to stop"
    assert sorted(os.listdir(work)) == ["m.pt"] and os.listdir(tmp) == []


# --------------------------------------------------------------------------- #
# 6. The kernel cache: only regular files, read with a bound
# --------------------------------------------------------------------------- #

_CACHE_SCRIPT = textwrap.dedent("""
    import functools, json, sys
    from pathlib import Path
    import numpy as np
    from wmel_jax import kernel_cache
    from wmel_jax import metrics as M

    root = Path(sys.argv[1])
    kernel_cache.enable(root)
    out = {"kernels": [], "xla": [], "results": []}
    for rows in (1, 2, 3, 4):
        kernel = functools.partial(M.one_step_l2_sum)
        args = (np.ones((rows, 2, 4), np.float32), np.zeros((rows, 2, 4), np.float32), np.ones(rows, bool))
        before = set((root / "xla").glob("*.xla"))
        compiled, _ = kernel_cache.compiled(kernel, args)
        out["results"].append(float(compiled(*args).total))
        out["kernels"].append(kernel_cache.disk_key(kernel, kernel_cache._abstract(args))[0] + ".kernel")
        out["xla"].append(sorted(p.name for p in set((root / "xla").glob("*.xla")) - before))
    out["stats"] = kernel_cache.stats()
    print(json.dumps(out))
""")


def _attack(path: Path, kind: str) -> None:
    path.unlink()
    if kind == "dev-zero-link":
        path.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "sparse-8gb":
        with open(path, "wb") as f:
            f.truncate(8 * 2**30)
    else:
        path.mkdir()


def test_item6_cache_entries_that_are_not_small_regular_files_are_ignored_and_replaced(tmp_path):
    script = tmp_path / "cache.py"
    script.write_text(_CACHE_SCRIPT)
    root = tmp_path / "cache"
    argv = [sys.executable, str(script), str(root)]
    rc, out, err, _ = _run_bounded(argv, cwd=tmp_path, timeout=120)
    assert rc == 0, err
    first = json.loads(out)
    assert all(len(x) == 1 for x in first["xla"]), first["xla"]
    kinds = ["dev-zero-link", "fifo", "sparse-8gb", "directory"]
    for kind, name, xla in zip(kinds, first["kernels"], first["xla"]):
        _attack(root / "kernels" / name, kind)
        _attack(root / "xla" / xla[0], kind)

    rc, out, err, peak = _run_bounded(argv, cwd=tmp_path, timeout=60, peak=True)
    assert rc == 0, err
    second = json.loads(out)
    assert second["results"] == first["results"] == [4.0, 8.0, 12.0, 16.0]  # rows x 2 actions x ||1 - 0||_2 = 2
    stats = second["stats"]
    assert stats.get("rejected") == 4 and stats.get("xla_rejected") == 4, stats
    assert stats.get("written") == 3 and stats.get("xla_written") == 3, stats  # the folders cannot be replaced
    # A folder where an entry belongs is reported, once per entry, not silently uncached.
    warnings = [line for line in err.splitlines() if "is a directory" in line]
    assert len(warnings) == 2 and all(line.startswith("wmel-jax: warning: cache entry") for line in warnings), err
    for kind, name, xla in zip(kinds, first["kernels"], first["xla"]):
        for path in (root / "kernels" / name, root / "xla" / xla[0]):
            mode = os.lstat(path).st_mode
            assert stat.S_ISDIR(mode) if kind == "directory" else stat.S_ISREG(mode) and path.stat().st_size < 2**20, (
                kind, path)
    assert Path("/dev/zero").is_char_device()
    assert peak < MAX_PEAK_BYTES, f"peak memory {peak / 2**20:.0f} MB"


# --------------------------------------------------------------------------- #
# 7. FIFOs as inputs: refused at once
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("role", ["model", "states", "downstream", "convert"])
def test_item7_a_fifo_input_is_refused_at_once(tmp_path, capsys, model, role):
    fifo = tmp_path / ("fifo.pt" if role == "convert" else "fifo")
    os.mkfifo(fifo)
    argv = {
        "model": ["eval", fifo, *small_eval_args()],
        "states": ["eval", model, "--states", fifo, *small_eval_args()],
        "downstream": ["eval", model, "--downstream", fifo, *small_eval_args()],
        "convert": ["convert", fifo, "-o", tmp_path / "out.safetensors"],
    }[role]
    t0 = time.monotonic()
    with _unblocking(fifo):
        code, _, err = _cli(capsys, *argv, *(["--no-cache"] if argv[0] == "eval" else []))
    assert time.monotonic() - t0 < HANG_S, "blocked on the FIFO"
    assert code == 2
    _one_line_error(err, "is a FIFO (named pipe), not a regular file")
    assert sorted(os.listdir(tmp_path)) == [fifo.name]


# --------------------------------------------------------------------------- #
# 8. Silent wrong results: non-finite weights, states out of range, non-finite metrics
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_item8_a_model_with_non_finite_parameters_is_refused_naming_the_tensor(tmp_path, capsys, model, value):
    def poison(p):
        p["decoder/layer_4/bias"][0] = value

    bad = _variant(model, tmp_path / "bad.safetensors", params=poison)
    assert_eval_user_error(capsys, tmp_path, bad, *small_eval_args(),
                           match="tensor 'decoder/layer_4/bias' has 1 NaN or infinite value(s)")


def test_item8_states_far_outside_the_physical_range_are_refused_naming_the_row(tmp_path, capsys, model):
    states = np.zeros((N, 5)) + [0.0, -1.0, 0.0, 0.0, 0.0]
    states[3, 4] = 1e300
    np.save(tmp_path / "s.npy", states)
    assert_eval_user_error(capsys, tmp_path, model, "--states", tmp_path / "s.npy", *small_eval_args(),
                           match="state row 3 is far outside the task's physical range: theta_dot = 1e+300")


def test_item8_a_metric_that_overflows_is_null_with_a_reason_and_a_warning(tmp_path, capsys, model):
    def overflow(p):  # finite weights whose decoded observations overflow float32
        p["decoder/layer_4/kernel"][:] = 3e38

    big = _variant(model, tmp_path / "big.safetensors", params=overflow)
    report = tmp_path / "r.json"
    code, out, err = eval_cli(big, *small_eval_args("-o", report), capsys=capsys)
    assert code == 0, err
    (cell,) = json.loads(report.read_text())["cells"]
    assert cell["m1_l2_onestep"] is None and cell["unavailable"]["m1_l2_onestep"].startswith("not finite")
    assert cell["m1_latent_onestep"] is not None and math.isfinite(cell["m1_latent_onestep"])
    (warning,) = [line for line in err.splitlines() if line.startswith(f"wmel-jax: warning: {big}: ")]
    assert "m1_l2_onestep" in warning and "NaN or infinite" in warning


# --------------------------------------------------------------------------- #
# 9. Tracebacks that are one line
# --------------------------------------------------------------------------- #


def test_item9_bad_inputs_that_raised_tracebacks_are_one_line(tmp_path, capsys, model):
    (tmp_path / "empty.npy").write_bytes(b"")
    assert_eval_user_error(capsys, tmp_path, model, "--states", tmp_path / "empty.npy", *small_eval_args(),
                           match="is not a .npy file (no NumPy header: empty)")
    ragged = _craft(model, tmp_path / "ragged.safetensors", _wmel_header(lambda h: h.update(action_set=[["a"], [None]])))
    assert_eval_user_error(capsys, tmp_path, ragged, *small_eval_args(),
                           match='action_set row 0 is ["a"], not 1 finite number(s)')
    (tmp_path / "deep.json").write_text("[" * 200_000 + "]" * 200_000)
    assert_eval_user_error(capsys, tmp_path, model, "--downstream", tmp_path / "deep.json", *small_eval_args(),
                           match="is JSON nested too deeply to read")
    argv = small_eval_args()
    assert_eval_user_error(capsys, tmp_path, model, *argv, "--seed", "99999999999999999999",
                           match="seed (--seed) must be an int from 0 to 2**63 - 1")
    argv[argv.index("--n-states") + 1] = "1000000000"
    assert_eval_user_error(capsys, tmp_path, model, *argv, match="must be a positive int of at most 1,000,000")


# --------------------------------------------------------------------------- #
# 10. Reasons that were wrong
# --------------------------------------------------------------------------- #


def test_item10_a_symlink_loop_is_called_a_loop(tmp_path, capsys, model):
    loop = tmp_path / "loop.safetensors"
    loop.symlink_to(loop)
    assert_eval_user_error(capsys, tmp_path, loop, *small_eval_args(), match="is a symbolic link loop")
    assert_eval_user_error(capsys, tmp_path, model, "--states", loop, *small_eval_args(), match="is a symbolic link loop")
    dangling = tmp_path / "dangling.safetensors"
    dangling.symlink_to(tmp_path / "nowhere")
    assert_eval_user_error(capsys, tmp_path, dangling, *small_eval_args(), match="is a broken symbolic link")


@pytest.mark.parametrize("content", [os.urandom(4096), b"1.0 2.0 3.0\n4.0 5.0 6.0\n"], ids=["random-bytes", "text"])
def test_item10_a_file_that_is_not_npy_says_so(tmp_path, capsys, model, content):
    (tmp_path / "s.npy").write_bytes(content)
    err = assert_eval_user_error(capsys, tmp_path, model, "--states", tmp_path / "s.npy", *small_eval_args(),
                                 match="is not a .npy file")
    assert "pickle" not in err


def test_item10_action_file_messages_and_conflicts(tmp_path, capsys, model):
    np.save(tmp_path / "seq.npy", np.full((K, 1), 3.0))
    err = assert_eval_user_error(capsys, tmp_path, model, "--action-sequence", tmp_path / "seq.npy", *small_eval_args(),
                                 match="action sequence row 0 = [3.0] is outside the actuator range")
    assert "row row" not in err
    np.save(tmp_path / "long.npy", np.zeros((K + 2, 1)))
    assert_eval_user_error(capsys, tmp_path, model, "--action-sequence", tmp_path / "long.npy", *small_eval_args(),
                           match=f"--k-steps {K} contradicts --action-sequence, which has {K + 2} rows")
    np.save(tmp_path / "dup.npy", np.array([[-1.0], [0.0], [1.0], [-0.0]]))
    assert_eval_user_error(capsys, tmp_path, model, "--actions", tmp_path / "dup.npy", *small_eval_args(),
                           match="action set rows 1 and 3 are the same action")
    # Without --k-steps, the sequence's own length is the horizon.
    np.save(tmp_path / "ok.npy", np.linspace(-1, 1, K)[:, None])
    argv = small_eval_args("-o", tmp_path / "r.json")
    del argv[argv.index("--k-steps") : argv.index("--k-steps") + 2]
    code, _, err = eval_cli(model, "--action-sequence", tmp_path / "ok.npy", *argv, capsys=capsys)
    assert code == 0, err
    config = json.loads((tmp_path / "r.json").read_text())["config"]
    assert config["k_steps"] == K
    np.testing.assert_allclose(config["action_sequence"], np.linspace(-1, 1, K)[:, None], atol=1e-6)

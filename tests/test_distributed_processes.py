"""``wmel-jax eval`` as 2 processes on this machine (localhost coordinator, gloo CPU collectives).

- the report of 2 processes equals the single-process one, whichever they split (models: the default
  here, 2 small cells; states), and process 0 alone writes it;
- the persistent cache, written by several processes at once into one folder (a single-process run
  beside a distributed one, each of whose processes writes too), stays intact and serves a later run;
- a process that dies ends the others within a bounded time, with one ``wmel-jax: error:`` line;
- ``wmel-jax cpg`` as 2 processes (each runs its share of the episodes) writes the single-process file.

Every wait has a timeout. Each process is a ``wmel-jax`` CLI subprocess. The runs whose reports are
compared compile every kernel in several processes (minutes on 2 cores): ``slow`` (``-m slow``), as is the
coordinator's death; the suite kills a worker.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wmel_jax.distributed import EXIT_PEER_LOST

EXAMPLES = Path(__file__).resolve().parents[1] / "wmel_jax" / "examples"
#: reacher-easy: the cheapest of the three oracles to compile.
MODELS = [str(EXAMPLES / f"reacher-easy-{q}.safetensors") for q in ("good", "weak")]
#: The suite's state count; 32 states per call and device: the single-process chunks are the 2-process
#: ones (and tests/test_distributed_devices.py's, whose cache folder this module shares).
ARGS = ["--n-states", "150", "--k-steps", "10", "--chunk-states", "32", "--seed", "3"]
#: Seconds any run here may take (the machine is shared; a cold run compiles for ~10 s).
RUN_TIMEOUT = 300
#: A dead process is declared so after this many seconds without heartbeats (short, for the test).
PEER_TIMEOUT = 3
#: How long the survivors may take to exit after a process is killed: the heartbeat timeout,
#: JAX's error propagation and the supervisor, with room for a loaded machine.
EXIT_BOUND = 60


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = dict(os.environ, MUJOCO_GL="disable")
    env.pop("JAX_COORDINATOR_ADDRESS", None)
    for name in [k for k in env if k.startswith(("SLURM_", "OMPI_"))]:
        env.pop(name)
    return env


def _cli(*argv) -> list[str]:
    return [sys.executable, "-m", "wmel_jax", *map(str, argv)]


def _start(argv, **kw) -> subprocess.Popen:
    return subprocess.Popen(_cli(*argv), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _finish(procs: list[subprocess.Popen], timeout: float = RUN_TIMEOUT) -> list[tuple[int, str, str]]:
    deadline = time.monotonic() + timeout
    out = []
    try:
        for p in procs:
            o, e = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            out.append((p.returncode, o, e))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    return out


def _distributed(n: int, *argv, port: int | None = None, peer_timeout: int = 30, command: str = "eval"
                 ) -> list[subprocess.Popen]:
    port = port or _free_port()
    return [
        _start([command, *argv, "--coordinator", f"127.0.0.1:{port}", "--num-processes", n, "--process-id", i,
                "--peer-timeout", peer_timeout])
        for i in range(n)
    ]


def _comparable(report: dict) -> dict:
    """A report without what legitimately differs between runs: when, how long, on which devices."""
    config = {k: v for k, v in report["config"].items() if k != "runtime"}
    return {**{k: v for k, v in report.items() if k not in ("generated_at", "timings", "config")}, "config": config}


def _check_cache(root: Path) -> tuple[int, int]:
    """(kernel programs, XLA executables) in a cache folder; fails on any file that does not check out."""
    from wmel_jax import kernel_cache as kc

    kernels = xla = 0
    for path in sorted((root / "kernels").iterdir()):
        assert not path.name.startswith(".tmp-"), f"a temporary file was left behind: {path}"
        data = path.read_bytes()
        assert data.startswith(kc._MAGIC), path
        at = len(kc._MAGIC)
        size = int.from_bytes(data[at : at + 8], "little")
        header = json.loads(data[at + 8 : at + 8 + size])
        payload = data[at + 8 + size :]
        assert header["payload_bytes"] == len(payload), path
        assert header["payload_sha256"] == hashlib.sha256(payload).hexdigest(), path
        kernels += 1
    for path in sorted((root / "xla").iterdir()):
        assert not path.name.startswith(".tmp-"), f"a temporary file was left behind: {path}"
        data = path.read_bytes()
        head = kc._XLA_MAGIC + path.name.removesuffix(kc._XLA_SUFFIX).encode() + b"\x00"
        assert data.startswith(head), path
        assert data[len(head) : len(head) + 32] == hashlib.sha256(data[len(head) + 32 :]).digest(), path
        xla += 1
    return kernels, xla


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """The runs the tests below compare, all on one cache folder.

    1. at the same time: a single-process run and two processes splitting the models (the
       automatic choice for 2 cells of 150 states): three processes writing one cache folder;
    2. two processes, ``--split states``: its programs were traced by 1, so it reads them.
    """
    from test_distributed_devices import shared_cache

    root = tmp_path_factory.mktemp("processes")
    cache = shared_cache(tmp_path_factory)
    out = {"root": root, "cache": cache}
    single = _start(["eval", *MODELS, *ARGS, "-o", root / "single.json", "--cache-dir", cache])
    models = _distributed(2, *MODELS, *ARGS, "-o", root / "models.json", "--cache-dir", cache)
    first = _finish([single, *models])
    out["single"], out["models"] = first[0], first[1:]
    out["states"] = _finish(_distributed(2, *MODELS, *ARGS, "--split", "states", "-o", root / "states.json",
                                         "--cache-dir", cache))
    return out


def _report(runs, name) -> dict:
    return json.loads((runs["root"] / f"{name}.json").read_text())


@pytest.mark.slow
def test_the_single_process_run_succeeded(runs):
    code, out, err = runs["single"]
    assert code == 0, err[-3000:]
    assert _report(runs, "single")["config"]["runtime"]["processes"] == 1


@pytest.mark.slow
@pytest.mark.parametrize("name,split", [("models", "models"), ("states", "states")])
def test_two_processes_report_what_one_process_reports(runs, name, split):
    (code0, out0, err0), (code1, out1, err1) = runs[name]
    assert code0 == 0 and code1 == 0, (err0[-3000:], err1[-3000:])
    report = _report(runs, name)
    assert _comparable(report) == _comparable(_report(runs, "single"))
    assert report["config"]["runtime"]["processes"] == 2 and report["config"]["runtime"]["devices"] == 2
    assert report["config"]["runtime"]["split"] == split
    # Process 0 prints and writes; process 1 only computes.
    assert "wrote report" in out0 and out1 == "", (out0, out1)
    assert out0.startswith("reacher-easy: N=150 states")  # nothing but the table on stdout
    assert "process 1 of 2: joined the run (2 cpu devices)" in err1


@pytest.mark.slow
def test_a_later_run_reads_the_programs_others_wrote(runs):
    # The states split cuts the sampler, the oracle and the model kernel into the same per-device
    # programs as the first runs did: every one was traced and stored by one of them.
    assert _report(runs, "states")["timings"]["trace_s"] == 0.0


@pytest.mark.slow
def test_the_cache_written_by_several_processes_checks_out(runs):
    kernels, xla = _check_cache(runs["cache"])
    assert kernels >= 3 and xla >= 3  # sampler, oracle, model kernels at least


@pytest.mark.parametrize("victim", [1, pytest.param(0, marks=pytest.mark.slow)], ids=["a worker", "the coordinator"])
def test_a_process_that_dies_ends_the_others_with_one_line(victim):
    procs = _distributed(2, *MODELS, *ARGS, "--no-cache", peer_timeout=PEER_TIMEOUT)
    survivor = procs[1 - victim]
    try:
        assert _wait_for(procs[victim], "joined the run", timeout=RUN_TIMEOUT), "the processes never joined"
        os.kill(procs[victim].pid, signal.SIGKILL)  # its worker dies with it (PR_SET_PDEATHSIG)
        t0 = time.monotonic()
        _, err = survivor.communicate(timeout=EXIT_BOUND)
        waited = time.monotonic() - t0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.communicate()
    last = err.strip().splitlines()[-1]
    assert survivor.returncode == EXIT_PEER_LOST, err[-3000:]
    assert last.startswith(f"wmel-jax: error: process {1 - victim} of 2: the run stopped: "), err[-3000:]
    assert "another process of the run died" in last
    assert waited < EXIT_BOUND


def _wait_for(proc: subprocess.Popen, text: str, timeout: float) -> bool:
    """Read ``proc``'s stderr until it shows ``text`` (True), or it exits or ``timeout`` passes (False)."""
    import select

    fd, seen = proc.stderr.fileno(), b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            seen += os.read(fd, 65536)  # raw reads: nothing buffered out of select's sight
            if text.encode() in seen:
                return True
    return False


#: The cpg runs: both arms, 5 episodes (shares of 3 and 2) of 20 steps, 4 in flight per process.
CPG_ARGS = ["--episodes", "5", "--horizon", "20", "--chunk-episodes", "4"]
#: Scorecard fields of how an arm ran (plan rounds, idle slots, time), not what its episodes did.
_HOW_IT_RAN = ("rounds", "masked_slot_fraction", "average_planning_latency_ms", "plan_calls_per_s")


def _comparable_cpg(report: dict) -> dict:
    """A CPG JSON without when, how long and on which devices (rounds and idle slots depend on the slots)."""
    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k not in ("generated_at", "timings", "runtime", *_HOW_IT_RAN)}
        return [strip(v) for v in x] if isinstance(x, list) else x

    return strip(report)


@pytest.fixture(scope="module")
def cpg_runs(tmp_path_factory) -> dict:
    """cpg on the good reacher example: one process (the shared cache), then 2 processes without a cache
    (so their oracle arm is computed, not read from the first run's)."""
    from test_distributed_devices import shared_cache

    root = tmp_path_factory.mktemp("cpg-processes")
    model = MODELS[0]
    out = {"root": root}
    out["single"] = _finish([_start(["cpg", model, *CPG_ARGS, "-o", root / "single.json", "--cache-dir",
                                     shared_cache(tmp_path_factory)])])[0]
    out["two"] = _finish(_distributed(2, model, *CPG_ARGS, "-o", root / "two.json", "--no-cache", command="cpg"))
    return out


@pytest.mark.slow  # both arms compiled in 3 processes: 79-343 s on 2 shared cores (load 4-8)
def test_cpg_as_two_processes_writes_the_single_process_file(cpg_runs):
    code, _, err = cpg_runs["single"]
    assert code == 0, err[-3000:]
    (code0, out0, err0), (code1, out1, err1) = cpg_runs["two"]
    assert code0 == 0 and code1 == 0, (err0[-3000:], err1[-3000:])
    single = json.loads((cpg_runs["root"] / "single.json").read_text())
    two = json.loads((cpg_runs["root"] / "two.json").read_text())
    assert not two["timings"]["oracle_from_cache"]
    assert _comparable_cpg(two) == _comparable_cpg(single)
    assert two["oracle_full"]["results"] == single["oracle_full"]["results"]  # (included above; the point)
    assert two["config"]["runtime"]["processes"] == 2 and two["config"]["runtime"]["devices"] == 2
    assert single["config"]["runtime"]["processes"] == 1
    assert "wrote CPG JSON" in out0 and out1 == "", (out0, out1)  # process 0 prints and writes
    assert "process 1 of 2: joined the run (2 cpu devices)" in err1

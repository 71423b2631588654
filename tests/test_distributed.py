"""The distributed runtime's pieces, in this process (one CPU device): layouts, plans, flags, placements.

Runs over several devices and processes are in ``tests/test_distributed_devices.py``
(4 host devices, in a subprocess) and ``tests/test_distributed_processes.py``
(2 processes on localhost).
"""

from __future__ import annotations

import numpy as np
import pytest

from wmel_jax import distributed as D
from wmel_jax.errors import WmelError


# --------------------------------------------------------------------------- #
# Layout: every row once, in order; padding only past the end
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("n", [1, 2, 5, 150, 1001])
@pytest.mark.parametrize("chunk", [1, 7, 128])
@pytest.mark.parametrize("processes,per_process", [(1, 1), (1, 4), (2, 1), (2, 2), (3, 2)])
def test_layout_covers_every_row_once(n, chunk, processes, per_process):
    g = processes * per_process
    layouts = [D.Layout.make(n, chunk, g, per_process, p) for p in range(processes)]
    lay = layouts[0]
    assert lay.per_process <= max(chunk, per_process) + per_process - 1  # at most chunk rows a call, rounded up
    # The device parts, in order, are the rows 0..n-1 exactly (a one-device run's chunks, concatenated).
    covered = np.concatenate([np.arange(a, b) for _, _, a, b in lay.parts()])
    np.testing.assert_array_equal(covered, np.arange(n))
    # Each process's rows: its devices' parts; together, every row exactly once.
    rows = np.concatenate([x.local_rows() for x in layouts])
    np.testing.assert_array_equal(np.sort(rows), np.arange(n))
    for p, x in enumerate(layouts):
        mine = [np.arange(a, b) for _, dev, a, b in x.parts() if dev // per_process == p]
        np.testing.assert_array_equal(x.local_rows(), np.concatenate(mine) if mine else np.zeros(0, int))
        for j in range(x.n_chunks):
            take, valid = x.local_take(j)
            assert take.shape == valid.shape == (x.per_process,)
            assert np.all((take >= 0) & (take < n))
            assert np.all(take[~valid] == n - 1)  # padding repeats the last row
    # Padding only in the last call.
    assert (lay.n_chunks - 1) * g * lay.per_device < n <= lay.n_chunks * g * lay.per_device


def test_layout_of_one_device_is_todays_chunking():
    lay = D.Layout.make(150, 128, 1, 1, 0)
    assert (lay.per_device, lay.n_chunks) == (128, 2)
    assert [(a, b) for _, _, a, b in lay.parts()] == [(0, 128), (128, 150)]
    assert D.Layout.make(150, 4096, 1, 1, 0).per_device == 150  # min(N, chunk), as ever


def test_layout_devices_get_the_rows_of_a_smaller_one_device_chunk():
    """4 devices at chunk 4c hold exactly the one-device chunks of c (what makes the sums bit for bit)."""
    four = D.Layout.make(150, 128, 4, 4, 0)
    one = D.Layout.make(150, 32, 1, 1, 0)
    assert four.per_device == one.per_device == 32
    parts = [(a, b) for _, _, a, b in four.parts() if b > a]
    assert parts == [(a, b) for _, _, a, b in one.parts()]


# --------------------------------------------------------------------------- #
# what a sweep splits
# --------------------------------------------------------------------------- #


def test_plan_split_single_process_is_states():
    plan = D.plan_split([1.0, 1.0], 150, 1)
    assert plan.kind == "states" and plan.reason == "a single process"


def test_plan_split_picks_models_for_many_small_cells_and_states_for_few_big_ones():
    few_states = D.plan_split([1.0] * 8, 150, 4)
    assert few_states.kind == "models"
    assert sorted(few_states.assignment) == [0, 0, 1, 1, 2, 2, 3, 3]  # 2 models each
    one_big = D.plan_split([1.0], 100_000, 2)
    assert one_big.kind == "states"
    uneven = D.plan_split([1.0] * 3, 100_000, 2)  # 2 models on one process vs 1.5 models' work each
    assert uneven.kind == "states"
    assert D.plan_split([1.0] * 3, 100_000, 2, "models").kind == "models"
    assert D.plan_split([1.0] * 8, 150, 4, "states").kind == "states"


def test_plan_split_balances_costs_costliest_first():
    plan = D.plan_split([10.0, 1.0, 1.0, 1.0, 9.0], 150, 2, "models")
    load = [sum(c for c, p in zip([10.0, 1.0, 1.0, 1.0, 9.0], plan.assignment) if p == q) for q in (0, 1)]
    assert sorted(load) == [11.0, 11.0]


def test_unknown_split_is_a_user_error():
    with pytest.raises(WmelError, match="unknown split"):
        D.plan_split([1.0], 10, 2, "episodes")


# --------------------------------------------------------------------------- #
# settings: flags and environment
# --------------------------------------------------------------------------- #


def test_no_flags_no_environment_is_a_single_process():
    assert D.settings_from(environ={}) is None
    assert D.settings_from(environ={"SLURM_NTASKS": "1", "SLURM_PROCID": "0", "SLURM_STEP_NODELIST": "n1"}) is None
    # A batch script of a job of 4 tasks runs as a step of one task: not a distributed run.
    batch = {"SLURM_NTASKS": "4", "SLURM_STEP_NUM_TASKS": "1", "SLURM_PROCID": "0", "SLURM_STEP_NODELIST": "n1"}
    assert D.settings_from(environ=batch) is None
    assert D.settings_from(num_processes=1, environ={}) is None  # one process asked for: no runtime to join


def test_flags_give_the_settings():
    s = D.settings_from("localhost:1234", 2, 1, 5, environ={})
    assert (s.coordinator, s.num_processes, s.process_id, s.peer_timeout_s, s.source) == ("localhost:1234", 2, 1, 5, "flags")
    assert s.describe() == "process 1 of 2"


def test_jax_environment_and_clusters_are_detected():
    s = D.settings_from(None, 2, 0, environ={"JAX_COORDINATOR_ADDRESS": "10.0.0.1:9999"})
    assert s.coordinator == "10.0.0.1:9999" and s.source == "flags"
    slurm = D.settings_from(environ={"SLURM_NTASKS": "4", "SLURM_PROCID": "2", "SLURM_STEP_NODELIST": "n[1-4]"})
    assert slurm.source == "SLURM" and (slurm.num_processes, slurm.process_id) == (4, 2)
    assert slurm.coordinator is None  # JAX finds it from SLURM's node list and job id
    step = {"SLURM_NTASKS": "8", "SLURM_STEP_NUM_TASKS": "4", "SLURM_PROCID": "2", "SLURM_STEP_NODELIST": "n[1-4]"}
    assert D.settings_from(environ=step).source == "SLURM"
    ompi = D.settings_from(environ={"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "0"})
    assert ompi.source == "Open MPI" and (ompi.num_processes, ompi.process_id) == (2, 0)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(num_processes=2, process_id=0), "needs --coordinator"),
        (dict(coordinator="localhost:1234", process_id=0), "needs --num-processes"),
        (dict(coordinator="localhost:1234", num_processes=2), "needs --process-id"),
        (dict(coordinator="localhost:1234", num_processes=2, process_id=2), "not below --num-processes"),
        (dict(coordinator="localhost:1234", num_processes=0, process_id=0), "--num-processes must be"),
        (dict(coordinator="localhost:1234", num_processes=2, process_id=-1), "--process-id must be"),
        (dict(coordinator="localhost", num_processes=2, process_id=0), "not HOST:PORT"),
        (dict(coordinator="localhost:99999", num_processes=2, process_id=0), "not HOST:PORT"),
        (dict(coordinator="localhost:1234", num_processes=2, process_id=0, peer_timeout_s=0), "--peer-timeout"),
    ],
)
def test_bad_distributed_flags_are_user_errors(kwargs, match):
    with pytest.raises(WmelError, match=match):
        D.settings_from(environ={}, **kwargs)


def test_bad_flags_fail_on_the_command_line_before_any_work(capsys):
    from wmel_jax import cli

    code = cli.main(["eval", "model.safetensors", "--num-processes", "2", "--process-id", "0"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("wmel-jax: error: ") and err.count("\n") == 1, err
    assert "--coordinator" in err


# --------------------------------------------------------------------------- #
# the runtime of this process
# --------------------------------------------------------------------------- #


def test_default_runtime_is_every_device_unsharded_here():
    import jax

    rt = D.runtime()
    assert rt.n_devices == len(jax.devices()) == 1 and not rt.sharded
    assert rt.placement((0,), 0) is None  # one device: the kernels run as they always have
    assert rt.describe() == {"platform": "cpu", "device_kind": jax.devices()[0].device_kind, "devices": 1,
                             "processes": 1, "devices_per_process": 1}
    assert D.is_writer() and D.allgather_json({"a": [1.5, None]}) == [{"a": [1.5, None]}]


def test_more_devices_than_the_process_has_is_a_user_error():
    with pytest.raises(WmelError, match="--devices 3: this process has 1 cpu device.*xla_force_host_platform_device_count"):
        D.configure(3)
    with pytest.raises(WmelError, match="--devices must be a positive int"):
        D.configure(0)
    assert D.configure(None).n_devices == 1


def test_oracle_targets_of_a_share_find_their_rows():
    from wmel_jax.evaluate import OracleTargets

    rows = np.array([3, 4, 9])
    t = OracleTargets(np.zeros((3, 2, 1)), np.zeros((3, 2)), np.zeros((4, 3, 1)), {}, rewards=np.zeros((3, 2)),
                      rows=rows)
    np.testing.assert_array_equal(t.positions(np.array([9, 3])), [2, 0])
    with pytest.raises(WmelError, match="another process's share"):
        t.positions(np.array([5]))

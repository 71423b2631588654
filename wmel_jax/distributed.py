"""Runs over many devices and processes, with JAX's own distributed runtime.

A run cuts its batch (states for ``eval``, episodes for ``cpg``) into chunks
and computes each chunk with one kernel call. Here a call covers every device
of the run: the chunk is split over a 1-D :class:`jax.sharding.Mesh` (axis
``"batch"``) and each device computes its rows with the *single-device*
kernel, as ``jax.shard_map`` of the kernel's exported program
(:class:`Placement`). So:

- every device runs exactly the program a one-device run runs on a chunk of
  the same size, on the same rows: per-row results (the oracle's answers, a
  model's predictions) are the same arithmetic;
- a kernel's sums over rows (the metrics' per-episode partial sums of a
  chunk) stay one set per device and are added on the host, in row order, as
  a one-device run adds its chunks' (nothing is reduced across devices inside
  a kernel, so nothing is reassociated there): a run on D devices at
  ``--chunk-states D*c`` adds the same float64 parts in the same order as a
  one-device run at ``--chunk-states c``, and so resamples the same
  per-episode sums for the intervals;
- the traced program (and its entry in the persistent cache) is the same for
  any device count; only XLA's compilation is per mesh.

What is not bit for bit, and why (:data:`SHARDED_RTOL`): XLA compiles a
sharded call as one SPMD program, and its CPU code is not always the
single-device program's code: at backend optimisation level 0 (which
problems of at most 512 states use, to compile faster) float64 values of the
oracle and the state sampler differ in the last bits (cartpole-swingup: 22
of 25,600 trajectory values, by 1.1e-16; reacher-easy: a quarter of the
states and a third of the trajectory values, normwise 1e-15; 2 and 4 CPU
devices), while at the default level every value of both tasks' oracle was
bit for bit, and the model's float32 kernel was bit for bit at both levels.
And at the same ``--chunk-states``, D devices compute chunks of a D-th of
the rows: XLA's float32 matmuls round differently for different batch sizes
(up to 8e-8 in a prediction), so the metrics agree to the chunking
tolerance of one device (``tests/test_eval.py``), not bit for bit.

Layout (:class:`Layout`): ``c`` rows per device per call, ``G`` devices in
all (``P`` processes of ``D`` devices each, in process order); call ``j``
covers rows ``[j*G*c, (j+1)*G*c)`` of the batch and device ``g`` the ``c``
rows from ``j*G*c + g*c``. Rows past the batch's end are padding: copies of
its last row, masked out (``valid``) and their results dropped. A process
holds only its own devices' rows (``jax.make_array_from_process_local_data``).

Processes: :func:`settings_from` reads ``--coordinator HOST:PORT
--num-processes N --process-id I`` (or JAX's ``JAX_COORDINATOR_ADDRESS``,
or the task count and rank of a SLURM step or Open MPI job of several
tasks, where ``jax.distributed`` finds the coordinator itself);
:func:`initialize` calls ``jax.distributed.initialize`` with bounded
timeouts, and on CPU the collectives run over gloo. Process 0
alone writes outputs (:func:`is_writer`). A process that dies stops sending
heartbeats; JAX's coordination service then terminates every other process
within the heartbeat timeout (``--peer-timeout``), and :func:`supervise`
(the command runs in a child process) turns that termination into one line,
``wmel-jax: error: ...``, with exit status :data:`EXIT_PEER_LOST`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import signal
import sys
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from wmel_jax.errors import WmelError

__all__ = [
    "AXIS",
    "STACKED",
    "SHARDED_RTOL",
    "DEFAULT_PEER_TIMEOUT_S",
    "EXIT_PEER_LOST",
    "Runtime",
    "Layout",
    "Placement",
    "Settings",
    "SplitPlan",
    "SPLITS",
    "MODEL_OVERHEAD_STATES",
    "plan_split",
    "check_split",
    "runtime",
    "configure",
    "settings_from",
    "initialize",
    "is_writer",
    "allgather_json",
    "supervise",
    "finish",
]

#: The mesh axis a batch is split over.
AXIS = "batch"

#: Normwise relative tolerance (max |a - b| / max |a| over an array, or a
#: scalar's relative difference) between a sharded run and a one-device run of
#: the same per-device chunk, for every per-row value and every metric: XLA may
#: emit a sharded program's CPU code differently (float64 values a few ulps
#: apart, normwise at most 1e-15 measured; see the module docstring), and a
#: value only passes such differences on, scaled by at most the k-step
#: rollout's sensitivity. 1e-12 leaves three orders of magnitude for that;
#: float32 values (the model's) were bit for bit in every measurement.
SHARDED_RTOL = 1e-12

#: Default seconds without heartbeats after which a process is declared dead
#: (JAX's own default is 100): every other process then exits within about
#: this long. Waiting for a live peer (one still computing) is not bounded by
#: it: a sweep may run for hours.
DEFAULT_PEER_TIMEOUT_S = 120
#: Exit status of a process whose distributed run lost a peer or its coordinator.
EXIT_PEER_LOST = 3


def _spec(axis: Any):
    """The PartitionSpec of an array whose rows are on ``axis`` (None: replicated; STACKED: axis 0)."""
    from jax.sharding import PartitionSpec as P

    if axis is None:
        return P()
    if axis is STACKED or axis == 0:
        return P(AXIS)
    return P(*([None] * axis), AXIS)


class _Stacked:
    """Marker for a value with one entry per device (a leading axis of the device count)."""

    def __repr__(self) -> str:
        return "STACKED"


#: In :class:`Placement` axes: an input whose device ``g`` slice is ``x[g]``
#: (the kernel sees it without that axis), or an output each device returns
#: whole, stacked along a new leading axis (a kernel's per-chunk sums).
STACKED = _Stacked()


# --------------------------------------------------------------------------- #
# the devices of a run
# --------------------------------------------------------------------------- #


def _count(n: int, what: str) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise WmelError(f"{what} must be a positive int; got {n!r}")
    return n


@dataclasses.dataclass(frozen=True, eq=False)
class Layout:
    """``n`` rows over the devices of a run, in calls of ``per_device`` rows per device.

    Call ``j``, device ``g`` (global, process-major) covers rows
    ``[j*G*c + g*c, j*G*c + (g+1)*c)``; rows ``>= n`` are padding.
    """

    n: int
    per_device: int
    n_devices: int
    devices_per_process: int
    process_index: int
    n_chunks: int

    @classmethod
    def make(cls, n: int, chunk: int, n_devices: int, devices_per_process: int, process_index: int) -> "Layout":
        """At most ``chunk`` rows per process and call (at least one per device)."""
        n = _count(n, "the batch size")
        chunk = _count(chunk, "the chunk size")
        processes = n_devices // devices_per_process
        per_process = min(-(-n // processes), chunk)
        per_device = -(-per_process // devices_per_process)
        n_chunks = -(-n // (n_devices * per_device))
        return cls(n, per_device, n_devices, devices_per_process, process_index, n_chunks)

    @property
    def per_process(self) -> int:
        """Rows this process feeds each call (its devices' rows, padding included)."""
        return self.devices_per_process * self.per_device

    def part(self, chunk: int, device: int) -> tuple[int, int]:
        """The rows [start, stop) of the batch that ``device`` holds in call ``chunk`` (empty: padding only)."""
        start = chunk * self.n_devices * self.per_device + device * self.per_device
        return min(start, self.n), min(start + self.per_device, self.n)

    def parts(self) -> list[tuple[int, int, int, int]]:
        """(chunk, device, start, stop) of every device's part of every call, in row order."""
        return [(j, g, *self.part(j, g)) for j in range(self.n_chunks) for g in range(self.n_devices)]

    def local_take(self, chunk: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, valid) this process feeds in call ``chunk``: (per_process,) int64 and bool.

        ``rows`` are indices into the batch; padding repeats the batch's last row.
        """
        first = chunk * self.n_devices * self.per_device + self.process_index * self.per_process
        idx = first + np.arange(self.per_process, dtype=np.int64)
        valid = idx < self.n
        return np.minimum(idx, self.n - 1), valid

    def local_rows(self) -> np.ndarray:
        """Every batch row this process computes, ascending: (m,) int64."""
        if self.n_chunks == 0:
            return np.zeros(0, np.int64)
        return np.concatenate([rows[valid] for rows, valid in map(self.local_take, range(self.n_chunks))])


def _is_axis(x: Any) -> bool:
    return x is None or x is STACKED or (isinstance(x, int) and not isinstance(x, bool))


def _map_axes(f: Callable[[Any, Any], Any], axes: Any, tree: Any) -> Any:
    """``f(axis, leaf)`` over the leaves of ``tree``; ``axes`` is a pytree prefix of it (leaves: int, None, STACKED)."""
    import jax

    return jax.tree_util.tree_map(
        lambda axis, sub: jax.tree_util.tree_map(lambda leaf: f(axis, leaf), sub), axes, tree, is_leaf=_is_axis
    )


@dataclasses.dataclass(frozen=True, eq=False)
class Placement:
    """How a single-device kernel runs over a mesh: ``jax.shard_map`` of its program.

    ``in_axes``: per argument, the axis its rows are on, None (the same value
    on every device) or :data:`STACKED`; an entry may be a pytree prefix of
    its argument (e.g. a NamedTuple of axes, one per field). ``out_axes``: a
    pytree prefix of the kernel's outputs, with the same choices but None.
    The kernel is traced at one device's shapes; :meth:`global_avals` gives
    the whole call's.
    """

    mesh: Any
    in_axes: tuple
    out_axes: Any

    @property
    def n_devices(self) -> int:
        return int(self.mesh.size)

    def key(self) -> str:
        """What the compiled program depends on, for the in-process cache."""
        ids = [int(d.id) for d in self.mesh.devices.flat]
        return json.dumps([ids, repr(self.in_axes), repr(self.out_axes)])

    def wrap(self, fn: Callable) -> Callable:
        """``fn`` (one device's rows) as a function of the whole call's arrays."""
        import jax

        in_axes, out_axes = self.in_axes, self.out_axes
        squeeze = lambda axis, x: x[0] if axis is STACKED else x  # noqa: E731
        expand = lambda axis, y: y[None] if axis is STACKED else y  # noqa: E731

        def per_device(*args):
            out = fn(*(_map_axes(squeeze, axes, a) for axes, a in zip(in_axes, args)))
            return _map_axes(expand, out_axes, out)

        def specs(axes):
            return jax.tree_util.tree_map(_spec, axes, is_leaf=_is_axis)

        # check_vma off: the exported program's call has no varying-axes rule, and
        # nothing inside is a collective.
        return jax.shard_map(per_device, mesh=self.mesh, in_specs=tuple(specs(a) for a in in_axes),
                             out_specs=specs(out_axes), check_vma=False)

    def global_avals(self, avals: tuple) -> tuple:
        """One device's argument shapes -> the call's, with their shardings."""
        import jax
        from jax.sharding import NamedSharding

        if len(avals) != len(self.in_axes):
            raise ValueError(f"{len(avals)} arguments for {len(self.in_axes)} placement axes")
        g = self.n_devices

        def one(axis, x):
            shape = list(x.shape)
            if axis is STACKED:
                shape = [g, *shape]
            elif axis is not None:
                shape[axis] *= g
            sharding = NamedSharding(self.mesh, _spec(axis))
            return jax.ShapeDtypeStruct(tuple(shape), x.dtype, sharding=sharding, weak_type=x.weak_type)

        return tuple(_map_axes(one, axes, a) for axes, a in zip(self.in_axes, avals))


@dataclasses.dataclass(frozen=True, eq=False)
class Runtime:
    """The devices a run computes on: a 1-D mesh over them, process-major, and which process this is.

    devices: every device of the run (all processes), in mesh order;
    process_index / process_count: this process and how many there are.
    """

    devices: tuple
    process_index: int = 0
    process_count: int = 1

    @functools.cached_property
    def mesh(self):
        from jax.sharding import Mesh

        return Mesh(np.array(self.devices, dtype=object), (AXIS,))

    @property
    def n_devices(self) -> int:
        return len(self.devices)

    @property
    def devices_per_process(self) -> int:
        return self.n_devices // self.process_count

    @property
    def local_devices(self) -> tuple:
        return tuple(d for d in self.devices if d.process_index == self.process_index)

    @property
    def sharded(self) -> bool:
        """Whether calls span more than one device (else kernels run as they always have)."""
        return self.n_devices > 1

    def describe(self) -> dict[str, Any]:
        """For a report's config: where the run computed."""
        first = self.devices[0]
        return {
            "platform": first.platform,
            "device_kind": first.device_kind,
            "devices": self.n_devices,
            "processes": self.process_count,
            "devices_per_process": self.devices_per_process,
        }

    def layout(self, n: int, chunk: int) -> Layout:
        return Layout.make(n, chunk, self.n_devices, self.devices_per_process, self.process_index)

    def placement(self, in_axes: Sequence[Any], out_axes: Any) -> Placement | None:
        """The placement of a kernel over this runtime's mesh; None on one device (the kernel as is)."""
        if not self.sharded:
            return None
        return Placement(self.mesh, tuple(in_axes), out_axes)

    def local(self) -> "Runtime":
        """This process's devices only (a run with no other process in it)."""
        return Runtime(self.local_devices, 0, 1)

    # -- moving data ------------------------------------------------------- #

    def put(self, local: Any, axis: Any = 0):
        """This process's rows (its devices' parts, in order) -> the call's array, rows on ``axis``.

        ``axis`` may be :data:`STACKED` (``local`` has one entry per local
        device), or a pytree prefix of ``local`` (a pytree) of axes.
        """
        import jax
        from jax.sharding import NamedSharding

        def one(axis, x):
            if not self.sharded:
                return jax.device_put(x)  # as jnp.asarray, without compiling a program per shape
            x = np.asarray(x)
            if axis is None:
                return jax.make_array_from_process_local_data(NamedSharding(self.mesh, _spec(None)), x, x.shape)
            shape = list(x.shape)
            shape[0 if axis is STACKED else axis] *= self.process_count
            return jax.make_array_from_process_local_data(NamedSharding(self.mesh, _spec(axis)), x, tuple(shape))

        return _map_axes(one, axis, local)

    def replicate(self, tree: Any):
        """The same value on every device of the run (every process passes the same value)."""
        import jax
        from jax.sharding import NamedSharding, PartitionSpec

        if not self.sharded:
            return jax.tree_util.tree_map(jax.device_put, tree)  # as jnp.asarray, compiling nothing
        sharding = NamedSharding(self.mesh, PartitionSpec())
        return jax.tree_util.tree_map(
            lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x), np.shape(x)), tree
        )

    def local_part(self, x: Any, axis: int = 0) -> np.ndarray:
        """A call's output with rows on ``axis`` -> this process's rows of it (numpy, in device order)."""
        if not self.sharded or self.process_count == 1:
            return np.asarray(x)
        shards = sorted((s for s in x.addressable_shards if s.replica_id == 0), key=lambda s: s.index[axis].start or 0)
        return np.concatenate([np.asarray(s.data) for s in shards], axis=axis)

    def gather(self, tree: Any) -> Any:
        """Call outputs (any sharding) -> whole numpy arrays, on every process."""
        import jax

        if self.process_count == 1:
            return jax.tree_util.tree_map(np.asarray, tree)
        from jax.experimental import multihost_utils

        return multihost_utils.process_allgather(tree, tiled=True)

    def gather_rows(self, local: np.ndarray, rows: np.ndarray, n: int, axis: int = 0) -> np.ndarray:
        """Every process's rows of an ``n``-row array -> all of it, on every process.

        ``local`` holds this process's ``rows`` (indices into the n rows) on ``axis``.
        """
        if self.process_count == 1:
            return local
        from jax.experimental import multihost_utils

        longest = int(np.asarray(multihost_utils.process_allgather(np.array([rows.size], np.int64))).max())
        padded = np.zeros(local.shape[:axis] + (longest,) + local.shape[axis + 1 :], local.dtype)
        padded[(slice(None),) * axis + (slice(0, rows.size),)] = local
        where = np.full(longest, -1, np.int64)
        where[: rows.size] = rows
        every, every_rows = multihost_utils.process_allgather((padded, where))
        out = np.empty(local.shape[:axis] + (n,) + local.shape[axis + 1 :], local.dtype)
        for part, at in zip(np.asarray(every), np.asarray(every_rows)):
            keep = at >= 0
            out[(slice(None),) * axis + (at[keep],)] = part[(slice(None),) * axis + (np.flatnonzero(keep),)]
        return out

    def per_device(self, outputs: Sequence[Any]) -> list[Any]:
        """Per-call :data:`STACKED` outputs -> one pytree per device part, in row order (numpy).

        On one device (no placement) each call's output is its only part.
        """
        import jax

        gathered = self.gather(list(outputs))
        if not self.sharded:
            return list(gathered)
        return [jax.tree_util.tree_map(lambda x, g=g: x[g], out) for out in gathered for g in range(self.n_devices)]


_RUNTIME: Runtime | None = None


def runtime() -> Runtime:
    """The process's runtime: set by :func:`configure`, else every device JAX sees (all processes)."""
    global _RUNTIME
    if _RUNTIME is None:
        _RUNTIME = _make_runtime(None)
    return _RUNTIME


def configure(devices: int | None = None) -> Runtime:
    """Use the first ``devices`` devices of every process (None: all of them); returns the runtime.

    In a run of several processes this is a collective (every process calls it).
    """
    global _RUNTIME
    _RUNTIME = _make_runtime(devices)
    if _RUNTIME.process_count > 1:
        _connect(_RUNTIME)
    return _RUNTIME


def _connect(rt: Runtime) -> None:
    """Open the CPU collectives' connections now, while the processes are in step.

    Gloo connects a set of devices on its first collective and gives up when
    the others have not arrived within 30 s (not configurable), which a
    process still compiling when another one first gathers easily exceeds;
    once connected, a collective waits for as long as it takes. Both sets the
    run's collectives use are connected here, just after the processes met
    in ``jax.distributed.initialize``: every device (host-data gathers) and
    the run's mesh (its arrays).
    """
    import jax
    from jax.experimental import multihost_utils

    # Gloo prints a line on stdout when it connects: it goes to stderr, not into the table on stdout.
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        multihost_utils.sync_global_devices("wmel-jax: every device")
        if rt.n_devices != len(jax.devices()):
            rt.gather(rt.put(np.zeros(rt.devices_per_process, np.int32)))
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _make_runtime(devices: int | None) -> Runtime:
    import jax

    everything = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    count = jax.process_count()
    by_process: dict[int, list] = {}
    for d in everything:
        by_process.setdefault(d.process_index, []).append(d)
    sizes = sorted({len(v) for v in by_process.values()})
    if devices is not None:
        _count(devices, "--devices")
        have = len(by_process[jax.process_index()])
        if devices > min(sizes):
            where = "this process has" if count == 1 else f"the smallest of the {count} processes has"
            hint = (" (on CPU, set XLA_FLAGS=--xla_force_host_platform_device_count=N before the run starts)"
                    if everything[0].platform == "cpu" else "")
            raise WmelError(f"--devices {devices}: {where} {min(sizes) if count > 1 else have} "
                            f"{everything[0].platform} device(s){hint}")
        per = devices
    else:
        if len(sizes) > 1:
            raise WmelError(f"the {count} processes have different device counts ({', '.join(map(str, sizes))}): "
                            "pass --devices N to use N of each")
        per = sizes[0]
    chosen = tuple(d for p in sorted(by_process) for d in by_process[p][:per])
    return Runtime(chosen, jax.process_index(), count)


def is_writer() -> bool:
    """Whether this process writes the run's outputs (process 0; every process of a single-process run)."""
    return runtime().process_index == 0


def allgather_json(obj: Any) -> list[Any]:
    """Every process's ``obj`` (JSON-able), in process order, on every process (one value: single process)."""
    rt = runtime()
    if rt.process_count == 1:
        return [obj]
    from jax.experimental import multihost_utils

    blob = np.frombuffer(json.dumps(obj, allow_nan=True).encode(), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.array([blob.size], np.int64))).reshape(-1)
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[: blob.size] = blob
    every = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(sizes), -1)
    return [json.loads(bytes(every[p, : sizes[p]]).decode()) for p in range(len(sizes))]


# --------------------------------------------------------------------------- #
# a sweep over processes: split the states, or the models
# --------------------------------------------------------------------------- #

#: What a run of several processes splits (``--split``).
SPLITS = ("auto", "states", "models")

#: A model's fixed cost per evaluation, in states: what a kernel call's
#: dispatch, the host's sums and the per-call overheads cost, next to the work
#: per state. Measured on CPU (``wmel-jax bench --quick``, README: a size-1
#: model, warm): 0.0384 s at N = 150 and 0.822 s at N = 10,000, so
#: t(N) = a + b N with a / b = 330 states.
MODEL_OVERHEAD_STATES = 330


@dataclasses.dataclass(frozen=True)
class SplitPlan:
    """Which process evaluates which model: ``kind`` "states" (every process, every model, its share of
    the states) or "models" (``assignment[j]``: the process of model j, on every state)."""

    kind: str
    assignment: tuple[int, ...]
    reason: str


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise WmelError(f"unknown split {split!r}: choose from {', '.join(SPLITS)}")
    return split


def plan_split(costs: Sequence[float], n_states: int, process_count: int, split: str = "auto") -> SplitPlan:
    """How a run of ``process_count`` processes shares the models (relative costs per state) of a sweep.

    Splitting the states costs every process every model's fixed cost (and
    its compilation) on a smaller batch; splitting the models costs the
    imbalance of whole models per process. With a model's time
    ``cost * (MODEL_OVERHEAD_STATES + states)``: by states, a process takes
    ``sum(cost) * (overhead + N / P)``; by models (each model to the least
    loaded process, costliest first), the busiest process takes
    ``max_p sum_p(cost) * (overhead + N)``. "auto" takes the smaller.
    """
    check_split(split)
    k = len(costs)
    if process_count == 1 or k == 0:
        return SplitPlan("states", (0,) * k, "a single process")
    loads = [0.0] * process_count
    assignment = [0] * k
    for j in sorted(range(k), key=lambda j: -costs[j]):  # longest-processing-time first
        p = min(range(process_count), key=lambda p: (loads[p], p))
        assignment[j] = p
        loads[p] += costs[j]
    by_states = sum(costs) * (MODEL_OVERHEAD_STATES + n_states / process_count)
    by_models = max(loads) * (MODEL_OVERHEAD_STATES + n_states)
    estimate = f"estimated busiest process: {by_models / by_states:.2f}x the work split by states"
    if split == "states" or (split == "auto" and by_states < by_models):
        why = "asked for" if split == "states" else f"cheaper: split by models, {estimate}"
        return SplitPlan("states", tuple(assignment), f"states ({why})")
    why = "asked for" if split == "models" else f"cheaper: {estimate}"
    return SplitPlan("models", tuple(assignment), f"models ({why})")


# --------------------------------------------------------------------------- #
# processes: settings, initialisation, supervision
# --------------------------------------------------------------------------- #


@dataclasses.dataclass(frozen=True)
class Settings:
    """How this process joins a distributed run (None fields: JAX detects them from the cluster)."""

    coordinator: str | None
    num_processes: int | None
    process_id: int | None
    peer_timeout_s: int = DEFAULT_PEER_TIMEOUT_S
    source: str = "flags"

    def describe(self) -> str:
        who = "?" if self.process_id is None else str(self.process_id)
        of = "?" if self.num_processes is None else str(self.num_processes)
        return f"process {who} of {of}"


_ADDRESS = re.compile(r"^\[?[A-Za-z0-9_.:-]+\]?:(\d{1,5})$")


def _cluster_tasks(environ: Mapping[str, str]) -> tuple[str, int, int] | None:
    """(cluster, task count, this task's rank) of a SLURM job step or an Open MPI job of several tasks, else None.

    SLURM: the tasks of this step (``srun``), not of the allocation: a batch
    script's own step is one task, whatever ``--ntasks`` the job asked for.
    """
    def count(name: str) -> int:
        try:
            return int(environ.get(name, ""))
        except ValueError:
            return 0

    if "SLURM_PROCID" in environ and "SLURM_STEP_NODELIST" in environ:
        n = count("SLURM_STEP_NUM_TASKS") if "SLURM_STEP_NUM_TASKS" in environ else count("SLURM_NTASKS")
        if n > 1:
            return "SLURM", n, count("SLURM_PROCID")
    if "OMPI_COMM_WORLD_RANK" in environ and count("OMPI_COMM_WORLD_SIZE") > 1:
        return "Open MPI", count("OMPI_COMM_WORLD_SIZE"), count("OMPI_COMM_WORLD_RANK")
    return None


def settings_from(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    peer_timeout_s: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings | None:
    """The distributed settings of a command (its flags, then the environment); None: a single process.

    A run is distributed when any of the flags is given, when
    ``JAX_COORDINATOR_ADDRESS`` is set, or inside a SLURM step or Open MPI job
    of several tasks (JAX detects the address, count and rank there).
    WmelError for flags that cannot work.
    """
    environ = os.environ if environ is None else environ
    timeout = DEFAULT_PEER_TIMEOUT_S if peer_timeout_s is None else peer_timeout_s
    if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout < 1:
        raise WmelError(f"--peer-timeout must be a positive number of seconds; got {timeout!r}")
    env_address = environ.get("JAX_COORDINATOR_ADDRESS") or None
    cluster = _cluster_tasks(environ)
    given = coordinator is not None or num_processes is not None or process_id is not None
    if not given and env_address is None and cluster is None:
        return None
    if num_processes is not None:
        _count(num_processes, "--num-processes")
        if num_processes == 1 and process_id in (None, 0):  # asked for one process: no distributed run
            return None
    if process_id is not None and (isinstance(process_id, bool) or not isinstance(process_id, int) or process_id < 0):
        raise WmelError(f"--process-id must be a non-negative int; got {process_id!r}")
    if num_processes is not None and process_id is not None and process_id >= num_processes:
        raise WmelError(f"--process-id {process_id} is not below --num-processes {num_processes}")
    address = coordinator or env_address
    if address is not None:
        m = _ADDRESS.match(address)
        if not m or not 0 < int(m.group(1)) < 65536:
            raise WmelError(f"coordinator address {address!r} is not HOST:PORT")
    if cluster is None:
        missing = [flag for flag, value in (("--coordinator HOST:PORT (or JAX_COORDINATOR_ADDRESS)", address),
                                            ("--num-processes N", num_processes), ("--process-id I", process_id))
                   if value is None]
        if missing:
            raise WmelError(f"a run of several processes needs {', '.join(missing)} (or a SLURM / Open MPI job)")
    source = "flags" if given else ("JAX_COORDINATOR_ADDRESS" if cluster is None else cluster[0])
    if cluster is not None:  # the cluster's count and rank, unless given (JAX finds the coordinator there)
        num_processes = cluster[1] if num_processes is None else num_processes
        process_id = cluster[2] if process_id is None else process_id
    return Settings(address, num_processes, process_id, timeout, source)


def settings_from_args(args: Any) -> Settings | None:
    """:func:`settings_from` for a parsed command line (commands without the flags: None)."""
    if not hasattr(args, "num_processes"):
        return None
    return settings_from(args.coordinator, args.num_processes, args.process_id, args.peer_timeout)


def initialize(settings: Settings) -> None:
    """``jax.distributed.initialize`` for ``settings``, before JAX starts its backends.

    Timeouts: a process missing its heartbeats for ``peer_timeout_s`` is
    declared dead (every other process is then terminated by JAX, see
    :func:`supervise`); joining waits up to 5x that for every process to
    start; the final barrier waits up to 10x (processes may finish their
    shares at different times). JAX's preemption service is off: it would
    catch SIGTERM (a scheduler's or ``kill``'s request to stop) and ignore it.
    WmelError when the coordinator cannot be reached in time.
    """
    import jax

    jax.config.update("jax_enable_preemption_service", False)
    t = settings.peer_timeout_s
    try:
        jax.distributed.initialize(
            coordinator_address=settings.coordinator,
            num_processes=settings.num_processes,
            process_id=settings.process_id,
            initialization_timeout=5 * t,
            heartbeat_timeout_seconds=t,
            shutdown_timeout_seconds=10 * t,
        )
    except (RuntimeError, ValueError) as e:  # JaxRuntimeError is a RuntimeError
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = "" if settings.source == "flags" else (
            f" (the run's processes were taken from {settings.source}; pass --num-processes 1 to run alone)")
        raise WmelError(f"{settings.describe()}: could not join the distributed run at "
                        f"{settings.coordinator or '(detected address)'} within {5 * t} s: {first}{hint}") from None
    _same_cpu_cache_keys()


def _same_cpu_cache_keys() -> None:
    """Give a CPU program of a multi-process run the same persistent-cache key in every process.

    JAX writes its persistent compilation cache from process 0 only, and
    expects the other processes to find the same entries: its key is the
    same everywhere, except on CPU, where the key hashes the device
    topology's fingerprint, which differs per process. So every process but
    0 compiled every program again in every run (measured: 2 processes,
    N = 5,000, warm cache: process 1 compiled for 43 s while process 0 read
    its programs in 4 s and then waited for it at the first gather; 4
    processes: three compiling at once on 2 cores). Here the CPU devices of
    a program are hashed by what is the same in every process (each
    device's kind, id and process), as JAX itself does for a backend without
    a topology fingerprint; the compile options (hashed too) hold the device
    assignment. A process other than 0 then loads process 0's executable,
    as JAX's own ``jax_share_binary_between_hosts`` hands it one.
    """
    try:
        from jax._src import cache_key
    except ImportError:  # pragma: no cover - another jax than the pinned one: keys as JAX makes them
        return
    original = getattr(cache_key, "_hash_accelerator_config", None)
    if original is None or getattr(original, "_wmel_jax", False):
        return

    def hash_accelerator_config(hash_obj, accelerators):
        devices = list(np.asarray(accelerators, dtype=object).flat)
        if not devices or any(d.platform != "cpu" for d in devices):
            return original(hash_obj, accelerators)
        for d in devices:
            hash_obj.update(f"{d.device_kind}:{d.id}:{d.process_index};".encode())

    hash_accelerator_config._wmel_jax = True
    cache_key._hash_accelerator_config = hash_accelerator_config


#: Exit statuses of a command that ran to its end (0; 1: models skipped, the same in every process):
#: such a process waits for the others at JAX's shutdown barrier.
_CLEAN_EXITS = (0, 1)


def finish(code: int, clean: bool | None = None) -> None:
    """End a distributed process: a clean end waits for the others (JAX's shutdown barrier), an error does not.

    ``clean`` (default: ``code`` in 0, 1, the statuses of a command that
    ran to its end). An error exits at once: the others, maybe waiting for
    this process in a collective, learn of it from its missing heartbeats
    instead of waiting for it at the barrier.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    if clean is None:
        clean = code in _CLEAN_EXITS
    if clean:
        try:
            import jax

            jax.distributed.shutdown()
        except Exception as e:  # noqa: BLE001 - a peer gone at the very end: the work is done
            print(f"wmel-jax: warning: the distributed shutdown failed: {str(e).splitlines()[0] if str(e) else e}",
                  file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _die_with_parent(parent: int) -> None:
    """Linux: this process gets SIGKILL when ``parent`` exits (a killed supervisor leaves no worker behind)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: nothing to set
        return
    if os.getppid() != parent:  # the parent died before prctl
        os._exit(EXIT_PEER_LOST)


def supervise(settings: Settings, work: Callable[[], int]) -> int:
    """Run ``work()`` in a child process (it calls :func:`finish`); its exit status, or one line if JAX killed it.

    JAX's coordination service ends a process whose run lost a peer (or its
    coordinator) with a fatal C++ error (SIGABRT and a stack dump); the
    supervising parent then prints one ``wmel-jax: error:`` line saying so
    and returns :data:`EXIT_PEER_LOST`. SIGTERM and SIGHUP are passed on to
    the child; SIGINT reaches both from the terminal, and the parent leaves
    it to the child. Call before JAX starts any thread (forks).
    """
    sys.stdout.flush()
    sys.stderr.flush()
    parent = os.getpid()
    child = os.fork()
    if child == 0:
        _die_with_parent(parent)
        try:
            code, clean = int(work()), None
        except BaseException:  # noqa: BLE001 - a bug: its traceback, then exit like Python would
            import traceback

            traceback.print_exc()
            code, clean = 1, False
        finish(code, clean)
    previous = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        previous[sig] = signal.signal(sig, lambda s, _frame: os.kill(child, s))
    previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        while True:
            try:
                _, status = os.waitpid(child, 0)
                break
            except ChildProcessError:  # pragma: no cover - reaped elsewhere
                return EXIT_PEER_LOST
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    sig = os.WTERMSIG(status)
    name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
    if sig == signal.SIGABRT:
        reason = ("JAX's distributed runtime stopped it: another process of the run died or stopped answering "
                  f"(no heartbeat for {settings.peer_timeout_s} s), or the coordinator at "
                  f"{settings.coordinator or '(detected address)'} is gone; see the messages above and the other "
                  "processes' logs")
    else:
        reason = f"it was killed by {name}"
    print(f"wmel-jax: error: {settings.describe()}: the run stopped: {reason}", file=sys.stderr)
    sys.stderr.flush()
    return EXIT_PEER_LOST if sig == signal.SIGABRT else 128 + sig


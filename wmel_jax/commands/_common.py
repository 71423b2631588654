"""Runtime flags shared by the subcommands that run JAX (eval, demo, bench).

Process-wide JAX settings (64-bit mode for the float64 oracle, the persistent
compilation cache, the devices and the distributed runtime) are made here,
when a command runs, never at import.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable

#: Environment variable that moves the cache; "" or "off" disables it.
CACHE_ENV = "WMEL_JAX_CACHE_DIR"


def add_runtime_arguments(parser: argparse.ArgumentParser, *, chunk_states: bool = True) -> None:
    """--precision, --chunk-states (unless ``chunk_states`` is False: a command chunking otherwise), the cache."""
    parser.add_argument(
        "--precision", choices=("float64", "float32"), default=None,
        help="the oracle's floating point precision (default float64: see README, 'Precision')",
    )
    if chunk_states:
        parser.add_argument(
            "--chunk-states", type=int, default=4096, metavar="C",
            help="states per kernel call; bounds memory for large N (default 4096)",
        )
    parser.add_argument(
        "--cache-dir", metavar="DIR",
        help=f"cache of traced kernels (DIR/kernels) and of XLA's compiled programs (DIR/xla), so that "
        f"later runs of the same shapes start in seconds (default: ${CACHE_ENV}, else "
        f"$XDG_CACHE_HOME/wmel-jax or ~/.cache/wmel-jax; {CACHE_ENV}=off disables it)",
    )
    parser.add_argument("--no-cache", action="store_true",
                        help="neither read nor write the cache: trace and compile every kernel")


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """``--devices N``: the devices of this process a run's batch is split over."""
    parser.add_argument(
        "--devices", type=int, default=None, metavar="N",
        help="split each kernel call over the first N devices of every process (default: all of them; on CPU, "
        "N > 1 makes N XLA host devices, which share the cores: see README, 'Many devices, many processes')",
    )


def add_distributed_arguments(parser: argparse.ArgumentParser, *, split: bool = False) -> None:
    """``--devices`` and the flags of a run over several processes (jax.distributed)."""
    from wmel_jax.distributed import DEFAULT_PEER_TIMEOUT_S, SPLITS

    add_device_arguments(parser)
    group = parser.add_argument_group(
        "several processes", "start the same command once per process (or under srun / mpirun, where JAX "
        "detects these); process 0 writes the outputs")
    group.add_argument("--coordinator", metavar="HOST:PORT",
                       help="process 0's address and a free port (default: $JAX_COORDINATOR_ADDRESS)")
    group.add_argument("--num-processes", type=int, metavar="N", help="how many processes take part")
    group.add_argument("--process-id", type=int, metavar="I", help="this process's index, 0 to N-1")
    group.add_argument(
        "--peer-timeout", type=int, default=None, metavar="S",
        help=f"a process silent for S seconds is declared dead and the others exit with an error "
        f"(default {DEFAULT_PEER_TIMEOUT_S})",
    )
    if split:
        group.add_argument(
            "--split", choices=SPLITS, default="auto",
            help="what the processes share: the states, the models (each evaluates its share of the models on "
            "every state), or auto: the cheaper (default)",
        )


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """-q/--quiet and --timings: how much a run says besides its results."""
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="no progress lines on stderr (results, warnings and errors are still printed)")
    parser.add_argument("--timings", action="store_true",
                        help="print where the time went (load, sampling, compile, run) after the table")


def default_cache_dir() -> Path | None:
    """$WMEL_JAX_CACHE_DIR ("" or "off": no cache), else $XDG_CACHE_HOME or ~/.cache, /wmel-jax."""
    value = os.environ.get(CACHE_ENV)
    if value is not None:
        return None if value.strip().lower() in ("", "off", "0", "none") else Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "wmel-jax"


def enable_compilation_cache(cache_dir: Path | None) -> Path | None:
    """Cache traced kernels in ``cache_dir``/kernels and XLA programs in ``cache_dir``/xla (None: neither).

    See :mod:`wmel_jax.kernel_cache`: a warm process neither traces (MJX's
    Python) nor compiles (XLA) again. A folder that cannot be created or
    written to is reported in one warning line on stderr, and the run goes
    on without a cache; returns the folder in use, or None.
    """
    from wmel_jax import kernel_cache

    if cache_dir is None:
        return None
    try:
        return kernel_cache.enable(cache_dir)
    except OSError as e:
        print(f"wmel-jax: warning: cache directory {str(cache_dir)!r} is unusable ({e.strerror or e}); "
              "running without a cache", file=sys.stderr)
        return None


def configure_runtime(args: argparse.Namespace) -> None:
    """64-bit JAX when the oracle runs in float64; the compilation cache unless disabled."""
    import jax

    from wmel_jax.oracle import DEFAULT_PRECISION

    from wmel_jax.limits import MAX_CHUNK_STATES, check_count

    if hasattr(args, "chunk_states"):  # commands that chunk otherwise (cpg) do not take it
        check_count(args.chunk_states, "--chunk-states", MAX_CHUNK_STATES)
    if (args.precision or DEFAULT_PRECISION) == "float64":
        jax.config.update("jax_enable_x64", True)
    if not args.no_cache:
        enable_compilation_cache(Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir())
    configure_devices(args)


def configure_devices(args: argparse.Namespace) -> None:
    """Join the distributed run if this is one, then use ``--devices`` devices of each process.

    Before JAX starts its backends: on a CPU-only machine ``--devices N``
    needs N XLA host devices, which must be asked for first.
    """
    import jax

    from wmel_jax import distributed

    devices = getattr(args, "devices", None)
    if (devices is not None and devices > 1 and jax.config.jax_num_cpu_devices < 0
            and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", "")):
        jax.config.update("jax_num_cpu_devices", devices)
    settings = distributed.settings_from_args(args)
    if settings is not None:
        distributed.initialize(settings)
    rt = distributed.configure(devices)
    if settings is not None:
        print(f"wmel-jax: process {rt.process_index} of {rt.process_count}: joined the run "
              f"({rt.n_devices} {rt.devices[0].platform} devices)", file=sys.stderr, flush=True)


def progress_bar(stream=None, quiet: bool = False) -> Callable[[int, int, str], None] | None:
    """A one-line progress bar over cells on a terminal; None when stderr is not one, or quiet."""
    stream = sys.stderr if stream is None else stream
    if quiet or not stream.isatty():
        return None

    def show(done: int, total: int, name: str) -> None:
        width = 24
        filled = width * done // max(total, 1)
        label = f" {name}" if name else ""
        stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total}{label[:60]:<61}")
        if done == total:
            stream.write("\n")
        stream.flush()

    return show

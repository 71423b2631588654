"""Runtime flags shared by the subcommands that run JAX (eval, demo, bench).

Process-wide JAX settings (64-bit mode for the float64 oracle, the persistent
compilation cache) are made here, when a command runs, never at import.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable

#: Environment variable that moves the cache; "" or "off" disables it.
CACHE_ENV = "WMEL_JAX_CACHE_DIR"


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--precision", choices=("float64", "float32"), default=None,
        help="the oracle's floating point precision (default float64: see README, 'Precision')",
    )
    parser.add_argument(
        "--chunk-states", type=int, default=4096, metavar="C",
        help="states per kernel call; bounds memory for large N (default 4096)",
    )
    parser.add_argument(
        "--cache-dir", metavar="DIR",
        help=f"cache of traced kernels (DIR/kernels) and of XLA's compiled programs (DIR/xla) "
        f"(default: ${CACHE_ENV}, else ~/.cache/wmel-jax)",
    )
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write the cache: trace and compile everything")


def default_cache_dir() -> Path | None:
    """$WMEL_JAX_CACHE_DIR ("" or "off": no cache), else $XDG_CACHE_HOME or ~/.cache, /wmel-jax."""
    value = os.environ.get(CACHE_ENV)
    if value is not None:
        return None if value.strip().lower() in ("", "off", "0", "none") else Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "wmel-jax"


def enable_compilation_cache(cache_dir: Path | None) -> Path | None:
    """Cache traced kernels in ``cache_dir``/kernels and XLA programs in ``cache_dir``/xla (None: neither).

    Traced kernels are wmel_jax.kernel_cache's (jax.export, keyed by versions,
    code and shapes): a warm process does not trace MJX again. The XLA programs
    are JAX's persistent compilation cache, where every compilation is kept (no
    minimum compile time): in a short run compilation dominates, and even the
    small kernels are worth keeping.
    """
    import jax

    from wmel_jax import kernel_cache

    if cache_dir is None:
        return None
    try:
        for sub in ("xla", "kernels"):
            (cache_dir / sub).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"wmel-jax: warning: cache {str(cache_dir)!r} unusable ({e.strerror or e}); "
              "running without it", file=sys.stderr)
        return None
    kernel_cache.set_directory(cache_dir / "kernels")
    jax.config.update("jax_compilation_cache_dir", str(cache_dir / "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return cache_dir


def configure_runtime(args: argparse.Namespace) -> None:
    """64-bit JAX when the oracle runs in float64; the compilation cache unless disabled."""
    import jax

    from wmel_jax.oracle import DEFAULT_PRECISION

    if args.chunk_states < 1:
        from wmel_jax.errors import WmelError

        raise WmelError(f"--chunk-states must be a positive int; got {args.chunk_states}")
    if (args.precision or DEFAULT_PRECISION) == "float64":
        jax.config.update("jax_enable_x64", True)
    if not args.no_cache:
        enable_compilation_cache(Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir())


def progress_bar(stream=None) -> Callable[[int, int, str], None] | None:
    """A one-line progress bar over cells on a terminal; None when stderr is not one."""
    stream = sys.stderr if stream is None else stream
    if not stream.isatty():
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

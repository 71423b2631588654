"""``wmel-jax bench``: throughput against the per-sample reference and the best batched alternative.

The harness lives in ``benchmarks/bench.py`` (it needs torch and dm_control:
the reference path and the batched torch arm); this module only parses the
flags and hands over. Standard library only at module level.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys

HELP = ("benchmark wmel-jax against the per-sample reference path and batched torch + native MuJoCo "
        "(needs the dev extra: torch)")

#: What to install when the benchmark's dependencies are missing.
INSTALL_HINT = "pip install -e '.[dev]'"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick",
                      help="the quick axes (default; under 3 minutes on 2 cores)")
    mode.add_argument("--full", dest="mode", action="store_const", const="full",
                      help="every axis: sizes 1/5/19, N up to 100k, peak memory at 100k (tens of minutes)")
    parser.set_defaults(mode="quick")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="where bench_<mode>.json/.md/.png go (default benchmarks/results)")
    parser.add_argument("--tasks", nargs="+", metavar="TASK", help="only these tasks")
    parser.add_argument("--sizes", nargs="+", type=int, choices=(1, 5, 19, 48), metavar="SIZE",
                        help="only these model sizes (1, 5, 19, 48)")
    parser.add_argument("--n", nargs="+", type=int, metavar="N", help="replace the N axis (debugging)")
    parser.add_argument("--runs", type=int, default=None, metavar="R",
                        help="warm repetitions per measurement (default 3)")
    parser.add_argument("--torch-threads", type=int, default=None, metavar="T",
                        help="torch threads of the batched arm (default: the faster of 1 and all cores, timed)")


def run(args: argparse.Namespace) -> int:
    from wmel_jax.errors import WmelError

    missing = [name for name in ("torch", "wmel_jax.benchmarks", "dm_control") if importlib.util.find_spec(name) is None]
    if missing:
        raise WmelError(f"wmel-jax bench needs {', '.join(missing)} (the reference path and the batched torch arm): "
                        f"{INSTALL_HINT} from a checkout of the repository")
    from wmel_jax.benchmarks import bench
    # The command line as typed, when this process is the CLI (not a caller of cli.main).
    command = "wmel-jax " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["bench"] else "wmel-jax bench"
    return bench.run_from_args(args, command)

"""The ``wmel-jax`` command line: a registry of subcommands.

Each subcommand lives in ``wmel_jax/commands/<name>.py`` and provides ``HELP``
(one line), ``add_arguments(parser)`` and ``run(args) -> int``. Those modules
import only the standard library at module level, so ``wmel-jax --help`` is
instant and nothing heavy (jax, torch) loads before it is needed.

User mistakes raise :class:`wmel_jax.errors.WmelError`; they are printed as one
line on stderr and the process exits with status 2. Any other exception is a
bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from wmel_jax.errors import EXIT_USAGE, WmelError

__all__ = ["main", "build_parser", "SUBCOMMANDS"]

#: Subcommand name -> module implementing it. Adding a subcommand is one line.
SUBCOMMANDS: dict[str, str] = {
    "convert": "wmel_jax.commands.convert",
    "eval": "wmel_jax.commands.eval",
    "demo": "wmel_jax.commands.demo",
    "bench": "wmel_jax.commands.bench",
}


def _version() -> str:
    from wmel_jax import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wmel-jax",
        description="Judge learned TD-MPC2 world models offline against MuJoCo XLA oracles.",
    )
    parser.add_argument("--version", action="version", version=f"wmel-jax {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in SUBCOMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name != module_name:
                raise
            continue  # a subcommand not built yet
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from wmel_jax import distributed

    try:
        settings = distributed.settings_from_args(args)
    except WmelError as e:
        print(f"wmel-jax: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if settings is not None:
        # One process of a distributed run: the work runs in a child process, so that
        # JAX terminating it (another process died) still ends with one line.
        return distributed.supervise(settings, lambda: _run(args))
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        return int(args._run(args) or 0)
    except WmelError as e:
        print(f"wmel-jax: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("wmel-jax: interrupted", file=sys.stderr)
        return 130

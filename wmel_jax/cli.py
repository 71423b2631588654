"""The ``wmel-jax`` command line: a registry of subcommands.

Each subcommand lives in ``wmel_jax/commands/<name>.py`` and provides ``HELP``
(one line), ``add_arguments(parser)`` and ``run(args) -> int``. Those modules
import only the standard library at module level, so ``wmel-jax --help`` is
instant and nothing heavy (jax, torch) loads before it is needed.

User mistakes raise :class:`wmel_jax.errors.WmelError`; they are printed as one
line on stderr and the process exits with status 2. Any other exception is a
bug and keeps its traceback.

Ctrl-C (SIGINT) and SIGTERM stop a run within about a second, cleaning up,
with one line ``wmel-jax: interrupted`` and status 130 (143 for SIGTERM).
Python sees a signal only between bytecodes, and a compiled JAX loop or an XLA
compilation can run for minutes without returning: so when the command does
not unwind by itself within :data:`INTERRUPT_GRACE_S`, a watcher thread
(woken through :func:`signal.set_wakeup_fd`, whatever the main thread is
doing) removes the temporary files in flight (:mod:`wmel_jax.fileio`) and
ends the process.
"""

from __future__ import annotations

import argparse
import importlib
import os
import select
import signal
import sys
import threading
import time
from typing import Sequence

from wmel_jax.errors import EXIT_USAGE, WmelError

__all__ = ["main", "build_parser", "SUBCOMMANDS"]

#: Subcommand name -> module implementing it. Adding a subcommand is one line.
SUBCOMMANDS: dict[str, str] = {
    "convert": "wmel_jax.commands.convert",
    "eval": "wmel_jax.commands.eval",
    "demo": "wmel_jax.commands.demo",
    "bench": "wmel_jax.commands.bench",
    "cpg": "wmel_jax.commands.cpg",
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


#: Seconds a command has to unwind after Ctrl-C before the watcher ends the process.
INTERRUPT_GRACE_S = 1.0


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that the same clean-up runs (exit status 143)."""


def _unraisable(frame) -> bool:
    """True inside a garbage-collector callback or a finalizer, where Python prints and drops exceptions."""
    import gc

    callbacks = {getattr(cb, "__code__", None) for cb in gc.callbacks}
    while frame is not None:
        if frame.f_code in callbacks or frame.f_code.co_name in ("__del__", "_xla_gc_callback"):
            return True
        frame = frame.f_back
    return False


class _Interrupts:
    """Ctrl-C and SIGTERM always end the process within about INTERRUPT_GRACE_S, cleaning up.

    The main thread gets KeyboardInterrupt (SIGTERM: :class:`Terminated`) as
    usual and unwinds; meanwhile a watcher thread, woken through the signal
    wakeup fd, gives it INTERRUPT_GRACE_S. If the process is still there (the
    main thread stuck in a compiled loop or a compilation, or the
    interpreter's exit waiting on a compile thread), the watcher removes the
    temporaries in flight, says so once and exits with the signal's status. A
    second Ctrl-C ends it at once.
    """

    def __init__(self) -> None:
        self.reported = threading.Event()
        self.pending: int | None = None  # the signal not yet raised in the main thread
        self.raised = False  # KeyboardInterrupt raised once: the main thread is unwinding
        self._read, write = os.pipe()
        os.set_blocking(write, False)
        signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)
        threading.Thread(target=self._watch, name="wmel-interrupts", daemon=True).start()

    def _handle(self, signum, frame) -> None:
        """The main thread's handler: KeyboardInterrupt (or Terminated), unless Python would drop it there.

        Raised inside a garbage-collector callback (JAX has one) or a
        finalizer, the exception would be printed as "Exception ignored" and
        lost; then the watcher asks again a moment later.
        """
        if self.raised:  # unwinding already: let the clean-up run (a second Ctrl-C: the watcher exits)
            self.pending = None
            return
        if _unraisable(frame):
            self.pending = signum
            return
        self.raised, self.pending = True, None
        raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()

    def _watch(self) -> None:
        import _thread

        deadline = None
        code = 130
        echoes = 0  # wake-ups of our own interrupt_main calls, not signals
        while True:
            timeout = None if deadline is None else max(min(deadline - time.monotonic(), 0.05), 0.0)
            ready, _, _ = select.select([self._read], [], [], timeout)
            if not ready and self.pending is not None and not self.raised:
                echoes += 1
                _thread.interrupt_main(self.pending)  # the handler runs again, at a point where it can raise
            if ready:
                data = os.read(self._read, 64)
                signals = [s for s in data if s in (signal.SIGINT, signal.SIGTERM)]
                mine = min(echoes, len(signals))
                echoes -= mine
                signals = signals[mine:]
                if not signals:
                    continue
                if deadline is not None:  # a second signal: stop now
                    self._exit(code)
                code = 128 + signals[0]
                deadline = time.monotonic() + INTERRUPT_GRACE_S
            elif deadline is not None and time.monotonic() >= deadline:
                self._exit(code)

    def _exit(self, code: int) -> None:
        from wmel_jax import fileio

        fileio.remove_temporaries()  # keeps the commit lock: no output set is renamed after this
        self.finish(code)

    def finish(self, code: int) -> None:
        """Say "interrupted" (once) and end the process now: no interpreter shutdown to wait for.

        The shutdown would join threads still compiling and could meet a
        late signal; everything to clean up has been by then.
        """
        if not self.reported.is_set():
            self.reported.set()
            try:
                sys.stderr.write("wmel-jax: interrupted\n")
            except Exception:  # noqa: BLE001 - a closed stream must not stop the exit
                pass
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; ``argv`` None: ``sys.argv`` (the process is the CLI: signal handling installed)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from wmel_jax import distributed

    try:
        settings = distributed.settings_from_args(args)
    except WmelError as e:
        print(f"wmel-jax: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if settings is not None:
        # One process of a distributed run: the command runs in a child process, so that
        # JAX terminating it (another process died) still ends with one line.
        return distributed.supervise(settings, lambda: _command(args, argv))
    return _command(args, argv)


def _command(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    interrupts = _Interrupts() if argv is None and threading.current_thread() is threading.main_thread() else None
    try:
        return int(args._run(args) or 0)
    except WmelError as e:
        print(f"wmel-jax: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as e:
        code = 143 if isinstance(e, Terminated) else 130
        if interrupts is not None:  # the command has unwound (its temporaries removed): end here
            interrupts.finish(code)
        print("wmel-jax: interrupted", file=sys.stderr)
        return code

"""What a long run is doing: phase by phase on stderr, never silent for long.

A :class:`Progress` is told the run's phases (``with progress.phase("sampling
150 states"):``), steps within one (``progress.step(2, 6, name)``, a bar over
the models) and notes (``progress.note("compiling ...")``). Kernels compiling
are noted by themselves: :meth:`Progress.watch_kernels` listens to
:mod:`wmel_jax.kernel_cache` (tracing, compiling, reading from the cache), so
the first run says "compiling ..., cached for next time" and a warm one
"reading ... from the cache".

On a terminal one status line is rewritten in place, its clock ticking every
quarter second, and cleared at the end. Elsewhere (a log file, a CI job)
every phase and note is one line, stamped with the seconds since the start:
``wmel-jax [  2.1 s] oracle: 150 states x 5 actions``. ``quiet`` says nothing.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from typing import Any, Callable, Iterator, TextIO

__all__ = ["Progress", "as_progress"]

#: Seconds between redraws of the terminal status line.
TICK_S = 0.25
_BAR_WIDTH = 20
#: Elsewhere than a terminal, a bar within a phase (:meth:`Progress.bar`) is one line at most this often.
BAR_LINE_S = 10.0
_LINE_WIDTH = 118


def _kernel_name(kernel: Callable) -> str:
    """A user-facing name for a kernel of wmel_jax (from its defining function)."""
    qualname = getattr(kernel, "__qualname__", "") or ""
    for marker, name in (("_oracle_kernel", "the oracle kernel"), ("_model_kernel", "the model kernel"),
                         ("_sampler", "the state sampler"), ("episode_kernel", "the episode kernel"),
                         ("_start_kernel", "the start-state kernel")):
        if marker in qualname:
            return name
    return "a kernel"


class Progress:
    """Phases, steps and notes of a run, on ``stream`` (stderr by default).

    ``tty``: draw a live status line (default: whether the stream is a
    terminal); ``quiet``: say nothing; ``cached``: whether compiled kernels
    are kept for next time (the note says so).
    """

    def __init__(self, stream: TextIO | None = None, *, tty: bool | None = None, quiet: bool = False,
                 cached: bool = True):
        self.stream = sys.stderr if stream is None else stream
        self.tty = bool(self.stream.isatty()) if tty is None else tty
        self.quiet = quiet
        self.cached = cached
        self._t0 = time.perf_counter()
        self._lock = threading.Lock()
        self._phase: str | None = None
        self._phase_t0 = 0.0
        self._note = ""
        self._bar: tuple[int, int] | None = None
        self._stop: threading.Event | None = None
        self._ticker: threading.Thread | None = None
        self._traced: set[int] = set()
        self._bar_line_t = -float("inf")

    # ------------------------------------------------------------ output

    def _stamp(self) -> str:
        return f"wmel-jax [{time.perf_counter() - self._t0:6.1f} s]"

    def _line(self, text: str) -> None:
        if self.quiet:
            return
        with self._lock:
            if self.tty:
                self._redraw_locked(final=False)
            else:
                self.stream.write(f"{self._stamp()} {text}\n")
                self.stream.flush()

    def _redraw_locked(self, final: bool) -> None:
        if not self.tty or self.quiet:
            return
        if final or self._phase is None:
            self.stream.write("\r\x1b[K")
        else:
            bar = ""
            if self._bar is not None:
                done, total = self._bar
                filled = _BAR_WIDTH * done // max(total, 1)
                bar = f"[{'#' * filled}{'.' * (_BAR_WIDTH - filled)}] "
            note = f" - {self._note}" if self._note else ""
            clock = f" {time.perf_counter() - self._phase_t0:5.1f} s"
            text = f"{bar}{self._phase}{note}"
            if len(text) + len(clock) > _LINE_WIDTH:
                text = text[: _LINE_WIDTH - len(clock) - 3] + "..."
            self.stream.write(f"\r\x1b[K{text}{clock}")
        self.stream.flush()

    def _tick(self, stop: threading.Event) -> None:
        while not stop.wait(TICK_S):
            with self._lock:
                self._redraw_locked(final=False)

    def _start_ticker(self) -> None:
        if self.tty and not self.quiet and self._ticker is None:
            self._stop = threading.Event()
            self._ticker = threading.Thread(target=self._tick, args=(self._stop,), name="wmel-progress", daemon=True)
            self._ticker.start()

    # ------------------------------------------------------------ the interface

    @contextlib.contextmanager
    def phase(self, text: str) -> Iterator[None]:
        """A phase of the run: shown while it lasts (a terminal) or announced in one line (elsewhere)."""
        with self._lock:
            outer = (self._phase, self._phase_t0, self._note, self._bar)
            self._phase, self._phase_t0, self._note, self._bar = text, time.perf_counter(), "", None
            self._bar_line_t = -float("inf")
        self._start_ticker()
        self._line(text)
        try:
            yield
        finally:
            with self._lock:
                self._phase, self._phase_t0, self._note, self._bar = outer

    def bar(self, done: int, total: int, text: str = "") -> None:
        """A bar within the current phase (episodes ended of a run, say), with ``text`` beside it.

        On a terminal the status line is redrawn; elsewhere it is one line at
        most every BAR_LINE_S seconds, and one when ``done`` reaches ``total``.
        """
        with self._lock:
            self._bar = (done, total) if done < total else None
            self._note = text
            now = time.perf_counter()
            log = not self.tty and (done >= total or now - self._bar_line_t >= BAR_LINE_S)
            if log:
                self._bar_line_t = now
        if self.tty:
            self._line(text)
        elif log:
            self._line(f"  {done}/{total} {text}".rstrip())

    def note(self, text: str) -> None:
        """A detail of the current phase (a kernel compiling, say)."""
        with self._lock:
            self._note = text
        self._line(f"  {text}")

    def step(self, done: int, total: int, name: str = "") -> None:
        """Step ``done`` of ``total`` (a bar on a terminal); ``done == total`` ends the bar."""
        with self._lock:
            self._bar = None if done >= total else (done, total)
        if done < total:
            with self._lock:
                self._phase = f"model {done + 1}/{total}: {name}" if name else f"{done + 1}/{total}"
                self._phase_t0, self._note = time.perf_counter(), ""
            self._start_ticker()
            self._line(self._phase)
        else:
            with self._lock:
                self._phase = None

    def __call__(self, done: int, total: int, name: str = "") -> None:  # the older progress-callback form
        self.step(done, total, name)

    def kernel_event(self, event: str, kernel: Callable) -> None:
        """kernel_cache's listener: a kernel being traced, compiled or read from the cache."""
        name = _kernel_name(kernel)
        key = id(kernel)
        if event == "trace":
            self._traced.add(key)
            self.note(f"tracing {name}")
        elif event == "compile":
            if key in self._traced:
                self.note(f"compiling {name}" + (", cached for next time" if self.cached else " (no cache)"))
            else:
                self.note(f"reading {name} from the cache")

    @contextlib.contextmanager
    def watch_kernels(self) -> Iterator["Progress"]:
        """Note every kernel build while the block runs."""
        from wmel_jax import kernel_cache

        kernel_cache.add_listener(self.kernel_event)
        try:
            yield self
        finally:
            kernel_cache.remove_listener(self.kernel_event)

    def close(self) -> None:
        """Stop the clock and clear the status line (a terminal)."""
        if self._stop is not None:
            self._stop.set()
            if self._ticker is not None:
                self._ticker.join()
            self._stop = self._ticker = None
        with self._lock:
            self._phase = None
            self._redraw_locked(final=True)


class _Callback(Progress):
    """The older progress callback (done, total, name) in Progress's clothes: steps only, no output."""

    def __init__(self, callback: Callable[[int, int, str], None] | None):
        super().__init__(stream=sys.stderr, tty=False, quiet=True)
        self._callback = callback

    def step(self, done: int, total: int, name: str = "") -> None:
        if self._callback is not None:
            self._callback(done, total, name)

    def bar(self, done: int, total: int, text: str = "") -> None:
        if self._callback is not None:
            self._callback(done, total, text)


def as_progress(progress: Any) -> Progress:
    """A Progress from a Progress, an older ``(done, total, name)`` callback, or None (silent)."""
    if isinstance(progress, Progress):
        return progress
    return _Callback(progress)

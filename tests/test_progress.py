"""Progress on stderr: a live line on a terminal, one time-stamped line per phase elsewhere, nothing when quiet."""

from __future__ import annotations

import io
import time

from wmel_jax import progress as P


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _sampler():  # named as the state sampler's kernel factory is
    def kernel():
        pass

    return kernel


_sampler.__qualname__ = "_sampler"


def test_a_terminal_gets_a_ticking_status_line_cleared_at_the_end():
    out = _Terminal()
    p = P.Progress(out)
    with p.phase("sampling 150 states"):
        time.sleep(4 * P.TICK_S)
    p.step(0, 2, "a.safetensors")
    p.kernel_event("trace", _sampler())
    p.step(1, 2, "b.safetensors")
    p.step(2, 2)
    p.close()
    text = out.getvalue()
    redraws = text.split("\r")
    assert sum("sampling 150 states" in r for r in redraws) >= 3  # the clock ticked while the phase lasted
    assert any("[##########..........] model 2/2: b.safetensors" in r for r in redraws)  # the bar
    assert "tracing the state sampler" in text
    assert text.endswith("\r\x1b[K") and "\n" not in text  # transient: nothing left behind


def test_elsewhere_one_stamped_line_per_phase_and_note():
    out = io.StringIO()
    p = P.Progress(out, cached=True)
    kernel = _sampler()
    with p.phase("sampling 150 states"):
        p.kernel_event("trace", kernel)
        p.kernel_event("compile", kernel)
    p.kernel_event("compile", _sampler())  # not traced here: read from the cache
    p.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 4 and all(line.startswith("wmel-jax [") for line in lines)
    assert lines[0].endswith("] sampling 150 states")
    assert lines[1].endswith("tracing the state sampler")
    assert lines[2].endswith("compiling the state sampler, cached for next time")
    assert lines[3].endswith("reading the state sampler from the cache")


def test_quiet_says_nothing_and_an_old_callback_still_gets_the_steps():
    out = _Terminal()
    p = P.Progress(out, quiet=True)
    with p.phase("x"):
        p.note("y")
    p.close()
    assert out.getvalue() == ""
    seen = []
    wrapped = P.as_progress(lambda d, t, n: seen.append((d, t, n)))
    with wrapped.phase("ignored"):
        wrapped.step(0, 1, "m")
    wrapped.step(1, 1, "")
    assert seen == [(0, 1, "m"), (1, 1, "")]


def test_a_bar_within_a_phase_is_redrawn_on_a_terminal_and_a_few_lines_elsewhere(monkeypatch):
    out = _Terminal()
    p = P.Progress(out)
    with p.phase("oracle arm"):
        p.bar(1, 4, "episodes ended")
        p.bar(4, 4, "episodes ended")
    p.close()
    assert "[#####...............] oracle arm - episodes ended" in out.getvalue()
    log = io.StringIO()
    p = P.Progress(log)
    monkeypatch.setattr(P, "BAR_LINE_S", 3600.0)
    with p.phase("oracle arm"):
        for done in range(5):
            p.bar(done, 4, "episodes ended")  # the first line, then none until the end
    lines = log.getvalue().splitlines()
    assert [line.split("] ", 1)[1] for line in lines] == ["oracle arm", "  0/4 episodes ended", "  4/4 episodes ended"]


def test_cpg_kernels_have_names():
    def episode_kernel():  # named as the planning kernels' factory is
        def kernel():
            pass

        return kernel

    out = io.StringIO()
    p = P.Progress(out, cached=False)
    kernel = episode_kernel()
    p.kernel_event("trace", kernel)
    p.kernel_event("compile", kernel)
    assert out.getvalue().splitlines()[-1].endswith("compiling the episode kernel (no cache)")

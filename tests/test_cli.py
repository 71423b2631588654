"""The command line's contract: help, version, usage errors, exit codes."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

import wmel_jax
from wmel_jax import cli
from wmel_jax.errors import WmelError


def test_version_matches_package(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"wmel-jax {wmel_jax.__version__}"


def test_unknown_subcommand_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["no-such-command"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_user_error_is_one_line_and_exit_2(monkeypatch, capsys):
    def boom(args):
        raise WmelError("the checkpoint\nis broken")

    parser = argparse.ArgumentParser(prog="wmel-jax")
    parser.set_defaults(_run=boom)
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    assert cli.main([]) == 2
    assert capsys.readouterr().err == "wmel-jax: error: the checkpoint is broken\n"


def test_python_dash_m_runs_the_cli():
    out = subprocess.run(
        [sys.executable, "-m", "wmel_jax", "--help"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "usage: wmel-jax" in out.stdout


def test_atomic_output_has_the_mode_a_plain_open_gives(tmp_path):
    import os

    from wmel_jax.fileio import atomic_output

    old = os.umask(0o022)
    try:
        with atomic_output(tmp_path / "out.txt", "w") as f:
            f.write("x")
        with open(tmp_path / "plain.txt", "w") as f:
            f.write("x")
    finally:
        os.umask(old)
    mode = lambda p: os.stat(p).st_mode & 0o777
    assert mode(tmp_path / "out.txt") == mode(tmp_path / "plain.txt") == 0o644

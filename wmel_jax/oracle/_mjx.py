"""The one place wmel-jax imports ``mujoco.mjx``.

Importing MJX prints "Failed to import warp: ..." to stdout when the optional
warp backend is absent (it is: wmel-jax uses MJX's JAX backend only). The CLI's
stdout carries reports, so the import runs with stdout captured; anything else
MJX prints is dropped with it.
"""

from __future__ import annotations

import contextlib
import io

with contextlib.redirect_stdout(io.StringIO()):
    from mujoco import mjx  # noqa: E402

__all__ = ["mjx"]

"""Session-wide test configuration.

The suite runs the way the CLI runs: 64-bit JAX enabled (the float64 oracle
needs it; the model's own arrays stay float32 by construction). Tests that
must see JAX with x64 off, or a process without torch, run in a subprocess.
"""

from __future__ import annotations

import os

# dm_control picks an OpenGL backend on import; the tests never render.
os.environ.setdefault("MUJOCO_GL", "disable")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

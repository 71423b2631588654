"""wmel-jax: offline metrics for learned world models, as jit/vmap kernels.

The public API is loaded lazily: ``import wmel_jax`` is cheap and never imports
torch; jax, flax and MuJoCo load on first use of the function that needs them.

Pipeline, one module each::

    converters/ (torch -> flax, once)  ->  wmel_jax.model   (load, encode/next/decode)
    wmel_jax.oracle  (MJX task oracles) ->  wmel_jax.states  (seeded state batch)
    wmel_jax.metrics (M1/M2/M3 kernels) ->  wmel_jax.evaluate -> wmel_jax.report
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Public name -> module that defines it.
_LAZY: dict[str, str] = {
    "WmelError": "wmel_jax.errors",
    "load": "wmel_jax.model",
    "make_oracle": "wmel_jax.oracle",
    "list_tasks": "wmel_jax.oracle",
    "sample_states": "wmel_jax.states",
    "make_problem": "wmel_jax.evaluate",
    "oracle_targets": "wmel_jax.evaluate",
    "model_metrics": "wmel_jax.evaluate",
    "EvalOptions": "wmel_jax.pipeline",
    "run_eval": "wmel_jax.pipeline",
    "CPGOptions": "wmel_jax.planning.cpg",
    "run_cpg": "wmel_jax.planning.cpg",
    "run_demo": "wmel_jax.demo",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    try:
        module_name = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'wmel_jax' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value  # cache: later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(__all__)

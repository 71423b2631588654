"""MJX oracles for DMC tasks, physics identical to dm_control.

``make_oracle(task)`` returns an :class:`~wmel_jax.oracle.base.Oracle` with
batched ``step``, ``step_all``, ``step_reward`` / ``step_all_reward`` (with
dm_control's task reward, summed over the action repeat), ``rollout``,
``score`` and ``reset``. Adding a task: one module defining a ``TaskDef``
subclass (observation, score, reward, reset), and one line in ``_REGISTRY``.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any

from wmel_jax.errors import WmelError

__all__ = ["make_oracle", "list_tasks", "DEFAULT_PRECISION"]

# task name (as dm_control / TD-MPC2 spell it) -> "module:TaskDef subclass"
_REGISTRY: dict[str, str] = {
    "cartpole-swingup": "wmel_jax.oracle.cartpole:CartpoleSwingup",
    "reacher-easy": "wmel_jax.oracle.reacher:ReacherEasy",
    "acrobot-swingup": "wmel_jax.oracle.acrobot:AcrobotSwingup",
}

#: kept in sync with wmel_jax.oracle.base.DEFAULT_PRECISION (checked by a test);
#: repeated here so that reading it does not import MJX.
DEFAULT_PRECISION = "float64"


def list_tasks() -> list[str]:
    """The task names the oracle knows, sorted."""
    return sorted(_REGISTRY)


def task_class(task: Any) -> type:
    """The TaskDef subclass registered for ``task``; WmelError if unknown."""
    if not isinstance(task, str) or task not in _REGISTRY:
        raise WmelError(f"unknown task {task!r}; known tasks: {', '.join(list_tasks())}")
    module_name, cls_name = _REGISTRY[task].split(":")
    return getattr(importlib.import_module(module_name), cls_name)


def check_frame_skip(frame_skip: Any) -> int:
    """A positive int (numpy ints too; not bools, not floats) of at most MAX_FRAME_SKIP, or WmelError."""
    from wmel_jax.limits import MAX_FRAME_SKIP, check_count

    return check_count(frame_skip, "frame_skip", MAX_FRAME_SKIP)


def make_oracle(task: str, frame_skip: int = 1, precision: str = DEFAULT_PRECISION):
    """The oracle of a DMC task.

    Args:
      task: ``"cartpole-swingup"``, ``"reacher-easy"`` or ``"acrobot-swingup"``
        (see :func:`list_tasks`).
      frame_skip: physics steps per oracle step (action repeat), a positive int.
      precision: ``"float64"`` (default; needs ``jax_enable_x64``) or ``"float32"``.

    Returns an Oracle; the same configuration returns the same object, so its
    compiled kernels are reused.
    """
    cls = task_class(task)
    frame_skip = check_frame_skip(frame_skip)
    from wmel_jax.oracle.base import check_precision, precision_scope

    precision = check_precision(precision)
    with precision_scope(precision):  # float64 without x64: a clear error now, not later
        pass
    return _make_oracle_cached(cls, frame_skip, precision)


@functools.lru_cache(maxsize=None)
def _make_oracle_cached(cls: type, frame_skip: int, precision: str):
    from wmel_jax.oracle.base import Oracle

    return Oracle(cls, frame_skip, precision)

"""Which task a checkpoint is for: ``--env``, else its ``meta``, else unambiguous dims.

The one table of supported tasks' (obs_dim, action_dim) lives here
(:data:`KNOWN_TASK_DIMS`; SPEC section 4), together with upstream's
multitask task lists.
"""

from __future__ import annotations

from typing import Any, Mapping

from wmel_jax.errors import WmelError

__all__ = [
    "KNOWN_TASK_DIMS",
    "UPSTREAM_TASK_SETS",
    "normalize_task_name",
    "determine_task",
    "upstream_task_names",
]

#: Supported single tasks -> (obs_dim, action_dim) of their dm_control observation/action.
KNOWN_TASK_DIMS: dict[str, tuple[int, int]] = {
    "cartpole-swingup": (5, 1),
    "reacher-easy": (6, 2),
    "acrobot-swingup": (6, 1),
}

_DMC_ORIGINAL = [
    "walker-stand", "walker-walk", "walker-run", "cheetah-run", "reacher-easy",
    "reacher-hard", "acrobot-swingup", "pendulum-swingup", "cartpole-balance", "cartpole-balance-sparse",
    "cartpole-swingup", "cartpole-swingup-sparse", "cup-catch", "finger-spin", "finger-turn-easy",
    "finger-turn-hard", "fish-swim", "hopper-stand", "hopper-hop",
]
_DMC_CUSTOM = [
    "walker-walk-backwards", "walker-run-backwards", "cheetah-run-backwards", "cheetah-run-front",
    "cheetah-run-back", "cheetah-jump", "hopper-hop-backwards", "reacher-three-easy",
    "reacher-three-hard", "cup-spin", "pendulum-spin",
]
_METAWORLD = [
    "mw-" + name for name in (
        "assembly", "basketball", "button-press-topdown", "button-press-topdown-wall", "button-press",
        "button-press-wall", "coffee-button", "coffee-pull", "coffee-push", "dial-turn",
        "disassemble", "door-open", "door-close", "drawer-close", "drawer-open",
        "faucet-open", "faucet-close", "hammer", "handle-press-side", "handle-press",
        "handle-pull-side", "handle-pull", "lever-pull", "peg-insert-side", "peg-unplug-side",
        "pick-out-of-hole", "pick-place", "pick-place-wall", "plate-slide", "plate-slide-side",
        "plate-slide-back", "plate-slide-back-side", "push-back", "push", "push-wall",
        "reach", "reach-wall", "shelf-place", "soccer", "stick-push",
        "stick-pull", "sweep-into", "sweep", "window-open", "window-close",
        "bin-picking", "box-close", "door-lock", "door-unlock", "hand-insert",
    )
]
#: Upstream TD-MPC2's multitask task lists, in task-index order.
UPSTREAM_TASK_SETS: dict[str, list[str]] = {
    "mt30": _DMC_ORIGINAL + _DMC_CUSTOM,
    "mt80": _DMC_ORIGINAL + _DMC_CUSTOM + _METAWORLD,
}


def normalize_task_name(name: str) -> str:
    """'dmc_cartpole_swingup' / 'Cartpole-Swingup' -> 'cartpole-swingup'."""
    name = str(name).strip().lower().replace("_", "-")
    return name[len("dmc-"):] if name.startswith("dmc-") else name


def upstream_task_names(num_tasks: int) -> tuple[list[str] | None, str | None]:
    """Upstream's task list with ``num_tasks`` entries (mt30/mt80), with where it came from."""
    for set_name, names in UPSTREAM_TASK_SETS.items():
        if len(names) == num_tasks:
            return list(names), f"upstream {set_name} task list (matched by the number of tasks)"
    return None, None


def _meta_task(meta: Mapping[str, Any]) -> tuple[str | None, str | None]:
    for key in ("task", "env", "env_name", "task_name"):
        value = meta.get(key)
        if isinstance(value, str) and value.strip():
            return value, f"meta.{key}"
    return None, None


def determine_task(
    *,
    env: str | None,
    meta: Mapping[str, Any],
    obs_dim: int,
    action_dim: int,
    multitask: bool,
    task_names: list[str] | None,
) -> tuple[str | None, str]:
    """``(task or None, how it was determined)``.

    Single-task: ``--env`` (must be a known task whose dims fit), else the
    checkpoint's meta task (checked against the table when known), else
    inferred from (obs_dim, action_dim) only when exactly one known task has
    them. Multitask: ``--env`` only (it must be in the task list); never inferred.
    """
    if multitask:
        if env is None:
            return None, "multitask model: no task chosen (pass --env); not inferred"
        if task_names is None:
            raise WmelError(
                f"--env {env}: this multitask model's task list is unknown, so the task index "
                f"cannot be determined"
            )
        if env not in task_names:
            raise WmelError(f"--env {env} is not one of this multitask model's {len(task_names)} tasks")
        return env, "--env"

    def check(task: str, how: str) -> None:
        dims = KNOWN_TASK_DIMS[task]
        if dims != (obs_dim, action_dim):
            raise WmelError(
                f"{how} says {task}, which has obs_dim {dims[0]} and action_dim {dims[1]}, "
                f"but the checkpoint has obs_dim {obs_dim} and action_dim {action_dim}"
            )

    if env is not None:
        task = normalize_task_name(env)
        if task not in KNOWN_TASK_DIMS:
            raise WmelError(f"--env {env}: unknown task; known tasks: {', '.join(KNOWN_TASK_DIMS)}")
        check(task, f"--env {env}")
        return task, "--env"
    raw, key = _meta_task(meta)
    if raw is not None:
        task = normalize_task_name(raw)
        if task in KNOWN_TASK_DIMS:
            check(task, key)
            return task, key
        return raw, f"{key} (not a known task; dims not checked)"
    fits = [t for t, dims in KNOWN_TASK_DIMS.items() if dims == (obs_dim, action_dim)]
    if len(fits) == 1:
        return fits[0], f"inferred from obs_dim {obs_dim} and action_dim {action_dim}"
    if not fits:
        return None, f"unknown: no known task has obs_dim {obs_dim} and action_dim {action_dim}"
    return None, f"unknown: obs_dim {obs_dim} and action_dim {action_dim} fit {', '.join(fits)}"

"""One small interface every world-model family fills: pure functions over a params pytree.

The metric kernels (:mod:`wmel_jax.evaluate`) and the planners ask a model for
capabilities, never for a family by name. A family is one module under
``wmel_jax.model`` (registered in :data:`FAMILY_MODULES`) that provides

- a static configuration type (its architecture: a frozen, hashable dataclass
  read from the checkpoint's shapes; every compiled kernel is keyed on it, so
  checkpoints of one architecture share compiled code), and
- ``functions(config) -> WorldModelFunctions``: the pure functions below,
  each optional (None where the family or this architecture lacks it).

Every function takes ``(params, task, ...)``: ``params`` the model's nested
dict of float32 arrays, ``task`` the task index a multitask model needs (an
int32 scalar) or None. Latents are pytrees with a leading batch axis (a
TD-MPC2 latent is one ``(N, latent_dim)`` array; a DreamerV3 latent a dict
of the recurrent and the stochastic state). Observations and actions are the
task's own widths: padding, masking and any other family convention happen
inside the family's functions.

=====================  =====================================================
``encode``             ``(params, task, obs (N, obs_dim)) -> latent``
``latent_step``        ``(params, task, latent, action (N, action_dim)) -> latent``
``decode``             ``(params, task, latent) -> obs (N, obs_dim)``
``reward``             ``(params, task, latent, action, next_latent) -> (N,)``:
                       the predicted reward of the transition; ``next_latent``
                       is ``latent_step(latent, action)`` when
                       ``reward_reads_next_latent`` (DreamerV3's reward head
                       reads the state reached), else None
``observe``            ``(params, task, prior, obs) -> latent``: the latent of
                       ``obs`` given the prior predicted for it (a recurrent
                       family's posterior update); None for a Markovian
                       family, whose latent of ``obs`` is ``encode(obs)``
``latent_distance``    ``(a, b) -> (N,)`` between two latents (L2 by default), named
                       by ``latent_distance_name`` ("l2"; DreamerV3: "mismatch"):
                       latent metrics of different distances are different
                       report fields, never compared with each other
=====================  =====================================================

The metric spaces a model has follow from what it provides
(:meth:`WorldModelFunctions.space_reasons`): observation space (M1-M3) needs
encode, latent_step and decode; latent space needs encode and latent_step;
reward ranking needs encode and reward. The observation map of both the
metrics and the planners is :meth:`WorldModelFunctions.obs_step`,
``decode(latent_step(encode(obs), action))``.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from typing import Any, Callable, Hashable, Iterator, Protocol

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "WorldModelFunctions",
    "LoadedWorldModel",
    "FAMILY_MODULES",
    "functions_of",
    "family_of",
    "family_for_schema",
    "l2_latent_distance",
    "repeat_latent",
    "stack_latent",
    "SPACE_NEEDS",
]

#: The modules of the world-model families. Each has ``FAMILY`` (its name), ``CONFIG_TYPE``,
#: ``functions(config)``, and for the file format ``SCHEMAS`` (the header schemas it reads),
#: ``FILE_VERSION``, ``config_from_dict``, ``check_params(config, shapes)`` and
#: ``loaded_model(header, config, params, path)``. A new family is one new module and one line here.
FAMILY_MODULES = ("wmel_jax.model.tdmpc2", "wmel_jax.model.dreamerv3")

#: What each metric space needs of a model.
SPACE_NEEDS: dict[str, tuple[str, ...]] = {
    "observation": ("encode", "latent_step", "decode"),
    "latent": ("encode", "latent_step"),
    "reward": ("encode", "reward"),
}


def l2_latent_distance(a: jax.Array, b: jax.Array) -> jax.Array:
    """Euclidean distance between two array latents: (..., d) x2 -> (...)."""
    from wmel_jax.metrics import l2_distance

    return l2_distance(a, b)


@dataclasses.dataclass(frozen=True)
class WorldModelFunctions:
    """A family's pure functions for one static configuration (see the module docstring).

    ``config``: the static, hashable configuration (the architecture) they are
    built for. ``unavailable``: ``((capability, reason), ...)`` saying why a
    function is None (the default reason is "no <capability>").
    ``compiler_options``: ``((name, value), ...)`` XLA options every program
    calling these functions must be compiled with, for their numerics (e.g.
    DreamerV3's on CPU: XLA's YNN matmul fusion rounds float32 products 3x
    worse than a plain dot, enough to flip categorical latents); pass
    :meth:`xla_options` to ``jax.jit(..., compiler_options=)`` or ``compile``.
    """

    family: str
    config: Hashable
    encode: Callable[..., Any] | None = None
    latent_step: Callable[..., Any] | None = None
    decode: Callable[..., Any] | None = None
    reward: Callable[..., Any] | None = None
    reward_reads_next_latent: bool = False
    observe: Callable[..., Any] | None = None
    latent_distance: Callable[[Any, Any], jax.Array] = l2_latent_distance
    latent_distance_name: str = "l2"
    unavailable: tuple[tuple[str, str], ...] = ()
    compiler_options: tuple[tuple[str, Any], ...] = ()

    def xla_options(self) -> dict[str, Any]:
        """:attr:`compiler_options` as the dict ``jax.jit`` and ``Lowered.compile`` take."""
        return dict(self.compiler_options)

    def has(self, capability: str) -> bool:
        return getattr(self, capability) is not None

    def reason(self, capability: str) -> str:
        """Why ``capability`` is None (for messages)."""
        return dict(self.unavailable).get(capability, f"no {capability.replace('_', ' ')}")

    def space_reasons(self) -> dict[str, str | None]:
        """Metric space -> why this model cannot have its metrics (None: it can)."""
        out: dict[str, str | None] = {}
        for space, needs in SPACE_NEEDS.items():
            needs = needs + (("latent_step",) if space == "reward" and self.reward_reads_next_latent else ())
            missing = [c for c in needs if not self.has(c)]
            out[space] = self.reason(missing[0]) if missing else None
        return out

    def obs_step(self, params: Any, task: Any, obs: jax.Array, action: jax.Array) -> jax.Array:
        """The one-step observation map ``decode(latent_step(encode(obs), action))``.

        obs: (N, obs_dim), action: (N, action_dim) -> (N, obs_dim) float32.
        For TD-MPC2 this is its prediction; for DreamerV3 the Markovian
        projection (the recurrent state rebuilt from the observation alone).
        """
        missing = [c for c in SPACE_NEEDS["observation"] if not self.has(c)]
        if missing:
            from wmel_jax.errors import WmelError

            raise WmelError(f"this {self.family} model has no observation map: {self.reason(missing[0])}")
        return self.decode(params, task, self.latent_step(params, task, self.encode(params, task, obs), action))

    def observed_latent(self, params: Any, task: Any, prior: Any, obs: jax.Array) -> Any:
        """The model's latent of ``obs`` given the prior predicted for it: ``observe``, else ``encode(obs)``."""
        if self.observe is None:
            return self.encode(params, task, obs)
        return self.observe(params, task, prior, obs)


class LoadedWorldModel(Protocol):
    """What a loaded model (``wmel_jax.load``) offers the commands, whatever its family.

    ``arch`` is the static configuration (hashable; :func:`functions_of`
    reads the family from its type), ``params`` the pytree its functions take,
    ``functions`` the family's :class:`WorldModelFunctions` for ``arch``.
    ``fit_task(task, obs_dim, action_dim)`` returns the task index to pass as
    ``task`` (None for a single-task model) or raises WmelError when the model
    cannot be judged on the task.
    """

    arch: Any
    params: Any
    task: str | None
    frame_skip: int
    action_set: np.ndarray | None
    multitask: bool
    functions: WorldModelFunctions

    def fit_task(self, task: str, obs_dim: int, action_dim: int) -> int | None: ...


@functools.lru_cache(maxsize=None)
def _families() -> tuple[str, ...]:
    return tuple(FAMILY_MODULES)


def _family_modules() -> Iterator[Any]:
    """The family modules in FAMILY_MODULES order, each imported when the search reaches it.

    A search stops at its match, so a TD-MPC2 model never imports DreamerV3's
    module (nor the flax it imports at module level).
    """
    for name in _families():
        yield importlib.import_module(name)


def family_of(config: Any) -> Any:
    """The family module whose configuration type ``config`` is; TypeError for none."""
    for module in _family_modules():
        if isinstance(config, module.CONFIG_TYPE):
            return module
    raise TypeError(f"no world-model family has the configuration type {type(config).__qualname__}")


def family_for_schema(schema: Any) -> Any:
    """The family module that reads converted files of ``schema`` (``header["schema"]``); None for none."""
    for module in _family_modules():
        if schema in module.SCHEMAS:
            return module
    return None


def functions_of(config: Any) -> WorldModelFunctions:
    """The :class:`WorldModelFunctions` of a static configuration (one object per configuration)."""
    return family_of(config).functions(config)


# --------------------------------------------------------------------------- #
# latent pytrees
# --------------------------------------------------------------------------- #


def repeat_latent(latent: Any, repeats: int) -> Any:
    """Every leaf repeated ``repeats`` times along the batch axis (row-major: state-major pairs)."""
    return jax.tree.map(lambda x: jnp.repeat(x, repeats, axis=0), latent)


def stack_latent(latent: Any, shape: tuple[int, ...]) -> Any:
    """Every leaf's batch axis reshaped to ``shape`` (the other axes kept)."""
    return jax.tree.map(lambda x: x.reshape(*shape, *x.shape[1:]), latent)

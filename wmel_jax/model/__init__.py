"""The flax TD-MPC2 world model and ``load``.

- :func:`load` reads a converted file (``wmel-jax convert``) into a :class:`WorldModel`.
- The pure functional API (``encode(arch, params, obs, task=None)``, ``next_latent``,
  ``decode``, ``predict``, ``reward``, ``reward_logits``, ``q_values``, ``q_logits``,
  ``policy_mean``, ``termination``, ``two_hot_inv``) takes the static :class:`Arch`
  first: jit it with ``static_argnums=0`` and vmap it over stacked params.
- :mod:`~wmel_jax.model.protocol` is the interface every world-model family fills
  (pure functions over a params pytree; :func:`functions_of` gives a model's, from
  its static configuration); :mod:`~wmel_jax.model.tdmpc2` puts TD-MPC2 on it.
- :mod:`~wmel_jax.model.layers` holds the flax modules, :mod:`~wmel_jax.model.arch`
  the architecture and parameter layout, :mod:`~wmel_jax.model.fileformat` the file format.

Nothing here imports torch.
"""

from __future__ import annotations

from wmel_jax.model.arch import Arch, param_shapes
from wmel_jax.model.protocol import WorldModelFunctions, functions_of
from wmel_jax.model.world_model import WorldModel, load, stack_params

#: The functional API, from :mod:`wmel_jax.model.networks`, imported on first use
#: (it imports flax, which loading a model does not need).
_NETWORKS = frozenset({
    "decode", "encode", "init_params", "next_latent", "policy_mean", "predict", "q_logits", "q_values", "reward",
    "reward_logits", "termination", "two_hot_inv",
})


def __getattr__(name: str):
    if name in _NETWORKS:
        from wmel_jax.model import networks

        return getattr(networks, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "load",
    "WorldModel",
    "stack_params",
    "Arch",
    "param_shapes",
    "encode",
    "next_latent",
    "decode",
    "predict",
    "reward",
    "reward_logits",
    "q_values",
    "q_logits",
    "policy_mean",
    "termination",
    "two_hot_inv",
    "init_params",
    "WorldModelFunctions",
    "functions_of",
]

"""dm_control's soft indicator ``rewards.tolerance``, in JAX.

The DMC task rewards are built from ``dm_control.utils.rewards.tolerance``:
1 inside ``bounds``, and outside a sigmoid of the distance to the nearest
bound measured in units of ``margin``, equal to ``value_at_margin`` one
margin away (with ``margin == 0``: a hard 0/1 indicator). Only the sigmoids
the three tasks use are here (``gaussian``, ``quadratic``); the arithmetic
follows dm_control's definition step for step, so a float64 evaluation agrees
with dm_control's numpy to rounding. Scalars or arrays; pure and traceable.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

__all__ = ["tolerance", "DEFAULT_VALUE_AT_MARGIN"]

#: dm_control's value of tolerance() one margin outside the bounds.
DEFAULT_VALUE_AT_MARGIN = 0.1


def _sigmoid(x: jax.Array, value_at_1: float, sigmoid: str) -> jax.Array:
    """1 at x == 0, ``value_at_1`` at |x| == 1 (dm_control's ``_sigmoids``, two of its kinds)."""
    if sigmoid == "gaussian":
        if not 0 < value_at_1 < 1:
            raise ValueError(f"gaussian: value_at_1 must be in (0, 1), got {value_at_1}")
        scale = math.sqrt(-2 * math.log(value_at_1))
        return jnp.exp(-0.5 * (x * scale) ** 2)
    if sigmoid == "quadratic":
        if not 0 <= value_at_1 < 1:
            raise ValueError(f"quadratic: value_at_1 must be in [0, 1), got {value_at_1}")
        scaled = x * math.sqrt(1 - value_at_1)
        return jnp.where(jnp.abs(scaled) < 1, 1 - scaled**2, jnp.zeros((), scaled.dtype))
    raise ValueError(f"sigmoid {sigmoid!r} is not implemented (gaussian, quadratic)")


def tolerance(
    x: jax.Array,
    bounds: tuple[float, float] = (0.0, 0.0),
    margin: float = 0.0,
    sigmoid: str = "gaussian",
    value_at_margin: float = DEFAULT_VALUE_AT_MARGIN,
) -> jax.Array:
    """dm_control's ``rewards.tolerance(x, bounds, margin, sigmoid, value_at_margin)``.

    x: any shape, float -> same shape, in [0, 1]. ``bounds`` and ``margin``
    are static Python floats.
    """
    lower, upper = bounds
    if lower > upper:
        raise ValueError("lower bound must be <= upper bound")
    if margin < 0:
        raise ValueError("margin must be non-negative")
    x = jnp.asarray(x)
    in_bounds = (lower <= x) & (x <= upper)
    one = jnp.ones((), x.dtype)
    if margin == 0:
        return jnp.where(in_bounds, one, jnp.zeros((), x.dtype))
    d = jnp.where(x < lower, lower - x, x - upper) / margin
    return jnp.where(in_bounds, one, _sigmoid(d, value_at_margin, sigmoid))

"""flax.linen building blocks of TD-MPC2, laid out exactly like the torch ones.

Every layer is explicitly named so parameter paths are stable (the converter
targets them; see :mod:`wmel_jax.model.arch` for the tree). Numerics follow
torch: LayerNorm with epsilon 1e-5 (flax's default is 1e-6) and a two-pass
variance, and float32 matmuls at full precision (XLA's default on GPU/TPU would
round float32 operands to TF32/bfloat16).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = [
    "mish",
    "simnorm",
    "SimNorm",
    "NormedLinear",
    "MLP",
    "q_ensemble",
    "Decoder",
    "renormed_embedding",
    "LAYERNORM_EPS",
    "MATMUL_PRECISION",
    "MISH_LINEAR_ABOVE",
]

#: torch.nn.LayerNorm's default epsilon.
LAYERNORM_EPS = 1e-5
#: Full float32 matmuls, as torch computes them on CPU.
MATMUL_PRECISION = jax.lax.Precision.HIGHEST


#: Above this, tanh(softplus(x)) is 1 in float32 (torch's softplus threshold too).
MISH_LINEAR_ABOVE = 20.0


def mish(x: jax.Array) -> jax.Array:
    """Mish(x) = x * tanh(softplus(x)), with one exp and one division.

    tanh(log(1 + e)) = n / (n + 2) with e = exp(x) and n = e * (e + 2), an
    identity that needs no log or tanh: one transcendental instead of three,
    and at least as accurate (at most 2.7e-7 relative to float64 over
    [-100, 100] and 1e-30..1e30, against 3.7e-7 for the composed form and
    2.6e-7 for torch's). With :func:`simnorm` below, the size-1 model's
    one-step map runs 1.26-1.31x faster on CPU than with the composed forms
    (``python -m wmel_jax.benchmarks.activations``). Above
    :data:`MISH_LINEAR_ABOVE` it is x (n would overflow), and for very
    negative x it is -0.0, so mish(1e30) == 1e30 and mish(-1e4) == -0.0:
    finite for every finite float32 x.
    """
    e = jnp.exp(jnp.minimum(x, MISH_LINEAR_ABOVE))
    n = e * (e + 2.0)
    return jnp.where(x > MISH_LINEAR_ABOVE, x, x * n / (n + 2.0))


def simnorm(x: jax.Array, group: int) -> jax.Array:
    """Softmax within consecutive groups of ``group`` entries of the last axis.

    Reduced over a transposed (..., group, n_groups) view, so that XLA's CPU
    code takes each group's max and sum across the groups at once rather
    than along a minor axis of 8: the same function (to float32 rounding:
    the sums' order differs), and the model's one-step map a further 6-7%
    faster (``python -m wmel_jax.benchmarks.activations``).
    """
    shape = x.shape
    x = jnp.swapaxes(x.reshape(*shape[:-1], shape[-1] // group, group), -1, -2)
    x = jnp.exp(x - jnp.max(x, axis=-2, keepdims=True))
    return jnp.swapaxes(x / jnp.sum(x, axis=-2, keepdims=True), -1, -2).reshape(shape)


class SimNorm(nn.Module):
    """Simplicial normalisation (no parameters): see :func:`simnorm`."""

    group: int = 8

    def __call__(self, x: jax.Array) -> jax.Array:
        return simnorm(x, self.group)


class NormedLinear(nn.Module):
    """Linear -> LayerNorm(eps 1e-5, affine) -> activation ("mish" or "simnorm").

    Params: ``linear/{kernel (in, out), bias}``, ``ln/{scale, bias}``. torch's
    dropout (active only in training) has no counterpart.
    """

    features: int
    activation: str = "mish"
    simnorm_dim: int = 8

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Dense(self.features, precision=MATMUL_PRECISION, name="linear")(x)
        x = nn.LayerNorm(epsilon=LAYERNORM_EPS, use_fast_variance=False, name="ln")(x)
        if self.activation == "simnorm":
            return simnorm(x, self.simnorm_dim)
        if self.activation == "mish":
            return mish(x)
        raise ValueError(f"unknown activation {self.activation!r}")


class MLP(nn.Module):
    """TD-MPC2's ``mlp(in, hidden, out, act)``: layers ``layer_0 .. layer_{len(hidden)}``.

    Every hidden layer is a Mish NormedLinear; the last is a NormedLinear with
    ``last_activation`` ("simnorm") when given, else a plain Dense.
    """

    hidden: Sequence[int]
    features: int
    last_activation: str | None = None
    simnorm_dim: int = 8

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i, width in enumerate(self.hidden):
            x = NormedLinear(width, "mish", self.simnorm_dim, name=f"layer_{i}")(x)
        last = f"layer_{len(self.hidden)}"
        if self.last_activation is None:
            return nn.Dense(self.features, precision=MATMUL_PRECISION, name=last)(x)
        return NormedLinear(self.features, self.last_activation, self.simnorm_dim, name=last)(x)


def q_ensemble(num_q: int) -> type[MLP]:
    """An MLP class vmapped ``num_q`` times over stacked parameters.

    Like torch's vectorised ``Ensemble``: every parameter gets a leading
    ``num_q`` axis; input (..., in) -> output (num_q, ..., out).
    """
    return nn.vmap(
        MLP,
        variable_axes={"params": 0},
        split_rngs={"params": True},
        in_axes=None,
        out_axes=0,
        axis_size=num_q,
    )


class Decoder(nn.Module):
    """Adapter-schema observation decoder: Linear -> SiLU -> Linear -> SiLU -> Linear.

    Layers are named ``layer_0, layer_2, layer_4`` after their torch
    ``nn.Sequential`` indices (1 and 3 are the SiLUs).
    """

    hidden: int
    features: int

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        x = nn.Dense(self.hidden, precision=MATMUL_PRECISION, name="layer_0")(z)
        x = nn.Dense(self.hidden, precision=MATMUL_PRECISION, name="layer_2")(jax.nn.silu(x))
        return nn.Dense(self.features, precision=MATMUL_PRECISION, name="layer_4")(jax.nn.silu(x))


def renormed_embedding(table: jax.Array, index: jax.Array, max_norm: float = 1.0) -> jax.Array:
    """Look up rows of ``table`` as ``torch.nn.Embedding(max_norm=...)`` does.

    torch rescales a looked-up row whose L2 norm exceeds ``max_norm`` by
    ``max_norm / (norm + 1e-7)`` (in place, in the weight); this returns the
    rescaled rows and leaves ``table`` alone. table: (T, D), index: int (...)
    -> (..., D).
    """
    rows = jnp.take(table, index, axis=0)
    norm = jnp.linalg.norm(rows, axis=-1, keepdims=True)
    scale = jnp.where(norm > max_norm, max_norm / (norm + 1e-7), 1.0).astype(rows.dtype)
    return rows * scale

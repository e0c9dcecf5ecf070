"""The exact GELU with its gradient written out by hand, where XLA:CPU runs autodiff's slower.
Models use it through `config.model.kernels` (ssljax.models.kernels)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

# Python floats: weakly typed, so bfloat16 inputs stay bfloat16.
_SQRT_HALF = 1 / math.sqrt(2)
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)


def _normal_cdf(x: jax.Array) -> jax.Array:
  return 0.5 * (1.0 + jax.lax.erf(x * _SQRT_HALF))


@jax.custom_vjp
def gelu(x: jax.Array) -> jax.Array:
  """Exact (erf) GELU, x * Phi(x), as PyTorch's nn.GELU; its derivative Phi(x) + x * phi(x) is
  computed from x in one pass backward, where autodiff of the erf form keeps exp(-x^2 / 2) from
  the forward pass and takes several passes over the ViT MLP's widest activation."""
  return x * _normal_cdf(x)


def _gelu_fwd(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  return gelu(x), x


def _gelu_bwd(x: jax.Array, dy: jax.Array) -> tuple[jax.Array]:
  slope = _normal_cdf(x) + x * jnp.exp(-0.5 * x * x) * _INV_SQRT_2PI
  return (dy * slope.astype(dy.dtype),)


gelu.defvjp(_gelu_fwd, _gelu_bwd)

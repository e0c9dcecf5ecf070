"""The exact GELU and its hand-written gradient against the erf formula and autodiff of it."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from ssljax.cpu import gelu


def test_gelu_matches_erf_formula_and_its_gradient_matches_autodiff():
  x = np.linspace(-8.0, 8.0, 4001, dtype=np.float32)
  expected = np.array([v * 0.5 * (1.0 + math.erf(v / math.sqrt(2.0))) for v in x.astype(float)])
  np.testing.assert_allclose(gelu.gelu(jnp.asarray(x)), expected, rtol=1e-6, atol=1e-6)
  # d/dx x Phi(x) = Phi(x) + x phi(x), from NumPy; and autodiff of JAX's own erf GELU.
  slope = 0.5 * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0))) + x * np.exp(
    -0.5 * x.astype(float) ** 2
  ) / math.sqrt(2.0 * math.pi)
  weights = np.random.default_rng(0).normal(size=x.shape).astype(np.float32)
  grad = jax.grad(lambda v: jnp.sum(weights * gelu.gelu(v)))(jnp.asarray(x))
  np.testing.assert_allclose(grad, weights * slope, rtol=1e-5, atol=1e-6)
  autodiff = jax.grad(lambda v: jnp.sum(weights * jax.nn.gelu(v, approximate=False)))(x)
  np.testing.assert_allclose(grad, autodiff, rtol=1e-5, atol=1e-6)


def test_gelu_keeps_bfloat16():
  x = jnp.linspace(-3, 3, 7, dtype=jnp.bfloat16)
  y, vjp = jax.vjp(gelu.gelu, x)
  assert y.dtype == jnp.bfloat16 and vjp(jnp.ones_like(y))[0].dtype == jnp.bfloat16

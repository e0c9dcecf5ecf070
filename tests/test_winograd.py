"""winograd.conv, the 3x3 stride-1 SAME convolution by F(2x2, 3x3): the definition and lax's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from ssljax.models import cpu_conv, winograd

NHWC = ('NHWC', 'HWIO', 'NHWC')


def _direct(x: np.ndarray, w: np.ndarray) -> np.ndarray:
  """The definition in float64: output (n, r, c) sums x at (r + dr - 1, c + dc - 1) @ w[dr, dc]."""
  _, h, width, _ = x.shape
  padded = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
  return sum(
    padded[:, dr : dr + h, dc : dc + width] @ w[dr, dc].astype(np.float64)
    for dr in range(3)
    for dc in range(3)
  )


@pytest.mark.parametrize('shape, out', [((2, 4, 4, 3), 5), ((3, 6, 8, 7), 2), ((1, 2, 2, 1), 1)])
def test_forward_is_the_definition(shape, out):
  rng = np.random.default_rng(shape[-1])
  x = rng.normal(size=shape).astype(np.float32)
  w = rng.normal(size=(3, 3, shape[-1], out)).astype(np.float32)
  np.testing.assert_allclose(jax.jit(winograd.conv)(x, w), _direct(x, w), rtol=1e-5, atol=1e-5)


def test_gradients_are_lax_and_the_kernel_gradient_is_the_definition():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 6, 4, 5)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 3, 5, 6)), jnp.float32)
  target = jnp.asarray(rng.normal(size=(2, 6, 4, 6)), jnp.float32)

  def loss(conv):
    return jax.jit(jax.grad(lambda x, w: jnp.sum(jnp.sin(conv(x, w)) * target), argnums=(0, 1)))

  def lax_conv(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=NHWC)

  (dx, dw), (want_dx, want_dw) = loss(winograd.conv)(x, w), loss(lax_conv)(x, w)
  np.testing.assert_allclose(dx, want_dx, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dw, want_dw, rtol=1e-5, atol=1e-5)
  # dW[dr, dc] sums, over images and positions, x at the shifted position times dy
  x64 = np.asarray(x, np.float64)
  dy = np.cos(_direct(x64, np.asarray(w))) * np.asarray(target, np.float64)
  padded = np.pad(x64, ((0, 0), (1, 1), (1, 1), (0, 0)))
  for dr in range(3):
    for dc in range(3):
      window = padded[:, dr : dr + 6, dc : dc + 4]
      np.testing.assert_allclose(
        dw[dr, dc], np.einsum('nhwc,nhwo->co', window, dy), rtol=1e-4, atol=1e-4
      )


def test_cpu_conv_routes_wide_convolutions_here_with_lax_results():
  rng = np.random.default_rng(2)
  c = cpu_conv.WINOGRAD
  x = jnp.asarray(rng.normal(size=(2, 4, 6, c)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 3, c, c)) / np.sqrt(9 * c), jnp.float32)
  target = jnp.asarray(rng.normal(size=(2, 4, 6, c)), jnp.float32)
  assert cpu_conv._route(x, w, (1, 1), 'SAME', dimension_numbers=NHWC) == 'winograd'

  def loss(conv):
    def value(x, w):
      return jnp.sum(jnp.sin(conv(x, w, (1, 1), 'SAME', dimension_numbers=NHWC)) * target)

    return jax.jit(jax.value_and_grad(value, argnums=(0, 1)))

  value, (dx, dw) = loss(cpu_conv.conv_general_dilated)(x, w)
  want_value, (want_dx, want_dw) = loss(lax.conv_general_dilated)(x, w)
  np.testing.assert_allclose(value, want_value, rtol=1e-4)
  np.testing.assert_allclose(dx, want_dx, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(dw, want_dw, rtol=1e-4, atol=1e-4)

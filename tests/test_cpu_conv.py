"""The CPU convolution: lax's forward pass, a kernel gradient from its definition."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from ssljax.models import cpu_conv

NHWC = ('NHWC', 'HWIO', 'NHWC')


def _kernel_gradient_reference(x, dy, kernel_shape, stride, pads):
  """dW[i, j, c, o] = sum over n, h, w of x_pad[n, s h + i, s w + j, c] dy[n, h, w, o]."""
  kh, kw, cin, cout = kernel_shape
  xp = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  n, ho, wo, _ = dy.shape
  dw = np.zeros(kernel_shape, np.float64)
  for i, j, b, h, w in itertools.product(range(kh), range(kw), range(n), range(ho), range(wo)):
    dw[i, j] += np.outer(xp[b, stride * h + i, stride * w + j], dy[b, h, w])
  return dw


@pytest.mark.parametrize('stride', [1, 2])
def test_kernel_gradient_is_its_definition(stride):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 7, 6, 3)).astype(np.float32)
  pads = lax.padtype_to_pads((7, 6), (3, 3), (stride, stride), 'SAME')
  ho, wo = -(-7 // stride), -(-6 // stride)
  dy = rng.normal(size=(2, ho, wo, 4)).astype(np.float32)
  got = cpu_conv.kernel_gradient(jnp.asarray(x), jnp.asarray(dy), (3, 3, 3, 4), (stride,) * 2, pads)
  want = _kernel_gradient_reference(x, dy, (3, 3, 3, 4), stride, pads)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('stride', [1, 2])
@pytest.mark.parametrize('n, per_chunk', [(6, 4), (5, 4), (3, 1)])
def test_kernel_gradient_summed_over_batch_chunks(monkeypatch, n, per_chunk, stride):
  """Chunks of 3 of 6 images (a divisor), 4 of 5 padded with zeros to 8, one image at a time:
  all the same sum over the batch as the definition (asymmetric pads, a 3x2 kernel)."""
  rng = np.random.default_rng(1)
  x = rng.normal(size=(n, 6, 6, 2)).astype(np.float32)
  ho, wo = (7 - 3) // stride + 1, (7 - 2) // stride + 1  # 7 x 7 padded, a 3 x 2 kernel
  dy = rng.normal(size=(n, ho, wo, 5)).astype(np.float32)
  monkeypatch.setattr(cpu_conv, 'CHUNK_BYTES', per_chunk * (x[0].size + dy[0].size) * 4)
  pads = ((1, 0), (1, 0))
  got = cpu_conv.kernel_gradient(
    jnp.asarray(x), jnp.asarray(dy), (3, 2, 2, 5), (stride, stride), pads
  )
  want = _kernel_gradient_reference(x, dy, (3, 2, 2, 5), stride, pads)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
  assert cpu_conv._chunk(6, 1) == 6 and cpu_conv._chunk(n, (x[0].size + dy[0].size) * 4) < n


@pytest.mark.parametrize(
  'size, kernel, stride, padding',
  [(8, 3, 1, 'SAME'), (9, 3, 2, 'SAME'), (8, 1, 2, 'SAME'), (12, 7, 2, 'SAME'), (8, 3, 1, 'VALID')],
)
def test_same_outputs_and_gradients_as_lax(size, kernel, stride, padding):
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(3, size, size, 5)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(kernel, kernel, 5, 6)) * 0.2, jnp.float32)

  def loss(conv, x, w):
    y = conv(x, w, (stride, stride), padding, dimension_numbers=NHWC)
    return jnp.sum(jnp.sin(y))  # a non-constant dy

  ours, theirs = (
    jax.jit(jax.value_and_grad(functools.partial(loss, c), argnums=(0, 1)))
    for c in (cpu_conv.conv_general_dilated, lax.conv_general_dilated)
  )
  (value, (dx, dw)), (ref_value, (ref_dx, ref_dw)) = ours(x, w), theirs(x, w)
  np.testing.assert_array_equal(value, ref_value)  # the forward pass is lax's
  np.testing.assert_allclose(dx, ref_dx, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dw, ref_dw, rtol=1e-4, atol=1e-4)


def test_dilated_or_grouped_convolutions_are_lax_unchanged():
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(2, 9, 9, 4)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 3, 2, 4)), jnp.float32)
  for kwargs in (dict(feature_group_count=2), dict(rhs_dilation=(2, 2), feature_group_count=2)):

    def loss(w, conv, kwargs=kwargs):
      return jnp.sum(conv(x, w, (1, 1), 'SAME', dimension_numbers=NHWC, **kwargs) ** 2)

    np.testing.assert_array_equal(
      jax.grad(loss)(w, cpu_conv.conv_general_dilated), jax.grad(loss)(w, lax.conv_general_dilated)
    )

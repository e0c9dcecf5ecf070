"""cpu_conv: lax's convolution, outputs and gradients, with the kernel gradient's input stored,
on pixel pairs and by Winograd (against the definition and lax)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from ssljax.cpu import conv as cpu_conv
from ssljax.cpu import winograd

NHWC = ('NHWC', 'HWIO', 'NHWC')


def _direct(x: np.ndarray, w: np.ndarray) -> np.ndarray:
  """The 3x3 SAME convolution's definition in float64: output (n, r, c) sums x at
  (r + dr - 1, c + dc - 1) @ w[dr, dc]."""
  _, h, width, _ = x.shape
  padded = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
  return sum(
    padded[:, dr : dr + h, dc : dc + width] @ w[dr, dc].astype(np.float64)
    for dr in range(3)
    for dc in range(3)
  )


def _loss(conv, strides, padding):
  def loss(x, w, target):
    x = jnp.maximum(x, 0)  # an elementwise result, as in a ResNet: what XLA fuses into copies
    y = conv(x, w, strides, padding, dimension_numbers=NHWC)
    return jnp.sum(jnp.sin(y) * target)

  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))


@pytest.mark.parametrize(
  'kernel, strides, padding, route',
  [
    ((3, 3), (1, 1), 'SAME', 'lax'),
    ((3, 3), (2, 2), 'SAME', 'lax'),
    ((1, 1), (2, 2), 'VALID', 'pointwise'),
    ((1, 1), (2, 2), 'SAME', 'pointwise'),  # odd height 9: five rows sampled
    ((1, 1), (1, 1), 'SAME', 'pointwise'),
    ((1, 1), (1, 3), ((0, 0), (0, 0)), 'pointwise'),
  ],
)
def test_outputs_and_gradients_are_lax(kernel, strides, padding, route):
  channels = cpu_conv.NARROW + 4  # wider than the pixel pairs take
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(4, 9, 8, channels)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(*kernel, channels, 5)), jnp.float32)
  assert cpu_conv._route(x, w, strides, padding, dimension_numbers=NHWC) == route
  out = lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=NHWC).shape
  target = jnp.asarray(rng.normal(size=out), jnp.float32)
  want_value, (want_dx, want_dw) = _loss(lax.conv_general_dilated, strides, padding)(x, w, target)
  value, (dx, dw) = _loss(cpu_conv.conv_general_dilated, strides, padding)(x, w, target)
  np.testing.assert_allclose(value, want_value, rtol=1e-6)
  np.testing.assert_allclose(dx, want_dx, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dw, want_dw, rtol=1e-5, atol=1e-5)
  # and the kernel gradient is the definition's: sum over images and positions of x dy
  if kernel == (1, 1):
    seen = np.maximum(np.asarray(x, np.float64)[:, :: strides[0], :: strides[1], :], 0)
    dy = np.cos(seen @ np.asarray(w[0, 0], np.float64)) * np.asarray(target, np.float64)
    np.testing.assert_allclose(dw[0, 0], np.einsum('nhwc,nhwo->co', seen, dy), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
  'in_channels, out_channels, width', [(1, 8, 8), (3, 5, 6), (8, 8, 10), (8, 16, 4)]
)
def test_narrow_convolutions_run_on_pixel_pairs_with_lax_results(in_channels, out_channels, width):
  rng = np.random.default_rng(in_channels)
  x = jnp.asarray(rng.normal(size=(3, 5, width, in_channels)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 3, in_channels, out_channels)), jnp.float32)
  assert cpu_conv._route(x, w, (1, 1), 'SAME', dimension_numbers=NHWC) == 'pairs'
  want = lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=NHWC)
  np.testing.assert_allclose(cpu_conv.paired_conv(x, w), want, rtol=1e-5, atol=1e-4)  # |y| ~ 5
  direct = _direct(np.asarray(x), np.asarray(w))
  np.testing.assert_allclose(cpu_conv.paired_conv(x, w), direct, rtol=1e-4, atol=1e-4)
  target = jnp.asarray(rng.normal(size=want.shape), jnp.float32)
  want_value, want_grads = _loss(lax.conv_general_dilated, (1, 1), 'SAME')(x, w, target)
  value, grads = _loss(cpu_conv.conv_general_dilated, (1, 1), 'SAME')(x, w, target)
  np.testing.assert_allclose(value, want_value, rtol=1e-5)
  for got, expected in zip(grads, want_grads, strict=True):
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
  'shape, kernel, strides, dilation, out, route',
  [
    ((2, 6, 6, 8), (3, 3), (1, 1), (1, 1), 4, 'pairs'),
    ((2, 5, 7, 8), (3, 3), (1, 1), (1, 1), 4, 'lax'),  # odd width: no whole pairs
    ((2, 6, 6, 16), (3, 3), (1, 1), (1, 1), 4, 'lax'),  # wide enough already
    ((2, 6, 6, 8), (3, 3), (2, 2), (1, 1), 4, 'lax'),
    ((2, 6, 6, 8), (1, 1), (1, 1), (1, 1), 4, 'pointwise'),
    ((2, 7, 6, 300), (1, 1), (2, 2), (1, 1), 600, 'pointwise'),
    ((2, 6, 6, 8), (1, 1), (1, 1), (2, 2), 4, 'lax'),  # dilated
    ((2, 6, 6, 8), (3, 3), (1, 1), (2, 2), 4, 'lax'),
    ((2, 4, 4, 256), (3, 3), (1, 1), (1, 1), 256, 'winograd'),
    ((2, 4, 4, 256), (3, 3), (1, 1), (1, 1), 128, 'lax'),  # too few output channels
    ((2, 4, 4, 128), (3, 3), (1, 1), (1, 1), 256, 'lax'),  # too few input channels
    ((2, 5, 4, 256), (3, 3), (1, 1), (1, 1), 256, 'lax'),  # odd height: no whole tiles
    ((2, 4, 4, 256), (3, 3), (2, 2), (1, 1), 256, 'lax'),
    ((2, 4, 4, 256), (3, 3), (1, 1), (2, 2), 256, 'lax'),
  ],
)
def test_routes(shape, kernel, strides, dilation, out, route):
  x, w = jnp.ones(shape), jnp.ones((*kernel, shape[-1], out))
  args = (x, w, strides, 'SAME')
  assert cpu_conv._route(*args, dimension_numbers=NHWC, rhs_dilation=dilation) == route
  padded = (x, w, strides, ((1, 1), (1, 1)) if kernel == (1, 1) else ((0, 0), (0, 0)))
  assert cpu_conv._route(*padded, dimension_numbers=NHWC) == 'lax'  # not padded as SAME pads
  grouped = (x, w[:, :, : shape[-1] // 2], strides, 'SAME')
  assert cpu_conv._route(*grouped, dimension_numbers=NHWC, feature_group_count=2) == 'lax'
  if route == 'winograd':  # float32 only: bfloat16 stays with lax (Eigen computes it in float32)
    bf16 = (x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), strides, 'SAME')
    assert cpu_conv._route(*bf16, dimension_numbers=NHWC) == 'lax'


@pytest.mark.parametrize('predicate', [True, False])
@pytest.mark.parametrize('order', [(3, 1, 2, 0), (1, 2, 0, 3)])
def test_stored_is_x_whichever_branch_runs(predicate, order):
  x = jnp.arange(2 * 3 * 4 * 5, dtype=jnp.float32).reshape(2, 3, 4, 5).at[0, 0, 0, 0].set(jnp.nan)
  stored = jax.jit(cpu_conv.stored, static_argnums=2)(x, jnp.asarray(predicate), order)
  np.testing.assert_array_equal(stored, x)


def test_kernel_gradient_reads_x_and_dy_through_conditionals():
  """What makes it faster on CPU: the compiled gradient keeps the conditionals XLA cannot fuse
  across, one for the input and one for the output's gradient (were XLA ever to fold them away,
  this says the module no longer does its job)."""
  x = jnp.ones((2, 6, 6, 4))
  w = jnp.ones((3, 3, 4, 4))

  def loss(w):
    y = cpu_conv.conv_general_dilated(jnp.maximum(x, 0), w, (1, 1), 'SAME', dimension_numbers=NHWC)
    return jnp.sum(jnp.sin(y))

  text = jax.jit(jax.grad(loss)).lower(w).compile().as_text()
  assert text.count(' conditional(') == 2


# winograd.conv, the 3x3 stride-1 SAME convolution by F(2x2, 3x3), and the route to it


@pytest.mark.parametrize('shape, out', [((2, 4, 4, 3), 5), ((3, 6, 8, 7), 2), ((1, 2, 2, 1), 1)])
def test_winograd_forward_is_the_definition(shape, out):
  rng = np.random.default_rng(shape[-1])
  x = rng.normal(size=shape).astype(np.float32)
  w = rng.normal(size=(3, 3, shape[-1], out)).astype(np.float32)
  np.testing.assert_allclose(jax.jit(winograd.conv)(x, w), _direct(x, w), rtol=1e-5, atol=1e-5)


def test_winograd_gradients_are_lax_and_the_kernel_gradient_is_the_definition():
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


def test_pointwise_kernel_gradient_in_bfloat16():
  """bfloat16 inputs: the kernel gradient comes back in bfloat16, and summed over 4,096 positions it
  stays within bfloat16's rounding of the float32 gradient."""
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(16, 32, 16, 6)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(1, 1, 6, 3)), jnp.float32)
  target = jnp.asarray(rng.normal(size=(16, 16, 8, 3)), jnp.float32)
  want = _loss(lax.conv_general_dilated, (2, 2), 'SAME')(x, w, target)[1][1]
  low = [a.astype(jnp.bfloat16) for a in (x, w, target)]
  assert cpu_conv._route(*low[:2], (2, 2), 'SAME', dimension_numbers=NHWC) == 'pointwise'
  dw = _loss(cpu_conv.conv_general_dilated, (2, 2), 'SAME')(*low)[1][1]
  assert dw.dtype == jnp.bfloat16
  scale = float(jnp.max(jnp.abs(want)))
  np.testing.assert_allclose(np.asarray(dw, np.float32), want, atol=0.05 * scale)

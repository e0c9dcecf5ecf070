"""A convolution whose weight gradient XLA:CPU computes several times faster.

XLA:CPU runs the gradient of a convolution with respect to its kernel as a convolution whose
window is the whole activation (28x28 for the first ResNet stage on 28 px images): on 2 cores
that one op took half of a ResNet-18 SimCLR step at width 8 and three quarters at width 64
(experiments/results/profile_step_*.json). Here the kernel's gradient is instead one matmul per
kernel offset (i, j): dW[i, j] = sum over n, h, w of x_pad[n, s h + i, s w + j, :]^T dy[n, h, w, :],
the definition of the gradient, which XLA:CPU runs as large dots (7x faster at width 64; at
stride 1, one matmul per kernel row with the column offsets moved to dy, a little faster). The
forward pass and the gradient with respect to the input are lax's own, so outputs are unchanged
and gradients agree to float rounding. `resnet` uses it on the CPU backend only: GPUs and TPUs
keep lax.conv_general_dilated and its gradients.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

_NHWC = ('NHWC', 'HWIO', 'NHWC')


def conv_general_dilated(
  lhs: jax.Array,
  rhs: jax.Array,
  window_strides,
  padding,
  lhs_dilation=None,
  rhs_dilation=None,
  dimension_numbers=None,
  feature_group_count: int = 1,
  precision=None,
  preferred_element_type=None,
) -> jax.Array:
  """lax.conv_general_dilated with the faster kernel gradient for 2-D NHWC / HWIO convolutions
  without dilation or groups (what the ResNets use); anything else goes to lax unchanged."""
  nhwc = lhs.ndim == 4 and lax.conv_dimension_numbers(
    lhs.shape, rhs.shape, dimension_numbers
  ) == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
  plain = (
    nhwc
    and all(d == 1 for d in (lhs_dilation or (1, 1)))
    and all(d == 1 for d in (rhs_dilation or (1, 1)))
    and feature_group_count == 1
    and preferred_element_type is None
  )
  if plain:
    strides = tuple(int(s) for s in window_strides)
    if isinstance(padding, str):
      padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding)
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    if all(p >= 0 for pair in pads for p in pair):  # negative pads crop: lax's own
      return _conv(lhs, rhs, strides, pads, precision)
  return lax.conv_general_dilated(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=lhs_dilation,
    rhs_dilation=rhs_dilation,
    dimension_numbers=dimension_numbers,
    feature_group_count=feature_group_count,
    precision=precision,
    preferred_element_type=preferred_element_type,
  )


def _lax_conv(x, w, strides, pads, precision):
  return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=_NHWC, precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv(x, w, strides, pads, precision):
  return _lax_conv(x, w, strides, pads, precision)


def _conv_fwd(x, w, strides, pads, precision):
  return _lax_conv(x, w, strides, pads, precision), (x, w)


def _conv_bwd(strides, pads, precision, residuals, dy):
  x, w = residuals
  _, input_vjp = jax.vjp(lambda x: _lax_conv(x, w, strides, pads, precision), x)
  (dx,) = input_vjp(dy)
  return dx, kernel_gradient(x, dy, w.shape, strides, pads).astype(w.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)


# Bytes of one chunk of x and dy: the kernel gradient is summed over batch chunks that stay in a
# core's L2 cache while their nine shifted windows are copied and multiplied; 2 MB was fastest or
# within noise of it on every ResNet-18 layer at widths 8 and 64 (2-core EPYC, 512 KB L2 per core):
# 3-5x faster than one pass over the whole batch for the first stage at width 8.
CHUNK_BYTES = 2 * 1024 * 1024


def kernel_gradient(x: jax.Array, dy: jax.Array, kernel_shape, strides, pads) -> jax.Array:
  """dL/dW (kh, kw, Cin, Cout) of y = conv(x, W) given dy = dL/dy: one float32-accumulated
  matmul per kernel offset over every output position, summed over cache-sized batch chunks."""
  n = x.shape[0]
  chunk = _chunk(n, (x[0].size + dy[0].size) * x.dtype.itemsize)
  if chunk >= n:
    return _kernel_gradient(x, dy, kernel_shape, strides, pads)
  steps = -(-n // chunk)
  if steps * chunk != n:  # zero images add nothing to the gradient
    x = jnp.pad(x, ((0, steps * chunk - n),) + ((0, 0),) * 3)
    dy = jnp.pad(dy, ((0, steps * chunk - n),) + ((0, 0),) * 3)

  def add_chunk(total, chunk_xy):
    return total + _kernel_gradient(*chunk_xy, kernel_shape, strides, pads), None

  total, _ = lax.scan(
    add_chunk,
    jnp.zeros(kernel_shape, jnp.float32),
    (x.reshape(steps, chunk, *x.shape[1:]), dy.reshape(steps, chunk, *dy.shape[1:])),
  )
  return total


def _chunk(n: int, bytes_per_image: int) -> int:
  """Images per chunk: about CHUNK_BYTES, a divisor of n when one is near (no padding copy)."""
  want = max(1, CHUNK_BYTES // bytes_per_image)
  if want >= n:
    return n
  divisor = max(d for d in range(1, want + 1) if n % d == 0)
  return divisor if 2 * divisor >= want else want


def _kernel_gradient(x, dy, kernel_shape, strides, pads):
  if tuple(strides) == (1, 1):
    return _kernel_gradient_by_rows(x, dy, kernel_shape, pads)
  return _kernel_gradient_by_offsets(x, dy, kernel_shape, strides, pads)


def _kernel_gradient_by_offsets(x, dy, kernel_shape, strides, pads):
  """One matmul per kernel offset (i, j) of a strided window of x with dy."""
  kh, kw, cin, cout = kernel_shape
  n, ho, wo, _ = dy.shape
  xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
  sh, sw = strides
  dy2 = dy.reshape(n * ho * wo, cout)
  rows = []
  for i in range(kh):
    for j in range(kw):
      window = lax.slice(
        xp, (0, i, j, 0), (n, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, cin), (1, sh, sw, 1)
      )
      rows.append(
        lax.dot_general(
          window.reshape(n * ho * wo, cin),
          dy2,
          (((0,), (0,)), ((), ())),
          preferred_element_type=jnp.float32,
        )
      )
  return jnp.stack(rows).reshape(kh, kw, cin, cout)


def _kernel_gradient_by_rows(x, dy, kernel_shape, pads):
  """Stride 1: one matmul per kernel row i instead of one per offset (i, j). The column offsets
  move to dy: D[n, h, w', (j, o)] = dy[n, h, w' - j, o] (zero outside), so that
  dW[i, j, c, o] = sum over n, h, w' of x_pad[n, h + i, w', c] D[n, h, w', (j, o)]. That copies
  dy kw times and x's rows kh times (whole rows: plain memory copies) where the offsets copied
  strided windows of x kh * kw times, and gives kh matmuls kw times wider: 8-35% faster on the
  stride-1 layers of ResNet-18 at width 8 (batch 512, 2 cores), 3-5% less CPU time per SimCLR
  step at widths 8 and 64 (same-process A/B)."""
  kh, kw, cin, cout = kernel_shape
  n, ho, wo, _ = dy.shape
  xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))  # (n, ho + kh - 1, wp, cin)
  wp = xp.shape[2]
  shifted = [jnp.pad(dy, ((0, 0), (0, 0), (j, wp - wo - j), (0, 0))) for j in range(kw)]
  d = jnp.concatenate(shifted, axis=-1).reshape(n * ho * wp, kw * cout)
  rows = [
    lax.dot_general(
      lax.slice_in_dim(xp, i, i + ho, axis=1).reshape(n * ho * wp, cin),
      d,
      (((0,), (0,)), ((), ())),
      preferred_element_type=jnp.float32,
    )
    for i in range(kh)
  ]  # each (cin, kw * cout)
  return jnp.stack(rows).reshape(kh, cin, kw, cout).transpose(0, 2, 1, 3)

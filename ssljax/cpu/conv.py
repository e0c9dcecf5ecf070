"""lax.conv_general_dilated for XLA:CPU: the same convolution, computed in forms XLA:CPU runs faster
(the timings behind each are in experiments/cpu_speed_log.md).

- Kernel gradients read stored buffers. XLA:CPU computes a kernel gradient as a convolution with
  the input's batch and channel axes swapped, and fuses that transpose with the elementwise ops
  that produced the input (BatchNorm, the residual sum, ReLU), recomputing them in a
  cache-hostile order. Here the kernel gradient takes its input, and the output's gradient,
  through a `lax.cond` whose two branches are the same transpose (`stored`): XLA fuses nothing
  across a conditional, so the copy reads the stored array. The predicate is the kernel's first
  element equal to itself, replicated, so no device waits for another.
- Narrow 3x3 stride-1 convolutions (NARROW input channels or fewer) run on pairs of adjacent
  pixels along the width (`paired_conv`): twice the channels, which Eigen runs far closer to its
  peak.
- Wide 3x3 stride-1 convolutions in float32 (WINOGRAD channels or more, in and out, even sizes)
  run by Winograd's F(2x2, 3x3) (`ssljax.cpu.winograd`): 2.25 times fewer multiply-adds.
- A 1x1 convolution's kernel gradient is one matrix product of the input, sampled at the strides,
  with the output's gradient (`pointwise_conv`), instead of Eigen's convolution and its transposes.

Forward passes and input gradients are lax's wherever the form allows; results equal
lax.conv_general_dilated's up to float rounding. Models use it through `config.model.kernels`
(ssljax.models.kernels); GPUs and TPUs run lax's convolution unless a config forces 'cpu'.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ssljax.cpu import winograd

NARROW = 8  # input channels up to which a 3x3 convolution runs on pixel pairs
WINOGRAD = 256  # input and output channels from which a 3x3 convolution runs by Winograd
_NHWC = ('NHWC', 'HWIO', 'NHWC')


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, *args, **kwargs) -> jax.Array:
  """lax.conv_general_dilated(lhs, rhs, *args, **kwargs), with the kernel gradient above, on
  pixel pairs where that is faster (paired_conv), by Winograd's F(2x2, 3x3) where that is
  (ssljax.cpu.winograd), and with a 1x1 kernel's gradient as one matrix product
  (pointwise_conv)."""
  route = _route(lhs, rhs, *args, **kwargs)
  if route == 'pairs':
    return paired_conv(lhs, rhs)
  if route == 'winograd':
    return winograd.conv(lhs, rhs)
  conv = lambda x, w: lax.conv_general_dilated(x, w, *args, **kwargs)
  if route == 'pointwise':
    return pointwise_conv(conv, _plain(lhs, rhs, *args, **kwargs), lhs, rhs)
  return _conv(conv, lhs, rhs)


def _route(lhs: jax.Array, rhs: jax.Array, *args, **kwargs) -> str:
  """How conv_general_dilated computes the call: 'pointwise' (a plain 1x1 convolution, any
  strides), 'pairs' (a plain 3x3 stride-1 one of NARROW channels or fewer over an even width),
  'winograd' (a plain 3x3 stride-1 one in float32 of WINOGRAD channels or more, in and out, over
  even sizes) or 'lax'."""
  strides = _plain(lhs, rhs, *args, **kwargs)
  if strides is None:
    return 'lax'
  if rhs.shape[:2] == (1, 1):
    return 'pointwise'
  if rhs.shape[:2] != (3, 3) or strides != (1, 1):
    return 'lax'
  if lhs.shape[3] <= NARROW and lhs.shape[2] % 2 == 0:
    return 'pairs'
  wide = min(lhs.shape[3], rhs.shape[3]) >= WINOGRAD
  if wide and lhs.dtype == rhs.dtype == jnp.float32 and lhs.shape[1] % 2 == lhs.shape[2] % 2 == 0:
    return 'winograd'
  return 'lax'


def _plain(
  lhs,
  rhs,
  window_strides,
  padding,
  lhs_dilation=None,
  rhs_dilation=None,
  dimension_numbers=None,
  feature_group_count=1,
  batch_group_count=1,
  precision=None,
  preferred_element_type=None,
) -> tuple[int, ...] | None:
  """The strides of the call if it is a plain NHWC convolution, padded as SAME pads it, with no
  dilation, groups, precision or output type of its own (what paired_conv, winograd.conv and
  pointwise_conv compute, given their kernel sizes); None for any other call."""
  if lhs.ndim != 4 or dimension_numbers is None:
    return None
  numbers = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  strides = tuple(window_strides)
  same = tuple(map(tuple, lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, 'SAME')))
  pads = padding if isinstance(padding, str) else tuple(map(tuple, padding))
  unpadded = ((0, 0), (0, 0))
  plain = (
    numbers == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
    and (pads in ('SAME', same) or (pads == 'VALID' and same == unpadded))
    and all(d is None or tuple(d) == (1, 1) for d in (lhs_dilation, rhs_dilation))
    and feature_group_count == batch_group_count == 1
    and precision is None
    and preferred_element_type is None
  )
  return strides if plain else None


def paired_conv(x: jax.Array, w: jax.Array) -> jax.Array:
  """The 3x3 SAME stride-1 convolution of x (NHWC, even width) with w (HWIO), computed over pairs
  of adjacent pixels along the width: a 3x2 convolution with twice the channels in and out.

  Padded by one column each side (a copy), the image reshapes to width/2 + 1 pairs; output
  column 2j + s reads padded columns 2j + s + t (t = 0, 1, 2), which are pixel i of pair j + b
  where 2b + i = s + t. So the pair kernel's entry (b, i, s) is w's column t = 2b + i - s, or
  zero where t is -1 or 3 (two of eight). Its gradients follow by differentiation; the kernel
  gradient reads the pairs through `stored`, as every convolution here."""
  n, h, width, c = x.shape
  pairs = jnp.pad(x, ((0, 0), (0, 0), (1, 1), (0, 0))).reshape(n, h, width // 2 + 1, 2 * c)
  taps = jnp.pad(w, ((0, 0), (1, 1), (0, 0), (0, 0)))  # columns t = -1..3, the outer two zero
  b, i, s = np.meshgrid(range(2), range(2), range(2), indexing='ij')
  kernel = taps[:, 2 * b + i - s + 1]  # (3, b, i, s, in, out)
  kernel = kernel.transpose(0, 1, 2, 4, 3, 5).reshape(3, 2, 2 * c, 2 * w.shape[3])
  conv = functools.partial(
    lax.conv_general_dilated,
    window_strides=(1, 1),
    padding=((1, 1), (0, 0)),
    dimension_numbers=_NHWC,
  )
  return _conv(conv, pairs, kernel).reshape(n, h, width, w.shape[3])


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def pointwise_conv(
  conv: Callable, strides: tuple[int, ...], x: jax.Array, w: jax.Array
) -> jax.Array:
  """conv(x, w) for a 1x1 kernel w (1, 1, in, out) at `strides` with no padding, whose kernel
  gradient is one matrix product: x sampled at the strides (the pixels the output reads) with the
  output's gradient, summed over images and positions."""
  return conv(x, w)


def _pointwise_fwd(conv, strides, x, w):
  return conv(x, w), (x, w)


def _pointwise_bwd(conv, strides, residuals, dy):
  x, w = residuals
  (dx,) = jax.vjp(lambda x: conv(x, w), x)[1](dy)
  seen = x[:, :: strides[0], :: strides[1]].reshape(-1, x.shape[3])
  dw = lax.dot_general(
    seen, dy.reshape(-1, dy.shape[3]), (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32
  )
  return dx, dw.astype(w.dtype).reshape(w.shape)


pointwise_conv.defvjp(_pointwise_fwd, _pointwise_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _conv(conv: Callable, x: jax.Array, w: jax.Array) -> jax.Array:
  return conv(x, w)


def _conv_fwd(conv, x, w):
  return conv(x, w), (x, w)


def _conv_bwd(conv, residuals, dy):
  x, w = residuals
  (dx,) = jax.vjp(lambda x: conv(x, w), x)[1](dy)
  first = w.reshape(-1)[0]  # replicated: a predicate from x would gather it across devices
  same = first == first
  spatial = tuple(range(1, x.ndim - 1))
  x = stored(x, same, (x.ndim - 1, *spatial, 0))  # batch <-> channels
  dy = stored(dy, same, (*spatial, 0, dy.ndim - 1))  # as a kernel: spatial, in (batch), out
  (dw,) = jax.vjp(lambda w: conv(x, w), w)[1](dy)
  return dx, dw


_conv.defvjp(_conv_fwd, _conv_bwd)


def stored(x: jax.Array, predicate: jax.Array, order: tuple[int, ...]) -> jax.Array:
  """x, read by what follows from a buffer XLA cannot fuse x's producers into, and copied to
  `order` (the axes' order in that copy) where it reads it so. `predicate` (a boolean scalar XLA
  cannot know before it runs) picks between two equal branches."""
  transpose = functools.partial(jnp.transpose, axes=order)
  return jnp.transpose(lax.cond(predicate, transpose, transpose, x), np.argsort(order))

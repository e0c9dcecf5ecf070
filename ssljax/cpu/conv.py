"""lax.conv_general_dilated whose kernel gradient XLA:CPU reads from stored buffers, and the
forms of narrow and wide 3x3 convolutions it runs faster.

XLA:CPU computes a convolution's gradient with respect to its kernel as a convolution with the
input's batch and channel axes swapped, and first copies the input into that order. A ResNet's
convolution inputs are elementwise results (BatchNorm, the residual sum, ReLU), and XLA fuses that
copy with them: it recomputes them, three blocks deep, in the transposed order, a loop reading
every operand a whole image apart. That runs about ten times slower than the same copy of a
stored array (64 images of 32x32x64 on a 2-core AVX-512 EPYC: 35-45 ms against 4; 19-26% of the
SimCLR step of ResNet-18 at width 64, 16% at width 8, experiments/profile_step.py).

Here the kernel gradient takes its input through a `lax.cond` whose two branches are the same
transpose: XLA fuses nothing across a conditional, so the copy reads the input the forward pass
already stored. Both branches compute the same, so the predicate cannot change the result; it is
the kernel's first element equal to itself, replicated, so no device waits for another. The
forward pass and the input's gradient are lax's, and the kernel gradient is lax's on the same
values: outputs and gradients are lax.conv_general_dilated's (bit for bit on this machine, but for
the narrow convolutions below, whose gradients differ by float rounding). The
SimCLR step of ResNet-18, same process alternating: width 64 37 -> 43 img/s, width 8 956 ->
1039. The output's gradient goes the same way: the kernel gradient reads it as its kernel, (H, W,
batch, channels), and XLA fused into that copy the BatchNorm backward that makes it, which the
input gradient has already written out in NHWC (at width 8, 7-9 ms a stage-1 layer against 2.5 for
the stored copy; the step's copies 0.070 -> 0.032 s and elementwise 0.145 -> 0.085 s, each
device's profile; same process alternating, width 8 566 -> 582 and 610 -> 667 img/s best of 12,
width 64 20.7 -> 21.7 best of 6). `resnet` uses it on the CPU backend only; GPUs and TPUs run
lax's convolution as before.

A 3x3 stride-1 convolution with 8 or fewer input channels (the stem and first stage of a ResNet
at width 8) runs on pairs of adjacent pixels along the width instead (`paired_conv`): twice the
channels in and out, for a third more multiply-adds (on zeros of the pair kernel). Eigen runs 8
channels far below its speed on 16: in the SimCLR step of ResNet-18 at width 8, a stage-1
convolution (28x28x8) took 8.7 ms forward where a stage-2 one (14x14x16, as many multiply-adds)
took 3.1. Paired, the stage-1 forward took 5.1 ms, and the step, same process alternating, ran
898 -> 974 img/s (best of 20) and 770 -> 825 (median).

A 3x3 stride-1 convolution in float32 with WINOGRAD channels or more in and out, over even sizes
(the last two stages of ResNet-18 at width 64), runs by Winograd's F(2x2, 3x3) instead
(ssljax.cpu.winograd): 16 matrix products, which XLA:CPU hands to YNNPACK, with 2.25 times
fewer multiply-adds than Eigen's direct convolution. Forward and both gradients, 128 images on
2 cores: 4x4x512 95 against 151 ms, 8x8x256 116 against 150; 16x16x128 141 against 153, but
level at the 64 images a device takes in the step, and the step too (so 128 channels stay with
lax); 32x32x64 1.6 times as long. The SimCLR step at width 64, same process alternating: 22.3
-> 24.9 img/s (best of 6), 21.6 -> 23.8 (median).

A 1x1 convolution (a ResNet's projection shortcut, and most of a bottleneck block) takes its kernel
gradient as one matrix product of the input, sampled at the strides, with the output's gradient
(`pointwise_conv`), where Eigen's convolution for it ran 2-4 times as long, its stored transposes
included: 128 images of 32x32x64 -> 128 at stride 2, 21.1 against 5.8 ms on 2 cores; 16x16x128
-> 256, 11.0 against 4.7; 512 of 28x28x8 -> 16, 4.7 against 1.4. (For a 3x3 convolution at stride
2 the same products over its nine taps were no faster than Eigen's.) The forward pass and the
input's gradient stay lax's.
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

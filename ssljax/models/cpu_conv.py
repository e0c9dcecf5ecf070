"""lax.conv_general_dilated whose kernel gradient XLA:CPU reads from its input's own buffer.

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
values: outputs and gradients are lax.conv_general_dilated's (bit for bit on this machine). The
SimCLR step of ResNet-18, same process alternating: width 64 37 -> 43 img/s, width 8 956 ->
1039. `resnet` uses it on the CPU backend only; GPUs and TPUs run lax's convolution as before.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, *args, **kwargs) -> jax.Array:
  """lax.conv_general_dilated(lhs, rhs, *args, **kwargs), with the kernel gradient above."""
  return _conv(lambda x, w: lax.conv_general_dilated(x, w, *args, **kwargs), lhs, rhs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _conv(conv: Callable, x: jax.Array, w: jax.Array) -> jax.Array:
  return conv(x, w)


def _conv_fwd(conv, x, w):
  return conv(x, w), (x, w)


def _conv_bwd(conv, residuals, dy):
  x, w = residuals
  (dx,) = jax.vjp(lambda x: conv(x, w), x)[1](dy)
  first = w.reshape(-1)[0]  # replicated: a predicate from x would gather it across devices
  (dw,) = jax.vjp(lambda w: conv(stored(x, first == first), w), w)[1](dy)
  return dx, dw


_conv.defvjp(_conv_fwd, _conv_bwd)


def stored(x: jax.Array, predicate: jax.Array) -> jax.Array:
  """x, read by what follows from a buffer XLA cannot fuse x's producers into. `predicate` (a
  boolean scalar XLA cannot know before it runs) picks between two equal branches."""
  swap = (x.ndim - 1, *range(1, x.ndim - 1), 0)  # batch <-> channels, the kernel gradient's order
  transpose = functools.partial(jnp.transpose, axes=swap)
  return transpose(lax.cond(predicate, transpose, transpose, x))  # swap is its own inverse

"""Which kernels a model runs: XLA's (lax convolutions, flax's BatchNorm, autodiff's GELU, the
qkv projection tokens-first), as every GPU and TPU runs them, or ssljax's CPU kernels
(`ssljax.cpu`), which make XLA:CPU's training step faster. `config.model.kernels` picks once, when
the model is built: 'auto' takes the CPU kernels on the CPU backend and XLA's everywhere else.

Both compute the same function with the same parameters (names, shapes, initialisers and
running statistics), so a checkpoint written with one restores with the other; outputs and
gradients agree to float rounding (tests/test_kernels.py).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax

from ssljax.cpu import batch_norm as cpu_batch_norm
from ssljax.cpu import conv as cpu_conv
from ssljax.cpu import gelu as cpu_gelu

CHOICES = ('auto', 'xla', 'cpu')


class Kernels(NamedTuple):
  """The building blocks a model takes as a field (hashable, so modules stay comparable)."""

  name: str  # 'xla' | 'cpu'
  conv_general_dilated: Callable | None  # what nn.Conv convolves with; None: lax's
  batch_norm: Any  # a module class with nn.BatchNorm's fields and variables
  gelu: Callable  # exact (erf) GELU
  heads_first: bool  # the qkv projection writes (N, heads, T, d) rather than (N, T, heads, d)


exact_gelu = functools.partial(nn.gelu, approximate=False)

XLA = Kernels('xla', None, nn.BatchNorm, exact_gelu, False)
CPU = Kernels('cpu', cpu_conv.conv_general_dilated, cpu_batch_norm.BatchNorm, cpu_gelu.gelu, True)


def resolve(choice: str, backend: str | None = None) -> Kernels:
  """The kernels for `choice` ('auto' | 'xla' | 'cpu') on `backend` (default: JAX's)."""
  if choice not in CHOICES:
    raise ValueError(f'model.kernels must be one of {CHOICES}, got {choice!r}')
  if choice == 'auto':
    choice = 'cpu' if (backend or jax.default_backend()) == 'cpu' else 'xla'
  return CPU if choice == 'cpu' else XLA

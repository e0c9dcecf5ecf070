"""Projection heads g(h) -> z: the representation the loss sees, thrown away after training."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp


class MLPHead(nn.Module):
  """Linear -> BN -> ReLU for every hidden layer, then a last Linear.

  SimCLR's head: hidden width = width of h, output 128, last layer without bias followed by a BN
  without centering (`last_bn`). BYOL's projector/predictor: hidden 4096, output 256, no last BN.
  """

  hidden_dim: int
  out_dim: int
  num_layers: int = 2
  last_bn: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    if self.num_layers < 1:
      raise ValueError(f'model.proj_layers must be >= 1, got {self.num_layers}')
    x = x.astype(self.dtype)
    for _ in range(self.num_layers - 1):
      x = nn.Dense(self.hidden_dim, use_bias=False, dtype=self.dtype)(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype)(x)
      x = nn.relu(x)
    x = nn.Dense(self.out_dim, use_bias=not self.last_bn, dtype=self.dtype)(x)
    if self.last_bn:
      x = nn.BatchNorm(
        use_running_average=not train, momentum=0.9, use_bias=False, dtype=self.dtype
      )(x)
    return x.astype(jnp.float32)

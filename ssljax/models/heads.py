"""Projection heads g(h) -> z: the representation the loss sees, thrown away after training."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssljax.models.kernels import XLA, Kernels


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


class DINOHead(nn.Module):
  """DINO's head: an MLP (GELU) to a bottleneck, L2-normalize, then a weight-normalized linear
  layer to K prototypes (Caron et al. 2021).

  The last layer's weight is w_k = g_k v_k / |v_k|; with `norm_last_layer` the norm g is fixed at
  1 (not a parameter), which the paper found stabilises training. The layer is a submodule named
  `last_layer` so a method can freeze it by name.
  """

  out_dim: int = 65536
  hidden_dim: int = 2048
  bottleneck_dim: int = 256
  num_layers: int = 3
  norm_last_layer: bool = True
  use_bn: bool = False  # BatchNorm after each hidden Linear (the official `use_bn_in_head`)
  dtype: Any = jnp.float32
  kernels: Kernels = XLA  # its GELU (ssljax.models.kernels)

  @nn.compact
  def __call__(self, x, *, train: bool):
    if self.num_layers < 1:
      raise ValueError(f'dino.num_layers must be >= 1, got {self.num_layers}')
    dense = functools.partial(
      nn.Dense, dtype=self.dtype, kernel_init=nn.initializers.truncated_normal(0.02)
    )
    x = x.astype(self.dtype)
    for _ in range(self.num_layers - 1):
      x = dense(self.hidden_dim)(x)
      if self.use_bn:
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype)(x)
      x = self.kernels.gelu(x)
    x = dense(self.bottleneck_dim)(x).astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-24))
    return WeightNormDense(self.out_dim, fixed_norm=self.norm_last_layer, name='last_layer')(x)


class WeightNormDense(nn.Module):
  """y = x W with column k of W = g_k v_k / |v_k| (Salimans & Kingma 2016), no bias, float32."""

  features: int
  fixed_norm: bool = True

  @nn.compact
  def __call__(self, x):
    v = self.param('kernel', nn.initializers.truncated_normal(0.02), (x.shape[-1], self.features))
    w = v * jax.lax.rsqrt(jnp.sum(v * v, axis=0, keepdims=True))
    if not self.fixed_norm:
      w = w * self.param('scale', nn.initializers.ones, (self.features,))
    return x.astype(jnp.float32) @ w

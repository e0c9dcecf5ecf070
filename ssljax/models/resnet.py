"""ResNet encoders f(x) -> h (He et al. 2016), with a stem for ImageNet and one for small images.

The `small` stem (3x3 conv, stride 1, no max-pool) is what SimCLR uses on CIFAR: on 28-64 px
inputs the ImageNet stem would shrink the image 4x before the first block.

`padding` says how stride-2 convolutions and the max-pool pad: 'same' as XLA's SAME (the 7x7/2
stem: 2 pixels before, 3 after), ssljax's own; 'torch' symmetrically (3 and 3), as PyTorch, timm
and the official SimCLR code, which weights made there need (ssljax.weights).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ssljax.models import pixels
from ssljax.models.kernels import XLA, Kernels

ModuleDef = Any


class BasicBlock(nn.Module):
  """Two 3x3 convolutions (ResNet-18/34)."""

  filters: int
  strides: int
  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, x):
    residual = x
    y = self.conv(self.filters, (3, 3), self.strides)(x)
    y = nn.relu(self.norm()(y))
    y = self.conv(self.filters, (3, 3))(y)
    # Zero-init the last BN scale: each block starts as the identity (Goyal et al. 2017).
    y = self.norm(scale_init=nn.initializers.zeros)(y)
    if residual.shape != y.shape:
      residual = self.conv(self.filters, (1, 1), self.strides, name='proj_conv')(residual)
      residual = self.norm(name='proj_bn')(residual)
    return nn.relu(residual + y)


class Bottleneck(nn.Module):
  """1x1 -> 3x3 -> 1x1 with 4x expansion (ResNet-50 and up)."""

  filters: int
  strides: int
  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, x):
    residual = x
    y = nn.relu(self.norm()(self.conv(self.filters, (1, 1))(x)))
    y = nn.relu(self.norm()(self.conv(self.filters, (3, 3), self.strides)(y)))
    y = self.conv(self.filters * 4, (1, 1))(y)
    y = self.norm(scale_init=nn.initializers.zeros)(y)
    if residual.shape != y.shape:
      residual = self.conv(self.filters * 4, (1, 1), self.strides, name='proj_conv')(residual)
      residual = self.norm(name='proj_bn')(residual)
    return nn.relu(residual + y)


class ResNet(nn.Module):
  """Returns h: the globally average-pooled output of the last stage, (N, features)."""

  stage_sizes: Sequence[int]
  block: ModuleDef
  width: int = 64
  stem: str = 'imagenet'
  stage_widths: Sequence[int] = ()  # () : width, 2 width, 4 width, ...
  dtype: Any = jnp.float32
  pixel_mean: tuple[float, ...] = (0.0,)  # standardized per channel before the stem
  pixel_std: tuple[float, ...] = (1.0,)
  kernels: Kernels = XLA  # the convolution and BatchNorm (ssljax.models.kernels)
  padding: str = 'same'  # one of PADDINGS

  @nn.compact
  def __call__(self, x, *, train: bool):
    if self.padding not in PADDINGS:
      raise ValueError(f'model.padding must be one of {PADDINGS}, got {self.padding!r}')

    def conv(features, kernel_size, strides=1, **kwargs):
      pads = 'SAME' if self.padding == 'same' else [(k // 2, k // 2) for k in kernel_size]
      return nn.Conv(
        features,
        kernel_size,
        strides,
        use_bias=False,
        dtype=self.dtype,
        padding=pads,
        conv_general_dilated=self.kernels.conv_general_dilated,
        **kwargs,
      )

    # BatchNorm statistics are means over the batch axis of a global (sharded) array, so under
    # jit they are taken over the whole global batch: per-device statistics would leak which
    # examples sit together, a shortcut to the positive pair (SimCLR section 3, "Global BN").
    norm = functools.partial(
      self.kernels.batch_norm,
      use_running_average=not train,
      momentum=0.9,
      epsilon=1e-5,
      dtype=self.dtype,
    )
    x = pixels.standardize(x, self.pixel_mean, self.pixel_std).astype(self.dtype)
    if self.stem == 'imagenet':
      x = conv(self.width, (7, 7), (2, 2), name='stem_conv')(x)
      x = nn.relu(norm(name='stem_bn')(x))
      pool_pads = 'SAME' if self.padding == 'same' else ((1, 1), (1, 1))
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=pool_pads)
    elif self.stem == 'small':
      x = conv(self.width, (3, 3), name='stem_conv')(x)
      x = nn.relu(norm(name='stem_bn')(x))
    else:
      raise ValueError(f"model.stem must be 'imagenet' or 'small', got {self.stem!r}")
    widths = stage_channels(self.stage_sizes, self.width, self.stage_widths)
    for i, (blocks, filters) in enumerate(zip(self.stage_sizes, widths, strict=True)):
      for j in range(blocks):
        strides = 2 if i > 0 and j == 0 else 1
        x = self.block(filters, strides, conv=conv, norm=norm)(x)
    return jnp.mean(x, axis=(1, 2)).astype(jnp.float32)


PADDINGS = ('same', 'torch')

ARCHS = {
  'resnet18': ((2, 2, 2, 2), BasicBlock),
  'resnet34': ((3, 4, 6, 3), BasicBlock),
  'resnet50': ((3, 4, 6, 3), Bottleneck),
  'resnet101': ((3, 4, 23, 3), Bottleneck),
}


def stage_channels(stage_sizes: Sequence[int], width: int, widths: Sequence[int] = ()) -> tuple:
  """Channels of each stage's 3x3 convolutions: `widths` if given, else width doubling per stage."""
  return tuple(widths) or tuple(width * 2**i for i in range(len(stage_sizes)))


def resnet(
  name: str,
  *,
  width: int = 64,
  stem: str = 'imagenet',
  stage_widths: Sequence[int] = (),
  dtype: Any = jnp.float32,
  pixel_mean: tuple[float, ...] = (0.0,),
  pixel_std: tuple[float, ...] = (1.0,),
  kernels: Kernels = XLA,
  padding: str = 'same',
) -> ResNet:
  """Builds a ResNet by name ('resnet18', 'resnet34', 'resnet50', 'resnet101')."""
  if name not in ARCHS:
    raise ValueError(f'model.encoder {name!r} is not a ResNet; choose one of {sorted(ARCHS)}')
  stages, block = ARCHS[name]
  return ResNet(
    stages,
    block,
    width=width,
    stem=stem,
    stage_widths=tuple(stage_widths),
    dtype=dtype,
    pixel_mean=pixel_mean,
    pixel_std=pixel_std,
    kernels=kernels,
    padding=padding,
  )


def feature_dim(name: str, width: int, widths: Sequence[int] = ()) -> int:
  """Width of h: the channels of the last stage."""
  stages, block = ARCHS[name]
  return stage_channels(stages, width, widths)[-1] * (4 if block is Bottleneck else 1)

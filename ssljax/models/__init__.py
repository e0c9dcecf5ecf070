"""Encoders and heads, built from `config.model` by name."""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections

from ssljax.models import resnet as resnet_lib
from ssljax.models import vit as vit_lib
from ssljax.models.heads import DINOHead, MLPHead

__all__ = ['DINOHead', 'MLPHead', 'is_vit', 'build_encoder', 'encoder_dim', 'compute_dtype']


def compute_dtype(config: ml_collections.ConfigDict):
  """The dtype activations run in; parameters always stay float32."""
  name = config.model.compute_dtype
  if name not in ('float32', 'bfloat16'):
    raise ValueError(f"model.compute_dtype must be 'float32' or 'bfloat16', got {name!r}")
  return jnp.dtype(name)


def is_vit(config: ml_collections.ConfigDict) -> bool:
  return config.model.encoder.startswith('vit')


def build_encoder(config: ml_collections.ConfigDict):
  """The encoder f named by config.model.encoder; its output is h."""
  m = config.model
  if is_vit(config):
    # The position embedding is made for the training views' side (config.augment.image_size);
    # other inputs (eval images, DINO's local crops) get it resized to their grid.
    return vit_lib.vit(
      m.encoder,
      patch_size=m.patch_size,
      image_size=config.augment.image_size,
      pos_embed=m.pos_embed,
      drop_path=m.drop_path,
      pool=m.pool,
      dtype=compute_dtype(config),
      pixel_mean=m.pixel_mean,
      pixel_std=m.pixel_std,
      width=m.vit_width,
      depth=m.vit_depth,
      num_heads=m.vit_heads,
      use_cls=m.cls_token,
    )
  return resnet_lib.resnet(m.encoder, width=m.width, stem=m.stem, dtype=compute_dtype(config))


def encoder_dim(config: ml_collections.ConfigDict) -> int:
  if is_vit(config):
    return vit_lib.feature_dim(config.model.encoder, config.model.vit_width)
  return resnet_lib.feature_dim(config.model.encoder, config.model.width)

"""Encoders and heads, built from `config.model` by name."""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections

from ssljax.models import resnet as resnet_lib
from ssljax.models.heads import MLPHead

__all__ = ['MLPHead', 'build_encoder', 'encoder_dim', 'compute_dtype']


def compute_dtype(config: ml_collections.ConfigDict):
  """The dtype activations run in; parameters always stay float32."""
  name = config.model.compute_dtype
  if name not in ('float32', 'bfloat16'):
    raise ValueError(f"model.compute_dtype must be 'float32' or 'bfloat16', got {name!r}")
  return jnp.dtype(name)


def build_encoder(config: ml_collections.ConfigDict):
  """The encoder f named by config.model.encoder; its output is h."""
  m = config.model
  return resnet_lib.resnet(m.encoder, width=m.width, stem=m.stem, dtype=compute_dtype(config))


def encoder_dim(config: ml_collections.ConfigDict) -> int:
  return resnet_lib.feature_dim(config.model.encoder, config.model.width)

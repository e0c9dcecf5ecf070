"""Input standardization shared by the encoders: (x - mean) / std per channel."""

from __future__ import annotations

import jax
import jax.numpy as jnp

# ImageNet's per-channel statistics, which the official BYOL, DINO, MAE and I-JEPA inputs use.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def standardize(images: jax.Array, mean: tuple[float, ...], std: tuple[float, ...]) -> jax.Array:
  """float32 (x - mean) / std over the last axis; one value serves every channel. The identity
  (mean 0, std 1) adds nothing to the graph."""
  x = images.astype(jnp.float32)
  if any(m != 0 for m in mean):
    x = x - jnp.asarray(mean, jnp.float32)
  if any(s != 1 for s in std):
    x = x / jnp.asarray(std, jnp.float32)
  return x

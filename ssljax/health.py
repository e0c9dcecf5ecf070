"""Label-free health of a representation: is it collapsing? Measured on a fixed batch of training
images encoded in inference mode, at every log step, so a run says so long before a labelled
evaluation would (users with few labels have no such evaluation at all).

- RankMe (Garrido et al. 2023, "RankMe: assessing the downstream performance of pretrained
  self-supervised representations by their rank"): exp of the entropy of the singular values of
  the (N, D) embeddings normalised to sum to one; D for isotropic embeddings, 1 for a collapse
  onto one direction. At most min(N, D).
- The per-dimension std of the L2-normalised embeddings, times sqrt(D): about 1 when the unit
  vectors spread over every dimension, 0 when every image maps to the same vector.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

EPS = 1e-7  # added to the normalised singular values, as in the paper


def rankme(z: jax.Array) -> jax.Array:
  """Effective rank of embeddings z (N, D): exp(-sum_k p_k log p_k), p_k = s_k / sum(s) + EPS."""
  s = jnp.linalg.svd(z.astype(jnp.float32), compute_uv=False)
  p = s / jnp.maximum(jnp.sum(s), 1e-30) + EPS
  return jnp.exp(-jnp.sum(p * jnp.log(p)))


def normalized_std(z: jax.Array) -> jax.Array:
  """sqrt(D) x the mean over dimensions of the std over the batch of z / |z|."""
  z = z.astype(jnp.float32)
  unit = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
  return jnp.mean(jnp.std(unit, axis=0)) * jnp.sqrt(z.shape[-1])


def health_metrics(features: Callable[[jax.Array], jax.Array]) -> Callable[[jax.Array], dict]:
  """images -> {'health/rankme_h', 'health/std_h'} for `features` (images -> h, inference)."""

  def metrics(images: jax.Array) -> dict:
    h = features(images).reshape(images.shape[0], -1)
    return {'health/rankme_h': rankme(h), 'health/std_h': normalized_std(h)}

  return metrics

"""Label-free health of a representation: is it collapsing? Measured on a fixed batch of training
images encoded in inference mode, at every log step, so a run says so long before a labelled
evaluation would (users with few labels have no such evaluation at all).

- RankMe (Garrido et al. 2023, "RankMe: assessing the downstream performance of pretrained
  self-supervised representations by their rank"): exp of the entropy of the singular values of
  the (N, D) embeddings normalised to sum to one; D for isotropic embeddings, 1 for a collapse
  onto one direction. At most min(N, D).
- The per-dimension std of the L2-normalised embeddings, times sqrt(D): about 1 when the unit
  vectors spread over every dimension, 0 when every image maps to the same vector.
- For methods with a teacher, the teacher/student agreement (`cosine_agreement`, or DINO's
  share of images whose student and teacher pick the same prototype): 1 with 0 rank means
  both collapsed onto the same output.

Each method's `health` (ssljax/methods/) says which embeddings it has: h always, the projector
output z where there is one. `ssljax.monitor.collapse` turns these numbers into a warning.
"""

from __future__ import annotations

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


def embedding_health(name: str, z: jax.Array) -> dict[str, jax.Array]:
  """{'health/rankme_<name>', 'health/std_<name>'} of embeddings z (N, ...), flattened per row."""
  z = z.reshape(z.shape[0], -1)
  return {f'health/rankme_{name}': rankme(z), f'health/std_{name}': normalized_std(z)}


def cosine_agreement(a: jax.Array, b: jax.Array) -> jax.Array:
  """The mean cosine similarity of matching rows of a and b (N, D): how well a student's output
  matches its teacher's on the same images."""
  a, b = (x.astype(jnp.float32) for x in (a, b))
  a = a / jnp.maximum(jnp.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
  b = b / jnp.maximum(jnp.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
  return jnp.mean(jnp.sum(a * b, axis=-1))

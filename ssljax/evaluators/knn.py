"""DINO's weighted k-nearest-neighbour classifier on frozen features."""

import functools

import jax
import jax.numpy as jnp
import numpy as np


def _l2_normalize(x: jax.Array) -> jax.Array:
  # Same epsilon as torch.nn.functional.normalize, which DINO uses.
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@functools.partial(jax.jit, static_argnames=('k', 'num_classes'))
def _knn_batch(
  train_x: jax.Array,
  train_y: jax.Array,
  test_x: jax.Array,
  temperature: jax.Array,
  *,
  k: int,
  num_classes: int,
) -> jax.Array:
  sim = _l2_normalize(test_x) @ train_x.T  # train_x is already normalized.
  top_sim, top_idx = jax.lax.top_k(sim, k)
  weights = jnp.exp(top_sim / temperature)
  votes = jnp.sum(jax.nn.one_hot(train_y[top_idx], num_classes) * weights[..., None], axis=1)
  return jnp.argmax(votes, axis=-1)


def knn_classify(
  train_x: np.ndarray | jax.Array,
  train_y: np.ndarray | jax.Array,
  test_x: np.ndarray | jax.Array,
  *,
  num_classes: int,
  k: int = 20,
  temperature: float = 0.07,
  batch_size: int = 1024,
) -> np.ndarray:
  """Predicted labels of `test_x` by DINO's temperature-weighted k-NN vote.

  Features are L2-normalized so the dot product is the cosine similarity; each of the k most
  similar train points (k capped at the train-set size) votes for its class with weight
  exp(sim / temperature), so close neighbours count far more than a plain majority would let them.
  Ties go to the lower class id. Test points are processed `batch_size` at a time (the last batch
  is padded, so one compilation serves all) to bound the batch x n_train similarity matrix.
  """
  train_x = jnp.asarray(train_x, jnp.float32)
  train_y = jnp.asarray(train_y, jnp.int32)
  test_x = jnp.asarray(test_x, jnp.float32)
  if train_x.ndim != 2 or test_x.ndim != 2 or train_x.shape[1] != test_x.shape[1]:
    raise ValueError(f'feature shapes do not match: {train_x.shape} vs {test_x.shape}')
  if train_y.shape != (train_x.shape[0],):
    raise ValueError(f'train_y has shape {train_y.shape}, expected ({train_x.shape[0]},)')
  if train_x.shape[0] == 0:
    raise ValueError('k-NN needs at least one train point')
  if int(train_y.min()) < 0 or int(train_y.max()) >= num_classes:
    raise ValueError(f'train labels must lie in [0, {num_classes})')
  k = min(int(k), train_x.shape[0])
  if k < 1:
    raise ValueError(f'k must be positive, got {k}')
  n_test = test_x.shape[0]
  batch_size = max(1, min(int(batch_size), n_test))
  train_x = _l2_normalize(train_x)
  temperature = jnp.float32(temperature)
  preds = []
  for start in range(0, n_test, batch_size):
    batch = test_x[start : start + batch_size]
    n = batch.shape[0]
    if n < batch_size:
      batch = jnp.pad(batch, ((0, batch_size - n), (0, 0)))
    pred = _knn_batch(train_x, train_y, batch, temperature, k=k, num_classes=num_classes)
    preds.append(np.asarray(pred[:n]))
  return np.concatenate(preds) if preds else np.zeros((0,), np.int32)


def knn_accuracy(
  train_x: np.ndarray | jax.Array,
  train_y: np.ndarray | jax.Array,
  test_x: np.ndarray | jax.Array,
  test_y: np.ndarray | jax.Array,
  *,
  num_classes: int,
  k: int = 20,
  temperature: float = 0.07,
  batch_size: int = 1024,
) -> float:
  """Top-1 accuracy in [0, 1] of `knn_classify` on (test_x, test_y); DINO's k-NN metric."""
  preds = knn_classify(
    train_x,
    train_y,
    test_x,
    num_classes=num_classes,
    k=k,
    temperature=temperature,
    batch_size=batch_size,
  )
  test_y = np.asarray(test_y)
  if test_y.shape != preds.shape or preds.size == 0:
    raise ValueError(f'test_y has shape {test_y.shape}, expected non-empty {preds.shape}')
  return float(np.mean(preds == test_y))

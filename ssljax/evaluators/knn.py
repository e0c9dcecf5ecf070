"""DINO's weighted k-nearest-neighbour classifier on frozen features."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from ssljax import sharding
from ssljax.evaluators.batched import Rows


def _l2_normalize(x: jax.Array) -> jax.Array:
  # Same epsilon as torch.nn.functional.normalize, which DINO uses.
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@functools.lru_cache(maxsize=16)
def _vote_on_mesh(mesh: jax.sharding.Mesh, k: int, num_classes: int):
  """(train rows, their labels, their positions, queries, temperature) -> predicted classes:
  each device scores the queries against its own train rows and keeps its k best; only those
  candidates are gathered, and merged by (similarity, position), highest similarity first and
  the lower position among equals: the neighbours of one k-NN over the whole train set in its
  global order. Rows at position -1 (padding, outside a label budget) never vote."""

  def local(train_x, train_y, train_pos, queries, temperature):
    sim = _l2_normalize(queries) @ train_x.T  # train_x is already normalized
    sim = jnp.where(train_pos[None, :] >= 0, sim, -jnp.inf)
    top, idx = jax.lax.top_k(sim, min(k, train_x.shape[0]))  # equals: the lower row first
    gather = lambda a: jax.lax.all_gather(a, sharding.AXES, axis=1, tiled=True)  # noqa: E731
    top, pos, label = gather(top), gather(train_pos[idx]), gather(train_y[idx])
    # Padding sorts last: its similarity is -inf.
    _, pos, top, label = jax.lax.sort((-top, pos, top, label), dimension=1, num_keys=2)
    weights = jnp.where(pos[:, :k] >= 0, jnp.exp(top[:, :k] / temperature), 0.0)
    votes = jnp.sum(jax.nn.one_hot(label[:, :k], num_classes) * weights[..., None], axis=1)
    return jnp.argmax(votes, axis=-1)  # ties: the lower class id

  rows = P(sharding.AXES)
  return jax.jit(
    jax.shard_map(
      local,
      mesh=mesh,
      in_specs=(rows, rows, rows, P(), P()),
      out_specs=P(),
      check_vma=False,  # the gathered candidates, hence the votes, are the same on every device
    )
  )


@functools.lru_cache(maxsize=16)
def _rows_of(mesh: jax.sharding.Mesh):
  """(rows, indices) -> rows[indices] on every device: a block of queries."""
  return jax.jit(lambda h, idx: h[idx], out_shardings=sharding.replicated(mesh))


def knn_classify_rows(
  train: Rows,
  test: Rows,
  mesh: jax.sharding.Mesh,
  *,
  num_classes: int,
  k: int = 20,
  temperature: float = 0.07,
  batch_size: int = 1024,
  train_examples: np.ndarray | None = None,
) -> np.ndarray:
  """`knn_classify` on features that stay split over the mesh (`batched.Rows`): the predicted
  class of every test example, in the test split's global order. `train_examples` (indices in
  the train split's global order; None: all) are the labelled ones that vote. A device holds
  its train rows and a block of `batch_size` queries; only k candidates per query cross devices."""
  chosen = np.arange(len(train.labels)) if train_examples is None else np.asarray(train_examples)
  if chosen.size == 0:
    raise ValueError('k-NN needs at least one train point')
  labels = train.labels[chosen]
  if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
    raise ValueError(f'train labels must lie in [0, {num_classes})')
  k = min(int(k), chosen.size)
  if k < 1:
    raise ValueError(f'k must be positive, got {k}')
  placed = sharding.data_sharding(mesh)
  positions = np.full(train.h.shape[0], -1, np.int32)
  positions[train.row[chosen]] = chosen
  train_y = jax.device_put(train.by_row(train.labels.astype(np.int32)), placed)
  train_pos = jax.device_put(positions, placed)
  train_x = _normalize_rows(train.h.astype(jnp.float32))
  vote, take = _vote_on_mesh(mesh, k, int(num_classes)), _rows_of(mesh)
  n_test = len(test.row)
  batch_size = max(1, min(int(batch_size), n_test))
  preds = []
  for start in range(0, n_test, batch_size):
    rows = test.row[start : start + batch_size]
    block = np.pad(rows, (0, batch_size - len(rows)))  # one compilation for every block
    queries = take(test.h, block).astype(jnp.float32)
    pred = vote(train_x, train_y, train_pos, queries, jnp.float32(temperature))
    preds.append(np.asarray(pred)[: len(rows)])
  return np.concatenate(preds) if preds else np.zeros((0,), np.int32)


_normalize_rows = jax.jit(_l2_normalize)  # elementwise per row: the rows stay where they are


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
  similar train points (k capped at the train-set size; the lower index among equals) votes for
  its class with weight exp(sim / temperature), so close neighbours count far more than a plain
  majority would let them. Ties go to the lower class id. Test points are processed
  `batch_size` at a time (the last batch is padded, so one compilation serves all) to bound the
  batch x n_train similarity matrix. In-memory arrays, on one device: `knn_classify_rows` is
  the same vote over features split over a mesh.
  """
  train_x, test_x = np.asarray(train_x, np.float32), np.asarray(test_x, np.float32)
  train_y = np.asarray(train_y)
  if train_x.ndim != 2 or test_x.ndim != 2 or train_x.shape[1] != test_x.shape[1]:
    raise ValueError(f'feature shapes do not match: {train_x.shape} vs {test_x.shape}')
  if train_y.shape != (train_x.shape[0],):
    raise ValueError(f'train_y has shape {train_y.shape}, expected ({train_x.shape[0]},)')
  mesh = sharding.make_mesh(devices=jax.local_devices()[:1])
  on_device = lambda x: jax.device_put(x, sharding.data_sharding(mesh))  # noqa: E731
  n_train, n_test = np.arange(len(train_y)), np.arange(len(test_x))
  train = Rows(on_device(train_x), train_y.astype(np.int32), n_train, n_train)
  test = Rows(on_device(test_x), np.zeros(len(test_x), np.int32), n_test, n_test)
  return knn_classify_rows(
    train,
    test,
    mesh,
    num_classes=num_classes,
    k=k,
    temperature=temperature,
    batch_size=batch_size,
  )


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

"""DINO's weighted k-nearest-neighbour classifier on frozen features."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from ssljax import sharding
from ssljax.evaluators.batched import Rows, in_memory_rows


def _l2_normalize(x: jax.Array) -> jax.Array:
  # Same epsilon as torch.nn.functional.normalize, which DINO uses.
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@functools.lru_cache(maxsize=16)
def _neighbours_on_mesh(mesh: jax.sharding.Mesh, k: int):
  """(train rows, their positions, queries, temperature) -> (weights exp(sim / T), positions)
  (B, k) of each query's k nearest train examples, on every device: each device scores the
  queries against its own train rows and keeps its k best; only those candidates are gathered,
  and merged by (similarity, position), highest similarity first and the lower position among
  equals: the neighbours of one k-NN over the whole train set in its global order. Rows at
  position -1 (padding, outside a label budget) are never neighbours (weight 0)."""

  def local(train_x, train_pos, queries, temperature):
    sim = _l2_normalize(queries) @ train_x.T  # train_x is already normalized
    sim = jnp.where(train_pos[None, :] >= 0, sim, -jnp.inf)
    top, idx = jax.lax.top_k(sim, min(k, train_x.shape[0]))  # equals: the lower row first
    gather = lambda a: jax.lax.all_gather(a, sharding.AXES, axis=1, tiled=True)  # noqa: E731
    top, pos = gather(top), gather(train_pos[idx])
    # Padding sorts last: its similarity is -inf.
    _, pos, top = jax.lax.sort((-top, pos, top), dimension=1, num_keys=2)
    weights = jnp.where(pos[:, :k] >= 0, jnp.exp(top[:, :k] / temperature), 0.0)
    return weights, pos[:, :k]

  rows = P(sharding.AXES)
  return jax.shard_map(
    local,
    mesh=mesh,
    in_specs=(rows, rows, P(), P()),
    out_specs=(P(), P()),
    check_vma=False,  # the gathered candidates are the same on every device
  )


@functools.lru_cache(maxsize=16)
def _vote_on_mesh(mesh: jax.sharding.Mesh, k: int, num_classes: int):
  """`_neighbours_on_mesh`'s k neighbours vote, each for its class (`labels` by position) with
  its weight: the predicted classes, ties to the lower class id."""

  def vote(train_x, train_pos, labels, queries, temperature):
    weights, pos = _neighbours_on_mesh(mesh, k)(train_x, train_pos, queries, temperature)
    label = labels[jnp.maximum(pos, 0)]
    votes = jnp.sum(jax.nn.one_hot(label, num_classes) * weights[..., None], axis=1)
    return jnp.argmax(votes, axis=-1)

  return jax.jit(vote)


@functools.lru_cache(maxsize=16)
def _jitted_neighbours(mesh: jax.sharding.Mesh, k: int):
  return jax.jit(_neighbours_on_mesh(mesh, k))


def neighbours_rows(
  train: Rows,
  test: Rows,
  mesh: jax.sharding.Mesh,
  *,
  k: int = 20,
  temperature: float = 0.07,
  batch_size: int = 1024,
  train_examples: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """(weights (N_test, k) float32, neighbours (N_test, k): indices in the train split's global
  order, -1 for none) of every test example, in its global order: the vote `knn_classify_rows`
  takes, on the host, for votes the devices do not count (several labels per image)."""
  train_x, train_pos, k = _placed_train(train, mesh, k, train_examples)
  run, take = _jitted_neighbours(mesh, k), _rows_of(mesh)
  batch_size = max(1, min(int(batch_size), len(test.row)))
  out = []
  for rows in _blocks(test, batch_size):
    block = np.pad(rows, (0, batch_size - len(rows)))
    queries = take(test.h, block).astype(jnp.float32)
    weights, pos = run(train_x, train_pos, queries, jnp.float32(temperature))
    out.append((np.asarray(weights)[: len(rows)], np.asarray(pos)[: len(rows)]))
  if not out:
    return np.zeros((0, k), np.float32), np.zeros((0, k), np.int32)
  return tuple(np.concatenate(parts) for parts in zip(*out, strict=True))


def _placed_train(train: Rows, mesh, k: int, train_examples: np.ndarray | None):
  """(normalized train rows, their positions on the mesh (-1: no vote), k capped)."""
  chosen = np.arange(len(train.labels)) if train_examples is None else np.asarray(train_examples)
  if chosen.size == 0:
    raise ValueError('k-NN needs at least one train point')
  k = min(int(k), chosen.size)
  if k < 1:
    raise ValueError(f'k must be positive, got {k}')
  positions = np.full(train.h.shape[0], -1, np.int32)
  positions[train.row[chosen]] = chosen
  train_pos = jax.device_put(positions, sharding.data_sharding(mesh))
  return _normalize_rows(train.h.astype(jnp.float32)), train_pos, k


def _blocks(test: Rows, batch_size: int):
  """The test rows, a block of `batch_size` at a time."""
  for start in range(0, len(test.row), batch_size):
    yield test.row[start : start + batch_size]


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
  labels = train.labels if train_examples is None else train.labels[np.asarray(train_examples)]
  if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
    raise ValueError(f'train labels must lie in [0, {num_classes})')
  train_x, train_pos, k = _placed_train(train, mesh, k, train_examples)
  by_position = jax.device_put(train.labels.astype(np.int32), sharding.replicated(mesh))
  vote, take = _vote_on_mesh(mesh, k, int(num_classes)), _rows_of(mesh)
  batch_size = max(1, min(int(batch_size), len(test.row)))
  preds = []
  for rows in _blocks(test, batch_size):
    block = np.pad(rows, (0, batch_size - len(rows)))  # one compilation for every block
    queries = take(test.h, block).astype(jnp.float32)
    pred = vote(train_x, train_pos, by_position, queries, jnp.float32(temperature))
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
  train, test = in_memory_rows(train_x, train_y.astype(np.int32)), in_memory_rows(test_x)
  return knn_classify_rows(
    train,
    test,
    train.h.sharding.mesh,
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

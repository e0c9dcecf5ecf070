"""Evaluation whose features stay split over the mesh (`batched.Rows`): each device holds the
features of the rows it encoded, and k-NN scores the queries where the train features are,
gathering only k candidates a query. The same neighbours, ties included, as one k-NN over the
whole train set in its global order."""

import ml_collections
import numpy as np
import pytest

from ssljax import sharding
from ssljax.evaluators import batched, knn, multilabel
from ssljax.evaluators.linear_probe import fit_linear_probe, fit_linear_probe_rows


def _mesh(data_size: int, fsdp: int):
  return sharding.make_mesh(ml_collections.ConfigDict(dict(data=data_size, fsdp=fsdp)))


def _flatten(scale, x):
  return x.reshape(x.shape[0], -1) * scale


@pytest.mark.parametrize('data_size, fsdp', [(-1, 1), (2, 4)])
def test_encoded_rows_stay_on_the_devices_that_encoded_them(data_size, fsdp):
  rng = np.random.default_rng(0)
  images = rng.normal(size=(100, 3, 3, 1)).astype(np.float32)
  labels = rng.integers(0, 5, 100).astype(np.int32)
  mesh = _mesh(data_size, fsdp)
  want, want_labels, want_positions = batched.apply_in_batches(
    _flatten, 2.0, (images, labels), mesh, 32
  )
  rows = batched.encode_rows(_flatten, 2.0, (images, labels), mesh, 32)
  assert rows.h.shape == (128, 9)  # 4 batches of 32: 28 rows of padding
  assert {shard.data.shape for shard in rows.h.addressable_shards} == {(16, 9)}
  np.testing.assert_array_equal(np.asarray(rows.h)[rows.row], want)
  np.testing.assert_array_equal(rows.gathered(), want)
  np.testing.assert_array_equal(rows.labels, want_labels)
  np.testing.assert_array_equal(rows.position, want_positions)
  assert len(set(rows.row)) == 100 and rows.row_mask().sum() == 100


@pytest.mark.parametrize('data_size, fsdp', [(-1, 1), (2, 4)])
def test_a_budget_s_rows_are_selected_where_they_stay_split(data_size, fsdp):
  """Rows.select: only the chosen examples' features, in their global order, split over the
  same devices, padded to a multiple of the bucket; the probe fitted on them is the probe of
  those examples in memory."""
  rng = np.random.default_rng(2)
  images = rng.normal(size=(100, 2, 2, 2)).astype(np.float32)
  labels = rng.integers(0, 3, 100).astype(np.int32)
  mesh = _mesh(data_size, fsdp)
  rows = batched.encode_rows(_flatten, 1.0, (images, labels), mesh, 32)
  examples = np.sort(rng.choice(100, 37, replace=False))
  chosen = rows.select(examples, bucket=16)
  assert chosen.h.shape == (48, 8) and chosen.h.sharding == rows.h.sharding
  np.testing.assert_array_equal(chosen.gathered(), rows.gathered()[examples])
  np.testing.assert_array_equal(chosen.labels, labels[examples])
  np.testing.assert_array_equal(chosen.position, examples)
  split = fit_linear_probe_rows(rows, examples, num_classes=3)
  whole = fit_linear_probe(images.reshape(100, -1)[examples], labels[examples], num_classes=3)
  assert split.l2 == whole.l2
  np.testing.assert_allclose(split.params['w'], whole.params['w'], rtol=1e-3, atol=1e-4)


def _reference(train_x, train_y, test_x, num_classes, k, temperature):
  """DINO's vote from the formula in float64, the lower index first among equal similarities."""
  train = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
  preds = []
  for q in test_x:
    sims = train @ (q / np.linalg.norm(q))
    votes = np.zeros(num_classes)
    for j in np.argsort(-sims, kind='stable')[:k]:
      votes[train_y[j]] += np.exp(sims[j] / temperature)
    preds.append(int(np.argmax(votes)))
  return np.array(preds)


def test_knn_on_split_features_picks_the_same_neighbours_ties_included():
  """Train points repeated 6 times with 6 different labels: with k = 4 every query's neighbours
  are decided by the tie rule alone (the first 4 in global order), here over rows spread on 8
  devices in another order; and again on a label budget's subset."""
  rng = np.random.default_rng(1)
  distinct = rng.normal(size=(20, 8))
  train_x = np.repeat(distinct, 6, axis=0).astype(np.float32)  # 120 = 20 x 6
  train_y = np.tile(np.arange(6), 20).astype(np.int32)
  test_x = (distinct[rng.integers(0, 20, 50)] + 0.01 * rng.normal(size=(50, 8))).astype(np.float32)
  mesh = _mesh(2, 4)
  train = batched.encode_rows(_flatten, 1.0, (train_x[:, :, None, None], train_y), mesh, 48)
  test = batched.encode_rows(_flatten, 1.0, (test_x[:, :, None, None], np.zeros(50, int)), mesh, 16)
  for k, temperature in ((4, 100.0), (7, 0.07)):
    got = knn.knn_classify_rows(
      train, test, mesh, num_classes=6, k=k, temperature=temperature, batch_size=16
    )
    want = _reference(train_x.astype(np.float64), train_y, test_x, 6, k, temperature)
    np.testing.assert_array_equal(got, want)
  subset = np.sort(rng.choice(120, 40, replace=False))
  got = knn.knn_classify_rows(
    train, test, mesh, num_classes=6, k=4, temperature=100.0, train_examples=subset
  )
  want = _reference(train_x[subset].astype(np.float64), train_y[subset], test_x, 6, 4, 100.0)
  np.testing.assert_array_equal(got, want)
  # In memory, on one device: the same function.
  np.testing.assert_array_equal(
    knn.knn_classify(train_x, train_y, test_x, num_classes=6, k=4, temperature=100.0),
    _reference(train_x.astype(np.float64), train_y, test_x, 6, 4, 100.0),
  )


def test_multi_label_probe_and_votes_on_split_features_equal_them_in_memory():
  """Several labels per image (a CSV run): the per-label probe and k-NN votes on features split
  over 8 devices (and a budget's subset of them) equal the same on the features in memory."""
  rng = np.random.default_rng(3)
  n, labels = 120, 3
  x = rng.normal(size=(n, 6)).astype(np.float32)
  targets = (x[:, :labels] + 0.5 * rng.normal(size=(n, labels)) > 0).astype(np.int8)
  targets[rng.random((n, labels)) < 0.1] = multilabel.IGNORED
  groups = np.arange(n) // 3  # patients of 3 images
  images = x.reshape(n, 1, 1, 6)
  mesh = _mesh(-1, 1)
  rows = batched.encode_rows(_flatten, 1.0, (images, np.arange(n, dtype=np.int32)), mesh, 32)
  test = batched.encode_rows(_flatten, 1.0, (images[:40], np.zeros(40, np.int32)), mesh, 32)
  subset = np.sort(rng.choice(n, 70, replace=False))
  for examples in (None, subset):
    chosen = slice(None) if examples is None else examples
    split = multilabel.fit_probe_rows(rows, targets, groups, examples)
    whole = multilabel.fit_probe(x[chosen], targets[chosen], groups[chosen])
    np.testing.assert_array_equal(split.l2, whole.l2)
    np.testing.assert_allclose(
      split.probabilities_rows(test),
      whole.probabilities(x[:40]),
      atol=1e-3,  # L-BFGS tol
    )
    votes = multilabel.knn_scores_rows(
      rows, test, mesh, targets, k=5, temperature=0.1, train_examples=examples
    )
    want = multilabel.knn_scores(x[chosen], targets[chosen], x[:40], k=5, temperature=0.1)
    np.testing.assert_allclose(votes, want, rtol=1e-5)

"""Evaluators checked against values computed independently of their code."""

import sys

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from threadpoolctl import threadpool_limits

from ssljax.evaluators import knn_accuracy, knn_classify, linear_probe, per_class_subset
from ssljax.evaluators.linear_probe import fit_logistic_regression

# ----------------------------------------------------------------------------- per_class_subset


def _imbalanced_labels(seed: int = 0) -> np.ndarray:
  rng = np.random.default_rng(seed)
  labels = np.concatenate([np.full(n, c) for c, n in enumerate([40, 7, 25, 12, 90])])
  return rng.permutation(labels)


def test_per_class_subset_is_class_balanced_and_sorted():
  labels = _imbalanced_labels()
  idx = per_class_subset(labels, 5, seed=3)
  assert idx.shape == (25,)
  assert np.all(np.diff(idx) > 0)  # sorted, no repeats
  np.testing.assert_array_equal(np.bincount(labels[idx]), [5, 5, 5, 5, 5])


def test_per_class_subset_depends_only_on_labels_and_seed():
  labels = _imbalanced_labels()
  # The legacy global RNG must not matter: change it between the calls (and restore it).
  saved = np.random.get_state()  # noqa: NPY002
  try:
    np.random.seed(1)  # noqa: NPY002
    first = per_class_subset(labels, 4, seed=11)
    np.random.seed(2)  # noqa: NPY002
    again = per_class_subset(list(labels.astype(np.int32)), 4, seed=11)
  finally:
    np.random.set_state(saved)  # noqa: NPY002
  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(first, per_class_subset(labels, 4, seed=12))
  # A class's pick ignores the other classes: relabelling class 4 leaves class 0's choice alone.
  relabelled = np.where(labels == 4, 9, labels)
  pick0 = first[labels[first] == 0]
  other = per_class_subset(relabelled, 4, seed=11)
  np.testing.assert_array_equal(other[relabelled[other] == 0], pick0)


def test_per_class_subset_grows_by_supersets():
  labels = _imbalanced_labels()
  small = per_class_subset(labels, 2, seed=0)
  large = per_class_subset(labels, 6, seed=0)
  assert set(small) <= set(large)


def test_per_class_subset_rejects_small_class():
  labels = _imbalanced_labels()
  with pytest.raises(ValueError, match='class 1 '):
    per_class_subset(labels, 8, seed=0)  # class 1 has 7 examples


# -------------------------------------------------------------------------------------- k-NN


def _knn_reference(train_x, train_y, test_x, num_classes, k, temperature):
  """DINO's weighted vote written from the formula, one test point at a time, in float64."""
  train = np.asarray(train_x, np.float64)
  train = train / np.linalg.norm(train, axis=1, keepdims=True)
  preds = []
  for q in np.asarray(test_x, np.float64):
    sims = train @ (q / np.linalg.norm(q))
    neighbours = np.argsort(-sims, kind='stable')[: min(k, len(train))]
    votes = np.zeros(num_classes)
    for j in neighbours:
      votes[train_y[j]] += np.exp(sims[j] / temperature)
    preds.append(int(np.argmax(votes)))
  return np.array(preds)


@pytest.mark.parametrize('k,temperature', [(1, 0.07), (5, 0.07), (20, 0.07), (20, 0.5), (50, 1.0)])
def test_knn_matches_numpy_reference(k, temperature):
  rng = np.random.default_rng(k)
  num_classes = 6
  centers = rng.normal(size=(num_classes, 16))
  train_y = rng.integers(0, num_classes, 300)
  test_y = rng.integers(0, num_classes, 101)
  train_x = (centers[train_y] + 1.5 * rng.normal(size=(300, 16))).astype(np.float32)
  test_x = (centers[test_y] + 1.5 * rng.normal(size=(101, 16))).astype(np.float32)
  want = _knn_reference(train_x, train_y, test_x, num_classes, k, temperature)
  # batch_size 32 does not divide 101: exercises the padded last batch.
  got = knn_classify(
    train_x, train_y, test_x, num_classes=num_classes, k=k, temperature=temperature, batch_size=32
  )
  np.testing.assert_array_equal(got, want)
  acc = knn_accuracy(
    train_x, train_y, test_x, test_y, num_classes=num_classes, k=k, temperature=temperature
  )
  assert acc == pytest.approx(np.mean(want == test_y))


def test_knn_weighted_vote_beats_majority_by_hand():
  # Query along +x. Neighbours (cosine): class 0 at 0 deg (sim 1); class 1 at +-60 deg (sim 0.5);
  # a class-1 point at 180 deg (sim -1) that k=3 leaves out. Norms differ on purpose.
  s = np.sqrt(3.0) / 2
  train_x = np.array([[3.0, 0.0], [0.5, s], [2 * 0.5, -2 * s], [-1.0, 0.0]], np.float32)
  train_y = np.array([0, 1, 1, 1])
  query = np.array([[0.2, 0.0]], np.float32)
  # T = 0.07: class 0 gets exp(1/0.07) = 1.6e6, class 1 gets 2 exp(0.5/0.07) = 2.5e3 -> 0, though
  # the plain majority of the 3 neighbours is class 1.
  assert knn_classify(train_x, train_y, query, num_classes=2, k=3, temperature=0.07)[0] == 0
  # T = 100: weights ~ 1.010 vs 2 x 1.005, i.e. nearly the unweighted vote -> class 1.
  assert knn_classify(train_x, train_y, query, num_classes=2, k=3, temperature=100.0)[0] == 1
  # k = 1 sees only the class-0 point.
  assert knn_classify(train_x, train_y, query, num_classes=2, k=1, temperature=100.0)[0] == 0


def test_knn_k_larger_than_train_set():
  rng = np.random.default_rng(0)
  train_x = rng.normal(size=(7, 5)).astype(np.float32)
  train_y = rng.integers(0, 3, 7)
  test_x = rng.normal(size=(9, 5)).astype(np.float32)
  got = knn_classify(train_x, train_y, test_x, num_classes=3, k=1000, temperature=0.07)
  np.testing.assert_array_equal(got, _knn_reference(train_x, train_y, test_x, 3, 7, 0.07))
  np.testing.assert_array_equal(got, knn_classify(train_x, train_y, test_x, num_classes=3, k=7))


# ----------------------------------------------------------------------------- linear probe


@pytest.fixture(scope='module')
def digits():
  x, y = load_digits(return_X_y=True)
  return train_test_split(x, y, test_size=0.25, stratify=y, random_state=0)


def _standardize(train_x, test_x):
  mean, std = train_x.mean(0), np.maximum(train_x.std(0), 1e-6)
  return (train_x - mean) / std, (test_x - mean) / std


def _objective(w, b, x, y, lam):
  """Mean softmax cross-entropy + lam ||W||^2 / 2, in float64."""
  logits = x @ w + b
  logits = logits - logits.max(1, keepdims=True)
  log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  return -log_p[np.arange(len(y)), y].mean() + 0.5 * lam * np.sum(w**2)


def test_linear_probe_separable_blobs():
  rng = np.random.default_rng(0)
  # 10 classes in 64-D with < 256 train rows, like the few-shot digits probes below: after row
  # padding they share one compiled L-BFGS program.
  centers = 10.0 * np.eye(10, 64)
  train_y, test_y = rng.integers(0, 10, 200), rng.integers(0, 10, 100)
  train_x = centers[train_y] + rng.normal(size=(200, 64))
  test_x = centers[test_y] + rng.normal(size=(100, 64))
  out = linear_probe(train_x, train_y, test_x, test_y, num_classes=10)
  assert out['accuracy'] == 1.0
  assert out['l2'] in (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


def test_linear_probe_digits_raw_pixels(digits):
  train_x, test_x, train_y, test_y = digits
  out = linear_probe(train_x, train_y, test_x, test_y, num_classes=10)
  assert out['accuracy'] >= 0.94  # scikit-learn's logistic regression: 0.969
  # Standardization makes the result blind to the feature scale.
  scaled = linear_probe(1e3 * train_x, train_y, 1e3 * test_x, test_y, num_classes=10)
  assert scaled == out


@pytest.mark.parametrize('lam', [1e-4, 1e-2])
def test_lbfgs_matches_sklearn_logistic_regression(digits, lam):
  # sklearn (lbfgs) minimizes C * sum_i CE_i + ||W||^2 / 2, bias unpenalized; divided by C * n
  # that is mean_i CE_i + ||W||^2 / (2 C n), our objective with lam = 1 / (C n): C = 1 / (lam n).
  train_x, test_x, train_y, test_y = digits
  train_s, test_s = _standardize(train_x, test_x)
  n = len(train_y)
  # One BLAS/OpenMP thread: on a busy 2-core machine sklearn's threads otherwise thrash (40x).
  with threadpool_limits(limits=1):
    ref = LogisticRegression(C=1.0 / (lam * n), tol=1e-10, max_iter=10_000).fit(train_s, train_y)
  ref_obj = _objective(ref.coef_.T, ref.intercept_, train_s, train_y, lam)
  ours = fit_logistic_regression(train_s, train_y, num_classes=10, l2=lam)
  w, b = np.asarray(ours['w'], np.float64), np.asarray(ours['b'], np.float64)
  our_obj = _objective(w, b, train_s, train_y, lam)
  assert our_obj == pytest.approx(ref_obj, rel=1e-3)
  our_pred = np.argmax(test_s @ w + b, axis=1)
  assert np.mean(our_pred == ref.predict(test_s)) >= 0.98
  # linear_probe with a one-point grid fits exactly this model.
  out = linear_probe(train_x, train_y, test_x, test_y, num_classes=10, l2_grid=(lam,))
  assert out['l2'] == lam
  assert out['accuracy'] == pytest.approx(np.mean(our_pred == test_y), abs=1 / len(test_y))


def test_linear_probe_five_per_class(digits, monkeypatch):
  train_x, test_x, train_y, test_y = digits
  idx = per_class_subset(train_y, 5, seed=0)
  module = sys.modules['ssljax.evaluators.linear_probe']
  calls = []

  def counting_fit(*args, **kwargs):
    calls.append(np.asarray(kwargs['weights']).sum())
    return fit_logistic_regression(*args, **kwargs)

  monkeypatch.setattr(module, 'fit_logistic_regression', counting_fit)
  out = linear_probe(train_x[idx], train_y[idx], test_x, test_y, num_classes=10)
  assert out['accuracy'] >= 0.6  # chance is 0.1
  assert out['l2'] in (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
  # A 20% hold-out would keep 1 example per class, so 5-fold CV runs instead: 5 folds x 5 l2
  # values, each fit on 40 of the 50 examples, then one refit on all 50.
  assert calls == [40] * 25 + [50]


def test_linear_probe_singleton_class_falls_back_to_fixed_l2(digits):
  train_x, test_x, train_y, test_y = digits
  idx = per_class_subset(train_y, 5, seed=0)
  idx = np.append(idx[train_y[idx] != 9], np.flatnonzero(train_y == 9)[0])  # one example of 9
  out = linear_probe(train_x[idx], train_y[idx], test_x, test_y, num_classes=10)
  assert out['l2'] == 1e-3
  assert out['accuracy'] >= 0.5


# ----------------------------------------------------------------------------- shifted test sets


def _shift_config(**data_fields):
  from ssljax.methods import SimCLR

  config = SimCLR.default_config()
  config.data.image_size = 8
  config.data.update(data_fields)
  return config


@pytest.fixture(scope='module')
def clean_digits():
  from ssljax import data

  return data.load_eval_split(_shift_config(), 'test')


def test_rotate_quarter_turn_is_rot90_and_contrast_formula():
  from ssljax.data import shifts

  x = np.random.default_rng(0).random((3, 6, 6, 2)).astype(np.float32)
  np.testing.assert_allclose(shifts.rotate(x, 90.0), np.rot90(x, 1, axes=(1, 2)), atol=1e-6)
  np.testing.assert_allclose(shifts.rotate(x, 0.0), x, atol=1e-6)
  # 45 degrees on an odd side: the center pixel stays, the corners fall outside (zero).
  y = np.random.default_rng(1).random((1, 7, 7, 1)).astype(np.float32)
  r = shifts.rotate(y, 45.0)
  assert r[0, 3, 3, 0] == pytest.approx(y[0, 3, 3, 0]) and r[0, 0, 0, 0] == 0.0
  # contrast: (x - mean of the image) * c + mean, by hand for severity 3 (c = 0.2).
  m = x.mean(axis=(1, 2, 3), keepdims=True)
  got = shifts.apply(x, np.arange(3), shift='contrast', severity=3)
  np.testing.assert_allclose(got, (x - m) * 0.2 + m, atol=1e-6)


def test_shifted_eval_split_is_deterministic_and_changes_the_images(clean_digits):
  from ssljax import data

  clean_x, clean_y = clean_digits
  config = _shift_config(shift='gaussian_noise', shift_severity=3)
  x, y = data.load_eval_split(config, 'test')
  np.testing.assert_array_equal(y, clean_y)
  np.testing.assert_array_equal(x, data.load_eval_split(config, 'test')[0])  # deterministic
  # Keyed by each example's position: a capped split is a prefix of the whole one.
  config.eval_config.max_examples = 50
  np.testing.assert_array_equal(data.load_eval_split(config, 'test')[0], x[:50])
  other = _shift_config(shift='gaussian_noise', shift_severity=3, shift_seed=1)
  assert not np.array_equal(data.load_eval_split(other, 'test')[0], x)
  assert x.min() >= 0.0 and x.max() <= 1.0
  # Away from 0 and 1 nothing is clipped: the residual is the noise, std 0.18 (ImageNet-C, s=3).
  middle = (clean_x > 0.4) & (clean_x < 0.6)
  assert middle.sum() > 1000
  assert np.std((x - clean_x)[middle]) == pytest.approx(0.18, rel=0.1)
  assert np.mean(np.abs(x - clean_x)) > 0.05
  rotated = data.load_eval_split(_shift_config(shift='rotate', shift_severity=5), 'test')[0]
  np.testing.assert_allclose(rotated, np.rot90(clean_x, 1, axes=(1, 2)), atol=1e-6)


def test_unknown_shift_is_refused_naming_the_field():
  from ssljax import data

  with pytest.raises(ValueError, match=r"config\.data\.shift='blur'"):
    data.check_available(_shift_config(shift='blur'))
  with pytest.raises(ValueError, match=r'config\.data\.shift_severity=7'):
    data.check_available(_shift_config(shift='contrast', shift_severity=7))

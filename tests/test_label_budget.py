"""Label budgets: parsing, class-balanced seeded subsets, and that evaluation probes every method
on the same labelled images."""

import jax
import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from ssljax import data, evaluators, sharding
from ssljax.config import checks as config_checks
from ssljax.evaluators import (
  LabelBudget,
  fraction_subset,
  parse_label_budget,
  parse_label_budgets,
  protocols,
)
from ssljax.methods import SimCLR


@pytest.fixture(scope='module')
def labels():
  """The digits train labels, split as the 'digits' source splits them (counts 133..138)."""
  x, y = load_digits(return_X_y=True)
  return train_test_split(x, y, test_size=0.25, stratify=y, random_state=0)[2]


# ----------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
  'spec, key, per_class, fraction',
  [
    ('10_per_class', '10_per_class', 10, None),
    ('1_per_class', '1_per_class', 1, None),
    ('1%', '1%', None, 0.01),
    ('12.5%', '12.5%', None, 0.125),
    ('100%', '100%', None, 1.0),
    (0.1, '10%', None, 0.1),
    (1.0, '100%', None, 1.0),
    (' 5_per_class ', '5_per_class', 5, None),
  ],
)
def test_parse_label_budget(spec, key, per_class, fraction):
  budget = parse_label_budget(spec)
  assert budget.key == key and budget.per_class == per_class
  assert budget.fraction == pytest.approx(fraction) if fraction else budget.fraction is None


@pytest.mark.parametrize(
  'bad',
  ['10 per class', '10_per_classes', '0_per_class', '-3_per_class', '0%', '150%', '10', 'ten%',
   '', 0.0, 1.5, -0.1, True, None],
)  # fmt: skip
def test_bad_label_budget_names_the_field(bad):
  with pytest.raises(ValueError, match=r"config\.eval_config\.label_budgets: .*'N_per_class'"):
    parse_label_budget(bad)


def test_label_budgets_refuse_duplicates_and_a_bare_string():
  with pytest.raises(ValueError, match=r"label_budgets lists the budgets \['10%'\] more than once"):
    parse_label_budgets(('10%', 0.1))
  with pytest.raises(ValueError, match='must be a tuple of budgets'):
    parse_label_budgets('10_per_class')
  config = SimCLR.default_config()
  config.eval_config.label_budgets = ('5_per_class', '5 per class')
  with pytest.raises(ValueError, match=r"label_budgets: '5 per class' is not a label budget"):
    config_checks.check(config, protocols.check_eval_config)


# ----------------------------------------------------------------------------- subsets


def test_per_class_budgets_are_balanced_seeded_and_nested(labels):
  ten = LabelBudget('10_per_class', per_class=10).subset(labels, seed=0)
  hundred = parse_label_budget('100_per_class').subset(labels, seed=0)
  np.testing.assert_array_equal(np.bincount(labels[ten]), [10] * 10)
  np.testing.assert_array_equal(np.bincount(labels[hundred]), [100] * 10)
  assert set(ten) < set(hundred)
  np.testing.assert_array_equal(ten, parse_label_budget('10_per_class').subset(labels, seed=0))
  assert not np.array_equal(ten, parse_label_budget('10_per_class').subset(labels, seed=1))
  # A class smaller than the budget: the error names the budget field and the class.
  with pytest.raises(ValueError, match=r"label_budgets '200_per_class': class 0 has 133"):
    parse_label_budget('200_per_class').subset(labels, seed=0)


def test_fraction_budgets_take_round_fraction_of_each_class(labels):
  counts = np.bincount(labels)
  picks = {}
  for spec in ('1%', '10%', '50%', '100%'):
    budget = parse_label_budget(spec)
    picks[spec] = idx = budget.subset(labels, seed=3)
    # Round half up, at least one per class, computed here from the class counts alone.
    want = [max(1, int(np.floor(budget.fraction * n + 0.5))) for n in counts]
    np.testing.assert_array_equal(np.bincount(labels[idx], minlength=10), want)
    assert np.all(np.diff(idx) > 0)
  np.testing.assert_array_equal(picks['100%'], np.arange(len(labels)))
  assert set(picks['1%']) <= set(picks['10%']) <= set(picks['50%'])
  # 10 per class is inside any fraction that gives every class 10 or more.
  assert set(parse_label_budget('10_per_class').subset(labels, seed=3)) <= set(picks['10%'])
  np.testing.assert_array_equal(fraction_subset(labels, 0.1, seed=3), picks['10%'])


def test_subsets_depend_only_on_labels_and_seed(labels):
  """Same labels and seed, other features, other call order or global RNG: the same images."""
  budget = parse_label_budget('7%')
  first = budget.subset(labels, seed=5)
  np.random.default_rng(0).random(100)
  saved = np.random.get_state()  # noqa: NPY002
  try:
    np.random.seed(123)  # noqa: NPY002
    again = budget.subset(list(labels), seed=5)
  finally:
    np.random.set_state(saved)  # noqa: NPY002
  np.testing.assert_array_equal(first, again)


# ----------------------------------------------------------------------------- in evaluate


class _PixelMethod:
  """A stand-in method whose h is the pixels, permuted and scaled by `perm` and `scale`: two such
  methods have different features of the same images."""

  def __init__(self, perm: np.ndarray, scale: float):
    self.perm, self.scale = perm, scale

  def features(self, params, model_state, images):
    del params, model_state
    return images.reshape(images.shape[0], -1)[:, self.perm] * self.scale

  def unmap(self, features: np.ndarray) -> np.ndarray:
    """The pixels back from features, to identify which images a protocol was given."""
    pixels = np.empty_like(features)
    pixels[:, self.perm] = features / self.scale
    return pixels


@pytest.fixture(scope='module')
def digits_config():
  config = SimCLR.default_config()
  config.data.image_size = 8
  config.eval_config.batch_size = 64
  return config


@pytest.fixture(scope='module')
def splits(digits_config):
  return {s: data.load_eval_split(digits_config, s) for s in ('train', 'test')}


def _row_ids(pixels: np.ndarray, train_images: np.ndarray) -> list[int]:
  index = {row.tobytes(): i for i, row in enumerate(train_images.reshape(len(train_images), -1))}
  return [index[np.round(row, 5).astype(np.float32).tobytes()] for row in pixels]


def test_every_method_is_probed_on_the_same_images(digits_config, splits, monkeypatch):
  config = digits_config.copy_and_resolve_references()
  config.eval = ('linear', 'knn', 'linear_few')
  config.eval_config.label_budgets = ('2_per_class', '3_per_class')
  config.eval_config.few_per_class = 2
  seen = []

  def fake_fit(train, examples=None, **kwargs):
    chosen = slice(None) if examples is None else examples
    seen.append(('linear', train.gathered()[chosen], train.labels[chosen]))
    d = train.h.shape[1]
    return evaluators.LinearProbe(np.zeros(d), np.ones(d), None, 0.0)

  def fake_knn(train, test, mesh, *, train_examples=None, **kwargs):
    chosen = slice(None) if train_examples is None else train_examples
    seen.append(('knn', train.gathered()[chosen], train.labels[chosen]))
    return np.zeros(len(test.labels), np.int32)

  monkeypatch.setattr(protocols, 'fit_linear_probe_rows', fake_fit)
  monkeypatch.setattr(
    evaluators.LinearProbe, 'predict_rows', lambda self, rows: np.zeros(len(rows.labels), int)
  )
  monkeypatch.setattr(protocols, 'knn_classify_rows', fake_knn)
  mesh = sharding.make_mesh()
  rng = np.random.default_rng(0)
  # Pixels are multiples of 1/16 (digits) resized to 8 px: exact enough to round-trip at 1e-5.
  train_images = np.round(splits['train'][0], 5).astype(np.float32)
  picked = {}
  methods = [_PixelMethod(rng.permutation(64), 1.0), _PixelMethod(rng.permutation(64), 3.0)]
  for m, method in enumerate(methods):
    seen.clear()
    protocols.evaluate(config, method, None, None, splits, mesh)
    assert [s[0] for s in seen] == ['linear', 'linear', 'knn', 'knn', 'linear']
    for (name, x, y), budget in zip(seen, ['2', '3', '2', '3', 'few'], strict=True):
      ids = _row_ids(method.unmap(x), train_images)
      np.testing.assert_array_equal(splits['train'][1][ids], y)
      counts = np.bincount(y, minlength=10)
      assert np.all(counts == (3 if budget == '3' else 2)), (name, budget, counts)
      picked[m, name, budget] = sorted(ids)
  for key in [('linear', '2'), ('linear', '3'), ('knn', '2'), ('knn', '3'), ('linear', 'few')]:
    assert picked[(0, *key)] == picked[(1, *key)]  # both methods: the same images
  assert picked[0, 'linear', '2'] == picked[0, 'knn', '2'] == picked[0, 'linear', 'few']
  assert set(picked[0, 'linear', '2']) < set(picked[0, 'linear', '3'])  # nested
  assert jax.device_count() == 8  # the subsets above went through the sharded feature extraction


def test_results_keys_and_values_with_budgets_and_ood(digits_config, splits):
  config = digits_config.copy_and_resolve_references()
  config.eval = ('linear', 'linear_few', 'knn')
  config.eval_config.label_budgets = ('5_per_class', '10%')
  config.eval_config.ood_data = dict(shift='rotate', shift_severity=5)
  method = _PixelMethod(np.arange(64), 1.0)
  results = protocols.evaluate(config, method, None, None, splits, sharding.make_mesh())
  keys = ['linear@5_per_class', 'linear@10%', 'linear_5_per_class', 'knn@5_per_class', 'knn@10%']
  assert sorted(results) == sorted(keys + [k + '/ood' for k in keys])
  # Against values computed here: k-NN on the raw pixels of the 10% subset, on the test split
  # and on the test split rotated by a quarter turn (np.rot90).
  train_x, train_y = splits['train'][0].reshape(-1, 64), splits['train'][1]
  test_x, test_y = splits['test']
  idx = fraction_subset(train_y, 0.1, seed=0)
  rotated = np.rot90(test_x, 1, axes=(1, 2)).reshape(-1, 64)
  for suffix, x in (('', test_x.reshape(-1, 64)), ('/ood', rotated)):
    want = evaluators.knn_accuracy(train_x[idx], train_y[idx], x, test_y, num_classes=10)
    assert results['knn@10%' + suffix] == pytest.approx(want)
  few = evaluators.per_class_subset(train_y, 5, seed=0)
  probe = evaluators.linear_probe(
    train_x[few], train_y[few], test_x.reshape(-1, 64), test_y, num_classes=10
  )
  assert results['linear_5_per_class'] == pytest.approx(probe['accuracy'])
  assert results['linear@5_per_class'] == results['linear_5_per_class']
  # Upright digits are far easier than digits on their side.
  assert results['knn@10%'] > 0.85 and results['knn@10%/ood'] < results['knn@10%'] - 0.3

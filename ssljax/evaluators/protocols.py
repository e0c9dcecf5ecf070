"""The evaluation of a run: the protocols named in `config.eval`, on the frozen encoder's features h
(linear, linear_few, knn) or by training it with labels (finetune, and supervised: the same from
a random init), once per label budget, on the test split and an optional out-of-distribution one.

Results keys: the protocol's key, `@budget` when eval_config.label_budgets is set (e.g.
`linear@10_per_class`, `finetune@1%`), `/ood` for the second test set (`knn@1%/ood`).
"""

from __future__ import annotations

import copy
import functools
import hashlib
from collections.abc import Callable

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from ssljax import data, sharding
from ssljax.config import checks as config_checks
from ssljax.config.checks import Checks
from ssljax.data import labels_csv, shifts
from ssljax.data.types import EvalSplit
from ssljax.errors import ConfigError
from ssljax.evaluators import finetune as finetune_lib
from ssljax.evaluators import linear_sgd
from ssljax.evaluators.batched import Rows, encode_rows
from ssljax.evaluators.knn import knn_accuracy, knn_classify_rows
from ssljax.evaluators.label_subset import LabelBudget, parse_label_budgets, per_class_subset
from ssljax.evaluators.linear_probe import fit_linear_probe, fit_linear_probe_rows
from ssljax.methods import Method, TrainState

Features = tuple[np.ndarray, np.ndarray]  # (features (N, d), labels (N,))
Tests = dict[str, Features]  # results-key suffix ('' or '/ood') -> test set
OOD = '/ood'


# ----------------------------------------------------------------------------- frozen features


def _linear(train: Features, tests: Tests, num_classes: int, ec) -> dict[str, float]:
  probe = fit_linear_probe(*train, num_classes=num_classes)
  return {name: probe.accuracy(*test) for name, test in tests.items()}


def _linear_few(train: Features, tests: Tests, num_classes: int, ec) -> dict[str, float]:
  idx = per_class_subset(train[1], ec.few_per_class, seed=ec.subset_seed)
  return _linear((train[0][idx], train[1][idx]), tests, num_classes, ec)


def _knn(train: Features, tests: Tests, num_classes: int, ec) -> dict[str, float]:
  return {
    name: knn_accuracy(
      *train, *test, num_classes=num_classes, k=ec.knn_k, temperature=ec.knn_temperature
    )
    for name, test in tests.items()
  }


def _linear_on_rows(run: _Run, examples: np.ndarray | None) -> dict[str, float]:
  """`_linear` where the features are (`fit_linear_probe_rows`): only predictions leave the
  devices. `examples` (global order; None: all): the labelled train images."""
  probe = fit_linear_probe_rows(run.rows('train'), examples, num_classes=run.num_classes)
  return {
    name: float(np.mean(probe.predict_rows(run.rows(name)) == run.rows(name).labels))
    for name in run.tests
  }


def _linear_few_on_rows(run: _Run, examples: np.ndarray | None) -> dict[str, float]:
  ec = run.ec
  return _linear_on_rows(
    run, per_class_subset(run.train_labels, ec.few_per_class, seed=ec.subset_seed)
  )


def _knn_on_rows(run: _Run, examples: np.ndarray | None) -> dict[str, float]:
  """`_knn` where the features are: each device scores against its train rows (`knn_classify_rows`),
  `examples` (global order; None: all) the labelled train images that vote."""
  ec, train = run.ec, run.rows('train')
  accuracy = {}
  for name in run.tests:
    test = run.rows(name)
    preds = knn_classify_rows(
      train,
      test,
      run.mesh,
      num_classes=run.num_classes,
      k=ec.knn_k,
      temperature=ec.knn_temperature,
      train_examples=examples,
    )
    accuracy[name] = float(np.mean(preds == test.labels))
  return accuracy


# name in config.eval -> (key in results.json, protocol on features in memory, runs per label
# budget, the same protocol on features split over the mesh: what an evaluation runs)
FEATURE_PROTOCOLS: dict[
  str, tuple[Callable[[ml_collections.ConfigDict], str], Callable, bool, Callable]
] = {
  'linear': (lambda ec: 'linear', _linear, True, _linear_on_rows),
  'linear_few': (
    lambda ec: f'linear_{ec.few_per_class}_per_class',
    _linear_few,
    False,
    _linear_few_on_rows,
  ),
  'knn': (lambda ec: 'knn', _knn, True, _knn_on_rows),
}
# name -> (key, start from the pretrained encoder (else a random init), encoder frozen); always
# per label budget
TRAINING_PROTOCOLS: dict[str, tuple[Callable[[ml_collections.ConfigDict], str], bool, bool]] = {
  'finetune': (lambda ec: 'finetune', True, False),
  'supervised': (lambda ec: 'supervised', False, False),
  'linear_sgd': (lambda ec: 'linear_sgd', True, True),
}
FINETUNES = ('finetune', 'supervised')  # the protocols eval_config.finetune sets


def _one_test(fn: Callable) -> Callable:
  def protocol(train: Features, test: Features, num_classes: int, ec) -> float:
    return fn(train, {'': test}, num_classes, ec)['']

  return protocol


# The feature protocols as functions (train, test, num_classes, ec) -> accuracy, for scripts that
# run them on other features (experiments/raw_pixel_baseline.py).
PROTOCOLS: dict[str, tuple[Callable[[ml_collections.ConfigDict], str], Callable]] = {
  name: (key, _one_test(fn)) for name, (key, fn, *_) in FEATURE_PROTOCOLS.items()
}


def check_protocols(names) -> None:
  known = {**FEATURE_PROTOCOLS, **TRAINING_PROTOCOLS}
  if isinstance(names, str) or not all(isinstance(n, str) for n in names):
    raise ConfigError(
      f"config.eval={names!r}: a tuple of protocol names; e.g. --config.eval=\"('linear', 'knn')\""
    )
  unknown = [n for n in names if n not in known]
  if unknown:
    raise ConfigError(
      f'config.eval={tuple(names)!r} names unknown protocols {unknown}: choose from '
      f"{', '.join(sorted(known))}; e.g. --config.eval=\"('linear', 'knn')\""
    )


def label_budgets(ec: ml_collections.ConfigDict) -> list[LabelBudget | None]:
  """The budgets each budgeted protocol runs with; [None] (all labels, plain keys) when empty."""
  return parse_label_budgets(ec.get('label_budgets', ())) or [None]


def ood_overrides(ec: ml_collections.ConfigDict) -> dict:
  """The config.data fields eval_config.ood_data sets (None values keep config.data's)."""
  ood = ec.get('ood_data') or {}
  items = ood.items() if hasattr(ood, 'items') else []
  return {k: v for k, v in items if v is not None}


def ood_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict | None:
  """config with eval_config.ood_data applied to config.data; None without overrides."""
  overrides = ood_overrides(config.eval_config)
  if not overrides:
    return None
  unknown = sorted(set(overrides) - set(config.data.keys()))
  if unknown:
    raise ConfigError(
      f'config.eval_config.ood_data sets {unknown}, which are not config.data fields; '
      f'choose from {", ".join(sorted(config.data.keys()))}'
    )
  ood = copy.deepcopy(config)
  with ood.unlocked():
    ood.data.update(overrides)
  return ood


def check_eval_config(checks: Checks) -> None:
  """Records every problem of config.eval / config.eval_config that needs no data, so a typo
  fails in seconds before pretraining rather than after it."""
  config = checks.config
  if checks.absorb(check_protocols, config.eval):
    if any(name in FINETUNES for name in config.eval):
      finetune_lib.check_config(checks)
    if 'linear_sgd' in config.eval:
      linear_sgd.check_config(checks)
  ec = config.eval_config
  checks.count('eval_config.few_per_class', 1)
  checks.count('eval_config.subset_seed', 0)
  checks.count('eval_config.knn_k', 1)
  checks.positive('eval_config.knn_temperature')
  checks.count('eval_config.batch_size', 1)
  checks.count('eval_config.max_examples', 0)
  checks.choice('eval_config.feature_dtype', ('float32', 'float16'))
  checks.boolean('eval_config.random_init')
  checks.absorb(label_budgets, ec)
  try:
    ood = ood_config(config)
  except ConfigError as e:
    checks.problems.extend(e.problems)
  else:
    if ood is not None:
      checks.absorb(
        shifts.check,
        ood.data.get('shift', ''),
        ood.data.get('shift_severity', 3),
        prefix='eval_config.ood_data',
      )


def check_eval_batch_sizes(checks: Checks, mesh: jax.sharding.Mesh) -> None:
  """The evaluation batches the devices must split evenly."""
  checks.absorb(
    sharding.check_batch_size, checks.config.eval_config.batch_size, mesh, 'eval_config.batch_size'
  )
  if any(name in FINETUNES for name in checks.config.eval):
    batch = checks.config.eval_config.finetune.batch_size
    checks.absorb(sharding.check_batch_size, batch, mesh, 'eval_config.finetune.batch_size')
  if 'linear_sgd' in checks.config.eval:
    batch = linear_sgd.settings(checks.config).batch_size
    checks.absorb(sharding.check_batch_size, batch, mesh, 'eval_config.linear_sgd.batch_size')


def finetune_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """eval_config.finetune with the crop scale and flip it leaves None taken from config.augment
  (the pretraining's, which suit the data: no flips for digits, say)."""
  ft = ml_collections.ConfigDict(config.eval_config.finetune.to_dict())
  if ft.crop_scale is None:
    ft.crop_scale = tuple(config.augment.crop_scale)
  if ft.flip is None:
    ft.flip = bool(config.augment.flip)
  return ft


# ----------------------------------------------------------------------------- on the mesh


@functools.lru_cache(maxsize=8)
def _encode(method: Method) -> Callable:
  """method.features as fn(args, x) for `encode_rows`; one per method, so it compiles once."""
  return lambda args, x: method.features(*args, x)


def extract_features(
  method: Method,
  params,
  model_state,
  split: EvalSplit | tuple[np.ndarray, np.ndarray],
  mesh,
  batch_size: int,
  feature_dtype: str = 'float32',
) -> Rows:
  """Encodes this process's share of a split a batch at a time; h (as `feature_dtype`) stays
  split over the mesh, each device the rows it encoded (`batched.Rows`), never the images."""
  return encode_rows(
    _encode(method), (params, model_state), split, mesh, batch_size, out_dtype=feature_dtype
  )


def _fingerprint(*arrays: np.ndarray) -> str:
  digest = hashlib.sha1()
  for a in arrays:
    a = np.ascontiguousarray(a)
    step = max(1, len(a) // 64)
    digest.update(repr((a.shape, a.dtype.str)).encode())
    digest.update(np.ascontiguousarray(a[::step]).tobytes())
  return digest.hexdigest()


class SupervisedCache:
  """Supervised-from-scratch accuracies by everything they depend on. The baseline ignores the
  encoder's weights, so within one run the random-init pass and every later evaluation reuse it;
  a run owns one (`train_and_evaluate`, `ssljax.evaluate`), so nothing outlives it."""

  def __init__(self):
    self._results: dict[tuple, dict[str, float]] = {}

  def get(self, key: tuple) -> dict[str, float] | None:
    found = self._results.get(key)
    return None if found is None else dict(found)

  def put(self, key: tuple, accuracy: dict[str, float]) -> None:
    self._results[key] = dict(accuracy)

  def __len__(self) -> int:
    return len(self._results)


class _Run:
  """One call of `evaluate`: features, label subsets and test sets, each computed once."""

  def __init__(self, config, method, params, model_state, splits, mesh, supervised_cache):
    self.config, self.ec = config, config.eval_config
    self.method, self.params, self.model_state, self.mesh = method, params, model_state, mesh
    self.supervised_cache = supervised_cache
    as_split = lambda s: s if isinstance(s, EvalSplit) else EvalSplit.of_arrays(*s)  # noqa: E731
    self.train = as_split(splits['train'])
    self.tests = {'': as_split(splits['test'])}
    if OOD[1:] in splits:
      self.tests[OOD] = as_split(splits[OOD[1:]])
    self._rows: dict[str, Rows] = {}
    self._known_labels: dict[str, tuple[np.ndarray, np.ndarray]] = {}

  def rows(self, name: str) -> Rows:
    """'train' or a test suffix -> its features split over the mesh, computed once."""
    if name not in self._rows:
      split = self.train if name == 'train' else self.tests[name]
      self._rows[name] = extract_features(
        self.method,
        self.params,
        self.model_state,
        split,
        self.mesh,
        self.ec.batch_size,
        self.ec.feature_dtype,
      )
      h = self._rows[name].h
      local = sum(shard.data.nbytes for shard in h.addressable_shards)
      logging.info(
        'features of %s: %s %s, %d bytes on this process',
        name or 'test',
        h.shape,
        h.dtype,
        local,
      )
    return self._rows[name]

  @property
  def train_labels(self) -> np.ndarray:
    return self.rows('train').labels

  def _labels(self, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(global positions, labels) of 'train' or a test suffix, in the split's global order,
    on every process: from its list where known without decoding (`EvalSplit.row_labels`),
    else from its features (an encoding pass). Computed once."""
    if name not in self._known_labels:
      self._known_labels[name] = self._read_labels(name)
    return self._known_labels[name]

  def _read_labels(self, name: str) -> tuple[np.ndarray, np.ndarray]:
    split = self.train if name == 'train' else self.tests[name]
    if split.row_labels is None:
      rows = self.rows(name)
      return rows.position, rows.labels
    positions, labels = split.positions(np.arange(split.size)), np.asarray(split.row_labels)
    if jax.process_count() > 1:
      n = int(np.max(multihost_utils.process_allgather(np.asarray(split.size))))
      pad = lambda a: np.pad(a, [(0, n - len(a))] + [(0, 0)] * (a.ndim - 1))  # noqa: E731
      known = np.arange(n) < split.size
      gathered = multihost_utils.process_allgather((pad(positions), pad(labels), known))
      positions, labels = (a[gathered[2]] for a in gathered[:2])
    order = np.argsort(positions, kind='stable')
    return positions[order], labels[order]

  @functools.cached_property
  def num_classes(self) -> int:
    labels = [self._labels(name)[1] for name in ('train', *self.tests)]
    return max(int(np.max(y, initial=0)) for y in labels) + 1

  def subset(
    self, budget: LabelBudget | None, labels: np.ndarray | None = None
  ) -> np.ndarray | None:
    """Indices into `labels` (default: the train features') of the budget's labelled train
    images (None: all)."""
    if budget is None:
      return None
    labels = self.train_labels if labels is None else labels
    return budget.subset(labels, seed=self.ec.subset_seed)

  def run_features(self, on_rows: Callable, budget: LabelBudget | None) -> dict[str, float]:
    return on_rows(self, self.subset(budget))

  def training_images(self, frozen: bool, budget: LabelBudget | None):
    """(recipe settings, positions in the train split of the budget's images): what a training
    protocol starts from, its images read as it trains."""
    ft = linear_sgd.settings(self.config) if frozen else finetune_config(self.config)
    positions, labels = self._labels('train')
    idx = self.subset(budget, labels)
    return ft, positions if idx is None else positions[idx]

  def start_variables(self, pretrained: bool, ft, image_shape: tuple[int, ...]) -> dict:
    """The encoder a training protocol starts from: the pretrained one, or a fresh init (the
    supervised baseline) laid out by config.mesh's rule."""
    if pretrained:
      return self.method.encoder_variables(self.params, self.model_state)
    return finetune_lib.random_encoder_variables(
      finetune_lib.finetune_encoder(self.method.encoder, ft),
      image_shape,
      int(ft.seed),
      self.mesh,
      self.config.mesh.fsdp_min_size,
    )

  def finetune(self, variables, train: EvalSplit, examples, ft, frozen: bool, **options):
    """`finetune_lib.finetune` of this run's encoder from `variables` on the `examples`
    (positions) of `train`, scored on the run's test sets."""
    return finetune_lib.finetune(
      self.method.encoder,
      variables,
      train,
      self.tests,
      num_classes=self.num_classes,
      num_train=len(examples),
      mesh=self.mesh,
      ft=ft,
      eval_batch_size=self.ec.batch_size,
      tf_augment=data.source(self.config).uses_tensorflow,
      frozen=frozen,
      fsdp_min_size=self.config.mesh.fsdp_min_size,
      train_examples=examples,
      **options,
    )

  def run_training(
    self, pretrained: bool, frozen: bool, budget: LabelBudget | None
  ) -> dict[str, float]:
    ft, chosen = self.training_images(frozen, budget)
    if not pretrained:
      c = self.config
      key = (
        c.method,
        *(c[f].to_json_best_effort(sort_keys=True) for f in ('model', 'augment', 'data')),
        ft.to_json_best_effort(sort_keys=True),
        (self.ec.subset_seed, self.ec.max_examples, self.ec.batch_size),
        budget and budget.key,
        _fingerprint(chosen, *[self._labels(name)[1] for name in ('train', *self.tests)]),
        tuple(self.tests),
        self.mesh.devices.size,
      )
      cached = self.supervised_cache.get(key)
      if cached is not None:
        return cached
    variables = self.start_variables(pretrained, ft, self.train.image_shape)
    result = self.finetune(variables, self.train, chosen, ft, frozen)
    if not pretrained:
      self.supervised_cache.put(key, result.accuracy)
    return result.accuracy


# CSV labels (config.data.labels): evaluators.multilabel_run's _Run, which it sets here when
# imported (by ssljax.evaluators, so before any evaluation): it builds on this module.
MULTI_LABEL_RUN: type | None = None


def evaluate(
  config: ml_collections.ConfigDict,
  method: Method,
  params,
  model_state,
  splits,
  mesh,
  supervised_cache: SupervisedCache | None = None,
  keep_in: str | None = None,
) -> dict[str, float]:
  """Accuracy (a fraction) of every protocol in config.eval, per label budget and test set.

  splits = {'train': .., 'test': .., ['ood': ..]}, each this process's share from
  `data.eval_split` (or its (images, labels) from `data.load_eval_split`); without 'ood',
  eval_config.ood_data (when set) is read here.
  `supervised_cache` lets evaluations of one run share the supervised baseline (a fresh one:
  nothing shared). With CSV labels (config.data.labels) the protocols are multi-label
  (`multilabel_run`): keys KEY/auroc/LABEL, KEY/auroc_macro, KEY/ap/... beside KEY, and
  `keep_in` (a workdir) keeps the classifiers trained with every label there.
  """
  config_checks.check(config, check_eval_config, lambda c: check_eval_batch_sizes(c, mesh))
  ec = config.eval_config
  if OOD[1:] not in splits and (ood := ood_config(config)) is not None:
    splits = {**splits, OOD[1:]: data.eval_split(ood, 'test')}
  cache = SupervisedCache() if supervised_cache is None else supervised_cache
  if labels_csv.is_multilabel(config):
    run = MULTI_LABEL_RUN(config, method, params, model_state, splits, mesh, cache, keep_in=keep_in)
  else:
    run = _Run(config, method, params, model_state, splits, mesh, cache)
  budgets = label_budgets(ec)
  results = {}
  for name in config.eval:
    if name in FEATURE_PROTOCOLS:
      key, _, budgeted, on_rows = FEATURE_PROTOCOLS[name]
      runs = [
        (b, functools.partial(run.run_features, on_rows, b))
        for b in (budgets if budgeted else [None])
      ]
    else:
      key, pretrained, frozen = TRAINING_PROTOCOLS[name]
      runs = [(b, functools.partial(run.run_training, pretrained, frozen, b)) for b in budgets]
    for budget, protocol in runs:
      name_key = key(ec) + (f'@{budget.key}' if budget is not None else '')
      for suffix, accuracy in protocol().items():
        results[name_key + suffix] = float(accuracy)
        logging.info('eval %s: %.4f', name_key + suffix, accuracy)
  return results


def evaluate_state(
  config: ml_collections.ConfigDict,
  method: Method,
  state: TrainState,
  init: Callable[[jax.Array], TrainState] | None,
  mesh: jax.sharding.Mesh,
  supervised_cache: SupervisedCache | None = None,
  keep_in: str | None = None,
) -> dict:
  """{'pretrained': {key: accuracy}, 'random_init': {..}}: the trained encoder of `state` and,
  when `init` (jitted, rng -> TrainState) is given, the same encoder as initialised with
  config.seed: the baseline self-supervision must beat. Empty without a labelled test split.
  `keep_in`: the workdir where a multi-label evaluation keeps the pretrained encoder's
  classifiers (`evaluators.kept`)."""
  splits = {s: data.eval_split(config, s) for s in ('train', 'test')}
  if not config.eval or splits['test'].size == 0 or data.dataset_info(config).num_classes == 0:
    logging.warning('No labelled test split: skipping evaluation.')
    return {'pretrained': {}, 'random_init': {}}
  cache = SupervisedCache() if supervised_cache is None else supervised_cache
  results = {
    'pretrained': evaluate(
      config,
      method,
      state.params,
      state.model_state,
      splits,
      mesh,
      supervised_cache=cache,
      keep_in=keep_in,
    )
  }
  if init is not None:
    fresh = init(jax.random.PRNGKey(config.seed))
    results['random_init'] = evaluate(
      config, method, fresh.params, fresh.model_state, splits, mesh, supervised_cache=cache
    )
  return results

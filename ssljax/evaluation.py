"""Runs the evaluation protocols named in `config.eval` on the frozen encoder's features h."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from ssljax import evaluators, sharding
from ssljax.methods import Method

Features = tuple[np.ndarray, np.ndarray]  # (features (N, d), labels (N,))


def _linear(train: Features, test: Features, num_classes: int, ec) -> float:
  return evaluators.linear_probe(*train, *test, num_classes=num_classes)['accuracy']


def _linear_few(train: Features, test: Features, num_classes: int, ec) -> float:
  idx = evaluators.per_class_subset(train[1], ec.few_per_class, seed=ec.subset_seed)
  return evaluators.linear_probe(train[0][idx], train[1][idx], *test, num_classes=num_classes)[
    'accuracy'
  ]


def _knn(train: Features, test: Features, num_classes: int, ec) -> float:
  return evaluators.knn_accuracy(
    *train, *test, num_classes=num_classes, k=ec.knn_k, temperature=ec.knn_temperature
  )


# name in config.eval -> (key in results.json, protocol)
PROTOCOLS: dict[str, tuple[Callable[[ml_collections.ConfigDict], str], Callable]] = {
  'linear': (lambda ec: 'linear', _linear),
  'linear_few': (lambda ec: f'linear_{ec.few_per_class}_per_class', _linear_few),
  'knn': (lambda ec: 'knn', _knn),
}


def check_protocols(names) -> None:
  unknown = [n for n in names if n not in PROTOCOLS]
  if unknown:
    raise ValueError(
      f'config.eval names unknown protocols {unknown}; choose from {sorted(PROTOCOLS)}'
    )


def extract_features(
  method: Method, params, model_state, images: np.ndarray, labels: np.ndarray, mesh, batch_size: int
) -> Features:
  """Encodes this process's images in global batches; every process gets all (h, label) pairs."""
  n_proc = jax.process_count()
  local_bs = batch_size // n_proc
  sizes = (
    multihost_utils.process_allgather(np.asarray(len(images))) if n_proc > 1 else [len(images)]
  )
  num_batches = max(math.ceil(int(np.max(sizes)) / local_bs), 0)
  replicated = sharding.replicated(mesh)

  @functools.partial(jax.jit, out_shardings=replicated)
  def encode(params, model_state, x, y, valid):
    return method.features(params, model_state, x), y, valid

  feats, labs = [], []
  for i in range(num_batches):
    x = images[i * local_bs : (i + 1) * local_bs]
    y = labels[i * local_bs : (i + 1) * local_bs]
    pad = local_bs - len(x)
    valid = np.concatenate([np.ones(len(x), bool), np.zeros(pad, bool)])
    x = np.concatenate([x, np.zeros((pad,) + images.shape[1:], images.dtype)])
    y = np.concatenate([y, np.zeros(pad, labels.dtype)])
    h, y, valid = encode(params, model_state, *sharding.to_global((x, y, valid), mesh))
    valid = np.asarray(valid)
    feats.append(np.asarray(h, np.float32)[valid])
    labs.append(np.asarray(y)[valid])
  if not feats:
    return np.zeros((0, 0), np.float32), np.zeros((0,), np.int32)
  return np.concatenate(feats), np.concatenate(labs)


def evaluate(
  config: ml_collections.ConfigDict, method: Method, params, model_state, splits, mesh
) -> dict[str, float]:
  """Accuracy (a fraction) of every protocol in config.eval; splits = {'train': .., 'test': ..}."""
  ec = config.eval_config
  batch_size = ec.batch_size
  sharding.check_batch_size(batch_size, mesh, 'eval_config.batch_size')
  train = extract_features(method, params, model_state, *splits['train'], mesh, batch_size)
  test = extract_features(method, params, model_state, *splits['test'], mesh, batch_size)
  num_classes = int(max(train[1].max(), test[1].max())) + 1
  results = {}
  for name in config.eval:
    key, protocol = PROTOCOLS[name]
    results[key(ec)] = float(protocol(train, test, num_classes, ec))
    logging.info('eval %s: %.4f', key(ec), results[key(ec)])
  return results

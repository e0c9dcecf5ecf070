"""The classifier an evaluation keeps in the run's workdir, so `python -m ssljax.predict` can use
it on new images: WORKDIR/classifier/

  linear.npz          the linear probe of the full train split: mean, std, W, b, label names
  finetune.npz/.json  the fine-tuned network (encoder and head variables) and its settings
  linear_sgd.npz/.json  the same for the papers' linear protocol (a frozen encoder)
  KIND_test.csv       its probabilities on the test split (path, one column per label)
  KIND_roc.json       the ROC curve of each label on the test split (the report draws them)

Written by process 0 of the evaluation of the pretrained encoder with every label.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
from flax import traverse_util
from jax.experimental import multihost_utils

from ssljax import paths
from ssljax.errors import RunNotFoundError
from ssljax.evaluators import multilabel

KINDS = ('finetune', 'linear_sgd', 'linear')  # the order predict prefers them in


def directory(workdir: str):
  return paths.path(workdir) / 'classifier'


def write_probabilities(
  target, files: Sequence[str], names: Sequence[str], probabilities: np.ndarray
) -> None:
  """A CSV: path, then one column per label; float32 values written to round-trip ('%.9g')."""
  out = io.StringIO()
  writer = csv.writer(out, lineterminator='\n')
  writer.writerow(['path', *names])
  for f, row in zip(files, np.asarray(probabilities, np.float32), strict=True):
    writer.writerow([f, *(f'{v:.9g}' for v in row.tolist())])
  paths.write_atomic(target, out.getvalue())


def _host(tree):
  """Every leaf whole on the host (gathered from the processes that hold parts of it)."""

  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)

  return jax.tree.map(one, tree)


def save_linear(workdir: str, probe, names: Sequence[str], test: tuple[list[str], np.ndarray]):
  """Keeps a `multilabel.Probe` and its test-split probabilities (files, (N, L))."""
  if jax.process_index() != 0:
    return
  buffer = io.BytesIO()
  np.savez(
    buffer,
    mean=probe.mean,
    std=probe.std,
    w=probe.w,
    b=probe.b,
    l2=probe.l2,
    names=np.array(names),
  )
  paths.write_atomic(directory(workdir) / 'linear.npz', buffer.getvalue())
  write_probabilities(directory(workdir) / 'linear_test.csv', *test[:1], names, test[1])


def save_finetune(
  workdir: str,
  kind: str,
  variables: dict,
  names: Sequence[str],
  ft: ml_collections.ConfigDict,
  frozen: bool,
  test: tuple[list[str], np.ndarray],
) -> None:
  """Keeps a fine-tuned Classifier's variables (`kind`: finetune or linear_sgd), how to
  rebuild it, and its test probabilities."""
  flat = traverse_util.flatten_dict(_host(variables), sep='/')  # every process joins the gather
  if jax.process_index() != 0:
    return
  buffer = io.BytesIO()
  np.savez(buffer, **flat)
  paths.write_atomic(directory(workdir) / f'{kind}.npz', buffer.getvalue())
  meta = {'names': list(names), 'frozen': bool(frozen), 'finetune': ft.to_dict()}
  paths.write_atomic(directory(workdir) / f'{kind}.json', json.dumps(meta, indent=2))
  write_probabilities(directory(workdir) / f'{kind}_test.csv', *test[:1], names, test[1])


ROC_POINTS = 200  # at most, per curve: enough to draw it


def save_roc(
  workdir: str, kind: str, names: Sequence[str], targets: np.ndarray, probabilities: np.ndarray
) -> None:
  """KIND_roc.json: {label: {'fpr': [...], 'tpr': [...], 'auroc': a}} of the test split, the
  uncertain targets left out as in the metrics (at most ROC_POINTS points a curve, the ends
  kept)."""
  if jax.process_index() != 0:
    return
  curves = {}
  for j, name in enumerate(names):
    known = targets[:, j] != multilabel.IGNORED
    y, p = targets[known, j] == 1, probabilities[known, j]
    fpr, tpr = multilabel.roc_curve(y, p)
    keep = np.unique(np.linspace(0, max(len(fpr) - 1, 0), ROC_POINTS).astype(int))[: len(fpr)]
    curves[name] = {
      'fpr': [round(float(v), 5) for v in fpr[keep]],
      'tpr': [round(float(v), 5) for v in tpr[keep]],
      'auroc': multilabel.auroc(y, p),
    }
  paths.write_atomic(directory(workdir) / f'{kind}_roc.json', json.dumps(curves))


def available(workdir: str) -> list[str]:
  return [k for k in KINDS if (directory(workdir) / f'{k}.npz').exists()]


def load(workdir: str, kind: str = '') -> tuple[str, dict]:
  """(kind, contents): the linear probe's arrays, or the fine-tuned network's {'variables',
  'names', 'frozen', 'finetune'}; `kind` '' takes finetune when kept, else linear."""
  kept = available(workdir)
  if kind and kind not in KINDS:
    raise RunNotFoundError(f'--classifier={kind!r}: one of {", ".join(KINDS)}')
  if not kept or (kind and kind not in kept):
    raise RunNotFoundError(
      f'{directory(workdir)} holds no {kind or "kept"} classifier: evaluate the run with CSV '
      "labels and config.eval including 'linear' (or 'finetune'), e.g. python -m "
      f'ssljax.evaluate --workdir={workdir}'
    )
  kind = kind or kept[0]
  with (directory(workdir) / f'{kind}.npz').open('rb') as f:
    arrays = dict(np.load(io.BytesIO(f.read()), allow_pickle=False))
  if kind == 'linear':
    arrays['names'] = [str(n) for n in arrays['names']]
    return kind, arrays
  meta = json.loads((directory(workdir) / f'{kind}.json').read_text())
  variables = traverse_util.unflatten_dict(arrays, sep='/')
  return kind, {**meta, 'variables': variables}

"""Input data: sources, augmented training views and evaluation splits.

This module imports no TensorFlow: the synthetic source (benchmarks, tests) runs without it, and
the TF pipeline (`pipeline`, `augment`, tensorflow_datasets) is imported on first use. What kind
of data a run reads is one `sources.Source`, picked by config.data.source; the example order
lives in `order`, the shared types in `types`; this module is the public API.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import itertools
from collections.abc import Iterator

import jax
import ml_collections
import numpy as np
from absl import logging

from ssljax.config.views import view_specs, view_specs_if_valid
from ssljax.data import augment_device, order, shifts
from ssljax.data.checks import check_config
from ssljax.data.sources import source, source_class, synthetic
from ssljax.data.types import DatasetInfo, EvalSplit
from ssljax.errors import DatasetNotFoundError

__all__ = [
  'DatasetInfo',
  'DatasetNotFoundError',
  'EvalSplit',
  'build_train_iterator',
  'check_available',
  'check_config',
  'dataset_info',
  'eval_split',
  'labelled_train_iterator',
  'load_eval_split',
  'skipped_files',
  'source',
  'view_specs',
  'view_specs_if_valid',
]


# ----------------------------------------------------------------------------- public API


def check_available(config: ml_collections.ConfigDict) -> None:
  """Fails fast, before any compilation, when the configured data is not on this machine."""
  source_class(config)
  shifts.check(config.data.get('shift', ''), config.data.get('shift_severity', 3))
  source(config).check_available()


def dataset_info(config: ml_collections.ConfigDict, workdir: str | None = None) -> DatasetInfo:
  """Sizes the model and the schedule need; cheap (metadata, a folder's file list, or the cached
  in-memory arrays). A folder's list is cached in `workdir`, so a restart does not list it."""
  return source(config).info(workdir)


def skipped_files(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """'path: why' of every unreadable image file this process met so far (folder sources)."""
  return source(config).skipped_files()


def build_train_iterator(
  config: ml_collections.ConfigDict, *, start_step: int = 0
) -> Iterator[dict]:
  """Endless process-local batches {'views': [float32 (B/P, S, S, C) in [0, 1], ...]}, or with
  config.augment.on='device' {'images', 'elements'} that the train step makes the views of
  (`ssljax.data.augment_device`).

  Batch `start_step` onwards equal what an uninterrupted run yields from that step (exactly for
  in-memory sources; see `pipeline` for streamed ones).
  """
  device = config.augment.get('on', 'host') == 'device'
  specs = None if device else view_specs(config)
  batch_size, processes = int(config.batch_size), jax.process_count()
  if batch_size % processes:
    raise ValueError(f'batch_size {batch_size} is not divisible by {processes} processes')
  if device:
    return (
      {'images': images, 'elements': augment_device.split_elements(elements)}
      for elements, images in source(config).base_images(start_step)
    )
  return ({'views': list(views)} for views in source(config).train_views(specs, start_step))


def eval_split(config: ml_collections.ConfigDict, split: str) -> EvalSplit:
  """This process's share of the un-augmented 'train' or 'test' split, read batch by batch.

  The split is capped to config.eval_config.max_examples (when > 0) first, then process p keeps
  examples i with i % process_count == p. A `config.data.shift` corrupts the images
  (`ssljax.data.shifts`), the same ones whatever the process count or batch size.
  """
  if split not in ('train', 'test'):
    raise ValueError(f"split must be 'train' or 'test', got {split!r}")
  unshifted = source(config).eval_split(split)
  shift = config.data.get('shift', '')
  if not shift:
    return unshifted

  severity, seed = config.data.get('shift_severity', 3), config.data.get('shift_seed', 0)

  def shifted(x: np.ndarray, positions: np.ndarray) -> np.ndarray:
    return shifts.apply(x, positions, shift=shift, severity=severity, seed=seed)

  def read(batch: int) -> Iterator:
    for first, (x, y, valid) in zip(itertools.count(0, batch), unshifted.batches(batch)):
      yield shifted(x, unshifted.positions(first + np.arange(batch))), y, valid

  def read_rows(parts) -> Iterator:
    taken: collections.deque = collections.deque()

    def noted():
      for rows in parts:
        taken.append(rows)
        yield rows

    with contextlib.closing(unshifted.read_rows(noted())) as batches:
      for x, y, valid in batches:
        yield shifted(x, unshifted.positions(taken.popleft())), y, valid

  return dataclasses.replace(
    unshifted, read=read, read_rows=None if unshifted.read_rows is None else read_rows
  )


def load_eval_split(config: ml_collections.ConfigDict, split: str) -> tuple[np.ndarray, np.ndarray]:
  """`eval_split` in memory: (images float32 (N, S, S, C) in [0, 1], labels int32 (N,)) of the
  readable examples of this process; for small data and what needs the pixels."""
  return eval_split(config, split).take()


def labelled_train_iterator(
  split: EvalSplit,
  rows: np.ndarray,
  spec: ml_collections.ConfigDict,
  *,
  batch_size: int,
  seed: int,
  tf_augment: bool = True,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Endless (augmented images, labels) batches of `batch_size` from this process's `rows` of an
  evaluation split, read a batch at a time, so memory holds a few batches whatever the split's
  size (a split read only in order, a tfds dataset prepared as tfrecord, is read into memory).

  For supervised training on a labelled subset (fine-tuning, the linear protocol, the
  from-scratch baseline): with `rows` sorted (a set), element e of the stream is
  rows[perm_(e // n)[e % n]] (a seeded permutation per epoch, as `global_indices`), augmented
  by `augment.augment_view(spec)` seeded by (seed, process, e); an unreadable image is replaced
  by the next readable one of `rows`. tf_augment=False (a source without TensorFlow:
  `Source.uses_tensorflow`) crops and flips in NumPy instead: a random window of
  spec.crop_scale[0]'s side fraction or more, nearest-resized back.
  """
  rows = np.unique(np.asarray(rows, np.int64))
  if len(rows) == 0:
    raise ValueError('no labelled images to train on')
  if split.read_rows is None:
    logging.warning(
      'This evaluation split is read only in order: its %d training images are held in memory '
      '(prepare a tfds dataset with --file_format=array_record to stream them).',
      len(rows),
    )
    split, rows = EvalSplit.of_arrays(*split.take(rows)), None
  batches = _labelled_steps(split, rows, batch_size=batch_size, seed=seed)
  if tf_augment:
    from ssljax.data import pipeline

    return pipeline.labelled_views(batches, spec, seed=seed)
  return synthetic.labelled_views(batches, spec, seed=seed)


def _labelled_steps(
  split: EvalSplit, rows: np.ndarray | None, *, batch_size: int, seed: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Un-augmented (images, labels) of the stream `labelled_train_iterator` describes (rows None:
  all of the split's), the split's reader working ahead."""
  rows = np.arange(split.size) if rows is None else rows
  walk = dict(
    batch_size=batch_size, num_examples=len(rows), seed=seed, process_index=0, process_count=1
  )
  picks: collections.deque = collections.deque()

  def parts():
    for step in itertools.count():
      picks.append(order.global_indices(step, **walk))
      yield rows[picks[-1]]

  batches = split.read_rows(parts())
  try:
    for images, labels, valid in batches:
      pick = picks.popleft()
      for j in np.flatnonzero(~valid):
        images[j], labels[j] = _next_readable(split, rows, int(pick[j]))
      yield images, labels
  finally:
    batches.close()


def _next_readable(split: EvalSplit, rows: np.ndarray, i: int) -> tuple[np.ndarray, np.ndarray]:
  """(image, label) of the first readable of rows[i + 1], rows[i + 2], ... (wrapping)."""
  for k in range(1, len(rows) + 1):
    candidate = rows[(i + k) % len(rows)]
    with contextlib.closing(split.read_rows(iter([np.array([candidate])]))) as one:
      images, labels, valid = next(one)
    if valid[0]:
      return images[0], labels[0]
  raise ValueError(f'none of the {len(rows)} labelled images of this process can be read')

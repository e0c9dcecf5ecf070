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
from ssljax.data.types import DatasetInfo, EvalSplit, read_arrays
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

  def read_examples(parts) -> Iterator:
    taken: collections.deque = collections.deque()

    def noted():
      for positions in parts:
        taken.append(positions)
        yield positions

    with contextlib.closing(unshifted.read_examples(noted())) as batches:
      for x, y, valid in batches:
        yield shifted(x, taken.popleft()), y, valid

  examples = None if unshifted.read_examples is None else read_examples
  return dataclasses.replace(unshifted, read=read, read_examples=examples)


def load_eval_split(config: ml_collections.ConfigDict, split: str) -> tuple[np.ndarray, np.ndarray]:
  """`eval_split` in memory: (images float32 (N, S, S, C) in [0, 1], labels int32 (N,)) of the
  readable examples of this process; for small data and what needs the pixels."""
  return eval_split(config, split).take()


def labelled_train_iterator(
  split: EvalSplit,
  examples: np.ndarray,
  spec: ml_collections.ConfigDict,
  *,
  batch_size: int,
  seed: int,
  tf_augment: bool = True,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Endless (augmented images, labels) batches of this process's batch_size / P rows from the
  `examples` (positions in an evaluation split, the same on every process) of `split`, read by
  index a few batches ahead, so memory holds a few batches whatever the split's size.

  For supervised training on a labelled subset (fine-tuning, the linear protocol, the
  from-scratch baseline), ordered as training is: with the examples sorted (a set), global
  element e is examples[perm_(e // n)[e % n]] (a seeded permutation per epoch,
  `order.global_indices`), process p takes the p-th slice of each global batch, and element e
  is augmented by `augment.augment_view(spec)` seeded by (seed, e): the batches do not depend
  on the process count. An unreadable image is replaced by the next readable example.
  tf_augment=False (a source without TensorFlow: `Source.uses_tensorflow`) crops and flips in
  NumPy instead: a random window of spec.crop_scale[0]'s side fraction or more,
  nearest-resized back.

  A split read only in order (a tfds dataset prepared as tfrecord) has each process hold its
  own examples in memory and draw from them alone.
  """
  examples = np.unique(np.asarray(examples, np.int64))
  processes = jax.process_count()
  if len(examples) == 0:
    raise ValueError('no labelled images to train on')
  if batch_size % processes:
    raise ValueError(f'batch size {batch_size} is not divisible by {processes} processes')
  walk = dict(
    batch_size=batch_size, seed=seed, process_index=jax.process_index(), process_count=processes
  )
  if split.read_examples is None:
    logging.warning(
      'This evaluation split is read only in order: its training images are held in memory '
      '(prepare a tfds dataset with --file_format=array_record to stream them).'
    )
    images, labels = split.take(split.local_rows(examples))
    if len(labels) == 0:
      raise ValueError(f'this process holds none of the {len(examples)} labelled images')
    split = dataclasses.replace(
      EvalSplit.of_arrays(images, labels), read_examples=read_arrays(images, labels)
    )
    examples = np.arange(len(labels))
    walk.update(batch_size=batch_size // processes, process_index=0, process_count=1)
  batches = _labelled_steps(split, examples, walk)
  if tf_augment:
    from ssljax.data import pipeline

    return pipeline.labelled_views(batches, spec, seed=seed)
  return synthetic.labelled_views(batches, spec, seed=seed, batch_size=walk['batch_size'])


def _labelled_steps(
  split: EvalSplit, examples: np.ndarray, walk: dict
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """Un-augmented (global elements, images, labels) of this process, step by step, of the
  stream `labelled_train_iterator` describes; `walk`: `order.global_indices`'s arguments."""
  picks: collections.deque = collections.deque()

  def parts():
    for step in itertools.count():
      picks.append(order.global_indices(step, num_examples=len(examples), **walk))
      yield examples[picks[-1]]

  batches = split.read_examples(parts())
  try:
    for step, (images, labels, valid) in enumerate(batches):
      pick = picks.popleft()
      for j in np.flatnonzero(~valid):
        images[j], labels[j] = _next_readable(split, examples, int(pick[j]))
      shard = {k: walk[k] for k in ('batch_size', 'process_index', 'process_count')}
      yield order.local_elements(step, **shard), images, labels
  finally:
    batches.close()


def _next_readable(split: EvalSplit, examples: np.ndarray, i: int):
  """(image, label) of the first readable of examples[i + 1], examples[i + 2], ... (wrapping)."""
  for k in range(1, len(examples) + 1):
    candidate = examples[(i + k) % len(examples)]
    with contextlib.closing(split.read_examples(iter([np.array([candidate])]))) as one:
      images, labels, valid = next(one)
    if valid[0]:
      return images[0], labels[0]
  raise ValueError(f'none of the {len(examples)} labelled images can be read')

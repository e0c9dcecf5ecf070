"""Training batches for `augment.on='device'`: each example's base image and its global element
index, nothing more; the train step makes the views (`ssljax.data.augment_device`).

The examples follow `order.global_indices`, as on the host path, so a resumed run reads the same
batches bit for bit. No TensorFlow: in-memory arrays (digits, idx files, synthetic) are gathered
with numpy and folders are decoded by `random_access`'s threads (to data.image_size x
FOLDER_MARGIN, the host path's base too, quantised to uint8). Streamed tfds datasets (ImageNet)
are decoded by tf.data to the same base: the shorter side to that size, the centred square.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import jax
import ml_collections
import numpy as np

from ssljax.data import augment_device, order, random_access, sources, synthetic


def train_iterator(config: ml_collections.ConfigDict, *, start_step: int) -> Iterator[dict]:
  """Endless {'images': (B/P, H, W, C) uint8 (float32 for float sources), 'elements': (B/P, 2)
  uint32} batches of this process from `start_step` on."""
  batch_size, processes = int(config.batch_size), jax.process_count()
  if batch_size % processes:
    raise ValueError(f'batch_size {batch_size} is not divisible by {processes} processes')
  if config.data.source == 'folder':
    steps = _folder_steps(config, start_step)
  elif sources.is_streamed(config.data):
    from ssljax.data import pipeline  # TensorFlow decodes tfds records

    steps = pipeline.base_batches(config, start_step=start_step)
  else:
    steps = _array_steps(config, start_step)
  return (
    {'images': images, 'elements': augment_device.split_elements(elements)}
    for elements, images in steps
  )


def _array_steps(config, start_step: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  if config.data.source == 'synthetic':
    images, _ = synthetic.arrays(config, 'train')
  else:
    images = sources.load(config.data, 'train').images
  if len(images) == 0:
    raise ValueError('the train split is empty')
  shard = dict(
    batch_size=int(config.batch_size),
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )
  for step in itertools.count(start_step):
    index = order.global_indices(step, num_examples=len(images), seed=int(config.seed), **shard)
    yield order.local_elements(step, **shard), images[index]


def _folder_steps(config, start_step: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  side = int(round(config.data.image_size * sources.FOLDER_MARGIN))
  steps = random_access.train_steps(
    sources.folder_reader(config.data, side),
    seed=int(config.seed),
    batch_size=int(config.batch_size),
    start_step=start_step,
  )
  try:
    for elements, images in steps:
      yield elements, np.round(images * 255).astype(np.uint8)
  finally:
    steps.close()

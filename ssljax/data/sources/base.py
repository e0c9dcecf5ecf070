"""What a data source is: the interface every kind implements, and the base of the sources held
in memory. The pipeline and the loop ask a `Source`, never which kind it is.

No TensorFlow at import: a source imports `ssljax.data.pipeline` (tf.data) only where it needs it.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator, Sequence
from typing import ClassVar

import jax
import ml_collections
import numpy as np

from ssljax.config.checks import Checks
from ssljax.data import order
from ssljax.data.types import DatasetInfo, EvalSplit

# Base images (augment.on='device', and folders on the host path) are decoded this much larger
# than data.image_size, so the random crops have room.
BASE_MARGIN = 1.15

Steps = Iterator[tuple[np.ndarray, np.ndarray]]  # (global elements (B/P,), images (B/P, ...))


@dataclasses.dataclass(frozen=True)
class Split:
  """One split in memory: images uint8 (or float32 in [0, 1]) (N, H, W, C), labels int32 (N,)."""

  images: np.ndarray
  labels: np.ndarray
  num_classes: int


class Source:
  """One kind of data (`config.data.source`). A new kind is a subclass in its own file of this
  folder plus one line in `SOURCES`; `InMemory` does most of the work for data that fits in
  memory.

  Training batches follow `order.global_indices` wherever the kind can read by index, so a
  resumed run reads the batches an uninterrupted one would, whatever the process count.
  """

  # Its views and evaluation splits are made by tf.data; False: NumPy only (no TensorFlow).
  uses_tensorflow: ClassVar[bool] = True

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.data = config.data

  @classmethod
  def open(cls, config: ml_collections.ConfigDict) -> Source:
    """The source for `config`; a kind may pick a subclass here (tfds: in memory or streamed)."""
    return cls(config)

  @classmethod
  def check_config(cls, checks: Checks) -> None:
    """Records the problems of this kind's own config.data fields in `checks`."""

  def check_available(self) -> None:
    """Raises DatasetNotFoundError if the data is not on this machine (no decoding, no network)."""

  def info(self, workdir: str | None = None) -> DatasetInfo:
    """Sizes the model and the schedule need, cheaply; `workdir` may cache what it lists."""
    raise NotImplementedError

  def train_views(self, specs: Sequence[ml_collections.ConfigDict], start_step: int) -> Iterator:
    """Endless sequences of views [float32 (B/P, S, S, C) in [0, 1] per spec] of this process,
    from `start_step` on."""
    raise NotImplementedError

  def base_images(self, start_step: int) -> Steps:
    """Endless (global elements, base images) of this process from `start_step` on, for
    augment.on='device': the train step makes the views (`ssljax.data.augment_device`)."""
    raise NotImplementedError

  def eval_split(self, split: str) -> EvalSplit:
    """This process's share of the un-augmented 'train' or 'test' split (unshifted; see
    `ssljax.data.eval_split`)."""
    raise NotImplementedError

  def skipped_files(self) -> tuple[str, ...]:
    """'path: why' of every unreadable file this process met so far."""
    return ()

  # ---------------------------------------------------------------------------- shared helpers

  def split_name(self, split: str) -> str:
    """The source's name for the 'train' / 'test' split."""
    return self.data.train_split if split == 'train' else self.data.test_split

  def image_shape(self, channels: int) -> tuple[int, int, int]:
    size = int(self.data.image_size)
    return (size, size, channels)

  def base_side(self) -> int:
    """The side base images are decoded to: data.image_size x BASE_MARGIN."""
    return int(round(self.data.image_size * BASE_MARGIN))

  def max_examples(self) -> int:
    return int(self.config.eval_config.get('max_examples', 0))


class InMemory(Source):
  """A source whose splits are arrays in memory: implement `load`. Steps gather the examples
  `order.global_indices` names, so training batches are exact on resume."""

  def load(self, split: str) -> Split:
    """The whole 'train' or 'test' split in memory (cache it: it is asked for often)."""
    raise NotImplementedError

  def fixed_split(self, split: str) -> str:
    """`split_name` for sources whose only splits are train and test."""
    name = self.split_name(split)
    if name not in ('train', 'test'):
      raise ValueError(f'source {self.data.source!r} has splits train and test, not {name!r}')
    return name

  def info(self, workdir: str | None = None) -> DatasetInfo:
    train = self.load('train')
    channels = train.images.shape[-1]
    return DatasetInfo(len(train.labels), train.num_classes, self.image_shape(channels))

  def train_views(self, specs, start_step: int) -> Iterator:
    from ssljax.data import pipeline  # tf.data decodes and augments

    return pipeline.in_memory_views(self.config, self.load('train').images, specs, start_step)

  def base_images(self, start_step: int) -> Steps:
    images = self.load('train').images
    if len(images) == 0:
      raise ValueError('the train split is empty')
    shard = dict(
      batch_size=int(self.config.batch_size),
      process_index=jax.process_index(),
      process_count=jax.process_count(),
    )
    seed = int(self.config.seed)
    for step in itertools.count(start_step):
      index = order.global_indices(step, num_examples=len(images), seed=seed, **shard)
      yield order.local_elements(step, **shard), images[index]

  def eval_split(self, split: str) -> EvalSplit:
    from ssljax.data import pipeline  # tf.data resizes

    arrays = self.load(split)
    share = order.process_share(len(arrays.labels), self.max_examples())
    images, labels = arrays.images[share], arrays.labels[share]
    size = int(self.data.image_size)
    return EvalSplit(
      len(share),
      self.image_shape(images.shape[-1]),
      lambda batch: pipeline.array_eval_batches(images, labels, size, batch),
      read_examples=pipeline.array_eval_examples(arrays.images, arrays.labels, size),
      row_labels=labels,
    )

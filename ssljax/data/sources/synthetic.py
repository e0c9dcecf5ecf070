"""Synthetic source: random images made with numpy, no TensorFlow.

It feeds benchmarks (on machines without TF) and tests at negligible cost: the views are cheap
numpy crops/flips, and only POOL distinct batches are built, then cycled (step s yields the batch
of step s % POOL, so resuming still reproduces an uninterrupted run). Batch format and host split
are those of the real pipeline.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Iterator

import jax
import ml_collections
import numpy as np

from ssljax.config.checks import Checks
from ssljax.data import order
from ssljax.data.sources.base import InMemory, Split
from ssljax.data.types import DatasetInfo, EvalSplit

POOL = 4  # distinct training batches; each costs local_batch x views in memory


class Synthetic(InMemory):
  """data.num_examples random train images (a quarter as many test), data.num_classes labels."""

  uses_tensorflow = False

  @classmethod
  def check_config(cls, checks: Checks) -> None:
    checks.count('data.num_classes', 2)
    checks.choice('data.channels', (1, 3))
    checks.count('data.num_examples', 1)

  def info(self, workdir: str | None = None) -> DatasetInfo:
    d = self.data
    return DatasetInfo(int(d.num_examples), int(d.num_classes), self.image_shape(int(d.channels)))

  def load(self, split: str) -> Split:
    return Split(*arrays(self.config, split), int(self.data.num_classes))

  def train_views(self, specs, start_step: int) -> Iterator[list[np.ndarray]]:
    """Cycles POOL batches of NumPy crops and flips."""
    images, _ = arrays(self.config, 'train')
    pool: dict[int, list[np.ndarray]] = {}
    for step in itertools.count(start_step):
      k = step % POOL
      if k not in pool:
        pool[k] = _batch(self.config, specs, k, images)
      yield pool[k]

  def eval_split(self, split: str) -> EvalSplit:
    """Already at data.image_size: float32 in [0, 1], no resizing."""
    images, labels = arrays(self.config, split)
    share = order.process_share(len(labels), self.max_examples())

    def read_examples(parts):
      for positions in parts:
        pixels = images[positions].astype(np.float32) / 255.0
        yield pixels, labels[positions], np.ones(len(positions), bool)

    mine = EvalSplit.of_arrays(images[share].astype(np.float32) / 255.0, labels[share])
    return dataclasses.replace(mine, read_examples=read_examples)


@functools.lru_cache(maxsize=4)
def _arrays(
  num: int, size: int, channels: int, num_classes: int, seed: int, split: str
) -> tuple[np.ndarray, np.ndarray]:
  n = num if split == 'train' else max(1, num // 4)
  rng = np.random.default_rng((seed % 2**63, 0 if split == 'train' else 1))
  images = rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8)
  labels = rng.integers(0, num_classes, n).astype(np.int32)
  images.flags.writeable = labels.flags.writeable = False
  return images, labels


def arrays(config: ml_collections.ConfigDict, split: str) -> tuple[np.ndarray, np.ndarray]:
  """(uint8 images (N, S, S, C), int32 labels (N,)): data.num_examples train, a quarter test."""
  d = config.data
  return _arrays(
    int(d.num_examples),
    int(d.image_size),
    int(d.channels),
    int(d.num_classes),
    int(config.seed),
    split,
  )


def _pixel_index(offsets: np.ndarray, side: int, out: int) -> np.ndarray:
  """(local, out) source rows/columns: a crop at `offsets`, or nearest upsampling if out > side."""
  if out <= side:
    return offsets[:, None] + np.arange(out)
  return np.broadcast_to(np.arange(out) * side // out, (len(offsets), out))


def _batch(config, specs, step: int, images: np.ndarray) -> list[np.ndarray]:
  batch_size, processes, process = int(config.batch_size), jax.process_count(), jax.process_index()
  local = batch_size // processes
  mine = slice(process * local, (process + 1) * local)
  index = order.global_indices(
    step,
    batch_size=batch_size,
    num_examples=len(images),
    seed=int(config.seed),
    process_index=process,
    process_count=processes,
  )
  x, side = images[index], images.shape[1]
  views = []
  for v, spec in enumerate(specs):
    out = int(spec.image_size)
    # Drawn for the global batch and sliced, so the global batch ignores the process count.
    rng = np.random.default_rng((int(config.seed) % 2**63, step, v))
    offsets = rng.integers(0, max(side - out, 0) + 1, (2, batch_size))[:, mine]
    flips = (rng.random(batch_size) < 0.5)[mine] & bool(spec.flip)
    rows = _pixel_index(offsets[0], side, out)
    cols = _pixel_index(offsets[1], side, out)
    cols = np.where(flips[:, None], cols[:, ::-1], cols)
    view = x[np.arange(local)[:, None, None], rows[:, :, None], cols[:, None, :]]
    view = view.astype(np.float32)
    view *= np.float32(1 / 255)
    view.flags.writeable = False  # pooled: the same array is yielded again
    views.append(view)
  return views


def labelled_views(
  batches: Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]],
  spec: ml_collections.ConfigDict,
  *,
  seed: int,
  batch_size: int,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """NumPy stand-in for `pipeline.labelled_views` (no TensorFlow): square random crops of at
  least sqrt(spec.crop_scale[0]) of the side, nearest-resized to spec.image_size, random flips,
  drawn for each global batch of `batch_size` seeded by (seed, step), each process its rows."""
  out = int(spec.image_size)
  for elements, images, labels in batches:
    step, first = divmod(int(elements[0]), batch_size)
    mine = slice(first, first + len(labels))
    side = images.shape[1]
    rng = np.random.default_rng((int(seed) % 2**63, 0, step))
    crop = np.round(side * rng.uniform(np.sqrt(spec.crop_scale[0]), 1.0, batch_size)).astype(int)
    crop = np.maximum(crop, 1)[mine]
    y0 = (rng.random(batch_size)[mine] * (side - crop + 1)).astype(int)
    x0 = (rng.random(batch_size)[mine] * (side - crop + 1)).astype(int)
    grid = np.arange(out) / out
    rows = y0[:, None] + (grid[None] * crop[:, None]).astype(int)
    cols = x0[:, None] + (grid[None] * crop[:, None]).astype(int)
    flips = (rng.random(batch_size)[mine] < 0.5) & bool(spec.flip)
    cols = np.where(flips[:, None], cols[:, ::-1], cols)
    x = images[np.arange(len(labels))[:, None, None], rows[:, :, None], cols[:, None, :]]
    yield np.asarray(x, np.float32), labels

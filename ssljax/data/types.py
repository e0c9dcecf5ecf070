"""Types the data modules share: what the model is told about a dataset, an evaluation split."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
from collections.abc import Callable, Iterable, Iterator

import jax
import numpy as np


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  num_train: int  # examples in the train split (global, all hosts)
  num_classes: int
  image_shape: tuple[int, int, int]  # (H, W, C) of the model input


Batch = tuple[np.ndarray, np.ndarray, np.ndarray]  # images, labels, valid


def padded(images: np.ndarray, labels: np.ndarray, batch: int) -> Batch:
  """The last, short batch of a split padded to `batch` rows with zeros, marked invalid."""
  pad = batch - len(labels)
  return (
    np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)]),
    np.concatenate([labels, np.zeros(pad, labels.dtype)]),
    np.arange(batch) < len(labels),
  )


@dataclasses.dataclass(frozen=True)
class EvalSplit:
  """This process's share of an evaluation split, read a batch at a time so no more than a batch
  of images is ever in memory. Process p holds the split's examples p, p + P, p + 2P, ... (its
  rows 0, 1, 2, ...), or, with `start` set, the examples start, start + 1, ... (a contiguous
  block: what a source that reads only this process's records, tfds's, gives). `batches(b)`
  yields exactly ceil(size / b) batches of b rows: images float32 (b, S, S, C) in [0, 1],
  labels int32 (b,), valid bool (b,); the padding past the end and unreadable files are invalid
  rows.

  A source that reads by index also gives `read_examples`: for each array of examples it is
  handed (positions in the split, any process's; an iterable consumed as the batches are
  taken, so a reader can work ahead), the (images, labels, valid) of those examples in that
  order. The supervised protocols stream their images with it
  (`ssljax.data.labelled_train_iterator`), each process its part of every global batch, as
  training reads. `row_labels`: this process's labels by row when they are known without
  decoding an image (a folder's list, arrays)."""

  size: int  # rows of this process
  image_shape: tuple[int, int, int]  # (S, S, C)
  read: Callable[[int], Iterator[Batch]]
  start: int | None = None  # None: interleaved over the processes
  read_examples: Callable[[Iterable[np.ndarray]], Iterator[Batch]] | None = None
  row_labels: np.ndarray | None = None

  def positions(self, rows: np.ndarray) -> np.ndarray:
    """The split's example index of each of this process's `rows`."""
    return _positions(self.start, rows)

  def local_rows(self, positions: np.ndarray) -> np.ndarray:
    """This process's rows of the examples at `positions` (those it holds, in their order)."""
    positions = np.asarray(positions, np.int64)
    if self.start is not None:
      mine = (positions >= self.start) & (positions < self.start + self.size)
      return positions[mine] - self.start
    n_proc, proc = jax.process_count(), jax.process_index()
    return positions[positions % n_proc == proc] // n_proc

  def batches(self, batch: int) -> Iterator[Batch]:
    return self.read(batch)

  @classmethod
  def of_arrays(cls, images: np.ndarray, labels: np.ndarray) -> EvalSplit:
    """A split already in memory (this process's rows): read by index on one process, where
    they are the whole split."""

    def read(batch: int) -> Iterator[Batch]:
      for first in range(0, len(labels), batch):
        yield padded(images[first : first + batch], labels[first : first + batch], batch)

    whole = jax.process_count() == 1
    examples = read_arrays(images, labels) if whole else None
    return cls(len(labels), tuple(images.shape[1:]), read, None, examples, labels)

  @classmethod
  def by_index(
    cls,
    size: int,
    image_shape: tuple[int, int, int],
    read_examples: Callable[[Iterable[np.ndarray]], Iterator[Batch]],
    start: int | None = None,
  ) -> EvalSplit:
    """A split read only by index: its batches in order are its rows 0, 1, ... read so."""

    def read(batch: int) -> Iterator[Batch]:
      parts = (
        _positions(start, np.arange(first, min(first + batch, size)))
        for first in range(0, size, batch)
      )
      with contextlib.closing(read_examples(parts)) as batches:
        for x, y, valid in batches:
          x, y, _ = padded(x, y, batch)
          yield x, y, np.pad(valid, (0, batch - len(valid)))

    return cls(size, image_shape, read, start, read_examples)

  def with_labels(self, fn: Callable[[np.ndarray], np.ndarray]) -> EvalSplit:
    """This split with every batch's labels replaced by fn(labels) (a CSV run's targets)."""

    def mapped(batches: Iterator[Batch]) -> Iterator[Batch]:
      with contextlib.closing(batches):
        for x, y, valid in batches:
          yield x, fn(y), valid

    return dataclasses.replace(
      self,
      read=lambda batch: mapped(self.read(batch)),
      read_examples=None
      if self.read_examples is None
      else lambda parts: mapped(self.read_examples(parts)),
      row_labels=None if self.row_labels is None else fn(self.row_labels),
    )

  def take(self, rows: np.ndarray | None = None, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of the readable rows among `rows` (default all), in row order, in memory:
    for what needs the pixels themselves (fine-tuning, pictures)."""
    wanted = np.zeros(self.size, bool)
    wanted[np.arange(self.size) if rows is None else np.asarray(rows, np.int64)] = True
    end = int(np.flatnonzero(wanted).max(initial=-1)) + 1  # past it, nothing is wanted
    xs, ys = [], []
    with contextlib.closing(self.batches(batch)) as batches:
      for first, (x, y, valid) in zip(itertools.count(0, batch), batches):
        keep = valid & np.pad(wanted[first : first + batch], (0, max(0, first + batch - self.size)))
        xs.append(x[keep])
        ys.append(y[keep])
        if first + batch >= end:
          break
    if not xs:
      return np.zeros((0, *self.image_shape), np.float32), np.zeros((0,), np.int32)
    return np.concatenate(xs), np.concatenate(ys).astype(np.int32)


def _positions(start: int | None, rows: np.ndarray) -> np.ndarray:
  """`EvalSplit.positions` of a split starting at `start` (None: interleaved)."""
  rows = np.asarray(rows, np.int64)
  if start is not None:
    return start + rows
  return jax.process_index() + jax.process_count() * rows


def read_arrays(
  images: np.ndarray, labels: np.ndarray
) -> Callable[[Iterable[np.ndarray]], Iterator[Batch]]:
  """`EvalSplit.read_examples` of arrays in memory that hold the split's examples by index."""

  def read_examples(parts: Iterable[np.ndarray]) -> Iterator[Batch]:
    for rows in parts:
      yield images[rows], labels[rows], np.ones(len(rows), bool)

  return read_examples

"""Examples read by index a step at a time: each process decodes the examples
`order.global_indices` names for its share of a step, on a pool of threads, a few steps ahead.
So a resumed run reads exactly the batches an uninterrupted one would, and memory holds a few
batches whatever the dataset's size. Evaluation splits are read the same way, in order, a batch
at a time. Image folders (`folder`) are read this way. NumPy and Pillow: no TensorFlow.
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import os
from collections.abc import Callable, Iterable, Iterator

import jax
import numpy as np
from PIL import Image

from ssljax.data import images, order

AHEAD = 2  # steps (or evaluation batches) decoded ahead of the one being consumed
EVAL_CROP = 0.875  # evaluation: the shorter side to S / 0.875, then the centre S x S


def resized(pixels: np.ndarray, channels: int, side: int) -> np.ndarray:
  """float (H, W, C) -> float32 (side, side, channels) in [0, 1]: the shorter side resized to
  `side` (bicubic, on the float pixels: 16-bit detail is kept), the centred square; grey <->
  colour as the source needs."""
  if pixels.shape[-1] != channels:
    if channels == 1:  # ITU-R 601 luma, as Pillow's 'L'
      pixels = pixels @ np.asarray([[0.299], [0.587], [0.114]], np.float32)
    else:
      pixels = np.repeat(pixels, 3, axis=-1)
  h, w = pixels.shape[:2]
  scale = side / min(w, h)
  nw, nh = max(side, round(w * scale)), max(side, round(h * scale))
  left, top = (nw - side) // 2, (nh - side) // 2
  planes = [
    Image.fromarray(np.ascontiguousarray(pixels[..., c]), mode='F')
    .resize((nw, nh), Image.BICUBIC, reducing_gap=3.0)  # a fast box reduction first
    .crop((left, top, left + side, top + side))
    for c in range(channels)
  ]
  return np.clip(np.stack([np.asarray(p, np.float32) for p in planes], axis=-1), 0.0, 1.0)


class Reader:
  """Decodes examples, `load(split, i)` -> float (H, W, C) in [0, 1], into (side, side, channels)
  float32 on a pool of threads (Pillow, pydicom and array_record release the GIL). `load` raises
  BadImageError for an unreadable example; `on_bad` is told (and may raise to stop the run)."""

  def __init__(
    self,
    load: Callable[[str, int], np.ndarray],
    *,
    channels: int,
    side: int,
    sizes: dict[str, int],
    on_bad: Callable[[images.BadImageError], None] | None = None,
    threads: int | None = None,
  ):
    self.channels, self.side, self.sizes = channels, side, sizes
    self._load, self._on_bad = load, on_bad
    self._pool = concurrent.futures.ThreadPoolExecutor(threads or os.cpu_count() or 1)

  def decode(self, split: str, i: int) -> np.ndarray | images.BadImageError:
    try:
      return resized(self._load(split, i), self.channels, self.side)
    except images.BadImageError as e:
      return e

  def submit(self, split: str, indices) -> list[concurrent.futures.Future]:
    return [self._pool.submit(self.decode, split, i) for i in indices]

  def readable(self, result) -> np.ndarray | None:
    """`result` if it is pixels, else None (and `on_bad` is told)."""
    if isinstance(result, images.BadImageError):
      if self._on_bad is not None:
        self._on_bad(result)
      return None
    return result

  def close(self) -> None:
    self._pool.shutdown(wait=False, cancel_futures=True)


def train_steps(
  reader: Reader, *, seed: int, batch_size: int, start_step: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """(global elements (B/P,), images float32 (B/P, side, side, C)) of this process, step by step
  from `start_step`, decoding AHEAD steps in advance. An unreadable file's slot takes the next
  readable one of the list (in order, wrapping): the same on every rerun."""
  num = reader.sizes['train']
  shard = dict(
    batch_size=batch_size, process_index=jax.process_index(), process_count=jax.process_count()
  )

  def submit(step: int):
    indices = order.global_indices(step, num_examples=num, seed=seed, **shard)
    return order.local_elements(step, **shard), indices, reader.submit('train', indices)

  def collect(elements, indices, futures) -> tuple[np.ndarray, np.ndarray]:
    out = []
    for i, future in zip(indices.tolist(), futures, strict=True):
      pixels = reader.readable(future.result())
      for j in range(1, num):
        if pixels is not None:
          break
        pixels = reader.readable(reader.decode('train', (i + j) % num))
      out.append(pixels)
    return elements, np.stack(out)

  return _ahead(reader, itertools.count(start_step), submit, collect)


def eval_side(size: int) -> int:
  """The side a Reader for evaluation decodes to: the protocol's S / EVAL_CROP."""
  return round(size / EVAL_CROP)


def eval_batches(
  reader: Reader,
  labels: np.ndarray,
  split: str,
  indices: np.ndarray,
  batch: int,
  size: int,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """(images float32 (batch, size, size, C), labels, valid) over the files `indices` of `split`
  (whose labels are `labels`), in order, batch by batch (the last padded; an unreadable file is
  a padded, invalid row).

  The evaluation protocol: a Reader of side `eval_side(size)` (the shorter side to S / 0.875),
  then the centred S x S.
  """
  parts = (indices[first : first + batch] for first in range(0, len(indices), batch))
  return eval_rows(reader, labels, split, parts, size, batch)


def eval_rows(
  reader: Reader,
  labels: np.ndarray,
  split: str,
  parts: Iterable[np.ndarray],
  size: int,
  batch: int | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """`eval_batches` of the files each array of `parts` names (any files, in any order: the
  supervised protocols' steps), AHEAD arrays decoded in advance; each batch padded to `batch`
  rows (None: the array's length)."""
  lo = (reader.side - size) // 2
  shape = (size, size, reader.channels)

  def submit(part: np.ndarray):
    return part, reader.submit(split, part)

  def collect(part, futures):
    rows = len(part) if batch is None else batch
    x = np.zeros((rows,) + shape, np.float32)
    valid = np.zeros(rows, bool)
    for row, future in enumerate(futures):
      pixels = reader.readable(future.result())
      if pixels is not None:
        x[row], valid[row] = pixels[lo : lo + size, lo : lo + size], True
    y = np.zeros((rows, *labels.shape[1:]), labels.dtype)
    y[: len(part)] = labels[part]
    return x, y, valid

  return _ahead(reader, parts, submit, collect)


def _ahead(reader: Reader, jobs, submit: Callable, collect: Callable) -> Iterator:
  """collect(*submit(job)) for each job in order, with AHEAD jobs submitted beyond the one being
  collected; closes `reader` when done or closed."""
  pending = collections.deque()
  try:
    for job in jobs:
      pending.append(submit(job))
      if len(pending) > AHEAD:
        yield collect(*pending.popleft())
    while pending:
      yield collect(*pending.popleft())
  finally:
    reader.close()

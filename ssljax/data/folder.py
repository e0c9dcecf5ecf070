"""Image folders, streamed: the file list is read once (and cached in the run's workdir), images
are decoded a batch at a time by a pool of threads, so host memory and the time to the first step
do not grow with the number of files.

Layouts: flat (unlabelled), one subfolder per class, or train/ and test/ holding either. Training
reads the files `order.global_indices` names for each step, so a resumed run reads exactly the
batches an uninterrupted one would. An unreadable file is skipped, counted and named
(`skipped_files`); in training its slot takes the next readable file of the list, so a batch keeps
its size and is the same on every rerun. NumPy, Pillow and pydicom: no TensorFlow.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import hashlib
import itertools
import os
import threading
from collections.abc import Iterator

import jax
import numpy as np
from absl import logging
from PIL import Image

from ssljax.data import images, order
from ssljax.errors import DataError, DatasetNotFoundError

AHEAD = 2  # training steps decoded ahead of the one being consumed
EVAL_CROP = 0.875  # evaluation: the shorter side to S / 0.875, then the centre S x S
HINT = (
  'Point data.path at a directory of images (png/jpg/bmp/tif/dcm): flat (unlabelled), one '
  'subfolder per class, or with train/ and test/ subfolders laid out either way.'
)


# ----------------------------------------------------------------------------- the file list


@dataclasses.dataclass(frozen=True)
class Paths:
  """Many paths as UTF-8 bytes and offsets: a million cost ~70 MB, a third of a list of str."""

  blob: np.ndarray  # uint8
  offsets: np.ndarray  # int64 (n + 1,)

  @classmethod
  def of(cls, names: list[str]) -> Paths:
    encoded = [n.encode() for n in names]
    offsets = np.zeros(len(encoded) + 1, np.int64)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    return cls(np.frombuffer(b''.join(encoded), np.uint8), offsets)

  def __len__(self) -> int:
    return len(self.offsets) - 1

  def __getitem__(self, i: int) -> str:
    return self.blob[self.offsets[i] : self.offsets[i + 1]].tobytes().decode()


@dataclasses.dataclass(frozen=True)
class Split:
  files: Paths  # relative to FolderIndex.root
  labels: np.ndarray  # int32, -1 in a flat (unlabelled) folder


@dataclasses.dataclass(frozen=True)
class FolderIndex:
  """Every image file of a folder source and its label; what is cached in the workdir."""

  root: str
  train: Split
  test: Split
  classes: tuple[str, ...]
  channels: int  # of the first readable train image: the others are converted to it
  directories: Paths  # every directory listed, with its mtime: the cache's key
  mtimes: np.ndarray

  def split(self, name: str) -> Split:
    return self.train if name == 'train' else self.test

  def path(self, split: str, i: int) -> str:
    return os.path.join(self.root, self.split(split).files[int(i)])

  @property
  def total(self) -> int:
    return len(self.train.files) + len(self.test.files)


def _walk(directory: str) -> tuple[list[str], list[tuple[str, int]]]:
  """Image files under `directory` (paths relative to it, sorted by their parts) and every
  directory with its mtime. os.scandir: the file type comes with the listing, no stat per file."""
  files, directories = [], []
  stack = [directory]
  while stack:
    d = stack.pop()
    directories.append((d, os.stat(d).st_mtime_ns))
    with os.scandir(d) as entries:
      for e in entries:
        if e.is_dir():
          stack.append(e.path)
        elif e.is_file() and images.is_image_file(e.name):
          files.append(os.path.relpath(e.path, directory))
  files.sort(key=lambda f: f.split(os.sep))
  return files, directories


def _labelled(files: list[str], classes: tuple[str, ...] | None = None):
  """(files, class names): files in subfolders are labelled by the first one; in a flat folder
  (no subfolder holds images) all files are unlabelled ('')."""
  names = [f.split(os.sep)[0] if os.sep in f else '' for f in files]
  if not any(names):
    return files, names
  kept = [(f, n) for f, n in zip(files, names, strict=True) if n]
  return [f for f, _ in kept], [n for _, n in kept]


def _first_channels(root: str, files: list[str]) -> int | None:
  """Channels of the first readable image: the folder's (the others are converted to them)."""
  for f in files:
    try:
      return images.read_image(os.path.join(root, f)).shape[-1]
    except images.BadImageError:
      continue
  return None


def _scan(path: str) -> FolderIndex:
  root = os.path.abspath(path)
  if not path or not os.path.isdir(root):
    raise DatasetNotFoundError(f"folder source: data.path='{path}' is not a directory. {HINT}")
  two = all(os.path.isdir(os.path.join(root, s)) for s in ('train', 'test'))
  listed = {s: _walk(os.path.join(root, s)) for s in ('train', 'test')} if two else {}
  if not two:
    listed = {'train': _walk(root), 'test': ([], [])}
  train_files, train_names = _labelled(listed['train'][0])
  test_files, test_names = _labelled(listed['test'][0])
  prefix = lambda s, files: [os.path.join(s, f) for f in files] if two else files  # noqa: E731
  train_files, test_files = prefix('train', train_files), prefix('test', test_files)
  if not train_files:
    where = os.path.join(root, 'train') if two else root
    raise DatasetNotFoundError(f"folder source: no images under '{where}'. {HINT}")
  classes = tuple(sorted(set(train_names) - {''}))
  if classes and test_files and (set(test_names) - set(classes) or not all(test_names)):
    unknown = sorted(set(test_names) - set(classes))
    raise DataError(
      f'folder source {path}: test/ must use the class subfolders of train/; '
      f'unknown: {unknown if any(unknown) else "(flat test/)"}'
    )
  index = {c: i for i, c in enumerate(classes)}
  labels = lambda names: np.array([index.get(n, -1) for n in names], np.int32)  # noqa: E731
  channels = _first_channels(root, train_files)
  if channels is None:
    raise DatasetNotFoundError(f"folder source: no readable image under '{root}'")
  directories = listed['train'][1] + listed['test'][1]
  return FolderIndex(
    root=root,
    train=Split(Paths.of(train_files), labels(train_names)),
    test=Split(Paths.of(test_files), labels(test_names)),
    classes=classes,
    channels=channels,
    directories=Paths.of([d for d, _ in directories]),
    mtimes=np.array([m for _, m in directories], np.int64),
  )


def _unchanged(index: FolderIndex) -> bool:
  """No file was added, removed or renamed since the listing: every directory's mtime is the
  same (an entry changing changes its directory's mtime; a new directory, its parent's)."""
  try:
    return all(
      os.stat(index.directories[i]).st_mtime_ns == m for i, m in enumerate(index.mtimes.tolist())
    )
  except OSError:
    return False


def _cache_file(workdir: str, root: str) -> str:
  return os.path.join(workdir, f'folder_index_{hashlib.sha1(root.encode()).hexdigest()[:12]}.npz')


def _save(index: FolderIndex, file: str) -> None:
  arrays = {'channels': np.asarray(index.channels)}
  for name, paths in (
    ('root', Paths.of([index.root])),
    ('classes', Paths.of(list(index.classes))),
    ('directories', index.directories),
    ('train', index.train.files),
    ('test', index.test.files),
  ):
    arrays[f'{name}_blob'], arrays[f'{name}_offsets'] = paths.blob, paths.offsets
  arrays.update(mtimes=index.mtimes, train_labels=index.train.labels, test_labels=index.test.labels)
  os.makedirs(os.path.dirname(file), exist_ok=True)
  partial = f'{file}.{os.getpid()}.partial.npz'
  np.savez(partial, **arrays)
  os.replace(partial, file)  # atomic: a reader never sees half a file


def _load(file: str) -> FolderIndex | None:
  try:
    with np.load(file, allow_pickle=False) as f:
      paths = lambda name: Paths(f[f'{name}_blob'], f[f'{name}_offsets'])  # noqa: E731
      return FolderIndex(
        root=paths('root')[0],
        train=Split(paths('train'), f['train_labels']),
        test=Split(paths('test'), f['test_labels']),
        classes=tuple(paths('classes')[i] for i in range(len(paths('classes')))),
        channels=int(f['channels']),
        directories=paths('directories'),
        mtimes=f['mtimes'],
      )
  except (OSError, KeyError, ValueError):
    return None  # absent or unreadable: list the folder again


_INDEXES: dict[str, FolderIndex] = {}
_INDEX_LOCK = threading.Lock()


def folder_index(path: str, workdir: str | None = None) -> FolderIndex:
  """The folder's file list: from memory or WORKDIR's cache when no directory changed since,
  else listed now (and cached in `workdir`, a local directory, by process 0)."""
  root = os.path.abspath(path) if path else ''
  with _INDEX_LOCK:
    index = _INDEXES.get(root)
    if index is not None and _unchanged(index):
      return index
    cache = _cache_file(workdir, root) if workdir and '://' not in workdir and root else None
    index = _load(cache) if cache and os.path.exists(cache) else None
    if index is None or index.root != root or not _unchanged(index):
      index = _scan(path)
      if cache and jax.process_index() == 0:
        _save(index, cache)
    _INDEXES[root] = index
    return index


# ----------------------------------------------------------------------------- unreadable files

_SKIPPED: dict[str, dict[str, str]] = collections.defaultdict(dict)  # root -> {path: why}
_SKIPPED_LOCK = threading.Lock()
_SHOWN = 20  # files named in a log line or an error


def skipped_files(root: str) -> tuple[str, ...]:
  """'path: why' of every unreadable file of the folder met so far in this process, sorted."""
  root = os.path.abspath(root)
  with _SKIPPED_LOCK:
    return tuple(f'{p}: {why}' for p, why in sorted(_SKIPPED[root].items()))


def _skip(index: FolderIndex, error: images.BadImageError, max_bad_fraction: float) -> None:
  """Records an unreadable file; past `max_bad_fraction` of the folder, refuses it."""
  with _SKIPPED_LOCK:
    seen = _SKIPPED[index.root]
    new = error.path not in seen
    seen[error.path] = error.reason
    count = len(seen)
    shown = [f'{p}: {why}' for p, why in sorted(seen.items())[:_SHOWN]]
  if count > max_bad_fraction * index.total:
    listing = '\n  '.join(shown) + ('\n  ...' if count > _SHOWN else '')
    raise DataError(
      f'folder source {index.root}: {count} of {index.total} image files cannot be read, more '
      f'than config.data.max_bad_fraction={max_bad_fraction:g} allows. Fix or remove them '
      f'(python -m ssljax.data.check --path={index.root} lists them all), or raise the '
      f'limit:\n  {listing}'
    )
  if new:
    logging.warning(
      'folder source %s: skipped unreadable file %s (%d of %d so far)',
      index.root,
      error,
      count,
      index.total,
    )


# ----------------------------------------------------------------------------- decoding


def resized(pixels: np.ndarray, channels: int, side: int) -> np.ndarray:
  """float (H, W, C) -> float32 (side, side, channels) in [0, 1]: the shorter side resized to
  `side` (bicubic, on the float pixels: 16-bit detail is kept), the centred square; grey <->
  colour as the folder needs."""
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
  """Decodes a folder's files into (side, side, C) float32 on a pool of threads (Pillow and
  pydicom release the GIL while decoding). Unreadable files are recorded in `skipped_files`."""

  def __init__(
    self,
    index: FolderIndex,
    side: int,
    *,
    dicom_window: tuple[float, float] | None = None,
    max_bad_fraction: float = 0.001,
    threads: int | None = None,
  ):
    self.index, self.side = index, side
    self.max_bad_fraction = max_bad_fraction
    self._read = functools.partial(images.read_image, dicom_window=dicom_window)
    self._pool = concurrent.futures.ThreadPoolExecutor(threads or os.cpu_count() or 1)

  def decode(self, split: str, i: int) -> np.ndarray | images.BadImageError:
    try:
      return resized(self._read(self.index.path(split, i)), self.index.channels, self.side)
    except images.BadImageError as e:
      return e

  def submit(self, split: str, indices) -> list[concurrent.futures.Future]:
    return [self._pool.submit(self.decode, split, i) for i in indices]

  def readable(self, result, split: str, i: int) -> np.ndarray | None:
    """`result` of file i if readable, else None (recorded; DataError past the limit)."""
    if isinstance(result, images.BadImageError):
      _skip(self.index, result, self.max_bad_fraction)
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
  num = len(reader.index.train.files)
  shard = dict(
    batch_size=batch_size, process_index=jax.process_index(), process_count=jax.process_count()
  )

  def submit(step: int):
    indices = order.global_indices(step, num_examples=num, seed=seed, **shard)
    return order.local_elements(step, **shard), indices, reader.submit('train', indices)

  def collect(elements, indices, futures) -> tuple[np.ndarray, np.ndarray]:
    out = []
    for i, future in zip(indices.tolist(), futures, strict=True):
      pixels = reader.readable(future.result(), 'train', i)
      for j in range(1, num):
        if pixels is not None:
          break
        k = (i + j) % num
        pixels = reader.readable(reader.decode('train', k), 'train', k)
      out.append(pixels)
    return elements, np.stack(out)

  pending = collections.deque()
  try:
    for step in itertools.count(start_step):
      pending.append(submit(step))
      if len(pending) > AHEAD:
        yield collect(*pending.popleft())
  finally:
    reader.close()


def eval_side(size: int) -> int:
  """The side a Reader for evaluation decodes to: the protocol's S / EVAL_CROP."""
  return round(size / EVAL_CROP)


def eval_batches(
  reader: Reader, split: str, indices: np.ndarray, batch: int, size: int
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """(images float32 (batch, size, size, C), labels, valid) over the files `indices` of `split`,
  in order, batch by batch (the last padded; an unreadable file is a padded, invalid row).

  The evaluation protocol: a Reader of side `eval_side(size)` (the shorter side to S / 0.875),
  then the centred S x S.
  """
  labels = reader.index.split(split).labels
  lo = (reader.side - size) // 2
  shape = (size, size, reader.index.channels)

  def submit(part: np.ndarray):
    return part, reader.submit(split, part)

  def collect(part, futures):
    x = np.zeros((batch,) + shape, np.float32)
    valid = np.zeros(batch, bool)
    for row, (i, future) in enumerate(zip(part.tolist(), futures, strict=True)):
      pixels = reader.readable(future.result(), split, i)
      if pixels is not None:
        x[row], valid[row] = pixels[lo : lo + size, lo : lo + size], True
    y = np.zeros(batch, np.int32)
    y[: len(part)] = labels[part]
    return x, y, valid

  pending = collections.deque()
  try:
    for first in range(0, len(indices), batch):
      pending.append(submit(indices[first : first + batch]))
      if len(pending) > AHEAD:
        yield collect(*pending.popleft())
    while pending:
      yield collect(*pending.popleft())
  finally:
    reader.close()

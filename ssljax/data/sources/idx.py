"""MNIST-format idx files (Fashion-MNIST's), in memory: the four files in data.path."""

from __future__ import annotations

import functools
import gzip
import os
import pathlib

import numpy as np

from ssljax.data.sources.base import InMemory, Split
from ssljax.errors import DatasetNotFoundError

_IDX_DTYPES = {0x08: '>u1', 0x09: '>i1', 0x0B: '>i2', 0x0C: '>i4', 0x0D: '>f4', 0x0E: '>f8'}


class Idx(InMemory):
  def check_available(self) -> None:
    for prefix in ('train', 't10k'):
      for kind in ('images', 'labels'):
        _idx_file(self.data.path, prefix, kind)

  def load(self, split: str) -> Split:
    return _load_idx(self.data.path, self.fixed_split(split))


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Parses one idx file (MNIST's format), gzipped or not."""
  path = pathlib.Path(path)
  opener = gzip.open if path.suffix == '.gz' else open
  with opener(path, 'rb') as f:
    raw = f.read()
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
    raise ValueError(f'{path}: not an idx file (bad magic number {raw[:4].hex()})')
  ndim = raw[3]
  header = 4 + 4 * ndim
  shape = tuple(int(d) for d in np.frombuffer(raw[4:header], dtype='>u4'))
  dtype = np.dtype(_IDX_DTYPES[raw[2]])
  if len(raw) - header != int(np.prod(shape)) * dtype.itemsize:
    raise ValueError(f'{path}: size does not match the header shape {shape}')
  array = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
  return array.astype(dtype.newbyteorder('='))


def _idx_file(directory: str, prefix: str, kind: str) -> pathlib.Path:
  """The file for e.g. ('train', 'images'); raises DatasetNotFoundError if absent."""
  root = pathlib.Path(directory)
  ndim = 3 if kind == 'images' else 1
  names = [f'{prefix}-{kind}-idx{ndim}-ubyte', f'{prefix}-{kind}.idx{ndim}-ubyte']
  for name in names:
    for candidate in (root / name, root / f'{name}.gz'):
      if candidate.is_file():
        return candidate
  raise DatasetNotFoundError(
    f"idx source: no {names[0]}[.gz] in data.path='{directory}'. Point data.path at a "
    'directory holding the four MNIST-format files (train-images-idx3-ubyte, '
    'train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, gzipped or not), '
    'e.g. Fashion-MNIST: `apt-get install dataset-fashion-mnist` puts them in '
    '/usr/share/datasets/fashion-mnist.'
  )


@functools.lru_cache(maxsize=4)
def _load_idx(directory: str, split: str) -> Split:
  prefix = 'train' if split == 'train' else 't10k'
  images = read_idx(_idx_file(directory, prefix, 'images'))
  labels = read_idx(_idx_file(directory, prefix, 'labels')).astype(np.int32)
  if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
    raise ValueError(f'idx source {directory}: images {images.shape} / labels {labels.shape}')
  if images.dtype != np.uint8:
    raise ValueError(f'idx source {directory}: images must be unsigned bytes, got {images.dtype}')
  train_labels = labels if split == 'train' else _load_idx(directory, 'train').labels
  return Split(images[..., None], labels, int(train_labels.max()) + 1)

"""Where examples come from: digits and idx files (in memory), image folders (streamed, see
`folder`) and tfds (in memory when small, else streamed).

No TensorFlow at import: only the tfds functions import it, on first use.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import os
import pathlib

import ml_collections
import numpy as np

from ssljax.data import folder
from ssljax.errors import DatasetNotFoundError

# tfds datasets at most this big (examples, pixels per side) are held in memory; larger stream.
MAX_IN_MEMORY_EXAMPLES = 200_000
MAX_IN_MEMORY_SIDE = 64
FOLDER_MARGIN = 1.15  # folder images are decoded this much larger than image_size: crops have room


@dataclasses.dataclass(frozen=True)
class Split:
  """One split in memory: images uint8 (or float32 in [0, 1]) (N, H, W, C), labels int32 (N,)."""

  images: np.ndarray
  labels: np.ndarray
  num_classes: int


def split_name(data: ml_collections.ConfigDict, split: str) -> str:
  """The source's name for the 'train' / 'test' split."""
  return data.train_split if split == 'train' else data.test_split


def check(data: ml_collections.ConfigDict) -> None:
  """Raises DatasetNotFoundError if the source's files are missing (no decoding, no network)."""
  if data.source == 'idx':
    for prefix in ('train', 't10k'):
      for kind in ('images', 'labels'):
        _idx_file(data.path, prefix, kind)
  elif data.source == 'folder':
    folder.folder_index(data.path)
  elif data.source == 'tfds':
    tfds_builder(data.name, data.data_dir)


def folder_reader(data: ml_collections.ConfigDict, side: int):
  """A `random_access.Reader` of the configured folder, decoding to `side` pixels."""
  window = data.get('dicom_window')
  return folder.reader(
    folder.folder_index(data.path),
    side,
    dicom_window=None if window is None else tuple(float(v) for v in window),
    max_bad_fraction=float(data.get('max_bad_fraction', 0.001)),
  )


def skipped_files(data: ml_collections.ConfigDict) -> tuple[str, ...]:
  """'path: why' of every unreadable image file the source met so far (folder sources)."""
  return folder.skipped_files(data.path) if data.source == 'folder' else ()


def metadata(data: ml_collections.ConfigDict, workdir: str | None = None) -> tuple[int, int, int]:
  """(num_train, num_classes, channels) of the source; no image is decoded (one for folders)."""
  if data.source == 'tfds':
    info = tfds_builder(data.name, data.data_dir).info
    image_key, label_key = _tfds_keys(info)
    num_train = info.splits[data.train_split].num_examples
    return num_train, info.features[label_key].num_classes, info.features[image_key].shape[-1]
  if data.source == 'folder':
    index = folder.folder_index(data.path, workdir)
    return len(index.train.files), len(index.classes), index.channels
  train = load(data, 'train')
  return len(train.labels), train.num_classes, train.images.shape[-1]


def load(data: ml_collections.ConfigDict, split: str) -> Split:
  """The whole 'train' or 'test' split in memory (cached: later calls are free)."""
  name = split_name(data, split)
  if data.source == 'tfds':
    return _load_tfds(data.name, data.data_dir, name)
  if name not in ('train', 'test'):
    raise ValueError(f'source {data.source!r} has splits train and test, not {name!r}')
  if data.source == 'digits':
    return _load_digits(name)
  if data.source == 'idx':
    return _load_idx(data.path, name)
  raise ValueError(f'source {data.source!r} is not an in-memory source')


# ----------------------------------------------------------------------------- digits


@functools.lru_cache(maxsize=2)
def _load_digits(split: str) -> Split:

  from sklearn.datasets import load_digits  # here: a JAX-only machine never loads digits
  from sklearn.model_selection import train_test_split

  digits = load_digits()
  images = (digits.images / 16.0).astype(np.float32)[..., None]  # (N, 8, 8, 1) in [0, 1]
  x_train, x_test, y_train, y_test = train_test_split(
    images, digits.target, test_size=0.25, stratify=digits.target, random_state=0
  )
  x, y = (x_train, y_train) if split == 'train' else (x_test, y_test)
  return Split(x, y.astype(np.int32), 10)


# ----------------------------------------------------------------------------- idx (MNIST format)

_IDX_DTYPES = {0x08: '>u1', 0x09: '>i1', 0x0B: '>i2', 0x0C: '>i4', 0x0D: '>f4', 0x0E: '>f8'}


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


# ----------------------------------------------------------------------------- tfds


def import_tfds():
  """tensorflow_datasets, imported on first use with TF kept off the accelerators."""
  import tensorflow_datasets as tfds

  from ssljax.data import augment  # noqa: F401  (hides the GPUs from TF before it starts)

  return tfds


@functools.lru_cache(maxsize=4)
def tfds_builder(name: str, data_dir: str):
  """The prepared tfds builder; raises DatasetNotFoundError (saying how to prepare it) if not."""
  tfds = import_tfds()
  shown_dir = data_dir or os.environ.get('TFDS_DATA_DIR', '~/tensorflow_datasets')
  try:
    builder = tfds.builder(name, data_dir=data_dir or None)
  except tfds.core.DatasetNotFoundError as e:
    raise DatasetNotFoundError(
      f"tfds source: there is no tfds dataset named data.name='{name}' "
      '(see https://www.tensorflow.org/datasets/catalog).'
    ) from e
  if builder.is_prepared():
    return builder
  build = f'tfds build {name} --data_dir={shown_dir} --file_format=array_record'
  if name.split(':')[0].split('/')[0] == 'imagenet2012':
    how = (
      'ImageNet needs a manual download: get ILSVRC2012_img_train.tar and '
      f'ILSVRC2012_img_val.tar from image-net.org, put them in {shown_dir}/downloads/manual, '
      f'then run `{build}`.'
    )
  else:
    how = f'Prepare it on a machine with network access: `{build}` (then copy {shown_dir} here).'
  raise DatasetNotFoundError(
    f"tfds source: dataset '{name}' is not prepared in data_dir='{shown_dir}'. {how} "
    'If it is prepared elsewhere, pass --config.data.data_dir=THAT_DIR.'
  )


def _tfds_keys(info) -> tuple[str, str]:
  keys = info.supervised_keys
  if isinstance(keys, tuple) and len(keys) == 2 and all(isinstance(k, str) for k in keys):
    return keys
  return 'image', 'label'


def tfds_keys(data: ml_collections.ConfigDict) -> tuple[str, str]:
  """(image feature, label feature) names of the tfds dataset."""
  return _tfds_keys(tfds_builder(data.name, data.data_dir).info)


def is_streamed(data: ml_collections.ConfigDict) -> bool:
  """True for tfds datasets too big (examples or pixels) to hold in memory."""
  if data.source != 'tfds':
    return False
  info = tfds_builder(data.name, data.data_dir).info
  image_key, _ = _tfds_keys(info)
  shape = info.features[image_key].shape
  num = info.splits[data.train_split].num_examples
  side_known = all(s is not None and s <= MAX_IN_MEMORY_SIDE for s in shape[:2])
  return not (side_known and num <= MAX_IN_MEMORY_EXAMPLES)


def has_random_access(data: ml_collections.ConfigDict) -> bool:
  """True if the tfds dataset is prepared in a format read by index (array_record): training
  then follows `global_indices` exactly."""
  tfds = import_tfds()
  info = tfds_builder(data.name, data.data_dir).info
  random_access = set(tfds.core.file_adapters.FileFormat.with_random_access())
  return bool(set(info.available_file_formats()) & random_access)


@functools.lru_cache(maxsize=2)
def _load_tfds(name: str, data_dir: str, split: str) -> Split:
  tfds = import_tfds()
  builder = tfds_builder(name, data_dir)
  image_key, label_key = _tfds_keys(builder.info)
  ds = builder.as_dataset(split=split, batch_size=-1, shuffle_files=False)
  arrays = tfds.as_numpy(ds)
  num_classes = builder.info.features[label_key].num_classes
  return Split(arrays[image_key], arrays[label_key].astype(np.int32), num_classes)

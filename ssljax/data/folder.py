"""Image folders, streamed: the file list is read once (and cached in the run's workdir), images
are decoded a batch at a time by a pool of threads (`random_access`), so host memory and the time
to the first step do not grow with the number of files.

Layouts: flat (unlabelled), one subfolder per class, or train/ and test/ holding either. An
unreadable file is skipped, counted and named (`skipped_files`); past data.max_bad_fraction the
run stops. NumPy, Pillow and pydicom: no TensorFlow.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import os
import threading

import jax
import numpy as np
from absl import logging

from ssljax.data import images, random_access
from ssljax.errors import DataError, DatasetNotFoundError
from ssljax.paths import absolute, is_remote

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


def _remote(path: str):
  """The fsspec file system of a URL (gcsfs for gs://), or None for a local path."""
  if not is_remote(path):
    return None
  import fsspec

  return fsspec.core.url_to_fs(path)[0]


def _isdir(path: str) -> bool:
  fs = _remote(path)
  return fs.isdir(path) if fs else os.path.isdir(path)


def _walk(directory: str) -> tuple[list[str], list[tuple[str, int]]]:
  """Image files under `directory` (paths relative to it, sorted by their parts) and every
  directory with its mtime. os.scandir: the file type comes with the listing, no stat per file.
  A bucket is listed in one request and has no directory mtimes (none is returned)."""
  if fs := _remote(directory):
    prefix = fs._strip_protocol(directory).rstrip('/') + '/'
    found = [f[len(prefix) :] for f in fs.find(directory) if f.startswith(prefix)]
    return sorted((f for f in found if images.is_image_file(f)), key=lambda f: f.split('/')), []
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


def _labelled(files: list[str]) -> tuple[list[str], list[str]]:
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
  root = absolute(path)
  if not path or not _isdir(root):
    raise DatasetNotFoundError(f"folder source: data.path='{path}' is not a directory. {HINT}")
  two = all(_isdir(os.path.join(root, s)) for s in ('train', 'test'))
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
      classes = paths('classes')
      return FolderIndex(
        root=paths('root')[0],
        train=Split(paths('train'), f['train_labels']),
        test=Split(paths('test'), f['test_labels']),
        classes=tuple(classes[i] for i in range(len(classes))),
        channels=int(f['channels']),
        directories=paths('directories'),
        mtimes=f['mtimes'],
      )
  except (OSError, KeyError, ValueError):
    return None  # absent or unreadable: list the folder again


_INDEXES: dict[str, FolderIndex] = {}  # root -> the list in memory
_WRITTEN: dict[str, FolderIndex] = {}  # cache file -> the list it holds
_INDEX_LOCK = threading.Lock()


def folder_index(path: str, workdir: str | None = None) -> FolderIndex:
  """The folder's file list: from memory or WORKDIR's cache when no directory changed since,
  else listed now. With a `workdir` (a local directory), process 0 writes it there. A folder in
  a bucket has no directory mtimes to tell a change by: it is listed again by each process."""
  root = absolute(path) if path else ''
  local = workdir and root and not is_remote(workdir) and not is_remote(root)
  cache = _cache_file(workdir, root) if local else None
  with _INDEX_LOCK:
    index = _INDEXES.get(root)
    if index is None or not _unchanged(index):
      index = _load(cache) if cache and os.path.exists(cache) else None
      if index is not None and index.root == root and _unchanged(index):
        _WRITTEN[cache] = index  # read from there: nothing to write
      else:
        index = _scan(path)
      _INDEXES[root] = index
    if cache and jax.process_index() == 0 and _WRITTEN.get(cache) is not index:
      _save(index, cache)
      _WRITTEN[cache] = index
    return index


# ----------------------------------------------------------------------------- unreadable files

_SKIPPED: dict[str, dict[str, str]] = collections.defaultdict(dict)  # root -> {path: why}
_SKIPPED_LOCK = threading.Lock()
_SHOWN = 20  # files named in a log line or an error


def skipped_files(root: str) -> tuple[str, ...]:
  """'path: why' of every unreadable file of the folder met so far in this process, sorted."""
  root = absolute(root)
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
      f'(python -m ssljax.data.scan --path={index.root} lists them all), or raise the '
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


def reader(
  index: FolderIndex,
  side: int,
  *,
  dicom_window: tuple[float, float] | None = None,
  max_bad_fraction: float = 0.001,
) -> random_access.Reader:
  """Decodes the folder's files to (side, side, channels); unreadable ones are recorded in
  `skipped_files` (DataError past `max_bad_fraction`)."""
  return random_access.Reader(
    lambda split, i: images.read_image(index.path(split, i), dicom_window=dicom_window),
    channels=index.channels,
    side=side,
    sizes={s: len(index.split(s).files) for s in ('train', 'test')},
    on_bad=lambda error: _skip(index, error, max_bad_fraction),
  )

"""Every image file under a folder through a run's encoder, into one file, for search (FAISS),
curation and plots outside ssljax:

  python -m ssljax.embed --workdir=RUN --path=DIR --out=FILE.npz [--dtype=float16]

FILE.npz holds `paths` (relative to DIR, '/'-separated, sorted by their parts) and `h` (N, d):
`np.load(FILE)['h']`. Images are read as evaluation reads them (the shorter side to S / 0.875,
the centred S x S, S the run's data.image_size); unreadable files are left out and named. Each
process decodes its share of every batch and the batches are split over the mesh; process 0
writes h to the file batch by batch, so memory does not grow with the number of files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from typing import Any

if __name__ == '__main__':  # before JAX starts: XLA's options and the allocator are fixed then
  from ssljax.cpu import process

  process.prepare()

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from ssljax import cluster, errors, paths, restore, sharding  # noqa: E402
from ssljax.data import folder, random_access  # noqa: E402
from ssljax.errors import DatasetNotFoundError  # noqa: E402

USAGE = 'python -m ssljax.embed --workdir=RUN --path=DIR --out=FILE.npz [--dtype=float16]'


def list_images(directory: str) -> list[str]:
  """Every image file under `directory`, relative to it, sorted by their parts."""
  root = paths.absolute(directory)
  if not directory or not folder._isdir(root):
    raise DatasetNotFoundError(f"--path='{directory}' is not a directory of images")
  files = folder._walk(root)[0]
  if not files:
    raise DatasetNotFoundError(f"no image file (png/jpg/bmp/tif/dcm) under '{directory}'")
  return files


def input_channels(variables: dict) -> int:
  """The channels the encoder's first layer takes (a ResNet's stem, a ViT's patch embedding)."""
  from ssljax.weights import names

  flat = names.flat(variables)
  return int(flat.get('params/patch_embed/kernel', flat.get('params/stem_conv/kernel')).shape[2])


@functools.lru_cache(maxsize=8)
def _jitted(fn: Callable, mesh: jax.sharding.Mesh) -> Callable:
  @functools.partial(jax.jit, out_shardings=sharding.replicated(mesh))
  def run(args, x, rows, valid):
    return fn(args, x), rows, valid

  return run


def encode_files(
  fn: Callable,
  args,
  root: str,
  files: list[str],
  mesh: jax.sharding.Mesh,
  *,
  batch_size: int,
  size: int,
  channels: int,
  config,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """(rows, fn(args, images)) of the readable files of each global batch of `batch_size`, rows
  (indices into `files`) ascending: batch after batch, the files' order. Process p decodes
  files p, p + P, ...; every process gets every batch's outputs. `config`: the run's, for
  data.dicom_window and data.max_bad_fraction."""
  sharding.check_batch_size(batch_size, mesh, '--batch_size')
  n_proc, proc = jax.process_count(), jax.process_index()
  local = batch_size // n_proc
  index = folder.FolderIndex(
    root=root,
    train=folder.Split(folder.Paths.of(files), np.arange(len(files), dtype=np.int32)),
    test=folder.Split(folder.Paths.of([]), np.zeros(0, np.int32)),
    classes=(),
    channels=channels,
    directories=folder.Paths.of([]),
    mtimes=np.zeros(0, np.int64),
  )
  window = config.data.get('dicom_window')
  reader = folder.reader(
    index,
    random_access.eval_side(size),
    dicom_window=None if window is None else tuple(float(v) for v in window),
    max_bad_fraction=float(config.data.get('max_bad_fraction', 0.001)),
  )
  share = np.arange(proc, len(files), n_proc)
  labels = np.arange(len(files), dtype=np.int32)
  run = _jitted(fn, mesh)
  batches = random_access.eval_batches(reader, labels, 'train', share, local, size)
  empty = (np.zeros((local, size, size, channels), np.float32), np.zeros(local, np.int32))
  with contextlib.closing(batches):
    for _ in range(-(-len(files) // batch_size)):
      x, rows, valid = next(batches, (*empty, np.zeros(local, bool)))
      out, rows, valid = run(args, *sharding.to_global((x, rows, valid), mesh))
      valid = np.asarray(valid)
      rows, out = np.asarray(rows)[valid], np.asarray(out)[valid]
      order = np.argsort(rows, kind='stable')
      yield rows[order], out[order]


class _NpyStream:
  """An .npy array (rows, d) written row block by row block to a temporary file, then into a
  zip member with its final row count: memory holds one block."""

  def __init__(self, dtype: np.dtype):
    self.dtype, self.rows, self.width = np.dtype(dtype), 0, None
    self.file = tempfile.TemporaryFile()

  def append(self, block: np.ndarray) -> None:
    block = np.ascontiguousarray(block, self.dtype)
    self.width = block.shape[1]
    self.rows += len(block)
    self.file.write(block.tobytes())

  def write_to(self, archive: zipfile.ZipFile, name: str) -> None:
    header = {'descr': np.lib.format.dtype_to_descr(self.dtype), 'fortran_order': False}
    header['shape'] = (self.rows, self.width or 0)
    with archive.open(name, 'w', force_zip64=True) as member:
      np.lib.format.write_array_header_2_0(member, header)
      self.file.seek(0)
      shutil.copyfileobj(self.file, member, 1 << 20)
    self.file.close()


def _encoder(run_dir: str, mesh: jax.sharding.Mesh):
  """(h function, its variables on the mesh, the run's config, input channels)."""
  config = restore.load_config(run_dir)
  method, variables, _ = restore.encoder_variables(run_dir, mesh)
  channels = input_channels(variables)
  variables = jax.device_put(variables, sharding.replicated(mesh))
  return _Features(method.encoder), variables, config, channels


@dataclasses.dataclass(frozen=True)
class _Features:
  """variables, images -> h in inference mode; hashable, so it compiles once per encoder."""

  encoder: Any

  def __call__(self, variables, x):
    return self.encoder.apply(variables, x, train=False)


def embed(
  run_dir: str, directory: str, out: str, *, dtype: str = 'float32', batch_size: int = 256
) -> int:
  """Writes OUT (npz: paths, h) for every image under DIRECTORY; returns the rows written."""
  if dtype not in ('float32', 'float16'):
    raise errors.ConfigError(f'--dtype={dtype!r}: float32 or float16')
  mesh = sharding.make_mesh()
  fn, variables, config, channels = _encoder(run_dir, mesh)
  files = list_images(directory)
  size = int(config.data.image_size)
  h, kept = _NpyStream(np.dtype(dtype)), []
  for rows, out_h in encode_files(
    fn,
    variables,
    paths.absolute(directory),
    files,
    mesh,
    batch_size=batch_size,
    size=size,
    channels=channels,
    config=config,
  ):
    if jax.process_index() == 0:
      h.append(out_h)
      kept.extend(rows.tolist())
  if jax.process_index() != 0:
    return h.rows
  skipped = folder.skipped_files(paths.absolute(directory))
  for line in skipped:
    logging.warning('skipped unreadable file %s', line)
  names = np.array([files[i].replace(os.sep, '/') for i in kept], dtype=str)
  target = paths.path(out)
  target.parent.mkdir(parents=True, exist_ok=True)
  partial = target.with_name(target.name + '.partial')
  with partial.open('wb') as f, zipfile.ZipFile(f, 'w', allowZip64=True) as archive:
    with archive.open('paths.npy', 'w', force_zip64=True) as member:
      np.lib.format.write_array(member, names, allow_pickle=False)
    h.write_to(archive, 'h.npy')
  partial.replace(target)
  return len(kept)


def main(argv) -> None:
  if len(argv) > 1:
    print(f'unexpected arguments {argv[1:]}; usage: {USAGE}', file=sys.stderr)
    sys.exit(2)
  f = flags.FLAGS
  cluster.join(f.multihost)  # on a pod or cluster: every host runs the same command
  rows = errors.run_command(embed, f.workdir, f.path, f.out, dtype=f.dtype, batch_size=f.batch_size)
  if jax.process_index() == 0:
    print(f'{f.out}: {rows} images (paths, h)')


if __name__ == '__main__':
  flags.DEFINE_string('workdir', None, 'Run directory written by ssljax.main.')
  cluster.define_flag()
  flags.DEFINE_string('path', None, 'Directory of images (read recursively).')
  flags.DEFINE_string('out', None, 'The .npz file to write.')
  flags.DEFINE_enum('dtype', 'float32', ['float32', 'float16'], 'dtype of h in the file.')
  flags.DEFINE_integer('batch_size', 256, 'Global batch; the devices must divide it.')
  flags.mark_flags_as_required(['workdir', 'path', 'out'])
  app.run(main)

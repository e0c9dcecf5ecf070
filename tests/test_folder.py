"""The streamed folder source: its cached file list, the order it reads files in (the same as the
in-memory sources', so resuming is exact), unreadable files, and evaluation batch by batch."""

import glob
import os
import signal
import time

import jax
import numpy as np
import pytest
from PIL import Image

from ssljax import data
from ssljax.data import folder, order, random_access
from ssljax.evaluators.batched import apply_in_batches
from ssljax.methods import SimCLR


def _write_folder(root, per_class=10, side=20):
  """train/{a,b} and test/{a,b} of RGB PNGs, each image a distinct flat colour (its index)."""
  rng = np.random.default_rng(0)
  for split, n in (('train', per_class), ('test', per_class // 2)):
    for c in ('a', 'b'):
      (root / split / c).mkdir(parents=True)
      for i in range(n):
        pixels = np.broadcast_to(rng.integers(0, 256, 3, dtype=np.uint8), (side, side, 3))
        Image.fromarray(np.ascontiguousarray(pixels)).save(root / split / c / f'{i:03d}.png')


def _config(root, batch_size=8):
  c = SimCLR.default_config(16)
  c.data.source, c.data.path = 'folder', str(root)
  c.data.image_size = c.augment.image_size = 16
  c.batch_size = batch_size
  return c


def test_the_file_list_is_cached_in_the_workdir_until_a_directory_changes(
  tmp_path, monkeypatch, fresh_index
):
  _write_folder(tmp_path / 'images')
  workdir = str(tmp_path / 'run')
  folder.folder_index(str(tmp_path / 'images'))  # as the config checks do: no workdir yet
  index = folder.folder_index(str(tmp_path / 'images'), workdir)
  assert index.classes == ('a', 'b') and index.channels == 3
  assert [index.train.files[i] for i in (0, 10)] == ['train/a/000.png', 'train/b/000.png']
  assert index.train.labels.tolist() == [0] * 10 + [1] * 10 and len(index.test.files) == 10
  (cached,) = [f for f in os.listdir(workdir) if f.startswith('folder_index_')]

  # A restart (nothing in memory) reads the cache and lists nothing, nor writes.
  written = os.stat(os.path.join(workdir, cached)).st_mtime_ns
  monkeypatch.setattr(folder, '_INDEXES', {})
  monkeypatch.setattr(folder, '_WRITTEN', {})
  scans = []
  real_scan = folder._scan
  monkeypatch.setattr(folder, '_scan', lambda path: scans.append(path) or real_scan(path))
  again = folder.folder_index(str(tmp_path / 'images'), workdir)
  assert scans == [] and again.train.labels.tolist() == index.train.labels.tolist()
  assert [again.train.files[i] for i in range(20)] == [index.train.files[i] for i in range(20)]
  assert os.stat(os.path.join(workdir, cached)).st_mtime_ns == written

  # A new file changes its directory: the folder is listed again and the cache replaced.
  Image.new('RGB', (20, 20)).save(tmp_path / 'images' / 'train' / 'b' / 'zz.png')
  os.utime(tmp_path / 'images' / 'train' / 'b', ns=(1, 1))  # a distinct mtime, however coarse
  grown = folder.folder_index(str(tmp_path / 'images'), workdir)
  assert len(scans) == 1 and len(grown.train.files) == 21
  assert grown.train.files[20] == 'train/b/zz.png'
  monkeypatch.setattr(folder, '_INDEXES', {})
  monkeypatch.setattr(folder, '_WRITTEN', {})
  assert len(folder.folder_index(str(tmp_path / 'images'), workdir).train.files) == 21
  assert len(scans) == 1 and os.listdir(workdir) == [cached]


def test_paths_round_trip_any_unicode():
  names = ['a/b.png', 'ü/日本.jpg', '', 'x' * 300]
  paths = folder.Paths.of(names)
  assert len(paths) == 4 and [paths[i] for i in range(4)] == names


def test_training_reads_the_files_global_indices_names_and_replaces_broken_ones(
  tmp_path, fresh_index
):
  _write_folder(tmp_path / 'images')
  broken = tmp_path / 'images' / 'train' / 'a' / '004.png'
  broken.write_bytes(b'not a png')
  index = folder.folder_index(str(tmp_path / 'images'))
  reader = folder.reader(index, 18, max_bad_fraction=0.1)
  steps = random_access.train_steps(reader, seed=3, batch_size=8, start_step=1)
  got = [next(steps) for _ in range(4)]  # steps 1..4: epoch 0 ends in step 2
  steps.close()
  for step, (elements, images) in zip(range(1, 5), got, strict=True):
    shard = dict(batch_size=8, process_index=0, process_count=1)
    np.testing.assert_array_equal(elements, order.local_elements(step, **shard))
    indices = order.global_indices(step, num_examples=20, seed=3, **shard)
    assert images.shape == (8, 18, 18, 3) and images.dtype == np.float32
    for i, image in zip(indices.tolist(), images, strict=True):
      expected = reader.decode('train', 5 if i == 4 else i)  # the next readable file
      np.testing.assert_array_equal(image, expected)
  assert [s.split(': ')[0] for s in folder.skipped_files(str(tmp_path / 'images'))] == [str(broken)]
  # A resumed stream reads exactly what the uninterrupted one read from there.
  resumed = random_access.train_steps(
    folder.reader(index, 18, max_bad_fraction=0.1), seed=3, batch_size=8, start_step=3
  )
  for _, images in got[2:]:
    np.testing.assert_array_equal(next(resumed)[1], images)
  resumed.close()


def test_folder_views_resume_exactly(tmp_path, fresh_index):
  _write_folder(tmp_path / 'images')
  c = _config(tmp_path / 'images')
  it = data.build_train_iterator(c)
  batches = [next(it) for _ in range(3)]
  it.close()
  assert [v.shape for v in batches[0]['views']] == [(8, 16, 16, 3)] * 2
  assert not np.array_equal(batches[0]['views'][0], batches[0]['views'][1])
  resumed = data.build_train_iterator(c, start_step=2)
  for a, b in zip(batches[2]['views'], next(resumed)['views'], strict=True):
    np.testing.assert_array_equal(a, b)
  resumed.close()


def test_evaluation_streams_skips_broken_files_and_keeps_positions(tmp_path, fresh_index):
  _write_folder(tmp_path / 'images')
  (tmp_path / 'images' / 'test' / 'b' / '001.png').write_bytes(b'')
  c = _config(tmp_path / 'images')
  c.data.max_bad_fraction = 0.1
  split = data.eval_split(c, 'test')
  assert split.size == 10 and split.image_shape == (16, 16, 3)
  batches = list(split.batches(4))
  assert [b[0].shape for b in batches] == [(4, 16, 16, 3)] * 3
  valid = np.concatenate([b[2] for b in batches])
  assert valid.tolist() == [True] * 6 + [False] + [True] * 3 + [False] * 2  # 001 of b; padding
  x, y = split.take()
  assert x.shape == (9, 16, 16, 3) and y.tolist() == [0] * 5 + [1] * 4
  # A flat colour stays that colour through the resize and the centre crop.
  first = np.asarray(Image.open(tmp_path / 'images' / 'test' / 'a' / '000.png'), np.float32) / 255
  np.testing.assert_allclose(x[0], first[:16, :16], atol=1e-5)
  rows_x, rows_y = split.take(np.array([2, 6, 8]))  # row 6 is the broken file
  np.testing.assert_array_equal(rows_x, x[[2, 7]])
  assert rows_y.tolist() == [0, 1]

  # On the mesh: the mean of each image, its label and global position; the broken one absent.
  mesh = __import__('ssljax.sharding', fromlist=['make_mesh']).make_mesh()
  means, labels, positions = apply_in_batches(
    lambda _, x: x.mean(axis=(1, 2, 3)), (), split, mesh, 8, out_dtype=np.float16
  )
  assert means.dtype == np.float16 and positions.tolist() == [0, 1, 2, 3, 4, 5, 7, 8, 9]
  np.testing.assert_allclose(means, x.mean(axis=(1, 2, 3)), rtol=1e-3)
  np.testing.assert_array_equal(labels, y)


def _main_flags(images):
  return (
    '--config=configs/simclr_digits.py',
    '--config.data.source=folder',
    f'--config.data.path={images}',
    '--config.model.width=4',
    '--config.model.proj_dim=8',
    '--config.batch_size=16',
    '--config.total_steps=30',
    '--config.checkpoint_every=5',
    '--config.log_every=5',
    '--config.eval=()',
    '--config.eval_config.random_init=False',
  )


@pytest.mark.slow
def test_kill_9_mid_run_then_rerun_ends_bit_identical(tmp_path, start_main, final_checkpoint):
  """No warning, no final save: the rerun resumes from the last checkpoint and, reading the
  same files in the same order with the same augmentations, ends with the same bits."""
  _write_folder(tmp_path / 'images', per_class=24)
  straight = start_main(tmp_path / 'straight', *_main_flags(tmp_path / 'images'))
  log = straight.communicate(timeout=600)[0]
  assert straight.returncode == 0, log[-3000:]

  killed = start_main(tmp_path / 'killed', *_main_flags(tmp_path / 'images'))
  deadline = time.time() + 600
  while not glob.glob(str(tmp_path / 'killed' / 'checkpoints' / '10')) and time.time() < deadline:
    time.sleep(0.1)
  killed.kill()  # SIGKILL
  killed.communicate(timeout=60)
  assert killed.returncode == -signal.SIGKILL
  saved, _ = final_checkpoint(tmp_path / 'killed')
  assert 10 <= saved < 30

  resumed = start_main(tmp_path / 'killed', *_main_flags(tmp_path / 'images'))
  log = resumed.communicate(timeout=600)[0]
  assert resumed.returncode == 0, log[-3000:]
  assert f'Resumed from step {saved}' in log
  (step_a, a), (step_b, b) = (
    final_checkpoint(tmp_path / 'straight'),
    final_checkpoint(tmp_path / 'killed'),
  )
  assert step_a == step_b == 30
  jax.tree.map(np.testing.assert_array_equal, a, b)  # bit for bit

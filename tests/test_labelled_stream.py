"""The supervised protocols' images, streamed (`data.labelled_train_iterator`): read by index a
batch at a time from the evaluation split, never the split in memory; the same batches as the
in-memory arrays gave; unreadable images replaced; every source that reads by index."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from ssljax import data, sharding
from ssljax.config.defaults import augment_defaults
from ssljax.data import order
from ssljax.data.types import EvalSplit
from ssljax.evaluators import finetune as finetune_lib
from ssljax.evaluators import linear_sgd
from ssljax.methods import SimCLR

SIDE = 16


def _write_folder(root, per_class=12):
  """train/{a,b,c} of RGB PNGs, each a distinct flat colour: a crop of it keeps the colour, so
  an augmented image still says which file it is."""
  colours = []
  for k, name in enumerate('abc'):
    (root / 'train' / name).mkdir(parents=True)
    (root / 'test' / name).mkdir(parents=True)
    for i in range(per_class):
      colour = np.array([20 * i + 5, 80 * k + 10, 200 - 10 * i], np.uint8)
      colours.append(colour)
      pixels = np.broadcast_to(colour, (20, 20, 3))
      Image.fromarray(np.ascontiguousarray(pixels)).save(root / 'train' / name / f'{i:02d}.png')
      Image.fromarray(np.ascontiguousarray(pixels)).save(root / 'test' / name / f'{i:02d}.png')
  return np.stack(colours)


def _config(root):
  c = SimCLR.default_config(SIDE)
  c.data.source, c.data.path = 'folder', str(root)
  c.data.image_size = c.augment.image_size = SIDE
  c.data.max_bad_fraction = 0.5
  return c


def _spec(flip=True, crop_scale=(0.3, 1.0)):
  spec = augment_defaults(SIDE)
  spec.update(
    dict(
      crop_scale=crop_scale,
      flip=flip,
      color_strength=0.0,
      grayscale_prob=0.0,
      blur_prob=0.0,
      solarize_prob=0.0,
    )
  )
  return spec


def _files_of(images, colours) -> list[int]:
  """The file each (augmented) image shows: the one whose flat colour is nearest its mean."""
  return [int(np.argmin(np.abs(colours / 255.0 - img.mean(axis=(0, 1))).sum(1))) for img in images]


def _take(iterator, n):
  out = [next(iterator) for _ in range(n)]
  iterator.close()
  return out


@pytest.mark.parametrize('tf_augment', [True, False])
def test_a_folder_streams_the_batches_its_arrays_in_memory_gave(tmp_path, fresh_index, tf_augment):
  """Rows read by index from the folder give, bit for bit, the batches the same rows taken into
  memory first give (what the protocols did before), whichever augmentation path runs."""
  _write_folder(tmp_path / 'images')
  split = data.eval_split(_config(tmp_path / 'images'), 'train')
  rows = np.array([30, 2, 7, 7, 19, 33, 11, 0, 25])  # any order, a repeat: a set of rows
  kwargs = dict(batch_size=4, seed=5, tf_augment=tf_augment)
  streamed = _take(data.labelled_train_iterator(split, rows, _spec(), **kwargs), 7)
  in_memory = EvalSplit.of_arrays(*split.take(rows))
  expected = _take(data.labelled_train_iterator(in_memory, np.arange(8), _spec(), **kwargs), 7)
  for (x, y), (x_ref, y_ref) in zip(streamed, expected, strict=True):
    np.testing.assert_array_equal(x, x_ref)
    np.testing.assert_array_equal(y, y_ref)
  assert streamed[0][0].shape == (4, SIDE, SIDE, 3)


@pytest.mark.parametrize('tf_augment', [True, False])
def test_the_batches_do_not_depend_on_the_process_count(
  tmp_path, fresh_index, monkeypatch, tf_augment
):
  """Two processes (simulated) each take their half of every global batch, read by index from
  any process's files and augmented by the global element: together, one process's batches."""
  _write_folder(tmp_path / 'images')
  split = data.eval_split(_config(tmp_path / 'images'), 'train')
  examples = np.arange(3, 36, 3)
  kwargs = dict(batch_size=6, seed=2, tf_augment=tf_augment)
  one = _take(data.labelled_train_iterator(split, examples, _spec(), **kwargs), 4)
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  halves = []
  for p in range(2):
    monkeypatch.setattr(jax, 'process_index', lambda p=p: p)
    halves.append(_take(data.labelled_train_iterator(split, examples, _spec(), **kwargs), 4))
  for step, (x, y) in enumerate(one):
    np.testing.assert_array_equal(np.concatenate([h[step][0] for h in halves]), x)
    np.testing.assert_array_equal(np.concatenate([h[step][1] for h in halves]), y)


def test_each_epoch_shows_every_row_once_and_a_broken_file_gives_its_slot_away(
  tmp_path, fresh_index
):
  """Element e is rows[perm_(e // n)[e % n]]: over each epoch every chosen file appears once
  (told by its colour); an unreadable file's slots go to the next readable row of the set."""
  colours = _write_folder(tmp_path / 'images')
  (tmp_path / 'images' / 'train' / 'a' / '05.png').write_bytes(b'not a png')  # row 5
  split = data.eval_split(_config(tmp_path / 'images'), 'train')
  rows = np.array([1, 5, 9, 14, 20, 27, 35])
  n, batch = len(rows), 7
  # Flat colours: any crop and flip leaves an image its colour.
  stream = data.labelled_train_iterator(split, rows, _spec(), batch_size=batch, seed=1)
  epochs = _take(stream, 3)
  want = [r if r != 5 else 9 for r in rows]  # row 5's slot: the next readable row, 9
  for x, y in epochs:
    seen = _files_of(x, colours)
    assert sorted(seen) == sorted(want)
    np.testing.assert_array_equal(y, split.row_labels[seen])
  walk = dict(batch_size=batch, num_examples=n, seed=1, process_index=0, process_count=1)
  order_1 = rows[order.global_indices(1, **walk)]  # the second epoch, by the documented rule
  x1 = epochs[1][0]
  got = _files_of(x1, colours)
  assert got == [r if r != 5 else 9 for r in order_1]


def test_the_stream_holds_a_few_batches_not_the_split(tmp_path, fresh_index, monkeypatch):
  """The reader is handed the rows of a step as the steps are taken (a few ahead), and nothing
  reads the split into memory."""
  _write_folder(tmp_path / 'images')
  split = data.eval_split(_config(tmp_path / 'images'), 'train')
  monkeypatch.setattr(EvalSplit, 'take', lambda *a, **k: pytest.fail('read into memory'))
  handed = []
  read_examples = split.read_examples

  def counting(parts):
    def noted():
      for part in parts:
        handed.append(len(part))
        yield part

    return read_examples(noted())

  split = EvalSplit(split.size, split.image_shape, split.read, None, counting, split.row_labels)
  stream = data.labelled_train_iterator(split, np.arange(36), _spec(), batch_size=4, seed=0)
  for taken in range(1, 6):
    next(stream)
    assert taken <= len(handed) <= taken + 3  # random_access.AHEAD steps ahead, at most
  stream.close()


def test_linear_sgd_on_a_streamed_folder_equals_it_on_the_rows_in_memory(tmp_path, fresh_index):
  """The frozen-encoder protocol trained from the folder read by index reaches the same head,
  bit for bit, as from the same rows handed over in memory."""
  _write_folder(tmp_path / 'images')
  c = _config(tmp_path / 'images')
  split = data.eval_split(c, 'train')
  rows = np.arange(0, 36, 2)

  class Encoder(nn.Module):
    @nn.compact
    def __call__(self, x, *, train: bool):
      return nn.Dense(8)(jnp.mean(x, axis=(1, 2)))

  encoder = Encoder()
  variables = encoder.init(jax.random.PRNGKey(0), jnp.zeros((1, SIDE, SIDE, 3)), train=False)
  c.eval_config.linear_sgd.update(dict(batch_size=8, epochs=2.0, min_steps=5))
  ft = linear_sgd.settings(c)
  mesh = sharding.make_mesh()
  common = dict(
    num_classes=3, num_train=len(rows), mesh=mesh, ft=ft, eval_batch_size=8, frozen=True
  )
  tests = {'': data.eval_split(c, 'test')}
  streamed = finetune_lib.finetune(encoder, variables, split, tests, train_examples=rows, **common)
  held = finetune_lib.finetune(encoder, variables, split.take(rows), tests, **common)
  assert streamed.steps == held.steps == 5
  assert streamed.accuracy == held.accuracy
  jax.tree.map(np.testing.assert_array_equal, streamed.variables, held.variables)


def _tiny_tfds(builders, tmp_path, file_format):
  """A config reading the conftest's tfds dataset of variable-size images (40 train, 10 test)
  prepared in `file_format`."""
  builder = builders[True](data_dir=str(tmp_path))
  builder.download_and_prepare(file_format=file_format)
  c = SimCLR.default_config(SIDE)
  c.data.update(dict(source='tfds', name=builder.name, data_dir=str(tmp_path), image_size=SIDE))
  c.augment.image_size = SIDE
  return c


@pytest.mark.parametrize('processes', [1, 2])
def test_a_tfds_split_prepared_as_array_record_is_read_by_index(
  tmp_path, monkeypatch, processes, tiny_tfds_builders
):
  """Each process's rows, read by record index from array_record (which tfds reads no other
  way), equal the same rows of the same dataset prepared as tfrecord and read in order."""
  by_index = _tiny_tfds(tiny_tfds_builders, tmp_path / 'array_record', 'array_record')
  in_order = _tiny_tfds(tiny_tfds_builders, tmp_path / 'tfrecord', 'tfrecord')
  monkeypatch.setattr(jax, 'process_count', lambda: processes)
  for p in range(processes):
    monkeypatch.setattr(jax, 'process_index', lambda p=p: p)
    split, reference = data.eval_split(by_index, 'train'), data.eval_split(in_order, 'train')
    assert split.read_examples is not None and reference.read_examples is None
    assert split.size == reference.size == 40 // processes
    rows = np.array([3, 0, 11, 3])
    x_all, y_all = reference.take()
    (x, y, valid), *_ = list(split.read_examples([split.positions(rows)]))
    assert valid.all()
    np.testing.assert_allclose(x, x_all[rows], atol=1e-6)  # one resize traced apart: 2e-7
    np.testing.assert_array_equal(y, y_all[rows])
    np.testing.assert_array_equal(split.positions(rows), p * 20 + rows)
    # In order, by index: the evaluation's batches (padded to 8 rows) are the same images.
    x_in_order, y_in_order = split.take()
    np.testing.assert_allclose(x_in_order, x_all, atol=1e-6)
    np.testing.assert_array_equal(y_in_order, y_all)


def test_a_tfds_split_read_only_in_order_is_held_in_memory_with_a_warning(
  tmp_path, caplog, tiny_tfds_builders
):
  c = _tiny_tfds(tiny_tfds_builders, tmp_path, 'tfrecord')
  split = data.eval_split(c, 'train')
  assert split.read_examples is None
  rows = np.array([4, 8, 15, 16, 23])
  stream = data.labelled_train_iterator(split, rows, _spec(), batch_size=5, seed=0)
  (x, y), *_ = _take(stream, 2)
  assert sorted(y.tolist()) == sorted(split.take(rows)[1].tolist())
  assert 'held in memory' in caplog.text and 'array_record' in caplog.text


def test_a_shifted_split_reads_its_rows_corrupted_as_its_batches(
  tmp_path, monkeypatch, tiny_tfds_builders
):
  """config.data.shift applies to rows read by index by the example's position in the split
  (here tfds's contiguous block of process 1 of 2), as to the in-order read of tfrecord."""
  by_index = _tiny_tfds(tiny_tfds_builders, tmp_path / 'array_record', 'array_record')
  in_order = _tiny_tfds(tiny_tfds_builders, tmp_path / 'tfrecord', 'tfrecord')
  for c in (by_index, in_order):
    c.data.shift, c.data.shift_severity = 'gaussian_noise', 3
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  monkeypatch.setattr(jax, 'process_index', lambda: 1)
  split, reference = data.eval_split(by_index, 'test'), data.eval_split(in_order, 'test')
  assert split.start == reference.start == 5
  x_all, _ = reference.take()
  rows = np.array([4, 1])
  (x, _, _), *_ = list(split.read_examples([split.positions(rows)]))
  np.testing.assert_allclose(x, x_all[rows], atol=1e-6)
  plain = _tiny_tfds(tiny_tfds_builders, tmp_path / 'plain', 'tfrecord')
  assert not np.allclose(x, data.eval_split(plain, 'test').take()[0][rows], atol=0.01)

"""ssljax.data.sources: every kind implements one interface, and a new kind is one class plus one
registry line, as a method is (tests/test_methods.py)."""

import numpy as np
import pytest

from ssljax import data, errors, methods, sharding, train
from ssljax.config.defaults import base_config
from ssljax.data import order, sources
from ssljax.data.sources.base import InMemory, Source, Split

# What the loop and the pipeline ask of a source; each kind must answer them all.
ANSWERS = ('info', 'train_views', 'base_images', 'eval_split')


def test_every_registered_source_implements_the_interface():
  assert list(sources.SOURCES) == ['digits', 'tfds', 'idx', 'folder', 'synthetic']
  for name, cls in sources.SOURCES.items():
    assert issubclass(cls, Source), name
    for method in ANSWERS:
      assert getattr(cls, method) is not getattr(Source, method), f'{name} lacks {method}'
  assert [c.uses_tensorflow for c in sources.SOURCES.values()] == [True] * 4 + [False]


def test_an_unknown_source_is_refused_naming_every_registered_one():
  c = base_config()
  c.data.source = 'nope'
  with pytest.raises(errors.ConfigError, match="'nope'.*digits, tfds, idx, folder, synthetic"):
    data.source(c)


class Stripes(InMemory):
  """A toy sixth source, written as a new file in ssljax/data/sources/ would be: image i of a
  split is dark with one bright column, at its label (0, 1 or 2) times 5."""

  def load(self, split: str) -> Split:
    n = 12 if split == 'train' else 6
    labels = (np.arange(n) % 3).astype(np.int32)
    images = np.zeros((n, 16, 16, 1), np.uint8)
    images[np.arange(n), :, labels * 5] = 255
    return Split(images, labels, 3)


def test_a_new_source_is_one_class_and_one_registry_line(monkeypatch):
  monkeypatch.setitem(sources.SOURCES, 'stripes', Stripes)  # the registry line
  c = methods.METHODS['simclr'].default_config(16)
  c.data.source, c.data.image_size, c.augment.image_size = 'stripes', 16, 16
  c.batch_size, c.augment.on = 8, 'device'
  train.validate(c, sharding.make_mesh())  # the config checks and check_available accept it
  assert data.dataset_info(c) == data.DatasetInfo(12, 3, (16, 16, 1))

  # Device views: each step's base images are the examples order.global_indices names.
  it = data.build_train_iterator(c)
  train_images = Stripes(c).load('train').images
  for step in range(3):  # 24 examples: crosses the epoch boundary
    batch = next(it)
    index = order.global_indices(
      step, batch_size=8, num_examples=12, seed=int(c.seed), process_index=0, process_count=1
    )
    np.testing.assert_array_equal(batch['images'], train_images[index])
  resumed = next(data.build_train_iterator(c, start_step=2))
  np.testing.assert_array_equal(resumed['images'], batch['images'])
  np.testing.assert_array_equal(resumed['elements'], batch['elements'])

  # Host views and the evaluation split come from the shared tf.data pipeline.
  pytest.importorskip('tensorflow')
  c.augment.on = 'host'
  views = next(data.build_train_iterator(c))['views']
  assert [v.shape for v in views] == [(8, 16, 16, 1)] * 2
  x, y = data.load_eval_split(c, 'test')
  np.testing.assert_array_equal(y, [0, 1, 2, 0, 1, 2])
  np.testing.assert_array_equal(np.argmax(x[:, 0, :, 0], axis=1), y * 5)  # the bright column

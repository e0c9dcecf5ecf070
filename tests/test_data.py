"""ssljax.data: augmentation ops, the example order, the pipelines and every source."""

import gzip
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from ssljax import data
from ssljax.config.defaults import base_config
from ssljax.data import order
from ssljax.data.sources import synthetic

tf = pytest.importorskip('tensorflow')
from ssljax.data import augment, pipeline  # noqa: E402
from ssljax.data.sources import StreamedTfds, idx  # noqa: E402

FASHION_MNIST = '/usr/share/datasets/fashion-mnist'
REPO = pathlib.Path(__file__).resolve().parents[1]


def _image(channels=3, height=32, width=32, seed=0):
  return np.random.default_rng(seed).random((height, width, channels), dtype=np.float32)


def _apply(op, image, seed):
  return op(tf.constant(image), tf.constant([seed, 7], tf.int64)).numpy()


# ----------------------------------------------------------------------------- augmentation ops

OPS = {
  'crop': (
    lambda im, s: augment.random_resized_crop(
      im, s, size=24, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)
    ),
    24,
  ),
  'flip': (augment.random_flip, None),
  'jitter': (lambda im, s: augment.color_jitter(im, s, strength=1.0, prob=0.8), None),
  'grayscale': (lambda im, s: augment.random_grayscale(im, s, prob=0.5), None),
  'blur': (
    lambda im, s: augment.gaussian_blur(im, s, prob=0.5, kernel_frac=0.1, sigma=(0.1, 2.0)),
    None,
  ),
  'solarize': (lambda im, s: augment.solarize(im, s, prob=0.5), None),
  'view': (lambda im, s: augment.augment_view(im, s, base_config().augment), 32),
}


@pytest.mark.parametrize(
  'name, channels',
  # Grayscale is the identity on one channel (tested below).
  [(n, c) for n in sorted(OPS) for c in (1, 3) if (n, c) != ('grayscale', 1)],
)
def test_op_contract(name, channels):
  """Shape, dtype, range; a seed repeats bit for bit; different seeds give different images."""
  op, size = OPS[name]
  image = _image(channels, 32, 32)
  out = _apply(op, image, 3)
  side = size or 32
  assert out.shape == (side, side, channels) and out.dtype == np.float32
  assert out.min() >= 0.0 and out.max() <= 1.0
  np.testing.assert_array_equal(out, _apply(op, image, 3))
  outs = {_apply(op, image, s).tobytes() for s in range(8)}
  assert len(outs) >= 2


def test_crop_whole_image_is_resize():
  image = _image(3, 20, 20)
  out = _apply(
    lambda im, s: augment.random_resized_crop(im, s, size=28, scale=(1, 1), ratio=(1, 1)),
    image,
    0,
  )
  expected = np.clip(tf.image.resize(image[None], [28, 28], method='bicubic')[0].numpy(), 0, 1)
  np.testing.assert_allclose(out, expected, atol=1e-6)


def test_crop_falls_back_to_center_crop():
  """A square crop of the full area never fits a 40x20 image: take the centered 20x20."""
  image = _image(1, 40, 20)
  out = _apply(
    lambda im, s: augment.random_resized_crop(im, s, size=20, scale=(1, 1), ratio=(1, 1)),
    image,
    0,
  )
  np.testing.assert_allclose(out, image[10:30], atol=1e-6)


def test_crop_small_scale_zooms_in():
  image = np.zeros((32, 32, 1), np.float32)
  image[::2] = 1.0  # horizontal stripes: a zoomed-in crop has fewer, wider stripes
  crop = lambda im, s: augment.random_resized_crop(im, s, size=32, scale=(0.1, 0.1), ratio=(1, 1))
  out = _apply(crop, image, 0)
  transitions = np.abs(np.diff(out[:, 16, 0] > 0.5)).sum()
  assert transitions < 16


def test_flip_is_mirror_or_identity():
  image = _image(3)
  flipped = identical = 0
  for seed in range(10):
    out = _apply(augment.random_flip, image, seed)
    if np.array_equal(out, image[:, ::-1]):
      flipped += 1
    else:
      np.testing.assert_array_equal(out, image)
      identical += 1
  assert flipped and identical


def test_color_jitter_strength_zero_and_prob_zero_are_identity():
  image = _image(3)
  for strength, prob in ((0.0, 1.0), (1.0, 0.0)):
    op = lambda im, s, st=strength, p=prob: augment.color_jitter(im, s, strength=st, prob=p)
    np.testing.assert_array_equal(_apply(op, image, 0), image)


def test_color_jitter_factors_set_each_op_range():
  """BYOL's jitter is the same op with other per-op factors: zero factors change nothing, and
  brightness alone scales every pixel by one factor within [1 - b, 1 + b]."""
  image = _image(3) * 0.5  # no clipping at 1
  zero = lambda im, s: augment.color_jitter(im, s, strength=1.0, prob=1.0, factors=(0, 0, 0, 0))
  np.testing.assert_allclose(_apply(zero, image, 0), image, atol=1e-6)
  for seed in range(4):
    bright = lambda im, s: augment.color_jitter(
      im, s, strength=1.0, prob=1.0, factors=(0.4, 0.0, 0.0, 0.0)
    )
    out = _apply(bright, image, seed)
    ratio = out[image > 0.05] / image[image > 0.05]
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-4)
    assert 0.6 - 1e-6 <= ratio[0] <= 1.4 + 1e-6


def test_color_jitter_keeps_gray_images_gray():
  gray = np.repeat(_image(1), 3, axis=-1)
  op = lambda im, s: augment.color_jitter(im, s, strength=1.0, prob=1.0)
  for seed in range(4):
    out = _apply(op, gray, seed)
    assert not np.allclose(out, gray)
    np.testing.assert_allclose(out[..., 0], out[..., 1], atol=1e-5)
    np.testing.assert_allclose(out[..., 0], out[..., 2], atol=1e-5)


def test_grayscale_equal_channels_and_identity_for_one_channel():
  image = _image(3)
  out = _apply(lambda im, s: augment.random_grayscale(im, s, prob=1.0), image, 0)
  np.testing.assert_array_equal(out[..., 0], out[..., 1])
  np.testing.assert_array_equal(out[..., 0], out[..., 2])
  np.testing.assert_allclose(out[..., 0], image @ [0.2989, 0.587, 0.114], atol=1e-3)
  single = _image(1)
  np.testing.assert_array_equal(
    _apply(lambda im, s: augment.random_grayscale(im, s, prob=1.0), single, 0), single
  )


def test_blur():
  assert [augment.blur_kernel_size(s, 0.1) for s in (8, 32, 96, 224)] == [3, 3, 11, 23]
  image = _image(3)

  def blur(sigma):
    return lambda im, s: augment.gaussian_blur(
      im, s, prob=1.0, kernel_frac=0.1, sigma=(sigma, sigma)
    )

  np.testing.assert_allclose(_apply(blur(1e-3), image, 0), image, atol=1e-6)
  strong = _apply(
    lambda im, s: augment.gaussian_blur(im, s, prob=1.0, kernel_frac=0.3, sigma=(10.0, 10.0)),
    image,
    0,
  )
  assert strong.var() < 0.2 * image.var()
  np.testing.assert_allclose(strong.mean(), image.mean(), atol=0.02)  # SYMMETRIC padding
  constant = np.full((32, 32, 1), 0.3, np.float32)
  np.testing.assert_allclose(_apply(blur(2.0), constant, 0), constant, atol=1e-6)


def test_solarize_formula():
  image = np.array([[0.1, 0.5], [0.7, 0.49]], np.float32)[..., None]
  out = _apply(lambda im, s: augment.solarize(im, s, prob=1.0), image, 0)
  np.testing.assert_allclose(out[..., 0], [[0.1, 0.5], [0.3, 0.49]], atol=1e-7)
  unchanged = _apply(lambda im, s: augment.solarize(im, s, prob=0.0), image, 0)
  np.testing.assert_array_equal(unchanged, image)


# ----------------------------------------------------------------------------- view specs


def test_view_specs_overrides_counts_and_order():
  c = base_config()
  c.views = dict(
    b_local=dict(image_size=16, count=2, crop_scale=(0.05, 0.4)), a_global=dict(blur_prob=1.0)
  )
  specs = data.view_specs(c)
  assert [s.image_size for s in specs] == [32, 16, 16]
  assert specs[0].blur_prob == 1.0 and specs[1].blur_prob == c.augment.blur_prob == 0.5
  assert tuple(specs[1].crop_scale) == (0.05, 0.4) and tuple(specs[0].crop_scale) == (0.08, 1.0)
  assert specs[1] is not specs[2]
  assert len(data.view_specs(base_config())) == 2


# ----------------------------------------------------------------------------- example order


def test_global_indices_epochs_are_permutations():
  kw = dict(batch_size=10, num_examples=25, seed=3, process_index=0, process_count=1)
  stream = np.concatenate([order.global_indices(s, **kw) for s in range(10)])  # 4 epochs
  for epoch in range(4):
    np.testing.assert_array_equal(np.sort(stream[25 * epoch : 25 * (epoch + 1)]), np.arange(25))
  assert not np.array_equal(stream[:25], stream[25:50])  # reshuffled every epoch
  assert not np.array_equal(stream[:25], np.arange(25))
  other_seed = order.global_indices(0, **{**kw, 'seed': 4})
  assert not np.array_equal(other_seed, stream[:10])


def test_global_indices_process_slices_make_the_global_batch():
  kw = dict(batch_size=12, num_examples=50, seed=0)
  for step in (0, 4, 9):
    whole = order.global_indices(step, process_index=0, process_count=1, **kw)
    parts = [order.global_indices(step, process_index=p, process_count=4, **kw) for p in range(4)]
    assert all(len(p) == 3 for p in parts)
    np.testing.assert_array_equal(np.concatenate(parts), whole)
  with pytest.raises(ValueError):
    order.global_indices(0, process_index=0, process_count=5, **kw)


# ----------------------------------------------------------------------------- digits pipeline


def _digits_config(batch_size=16):
  c = base_config()
  c.batch_size = batch_size
  c.data.image_size = 16
  c.augment.image_size = 16
  return c


def test_digits_pipeline_batches_and_resume(monkeypatch):
  monkeypatch.setattr(pipeline, 'CHUNK_EXAMPLES', 32)  # 2 steps per chunk: resume mid-chunk
  c = _digits_config()
  it = data.build_train_iterator(c)
  batches = [next(it) for _ in range(3)]
  views = batches[0]['views']
  assert len(views) == 2
  for v in views:
    assert v.shape == (16, 16, 16, 1) and v.dtype == np.float32
    assert v.min() >= 0.0 and v.max() <= 1.0
  assert not np.allclose(views[0], views[1])
  resumed = data.build_train_iterator(c, start_step=1)
  for step in (1, 2):
    for a, b in zip(batches[step]['views'], next(resumed)['views'], strict=True):
      np.testing.assert_array_equal(a, b)


def test_digits_pipeline_follows_global_indices(monkeypatch):
  """With every augmentation off, a view is the (upsampled) example that global_indices names."""
  monkeypatch.setattr(pipeline, 'CHUNK_EXAMPLES', 64)  # 2 steps per chunk
  c = _digits_config(batch_size=32)
  c.augment.update(
    dict(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip=False, color_strength=0.0)
  )
  c.augment.update(dict(grayscale_prob=0.0, blur_prob=0.0))
  c.views = dict(view1={})
  train_images, _ = data.load_eval_split(c, 'train')
  it = data.build_train_iterator(c, start_step=41)  # crosses the epoch boundary at 1347
  for step in (41, 42, 43):
    (view,) = next(it)['views']
    index = order.global_indices(
      step, batch_size=32, num_examples=1347, seed=0, process_index=0, process_count=1
    )
    np.testing.assert_allclose(view, train_images[index], atol=1e-5)


def test_digits_info_and_eval_splits():
  c = _digits_config()
  data.check_available(c)
  assert data.dataset_info(c) == data.DatasetInfo(1347, 10, (16, 16, 1))
  x, y = data.load_eval_split(c, 'test')
  assert x.shape == (450, 16, 16, 1) and x.dtype == np.float32 and y.dtype == np.int32
  assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.9
  from sklearn.datasets import load_digits

  per_class = np.bincount(load_digits().target)
  assert np.abs(np.bincount(y, minlength=10) - 0.25 * per_class).max() <= 1  # stratified
  c.eval_config.max_examples = 100
  x100, y100 = data.load_eval_split(c, 'test')
  np.testing.assert_array_equal(y100, y[:100])
  np.testing.assert_allclose(x100, x[:100])
  with pytest.raises(ValueError):
    data.load_eval_split(c, 'validation')


def test_eval_resize_center_crops_large_images():
  """64x48 -> shorter side 18 (16 / 0.875) -> 24x18 -> center 16x16: the dark frame is cut."""
  image = np.zeros((64, 48, 3), np.float32)
  image[1:-1, 1:-1] = 1.0
  out = pipeline.eval_resize(tf.constant(image), 16).numpy()
  assert out.shape == (16, 16, 3)
  assert out.min() > 0.99
  squashed = tf.image.resize(image, [16, 16], antialias=True).numpy()
  assert squashed.min() < 0.9  # a plain resize would keep the frame


# ----------------------------------------------------------------------------- idx source


def _write_idx(path, array, magic_type=0x08):
  header = bytes([0, 0, magic_type, array.ndim]) + np.array(array.shape, '>u4').tobytes()
  with gzip.open(path, 'wb') if str(path).endswith('.gz') else open(path, 'wb') as f:
    f.write(header + array.astype('>u1').tobytes())


def test_read_idx_round_trip_and_bad_magic(tmp_path):
  array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
  _write_idx(tmp_path / 'x-idx3-ubyte.gz', array)
  np.testing.assert_array_equal(idx.read_idx(tmp_path / 'x-idx3-ubyte.gz'), array)
  bad = tmp_path / 'bad-idx3-ubyte'
  bad.write_bytes(b'\x12\x34\x08\x03' + bytes(100))
  with pytest.raises(ValueError, match='bad-idx3-ubyte.*not an idx file'):
    idx.read_idx(bad)
  truncated = tmp_path / 'short-idx3-ubyte'
  _write_idx(truncated, array)
  truncated.write_bytes(truncated.read_bytes()[:-3])
  with pytest.raises(ValueError, match='short-idx3-ubyte'):
    idx.read_idx(truncated)


def test_idx_missing_directory(tmp_path):
  c = base_config()
  c.data.source = 'idx'
  c.data.path = str(tmp_path / 'nowhere')
  with pytest.raises(data.DatasetNotFoundError, match='nowhere') as e:
    data.check_available(c)
  assert 'apt-get install dataset-fashion-mnist' in str(e.value)


@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST), reason='dataset-fashion-mnist not installed')
def test_idx_fashion_mnist():
  c = base_config()
  c.data.source = 'idx'
  c.data.path = FASHION_MNIST
  data.check_available(c)
  source = data.source(c)
  train, test = source.load('train'), source.load('test')
  assert train.images.shape == (60000, 28, 28, 1) and train.images.dtype == np.uint8
  assert test.images.shape == (10000, 28, 28, 1)
  assert set(np.unique(train.labels)) == set(range(10)) == set(np.unique(test.labels))
  assert data.dataset_info(c) == data.DatasetInfo(60000, 10, (32, 32, 1))
  c.eval_config.max_examples = 64
  x, y = data.load_eval_split(c, 'test')
  assert x.shape == (64, 32, 32, 1) and y.dtype == np.int32
  np.testing.assert_array_equal(y, test.labels[:64])


# ----------------------------------------------------------------------------- folder source


def _png(path, mode, value, size=(20, 14)):
  path.parent.mkdir(parents=True, exist_ok=True)
  channels = 1 if mode == 'L' else 3
  pixels = np.full((size[1], size[0], channels), value, np.uint8)
  Image.fromarray(pixels[..., 0] if mode == 'L' else pixels, mode).save(path)


def _folder_config(path):
  c = base_config()
  c.data.source = 'folder'
  c.data.path = str(path)
  c.data.image_size = 16
  c.augment.image_size = 16
  return c


def test_folder_class_subfolders(tmp_path):
  for i in range(3):
    _png(tmp_path / 'dog' / f'{i}.png', 'RGB', 200)
  for i in range(2):
    _png(tmp_path / 'cat' / f'{i}.PNG', 'RGB', 50)
  (tmp_path / 'notes.txt').write_text('not an image')
  c = _folder_config(tmp_path)
  data.check_available(c)
  assert data.dataset_info(c) == data.DatasetInfo(5, 2, (16, 16, 3))
  x, y = data.load_eval_split(c, 'train')
  assert x.shape == (5, 16, 16, 3)
  np.testing.assert_array_equal(y, [0, 0, 1, 1, 1])  # cat < dog
  np.testing.assert_allclose(x[y == 0], 50 / 255, atol=1e-2)
  x_test, y_test = data.load_eval_split(c, 'test')
  assert x_test.shape == (0, 16, 16, 3) and y_test.shape == (0,)


def test_folder_train_test_grayscale(tmp_path):
  for split, n in (('train', 2), ('test', 1)):
    for cls in ('a', 'b'):
      for i in range(n):
        _png(tmp_path / split / cls / f'{i}.png', 'L', 100 if cls == 'a' else 250)
  c = _folder_config(tmp_path)
  assert data.dataset_info(c) == data.DatasetInfo(4, 2, (16, 16, 1))
  x, y = data.load_eval_split(c, 'test')
  assert x.shape == (2, 16, 16, 1)
  np.testing.assert_array_equal(y, [0, 1])
  np.testing.assert_allclose(x[1], 250 / 255, atol=1e-2)


def test_folder_flat_is_unlabelled_and_trains(tmp_path):
  for i in range(4):
    _png(tmp_path / f'img{i}.jpg', 'RGB', 40 * i, size=(30, 24))
  c = _folder_config(tmp_path)
  c.batch_size = 4
  assert data.dataset_info(c) == data.DatasetInfo(4, 0, (16, 16, 3))
  _, y = data.load_eval_split(c, 'train')
  np.testing.assert_array_equal(y, [-1, -1, -1, -1])
  views = next(data.build_train_iterator(c))['views']
  assert [v.shape for v in views] == [(4, 16, 16, 3)] * 2


def test_folder_missing_or_empty(tmp_path):
  c = _folder_config(tmp_path / 'absent')
  with pytest.raises(data.DatasetNotFoundError, match='absent'):
    data.check_available(c)
  (tmp_path / 'empty').mkdir()
  with pytest.raises(data.DatasetNotFoundError, match='empty'):
    data.check_available(_folder_config(tmp_path / 'empty'))


# ----------------------------------------------------------------------------- synthetic source


def test_synthetic_without_tensorflow():
  code = (
    'import sys\n'
    "sys.modules['tensorflow'] = None\n"
    "sys.modules['tensorflow_datasets'] = None\n"
    'import ssljax.data as data\n'
    'from ssljax.config.defaults import base_config\n'
    'c = base_config()\n'
    "c.data.source = 'synthetic'\n"
    'c.data.channels = 3\n'
    'c.batch_size = 8\n'
    'data.check_available(c)\n'
    'info = data.dataset_info(c)\n'
    'views = next(data.build_train_iterator(c))["views"]\n'
    'x, y = data.load_eval_split(c, "test")\n'
    'print(info.num_train, info.num_classes, info.image_shape, [v.shape for v in views], '
    'x.shape, y.shape)\n'
  )
  env = {**os.environ, 'PYTHONPATH': str(REPO), 'JAX_PLATFORMS': 'cpu'}
  result = subprocess.run(
    [sys.executable, '-c', code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip().splitlines()[-1] == (
    '1024 10 (32, 32, 3) [(8, 32, 32, 3), (8, 32, 32, 3)] (256, 32, 32, 3) (256,)'
  )


def test_synthetic_resume_and_host_split(monkeypatch):
  c = base_config()
  c.data.source = 'synthetic'
  c.batch_size = 8
  c.views = dict(g=dict(image_size=24), l=dict(image_size=48, flip=False))
  it = data.build_train_iterator(c)
  batches = [next(it)['views'] for _ in range(6)]
  assert [v.shape for v in batches[0]] == [(8, 24, 24, 1), (8, 48, 48, 1)]
  assert all(v.dtype == np.float32 and 0 <= v.min() and v.max() <= 1 for v in batches[0])
  assert not np.array_equal(batches[0][0], batches[1][0])
  resumed = next(data.build_train_iterator(c, start_step=5))['views']
  for a, b in zip(batches[5], resumed, strict=True):
    np.testing.assert_array_equal(a, b)
  monkeypatch.setattr(synthetic.jax, 'process_count', lambda: 2)
  parts = []
  for p in range(2):
    monkeypatch.setattr(synthetic.jax, 'process_index', lambda p=p: p)
    parts.append(next(data.build_train_iterator(c, start_step=1))['views'])
  for v in range(2):
    np.testing.assert_array_equal(np.concatenate([parts[0][v], parts[1][v]]), batches[1][v])


# ----------------------------------------------------------------------------- tfds source


@pytest.mark.parametrize('name', ['cifar10', 'imagenet2012'])
def test_tfds_not_prepared_says_how_to_prepare(tmp_path, name):
  c = base_config()
  c.data.source = 'tfds'
  c.data.name = name
  c.data.data_dir = str(tmp_path)
  with pytest.raises(data.DatasetNotFoundError) as e:
    data.check_available(c)
  message = str(e.value)
  assert name in message and str(tmp_path) in message
  assert f'tfds build {name} --data_dir={tmp_path}' in message
  if name == 'imagenet2012':
    assert 'ILSVRC2012_img_train.tar' in message
    assert f'{tmp_path}/downloads/manual' in message


@pytest.mark.parametrize('streamed', [False, True])
def test_tfds_prepared_dataset(tmp_path, streamed, tiny_tfds_builders):
  """End to end on a local tfds dataset: in memory (fixed 32 px) or streamed (variable size)."""
  builder = tiny_tfds_builders[streamed](data_dir=str(tmp_path))
  builder.download_and_prepare()
  c = base_config()
  c.data.update(dict(source='tfds', name=builder.name, data_dir=str(tmp_path), image_size=16))
  c.augment.image_size = 16
  c.batch_size = 8
  data.check_available(c)
  assert isinstance(data.source(c), StreamedTfds) == streamed
  assert data.dataset_info(c) == data.DatasetInfo(40, 3, (16, 16, 3))
  it = data.build_train_iterator(c)
  batches = [next(it)['views'] for _ in range(7)]  # crosses the epoch boundary
  assert [v.shape for v in batches[0]] == [(8, 16, 16, 3)] * 2
  resumed = next(data.build_train_iterator(c, start_step=6))['views']
  for a, b in zip(batches[6], resumed, strict=True):
    np.testing.assert_array_equal(a, b)
  x, y = data.load_eval_split(c, 'test')
  assert x.shape == (10, 16, 16, 3) and x.dtype == np.float32 and set(y) <= {0, 1, 2}
  c.eval_config.max_examples = 4
  x4, y4 = data.load_eval_split(c, 'test')
  np.testing.assert_array_equal(y4, y[:4])
  np.testing.assert_allclose(x4, x[:4])


@pytest.mark.parametrize('test_split, max_examples', [('test', 0), ('test', 7), ('train[5:14]', 0)])
def test_tfds_evaluation_split_is_read_a_share_per_process(
  tmp_path, monkeypatch, test_split, max_examples, tiny_tfds_builders
):
  """3 processes (simulated): each reads only its block of the split's records (a slice of
  the split name given as a slice, of which it keeps every third), and together they hold the
  one-process split, each example at its global position."""
  builder = tiny_tfds_builders[False](data_dir=str(tmp_path))
  builder.download_and_prepare()
  c = base_config()
  c.data.update(dict(source='tfds', name=builder.name, data_dir=str(tmp_path), image_size=16))
  c.data.test_split = test_split
  c.eval_config.max_examples = max_examples
  whole_x, whole_y = data.eval_split(c, 'test').take()
  x, y = np.zeros_like(whole_x), np.full_like(whole_y, -1)
  monkeypatch.setattr(jax, 'process_count', lambda: 3)
  sizes = []
  for p in range(3):
    monkeypatch.setattr(jax, 'process_index', lambda p=p: p)
    split = data.eval_split(c, 'test')
    images, labels = split.take()
    positions = split.positions(np.arange(split.size))
    x[positions], y[positions] = images, labels
    sizes.append(split.size)
    np.testing.assert_array_equal(split.local_rows(np.arange(len(whole_y))), np.arange(split.size))
  assert sum(sizes) == len(whole_y) and max(sizes) - min(sizes) <= 1
  np.testing.assert_array_equal(y, whole_y)
  np.testing.assert_array_equal(x, whole_x)


def test_tfds_unknown_name(tmp_path):
  c = base_config()
  c.data.source = 'tfds'
  c.data.name = 'no_such_dataset_xyz'
  c.data.data_dir = str(tmp_path)
  with pytest.raises(data.DatasetNotFoundError, match='no_such_dataset_xyz'):
    data.check_available(c)


def test_unknown_source():
  c = base_config()
  c.data.source = 'nope'
  with pytest.raises(ValueError, match='nope'):
    data.check_available(c)


def test_tfds_array_record_follows_global_indices_whatever_the_process_count(
  tmp_path, monkeypatch, tiny_tfds_builders
):
  """Prepared as array_record, a streamed tfds dataset is read by index: a step's batch is the
  same split over one process or two, and a resumed stream is the uninterrupted one."""
  builder = tiny_tfds_builders[True](data_dir=str(tmp_path))
  builder.download_and_prepare(file_format='array_record')
  c = base_config()
  c.data.update(dict(source='tfds', name=builder.name, data_dir=str(tmp_path), image_size=16))
  c.augment.image_size = 16
  c.batch_size = 8
  assert data.source(c).random_access()
  monkeypatch.setattr(pipeline, 'RANDOM_ACCESS_CHUNK', 16)  # 2 steps a chunk: resume mid-chunk
  it = data.build_train_iterator(c)
  batches = [next(it)['views'] for _ in range(7)]  # crosses the epoch boundary (40 examples)
  it.close()
  assert [v.shape for v in batches[0]] == [(8, 16, 16, 3)] * 2
  resumed = data.build_train_iterator(c, start_step=5)
  for step in (5, 6):
    for a, b in zip(batches[step], next(resumed)['views'], strict=True):
      np.testing.assert_array_equal(a, b)
  resumed.close()
  monkeypatch.setattr(pipeline.jax, 'process_count', lambda: 2)
  parts = []
  for p in range(2):
    monkeypatch.setattr(pipeline.jax, 'process_index', lambda p=p: p)
    it = data.build_train_iterator(c, start_step=3)
    parts.append(next(it)['views'])
    it.close()
  for v in range(2):
    np.testing.assert_array_equal(np.concatenate([parts[0][v], parts[1][v]]), batches[3][v])


@pytest.mark.parametrize('file_format', ['tfrecord', 'array_record'])
def test_tfds_streamed_base_images_for_device_views(tmp_path, file_format, tiny_tfds_builders):
  """augment.on='device' on a streamed tfds dataset: tf.data decodes each image once to a uint8
  base square 1.15x the view size, numbered by global element, and resumes where it stopped."""
  builder = tiny_tfds_builders[True](data_dir=str(tmp_path))
  builder.download_and_prepare(file_format=file_format)
  c = base_config()
  c.data.update(dict(source='tfds', name=builder.name, data_dir=str(tmp_path), image_size=16))
  c.augment.image_size = 16
  c.augment.on = 'device'
  c.batch_size = 8
  data.check_available(c)
  it = data.build_train_iterator(c)
  batches = [next(it) for _ in range(3)]
  it.close()
  assert batches[0]['images'].shape == (8, 18, 18, 3) and batches[0]['images'].dtype == np.uint8
  for step, batch in enumerate(batches):
    np.testing.assert_array_equal(batch['elements'][:, 1], np.arange(8 * step, 8 * step + 8))
  assert batches[0]['images'].std() > 10  # real pixels, not padding
  resumed = data.build_train_iterator(c, start_step=2)
  np.testing.assert_array_equal(next(resumed)['images'], batches[2]['images'])
  resumed.close()

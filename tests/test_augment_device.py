"""Device augmentations: each op equals the host's TensorFlow op on the same parameters, the random
parameters follow the host's distributions, and the views depend on (seed, element, view) alone."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from ssljax.config import defaults
from ssljax.data import augment
from ssljax.data import augment_device as ad

ATOL = 2e-5  # float32 rounding of different summation orders; pixels are in [0, 1]


def _maybe_jit(fn, jit: bool, static=()):
  return jax.jit(fn, static_argnums=static) if jit else fn


def _image(h=20, w=24, c=3, seed=0):
  return np.random.default_rng(seed).random((h, w, c), dtype=np.float32)


@pytest.mark.parametrize('jit', [False, True])
@pytest.mark.parametrize(
  'window, size',
  [
    ((0, 0, 20, 24), 16),
    ((3, 5, 9, 7), 16),
    ((11, 2, 9, 20), 8),
    ((4, 4, 1, 1), 5),
    ((0, 0, 20, 24), 32),
  ],
)
def test_crop_resize_is_tf_slice_then_bicubic_resize(window, size, jit):
  image = _image()
  y, x, h, w = window
  want = tf.clip_by_value(
    tf.image.resize(image[None, y : y + h, x : x + w], [size, size], method='bicubic')[0], 0, 1
  )
  fn = _maybe_jit(ad.crop_resize, jit, static=(5,))
  got = fn(jnp.asarray(image), y, x, h, w, size)
  np.testing.assert_allclose(np.asarray(got), want.numpy(), atol=ATOL)


@pytest.mark.parametrize('jit', [False, True])
def test_colour_ops_are_tfs(jit):
  image = _image()
  cases = [
    (ad.brightness, lambda x, f: tf.constant(x) * f, 1.3),
    (ad.contrast, tf.image.adjust_contrast, 0.4),
    (ad.contrast, tf.image.adjust_contrast, 1.7),
    (ad.saturation, tf.image.adjust_saturation, 0.3),
    (ad.saturation, tf.image.adjust_saturation, 1.8),
    (ad.hue, tf.image.adjust_hue, 0.17),
    (ad.hue, tf.image.adjust_hue, -0.4),
  ]
  for mine, theirs, factor in cases:
    got = _maybe_jit(mine, jit)(jnp.asarray(image), factor)
    np.testing.assert_allclose(np.asarray(got), theirs(image, factor).numpy(), atol=ATOL)
  gray = tf.tile(tf.image.rgb_to_grayscale(image), [1, 1, 3]).numpy()
  np.testing.assert_allclose(np.asarray(_maybe_jit(ad.grayscale, jit)(image)), gray, atol=ATOL)
  flipped = tf.image.flip_left_right(image).numpy()
  np.testing.assert_array_equal(np.asarray(_maybe_jit(ad.flip, jit)(image, True)), flipped)


@pytest.mark.parametrize('jit', [False, True])
def test_colour_jitter_applies_the_ops_in_the_given_order_clipping_each(jit):
  image = _image(seed=1)
  factors = np.asarray([1.6, 0.5, 1.4, 0.1], np.float32)
  tf_ops = [
    lambda x: x * factors[0],
    lambda x: tf.image.adjust_contrast(x, factors[1]),
    lambda x: tf.image.adjust_saturation(x, factors[2]),
    lambda x: tf.image.adjust_hue(x, factors[3]),
  ]
  for order in ([0, 1, 2, 3], [3, 1, 0, 2], [2, 3, 1, 0]):
    want = tf.constant(image)
    for i in order:
      want = tf.clip_by_value(tf_ops[i](want), 0.0, 1.0)
    got = _maybe_jit(ad.color_jitter, jit)(jnp.asarray(image), jnp.asarray(order), factors)
    np.testing.assert_allclose(np.asarray(got), want.numpy(), atol=ATOL)


@pytest.mark.parametrize('jit', [False, True])
@pytest.mark.parametrize('side, sigma', [(16, 0.7), (32, 2.0), (96, 1.3)])
def test_blur_and_solarize_are_the_hosts(side, sigma, jit):
  image = _image(side, side, 3, seed=2)
  # A sigma range of one value makes the host's blur deterministic.
  want = augment.gaussian_blur(
    tf.constant(image), tf.constant([1, 2]), prob=1.0, kernel_frac=0.1, sigma=(sigma, sigma)
  )
  got = _maybe_jit(ad.blur, jit, static=(2,))(jnp.asarray(image), sigma, 0.1)
  np.testing.assert_allclose(np.asarray(got), want.numpy(), atol=ATOL)
  sol = augment.solarize(tf.constant(image), tf.constant([1, 2]), prob=1.0).numpy()
  np.testing.assert_array_equal(np.asarray(_maybe_jit(ad.solarize, jit)(image)), sol)


def test_upsample_is_the_hosts_bilinear():
  from ssljax.data import pipeline

  image = _image(8, 8, 1, seed=3)
  want = pipeline.upsample(tf.constant(image), 32).numpy()
  np.testing.assert_allclose(np.asarray(ad.upsample(jnp.asarray(image), 32)), want, atol=ATOL)


# ----------------------------------------------------------------------------- distributions

DRAWS = 2000
P_MIN = 1e-3  # a two-sample KS test's p-value below this fails (a true match fails 1 in 1000)


def _tf_draws(fn, n=DRAWS):
  fn = tf.function(fn, autograph=False)
  seeds = tf.stack([tf.zeros(n, tf.int64), tf.range(n, dtype=tf.int64)], axis=1)
  return tf.map_fn(fn, seeds, fn_output_signature=tf.float32).numpy()


def _jax_draws(fn, n=DRAWS):
  keys = jax.random.split(jax.random.key(7), n)
  return np.asarray(jax.jit(jax.vmap(fn))(keys))


def _same_distribution(a, b, what):
  p = stats.ks_2samp(np.ravel(a), np.ravel(b)).pvalue
  assert p > P_MIN, f'{what}: KS p = {p:.2g}'


@pytest.mark.parametrize(
  'scale, ratio, shape',
  [
    ((0.08, 1.0), (3 / 4, 4 / 3), (40, 30)),
    pytest.param((0.3, 1.0), (0.5, 2.0), (28, 28), marks=pytest.mark.slow),
    pytest.param((0.9, 1.0), (3.0, 4.0), (30, 30), marks=pytest.mark.slow),
  ],
)
def test_crop_windows_follow_the_hosts_distribution(scale, ratio, shape):
  """Crop area fraction, aspect, and where it sits; the last case always falls back to the
  centred crop narrowed to the ratio range."""
  h, w = shape

  def tf_window(seed):
    y, x, ch, cw = augment.crop_window((h, w), seed, scale=scale, ratio=ratio)
    return tf.cast(tf.stack([y, x, ch, cw]), tf.float32)

  def jax_window(key):
    return jnp.stack(ad.sample_crop(key, h, w, scale, ratio)).astype(jnp.float32)

  host, device = _tf_draws(tf_window), _jax_draws(jax_window)
  for name, f in [
    ('area', lambda d: d[:, 2] * d[:, 3] / (h * w)),
    ('aspect', lambda d: d[:, 3] / d[:, 2]),
    ('y', lambda d: d[:, 0] / np.maximum(h - d[:, 2], 1)),
    ('x', lambda d: d[:, 1] / np.maximum(w - d[:, 3], 1)),
  ]:
    _same_distribution(f(host), f(device), name)


def _spec(**overrides):
  spec = defaults.augment_defaults(16)
  spec.update(
    dict(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip=False, color_strength=0.0)
    | dict(grayscale_prob=0.0, blur_prob=0.0, solarize_prob=0.0)
  )
  spec.update(overrides)
  return ml_collections.ConfigDict(spec)


def _compare_views(image: np.ndarray, spec, summary, what: str):
  """Views of one image from both paths, reduced by `summary` to numbers (a pixel value, ...),
  each compared as distributions."""
  image_tf = tf.constant(image)

  def host(seed):
    return tf.cast(summary(augment.augment_view(image_tf, seed, spec)), tf.float32)

  def device(key):
    return summary(ad.augment_view(jnp.asarray(image), key, spec))

  a, b = _tf_draws(host), _jax_draws(device)
  a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
  for i in range(a.shape[1]):
    _same_distribution(a[:, i], b[:, i], f'{what} [{i}]')
  return a[:, 0], b[:, 0]


@pytest.mark.slow  # two TF traces of a whole view and 2,000 draws each
def test_flip_grayscale_solarize_are_applied_as_often():
  ramp = np.tile(np.linspace(0, 1, 16, dtype=np.float32)[None, :, None], (16, 1, 3))
  ramp[..., 1:] *= 0.5
  first_column = lambda x: x[0, 0, 0]
  a, b = _compare_views(ramp, _spec(flip=True), first_column, 'flip')
  assert abs(np.mean(b > 0.5) - 0.5) < 0.04
  channel_gap = lambda x: x[0, -1, 0] - x[0, -1, 1]
  a, b = _compare_views(ramp, _spec(grayscale_prob=0.2), channel_gap, 'grayscale')
  assert abs(np.mean(np.abs(b) < 1e-6) - 0.2) < 0.04
  a, b = _compare_views(ramp, _spec(solarize_prob=0.3), lambda x: x[0, -1, 0], 'solarize')
  assert abs(np.mean(b < 0.5) - 0.3) < 0.04


@pytest.mark.slow  # two TF traces of a whole view and 2,000 draws each
def test_colour_jitter_draws_follow_the_hosts():
  """Brightness alone on a grey image: gate, factor range and its floor at 0, and on a colour
  image, the order and every factor, seen through the resulting pixel values."""
  grey = np.full((16, 16, 1), 0.5, np.float32)
  spec = _spec(color_strength=1.5, color_prob=0.8, color_jitter=(0.8, 0.8, 0.8, 0.2))
  _, b = _compare_views(grey, spec, lambda x: x[0, 0, 0], 'brightness')
  assert abs(np.mean(b == 0.5) - 0.2) < 0.04  # not applied: the grey is left as it was
  colour = _image(16, 16, 3, seed=4)
  spec = _spec(color_strength=1.0, color_prob=1.0)
  _compare_views(colour, spec, lambda x: x[3, 5], 'jitter pixel')


@pytest.mark.slow
def test_blur_sigma_and_probability_follow_the_hosts():
  dot = np.zeros((32, 32, 1), np.float32)
  dot[16, 16] = 1.0
  _, b = _compare_views(
    dot, _spec(image_size=32, blur_prob=0.5, blur_sigma=(0.1, 2.0)), lambda x: x[16, 16, 0], 'blur'
  )
  assert abs(np.mean(b > 0.999) - 0.5) < 0.05  # unblurred or sigma ~0.1


# ----------------------------------------------------------------------------- keys


def test_views_depend_on_seed_element_and_view_only():
  """The same views on 1 and 8 devices, whatever order or company the examples come in; keys
  differ with the seed, the element and the view."""
  spec = _spec(image_size=8, crop_scale=(0.2, 1.0), flip=True, color_strength=1.0, blur_prob=0.5)
  images = (np.random.default_rng(5).random((8, 12, 12, 3)) * 255).astype(np.uint8)
  elements = ad.split_elements(np.arange(8) + (5 << 32))
  make = jax.jit(lambda i, e: ad.make_views(i, e, [spec], seed=3, image_size=8)[0])
  one = np.asarray(make(images, elements))
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:8]), ('data',))
  shard = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  eight = make(jax.device_put(images, shard), jax.device_put(elements, shard))
  reversed_ = make(images[::-1], elements[::-1])
  # The same draws; XLA may round a differently tiled program differently.
  np.testing.assert_allclose(one, np.asarray(eight), atol=1e-6)
  np.testing.assert_allclose(one, np.asarray(reversed_)[::-1], atol=1e-6)
  np.testing.assert_array_equal(np.asarray(make(images, elements)), one)  # bit for bit
  assert len({one[i].tobytes() for i in range(8)}) == 8  # every example its own view
  key = lambda seed, e, v: tuple(  # noqa: E731
    np.asarray(jax.random.key_data(ad.view_key(seed, jnp.asarray(elements[e]), v))).tolist()
  )
  assert len({key(3, 0, 0), key(4, 0, 0), key(3, 1, 0), key(3, 0, 1)}) == 4


def test_split_elements_keeps_64_bit_indices_apart():
  e = np.asarray([0, 1, 2**32, 2**32 + 1, 2**40 + 7])
  split = ad.split_elements(e)
  assert split.dtype == np.uint32
  np.testing.assert_array_equal(split[:, 0].astype(np.int64) * 2**32 + split[:, 1], e)


# ----------------------------------------------------------------------------- the pipeline


def _device_config(shrink, config_file, source='synthetic'):
  c = shrink(config_file('simclr_digits.py'), source=source)
  c.augment.on = 'device'
  return c


@pytest.mark.parametrize('source', ['synthetic', 'digits'])
def test_base_image_batches_resume_exactly(shrink, config_file, source):
  from ssljax import data

  c = _device_config(shrink, config_file, source)
  it = data.build_train_iterator(c)
  batches = [next(it) for _ in range(4)]
  resumed = next(data.build_train_iterator(c, start_step=3))
  np.testing.assert_array_equal(resumed['images'], batches[3]['images'])
  np.testing.assert_array_equal(resumed['elements'], batches[3]['elements'])
  elements = np.concatenate([b['elements'][:, 1] for b in batches])
  np.testing.assert_array_equal(elements, np.arange(4 * c.batch_size))  # global element numbers
  assert set(batches[0]) == {'images', 'elements'}


def test_augment_on_is_checked(shrink, config_file):
  from ssljax import sharding, train
  from ssljax.errors import ConfigError

  c = _device_config(shrink, config_file)
  c.augment.on = 'gpu'
  c.views.view1.on = 'host'
  with pytest.raises(ConfigError) as e:
    train.validate(c, sharding.make_mesh())
  assert 'augment.on' in str(e.value) and 'views.view1.on' in str(e.value)


@pytest.mark.slow
def test_trains_with_device_views_where_tensorflow_cannot_be_imported(tmp_path, start_main):
  """`import tensorflow` fails in the subprocess; SimCLR on synthetic data trains, evaluates."""
  blocked = tmp_path / 'blocked'
  for name in ('tensorflow', 'tensorflow_datasets'):
    (blocked / name).mkdir(parents=True)
    (blocked / name / '__init__.py').write_text(f'raise ImportError("{name} is blocked")\n')
  flags = [
    '--config=configs/simclr_digits.py',
    '--config.data.source=synthetic',
    '--config.data.num_examples=64',
    '--config.augment.on=device',
    '--config.model.width=4',
    '--config.batch_size=16',
    '--config.total_steps=3',
    '--config.eval_config.batch_size=64',
    "--config.eval=('linear','knn')",
  ]
  run = start_main(tmp_path / 'run', *flags, env={'PYTHONPATH': str(blocked)})
  out, _ = run.communicate(timeout=600)
  assert run.returncode == 0, out[-3000:]
  assert (tmp_path / 'run' / 'results.json').exists()
  probe = subprocess.run(
    [sys.executable, '-c', 'import tensorflow'],
    env={'PYTHONPATH': str(blocked)},
    capture_output=True,
    text=True,
  )
  assert 'blocked' in probe.stderr  # the block did hold

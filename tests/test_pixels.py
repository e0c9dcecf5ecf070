"""Per-channel input statistics: the encoders standardize with them exactly as a hand
computation does, each encoder's default, the checks that name the field, and the folder scan's
statistics against NumPy over the same pixels."""

import re

import numpy as np
import pytest
from PIL import Image

from ssljax import models
from ssljax.config import checks as config_checks
from ssljax.data import scan
from ssljax.errors import ConfigError
from ssljax.methods import SimCLR
from ssljax.models import pixels, resnet, vit

MEAN, STD = (0.2, 0.5, 0.7), (0.1, 0.3, 0.25)


@pytest.mark.parametrize(
  'build',
  [
    lambda **kw: resnet.resnet('resnet18', width=4, stem='small', **kw),
    lambda **kw: vit.vit(
      'vit_tiny', patch_size=4, image_size=8, width=16, depth=1, num_heads=2, **kw
    ),
  ],
  ids=['resnet', 'vit'],
)
def test_the_encoder_sees_per_channel_standardized_pixels(build):
  import jax

  x = np.random.default_rng(0).uniform(size=(2, 8, 8, 3)).astype(np.float32)
  plain, standardizing = build(), build(pixel_mean=MEAN, pixel_std=STD)
  params = plain.init(jax.random.PRNGKey(0), x, train=False)  # the same parameters serve both
  by_hand = (x - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
  np.testing.assert_allclose(
    standardizing.apply(params, x, train=False),
    plain.apply(params, by_hand, train=False),
    rtol=1e-5,
    atol=1e-5,
  )
  one_value = build(pixel_mean=(0.5,), pixel_std=(0.25,)).apply(params, x, train=False)
  np.testing.assert_allclose(
    one_value, plain.apply(params, (x - 0.5) / 0.25, train=False), atol=1e-5
  )


def test_defaults_per_encoder_and_the_imagenet_configs(config_file):
  c = SimCLR.default_config(16)
  assert models.pixel_stats(c) == ((0.0,), (1.0,))  # a ResNet: raw pixels
  c.model.encoder = 'vit_tiny'
  assert models.pixel_stats(c) == ((0.5,), (0.25,))
  c.model.pixel_mean = MEAN
  assert models.pixel_stats(c) == (MEAN, (0.25,))
  for name in ('byol', 'dino', 'mae', 'ijepa'):
    config = config_file(f'{name}_imagenet.py')
    assert models.pixel_stats(config) == (pixels.IMAGENET_MEAN, pixels.IMAGENET_STD), name
  assert models.pixel_stats(config_file('simclr_imagenet.py')) == ((0.0,), (1.0,))


@pytest.mark.parametrize(
  'mean, std, message',
  [
    ((0.5,), (0.0,), r'model.pixel_std=\(0.0,\): positive numbers'),
    ((0.1, 0.2), (0.1, 0.2, 0.3), 'as many values as model.pixel_mean'),
    (('a',), (1.0,), 'model.pixel_mean=.*numbers: one for every channel or one per channel'),
  ],
)
def test_bad_statistics_are_refused_naming_the_field(mean, std, message):
  c = SimCLR.default_config(16)
  c.model.pixel_mean, c.model.pixel_std = mean, std
  checks = config_checks.Checks(c)
  models.check_config(checks)
  assert any(re.search(message, p) for p in checks.problems), checks.problems


def test_three_values_for_grayscale_images_are_refused():
  c = SimCLR.default_config(16)
  c.model.pixel_mean = MEAN
  models.check_channels(c, 3)
  with pytest.raises(ConfigError, match=r'pixel_mean has 3 values for 1-channel images'):
    models.check_channels(c, 1)


def test_folder_scan_gives_the_per_channel_statistics(tmp_path, capsys):
  rng = np.random.default_rng(0)
  colour = [rng.integers(0, 256, (6, 5, 3), dtype=np.uint8) for _ in range(3)]
  gray = rng.integers(0, 256, (4, 4), dtype=np.uint8)
  for i, a in enumerate(colour):
    Image.fromarray(a).save(tmp_path / f'{i}.png')
  Image.fromarray(gray).save(tmp_path / 'gray.png')
  # NumPy over the same pixels, a grayscale image counted in each channel
  every = np.concatenate(
    [a.reshape(-1, 3) for a in colour] + [np.repeat(gray.reshape(-1, 1), 3, 1)]
  )
  every = every / 255.0
  report = scan.scan(str(tmp_path))
  np.testing.assert_allclose(report['pixel_mean'], every.mean(0), atol=1e-4)
  np.testing.assert_allclose(report['pixel_std'], every.std(0), atol=1e-4)
  assert scan.main(['--path', str(tmp_path)]) == 0
  mean = ','.join(map(str, report['pixel_mean']))
  assert f'--config.model.pixel_mean="({mean},)"' in capsys.readouterr().out
  for i in range(3):  # grayscale only: one channel
    (tmp_path / f'{i}.png').unlink()
  assert len(scan.scan(str(tmp_path))['pixel_mean']) == 1

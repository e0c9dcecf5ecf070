"""Blocks that the files in configs/ share (big_vision style): the `:arg` suffix of
`--config=configs/X.py:arg`, and the data settings of the datasets more than one config uses."""

from __future__ import annotations

import ml_collections

from ssljax.models import pixels

FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'  # Debian's dataset-fashion-mnist


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """`key=value,key=value` (or a bare value for the first key) -> every key of `defaults`, each
  value converted to its default's type: parse_arg('100', epochs=300).epochs == 100."""
  out = ml_collections.ConfigDict(defaults)
  first = next(iter(defaults))
  for item in filter(None, (arg or '').split(',')):
    key, sep, value = item.partition('=')
    key, value = (key, value) if sep else (first, key)
    if key not in defaults:
      raise ValueError(
        f'the config takes :{",".join(f"{k}=..." for k in defaults)}, got {item!r} in {arg!r}'
      )
    try:
      out[key] = type(defaults[key])(value)
    except ValueError:
      raise ValueError(
        f"the config's :{key}= takes a {type(defaults[key]).__name__}, got {value!r}"
      ) from None
  return out


def imagenet(c: ml_collections.ConfigDict) -> None:
  """ILSVRC-2012 from tfds (prepared once with `tfds build imagenet2012`, see README.md), 224 px,
  pod-sized logging and checkpoints. The probes use every image of both splits: each is encoded
  a batch at a time and only its features stay on the host, as float16 (5 GB for the train
  split's 1.28M x 2048). Pixels standardized with ImageNet's per-channel statistics, as the
  official BYOL, DINO, MAE and I-JEPA inputs are; evaluated by the method's linear protocol."""
  c.data.source = 'tfds'
  c.data.name = 'imagenet2012'
  c.data.test_split = 'validation'
  c.data.image_size = c.augment.image_size = 224
  c.log_every = 100
  c.checkpoint_every = 2500
  c.eval_config.batch_size = 1024
  c.eval_config.feature_dtype = 'float16'
  c.model.pixel_mean, c.model.pixel_std = pixels.IMAGENET_MEAN, pixels.IMAGENET_STD
  # The papers' linear protocol (the method's preset, evaluators/linear_sgd.py) and k-NN; L-BFGS
  # on 1.28M x 2048 features is neither the papers' protocol nor cheap.
  c.eval = ('linear_sgd', 'knn')


def fashion_mnist(c: ml_collections.ConfigDict) -> None:
  """Fashion-MNIST's idx files from Debian's dataset-fashion-mnist (elsewhere
  --config.data.path=DIR), 28 px, sized for runs of about 30 CPU-minutes."""
  c.data.source = 'idx'
  c.data.path = FASHION_MNIST_DIR
  c.data.image_size = c.augment.image_size = 28
  c.log_every = 50
  c.eval_config.batch_size = 512


def digits(c: ml_collections.ConfigDict, image_size: int = 16) -> None:
  """scikit-learn's bundled 8x8 digits, upsampled to `image_size`: runs of a few CPU-minutes."""
  c.data.source = 'digits'
  c.data.image_size = c.augment.image_size = image_size

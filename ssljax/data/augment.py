"""SimCLR-style augmentations as stateless TF ops on one float32 image (H, W, C) in [0, 1].

Every op takes a seed (shape [2] int) so the same seed gives the same pixels: a resumed run
re-creates the batches it would have produced. Probabilities and strengths are parameters, so
SimCLR, BYOL and DINO views are the same ops with other numbers (see `augment_view`).

Importing this module imports TensorFlow and hides the accelerators from it (JAX owns them).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import ml_collections

from ssljax.data.augment_device import blur_kernel_size
from ssljax.data.tf_import import tf

try:
  tf.config.set_visible_devices([], 'GPU')
except (RuntimeError, ValueError):  # runtime already initialised, or no such device type
  pass

Image = tf.Tensor
Fn = Callable[[Image], Image]


def _uniform(seed, lo: float, hi: float, shape=()) -> tf.Tensor:
  return tf.random.stateless_uniform(shape, seed, minval=lo, maxval=hi, dtype=tf.float32)


def _split(seed, num: int) -> list[tf.Tensor]:
  return tf.unstack(tf.random.experimental.stateless_split(seed, num))


def _with_prob(image: Image, seed, prob: float, fn: Fn) -> Image:
  """fn(image) with probability prob (no branch at all when prob is 0 or 1)."""
  if prob <= 0:
    return image
  if prob >= 1:
    return fn(image)
  return tf.cond(_uniform(seed, 0.0, 1.0) < prob, lambda: fn(image), lambda: image)


def _clip(image: Image) -> Image:
  return tf.clip_by_value(image, 0.0, 1.0)


def crop_window(
  shape, seed, *, scale: tuple[float, float], ratio: tuple[float, float], attempts: int = 10
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
  """(y, x, height, width) int32 of a random resized crop of an image of `shape` (H, W, ...).

  Area fraction U(scale) and log-uniform aspect in ratio: the first of `attempts` draws that fits
  the image, else the largest center crop within the ratio range (torchvision's rule).
  """
  scale_seed, ratio_seed, y_seed, x_seed = _split(seed, 4)
  h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
  area = h * w * _uniform(scale_seed, scale[0], scale[1], [attempts])
  aspect = tf.exp(_uniform(ratio_seed, math.log(ratio[0]), math.log(ratio[1]), [attempts]))
  cw = tf.round(tf.sqrt(area * aspect))
  ch = tf.round(tf.sqrt(area / aspect))
  fits = (cw >= 1) & (ch >= 1) & (cw <= w) & (ch <= h)
  first = tf.argmax(tf.cast(fits, tf.int32))  # the first draw that fits (0 if none)
  # Fallback: the whole image, narrowed to the nearest aspect ratio in range.
  image_ratio = w / h
  fw = tf.where(image_ratio > ratio[1], tf.round(h * ratio[1]), w)
  fh = tf.where(image_ratio < ratio[0], tf.round(w / ratio[0]), h)
  found = tf.reduce_any(fits)
  cw = tf.where(found, cw[first], fw)
  ch = tf.where(found, ch[first], fh)
  y = tf.where(found, tf.floor(_uniform(y_seed, 0.0, 1.0) * (h - ch + 1)), tf.floor((h - ch) / 2))
  x = tf.where(found, tf.floor(_uniform(x_seed, 0.0, 1.0) * (w - cw + 1)), tf.floor((w - cw) / 2))
  y = tf.cast(tf.clip_by_value(y, 0, h - ch), tf.int32)
  x = tf.cast(tf.clip_by_value(x, 0, w - cw), tf.int32)
  return y, x, tf.cast(ch, tf.int32), tf.cast(cw, tf.int32)


def random_resized_crop(
  image: Image,
  seed,
  *,
  size: int,
  scale: tuple[float, float],
  ratio: tuple[float, float],
  attempts: int = 10,
) -> Image:
  """The `crop_window` crop resized to (size, size): bicubic, clipped back to [0, 1]."""
  y, x, ch, cw = crop_window(tf.shape(image), seed, scale=scale, ratio=ratio, attempts=attempts)
  crop = tf.slice(image, [y, x, 0], [ch, cw, -1])
  crop = tf.ensure_shape(crop, [None, None, image.shape[-1]])  # the slice forgets the channels
  out = tf.image.resize(crop[None], [size, size], method='bicubic')[0]
  return _clip(out)


def random_flip(image: Image, seed) -> Image:
  """Horizontal flip with probability 1/2."""
  return tf.image.stateless_random_flip_left_right(image, seed)


def color_jitter(
  image: Image,
  seed,
  *,
  strength: float,
  prob: float,
  factors: tuple[float, float, float, float] = (0.8, 0.8, 0.8, 0.2),
) -> Image:
  """SimCLR colour distortion of strength s, applied with probability prob.

  With `factors` (b, c, sat, h) at their SimCLR values (0.8, 0.8, 0.8, 0.2): brightness
  (multiplicative), contrast and saturation factors in [1 - b s, 1 + b s] (and so on), hue shift
  in [-h s, h s], in a random order, clipped after each op. BYOL's jitter is factors (0.4, 0.4,
  0.2, 0.1) at s = 1. One-channel images get only brightness and contrast.
  """
  if strength <= 0:
    return image
  gate_seed, order_seed, *op_seeds = _split(seed, 6)
  b, c, sat, h = (strength * f for f in factors)

  def _range(x):
    return max(0.0, 1 - x), 1 + x

  hue = min(h, 0.5)

  def brightness(x, s):
    return x * _uniform(s, *_range(b))

  def contrast(x, s):
    return tf.image.adjust_contrast(x, _uniform(s, *_range(c)))

  def saturation(x, s):
    return tf.image.adjust_saturation(x, _uniform(s, *_range(sat)))

  def hue_shift(x, s):
    return tf.image.adjust_hue(x, _uniform(s, -hue, hue))

  ops = [brightness, contrast]
  if image.shape[-1] == 3:
    ops += [saturation, hue_shift]
  elif image.shape[-1] != 1:
    raise ValueError(f'color_jitter expects 1 or 3 channels, got shape {image.shape}')
  order = tf.argsort(_uniform(order_seed, 0.0, 1.0, [len(ops)]))

  def jitter(x):
    for i in range(len(ops)):
      branches = [
        functools.partial(lambda op, s, x: _clip(op(x, s)), op, s, x)
        for op, s in zip(ops, op_seeds, strict=False)
      ]
      x = tf.switch_case(order[i], branches)
    return x

  return _with_prob(image, gate_seed, prob, jitter)


def random_grayscale(image: Image, seed, *, prob: float) -> Image:
  """Grayscale (kept 3 channels) with probability prob; one-channel images pass through."""
  if image.shape[-1] == 1:
    return image
  return _with_prob(image, seed, prob, lambda x: tf.tile(tf.image.rgb_to_grayscale(x), [1, 1, 3]))


def gaussian_blur(
  image: Image, seed, *, prob: float, kernel_frac: float, sigma: tuple[float, float]
) -> Image:
  """Gaussian blur with sigma ~ U(sigma), kernel kernel_frac of the side, with probability prob.

  Separable depthwise convolution over a SYMMETRIC-padded image, so borders keep their level.
  """
  side, channels = image.shape[0], image.shape[-1]
  if side is None or channels is None:
    raise ValueError(f'gaussian_blur needs a static image shape, got {image.shape}')
  radius = blur_kernel_size(side, kernel_frac) // 2
  gate_seed, sigma_seed = _split(seed, 2)

  def blur(x):
    s = _uniform(sigma_seed, sigma[0], sigma[1])
    t = tf.range(-radius, radius + 1, dtype=tf.float32)
    kernel = tf.exp(-(t**2) / (2 * s**2))
    kernel = tf.tile((kernel / tf.reduce_sum(kernel))[:, None, None], [1, channels, 1])
    x = tf.pad(x[None], [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode='SYMMETRIC')
    x = tf.nn.depthwise_conv2d(x, kernel[:, None], [1, 1, 1, 1], 'VALID')  # along H
    x = tf.nn.depthwise_conv2d(x, kernel[None], [1, 1, 1, 1], 'VALID')  # along W
    return _clip(x[0])

  return _with_prob(image, gate_seed, prob, blur)


def solarize(image: Image, seed, *, prob: float) -> Image:
  """x < 0.5 ? x : 1 - x, with probability prob (BYOL's form for inputs in [0, 1])."""
  return _with_prob(image, seed, prob, lambda x: tf.where(x < 0.5, x, 1.0 - x))


def augment_view(image: Image, seed, spec: ml_collections.ConfigDict) -> Image:
  """One view: crop -> flip -> colour jitter -> grayscale -> blur -> solarize, as `spec` says."""
  seeds = _split(seed, 6)
  image = random_resized_crop(
    image,
    seeds[0],
    size=int(spec.image_size),
    scale=tuple(spec.crop_scale),
    ratio=tuple(spec.crop_ratio),
  )
  if spec.flip:
    image = random_flip(image, seeds[1])
  if spec.color_strength > 0:
    image = color_jitter(
      image,
      seeds[2],
      strength=spec.color_strength,
      prob=spec.color_prob,
      factors=tuple(spec.color_jitter),
    )
  image = random_grayscale(image, seeds[3], prob=spec.grayscale_prob)
  image = gaussian_blur(
    image,
    seeds[4],
    prob=spec.blur_prob,
    kernel_frac=spec.blur_kernel_frac,
    sigma=tuple(spec.blur_sigma),
  )
  return solarize(image, seeds[5], prob=spec.solarize_prob)

"""Fine-tuning regularizers of the MAE / BEiT recipe, on a batch inside the jitted step, written
from the papers and timm's definitions (timm.data.mixup, timm.data.random_erasing):

- mixup (Zhang et al. 2018): x = lam x + (1 - lam) x', lam ~ Beta(a, a);
- cutmix (Yun et al. 2019): a box of x' pasted into x, its area 1 - lam, lam ~ Beta(a, a), then
  lam set to the box's actual share (the box is clipped at the border);
- targets for both: lam y + (1 - lam) y' with y the label-smoothed one-hot (off = s / K,
  on = 1 - s + s / K), x' and y' the batch in reverse order (timm's 'batch' mode: one lam and one
  choice of mixup or cutmix per batch);
- random erasing (Zhong et al. 2020): with probability p one rectangle per image, area 2-33% of
  the image and aspect in [0.3, 3.3] (log-uniform), filled with per-pixel noise that is N(0, 1)
  after the encoder standardizes its input (timm's mode 'pixel');
- RandAugment first (`evaluators.randaugment`), named as timm names it ('rand-m9-mstd0.5-inc1').
"""

from __future__ import annotations

import re
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ssljax.errors import ConfigError
from ssljax.evaluators import randaugment


class MixSettings(NamedTuple):
  mixup: float = 0.0  # Beta alpha; 0: off
  cutmix: float = 0.0  # Beta alpha; 0: off
  switch_prob: float = 0.5  # with both on: the chance a batch uses cutmix
  erasing: float = 0.0  # probability an image gets an erased rectangle
  smoothing: float = 0.0  # label smoothing folded into the targets
  randaugment: tuple = ()  # (ops, magnitude, magnitude std) from parse_randaugment; (): off

  @property
  def mixes(self) -> bool:
    return self.mixup > 0 or self.cutmix > 0


_RANDAUGMENT = re.compile(r'rand(?P<parts>(-(m|mstd|n)[0-9.]+)*)-inc1')


def parse_randaugment(name: str, field: str = 'eval_config.finetune.randaugment') -> tuple:
  """timm's 'rand-m9-mstd0.5-inc1' -> (ops 2, magnitude 9.0, std 0.5); '' -> () (off). Only the
  increasing ops exist here ('-inc1' required)."""
  if name == '':
    return ()
  match = _RANDAUGMENT.fullmatch(name) if isinstance(name, str) else None
  if not match:
    raise ConfigError(
      f"config.{field}={name!r}: '' or timm's rand-m<magnitude>[-mstd<std>][-n<ops>]-inc1; "
      f'e.g. --config.{field}=rand-m9-mstd0.5-inc1'
    )
  values = dict(n=2.0, m=9.0, mstd=0.5)
  for part in filter(None, match['parts'].split('-')):
    key = re.match(r'[a-z]+', part)[0]
    values[key] = float(part[len(key) :])
  return (int(values['n']), values['m'], values['mstd'])


def smooth_one_hot(labels: jax.Array, num_classes: int, smoothing: float) -> jax.Array:
  off = smoothing / num_classes
  return jax.nn.one_hot(labels, num_classes) * (1.0 - smoothing) + off


def mix_targets(labels: jax.Array, num_classes: int, lam, smoothing: float) -> jax.Array:
  """lam y + (1 - lam) y_reversed, y the smoothed one-hot labels: (B, K)."""
  y = smooth_one_hot(labels, num_classes, smoothing)
  return lam * y + (1.0 - lam) * y[::-1]


def cutmix_box(u: jax.Array, height: int, width: int, lam) -> tuple[jax.Array, ...]:
  """timm's rand_bbox from two uniforms u: a box of sides int(side sqrt(1 - lam)) centred at a
  uniform pixel, clipped to the image: (top, bottom, left, right)."""
  cut = jnp.sqrt(1.0 - lam)
  cut_h, cut_w = jnp.floor(height * cut), jnp.floor(width * cut)
  cy, cx = jnp.floor(u[0] * height), jnp.floor(u[1] * width)
  top, bottom = jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + cut_h // 2, 0, height)
  left, right = jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + cut_w // 2, 0, width)
  return top, bottom, left, right


def _box_mask(height: int, width: int, top, bottom, left, right) -> jax.Array:
  rows = jnp.arange(height)[:, None]
  cols = jnp.arange(width)[None, :]
  return (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)


def mix_batch(
  key: jax.Array, images: jax.Array, labels: jax.Array, num_classes: int, s: MixSettings
) -> tuple[jax.Array, jax.Array]:
  """(images, soft targets (B, K)) after mixup or cutmix (timm's batch mode)."""
  k_switch, k_mixup, k_cutmix, k_box = jax.random.split(key, 4)
  _, height, width, _ = images.shape
  if s.mixup > 0 and s.cutmix > 0:
    use_cutmix = jax.random.uniform(k_switch) < s.switch_prob
  else:
    use_cutmix = jnp.asarray(s.cutmix > 0)
  lam_mixup = jax.random.beta(k_mixup, max(s.mixup, 1e-6), max(s.mixup, 1e-6))
  lam_cutmix = jax.random.beta(k_cutmix, max(s.cutmix, 1e-6), max(s.cutmix, 1e-6))
  box = cutmix_box(jax.random.uniform(k_box, (2,)), height, width, lam_cutmix)
  inside = _box_mask(height, width, *box)[None, :, :, None]
  area = (box[1] - box[0]) * (box[3] - box[2]) / (height * width)
  reverse = images[::-1]
  cut = jnp.where(inside, reverse, images)
  mixed = lam_mixup * images + (1.0 - lam_mixup) * reverse
  lam = jnp.where(use_cutmix, 1.0 - area, lam_mixup)
  images = jnp.where(use_cutmix, cut, mixed)
  return images, mix_targets(labels, num_classes, lam, s.smoothing)


def erase(
  key: jax.Array,
  images: jax.Array,
  prob: float,
  pixel_mean: tuple[float, ...],
  pixel_std: tuple[float, ...],
  attempts: int = 10,
) -> jax.Array:
  """Random erasing, per image: the first of `attempts` drawn rectangles that fits, filled with
  noise N(mean, std) per pixel and channel (N(0, 1) once standardized)."""
  b, height, width, channels = images.shape
  k_do, k_area, k_aspect, k_pos, k_fill = jax.random.split(key, 5)
  area = jax.random.uniform(k_area, (b, attempts), minval=0.02, maxval=1 / 3) * height * width
  log_aspect = jax.random.uniform(
    k_aspect, (b, attempts), minval=jnp.log(0.3), maxval=jnp.log(1 / 0.3)
  )
  h = jnp.round(jnp.sqrt(area * jnp.exp(log_aspect)))
  w = jnp.round(jnp.sqrt(area / jnp.exp(log_aspect)))
  fits = (h < height) & (w < width)
  first = jnp.argmax(fits, axis=1)
  pick = lambda x: jnp.take_along_axis(x, first[:, None], axis=1)[:, 0]  # noqa: E731
  h, w = pick(h), pick(w)
  u = jax.random.uniform(k_pos, (b, 2))
  top, left = jnp.floor(u[:, 0] * (height - h + 1)), jnp.floor(u[:, 1] * (width - w + 1))
  do = (jax.random.uniform(k_do, (b,)) < prob) & jnp.any(fits, axis=1)
  masks = jax.vmap(lambda t, bo, le, r: _box_mask(height, width, t, bo, le, r))(
    top, top + h, left, left + w
  )
  masks = masks & do[:, None, None]
  mean = jnp.broadcast_to(jnp.asarray(pixel_mean, images.dtype), (channels,))
  std = jnp.broadcast_to(jnp.asarray(pixel_std, images.dtype), (channels,))
  fill = mean + std * jax.random.normal(k_fill, images.shape, images.dtype)
  return jnp.where(masks[..., None], fill, images)


def regularize(
  key: jax.Array,
  images: jax.Array,
  labels: jax.Array,
  num_classes: int,
  s: MixSettings,
  pixel_stats: tuple[tuple[float, ...], tuple[float, ...]],
) -> tuple[jax.Array, jax.Array]:
  """The fine-tune batch as the recipe trains on it: RandAugment and erasing (per image), then
  mixed (per batch); returns the images and their soft targets."""
  k_erase, k_mix, k_rand = jax.random.split(key, 3)
  if s.randaugment:
    ops, magnitude, std = s.randaugment
    images = randaugment.rand_augment_batch(
      k_rand, images, num_ops=ops, magnitude=magnitude, magnitude_std=std
    )
  if s.erasing > 0:
    images = erase(k_erase, images, s.erasing, *pixel_stats)
  if s.mixes:
    return mix_batch(k_mix, images, labels, num_classes, s)
  return images, smooth_one_hot(labels, num_classes, s.smoothing)

"""Deterministic corruptions of evaluation images: a distribution shift without a second dataset.

`config.data.shift` names one (see SHIFTS); it applies to the images `load_eval_split` returns,
never to the pretraining views, so `config.eval_config.ood_data = dict(shift=...)` gives an
out-of-distribution test set of the same classes. NumPy only (no TensorFlow): the synthetic source
uses it too. Severities 1-5 follow ImageNet-C's levels (Hendrycks & Dietterich 2019) for noise and
contrast. Random draws are keyed by (shift_seed, global example index), so the shifted test set is
the same whatever the process count, max_examples or batch size.
"""

from __future__ import annotations

import numpy as np

from ssljax.errors import ConfigError

# Per severity 1..5.
NOISE_STD = (0.08, 0.12, 0.18, 0.26, 0.38)  # ImageNet-C gaussian_noise
CONTRAST = (0.4, 0.3, 0.2, 0.1, 0.05)  # ImageNet-C contrast: the factor c
ROTATION_DEG = (15.0, 30.0, 45.0, 60.0, 90.0)  # counter-clockwise

SHIFTS = ('gaussian_noise', 'contrast', 'rotate')


def check(shift: str, severity: int, prefix: str = 'data') -> None:
  """Raises ConfigError naming the field (config.PREFIX.shift, ...) for an unknown shift or
  severity."""
  if shift and shift not in SHIFTS:
    raise ConfigError(
      f'config.{prefix}.shift={shift!r}: one of {", ".join(SHIFTS)} (or empty: none); '
      f'e.g. --config.{prefix}.shift={SHIFTS[0]}'
    )
  if shift and (not isinstance(severity, int) or not 1 <= severity <= 5):
    raise ConfigError(
      f'config.{prefix}.shift_severity={severity!r}: an integer in 1..5; '
      f'e.g. --config.{prefix}.shift_severity=3'
    )


def gaussian_noise(images: np.ndarray, std: float, rngs: list[np.random.Generator]) -> np.ndarray:
  """x + N(0, std^2) per pixel, one generator per image, clipped to [0, 1]."""
  noise = np.stack([rng.standard_normal(images.shape[1:], dtype=np.float32) for rng in rngs])
  return np.clip(images + np.float32(std) * noise.reshape(images.shape), 0.0, 1.0)


def contrast(images: np.ndarray, factor: float) -> np.ndarray:
  """(x - m) * factor + m with m each image's mean over all its pixels and channels."""
  mean = images.mean(axis=(1, 2, 3), keepdims=True)
  return np.clip((images - mean) * np.float32(factor) + mean, 0.0, 1.0)


def rotate(images: np.ndarray, degrees: float) -> np.ndarray:
  """Counter-clockwise rotation about the image center, bilinear, zero (black) outside.

  Output pixel (i, j) reads the input at the inverse rotation of its position around the center
  ((H - 1) / 2, (W - 1) / 2), rows growing downwards: a quarter turn equals np.rot90.
  """
  _, h, w, _ = images.shape
  theta = np.deg2rad(degrees)
  cy, cx = (h - 1) / 2, (w - 1) / 2
  ii, jj = np.meshgrid(np.arange(h), np.arange(w), indexing='ij')
  y, x = ii - cy, jj - cx  # y points down: a counter-clockwise turn on screen
  src_y = np.cos(theta) * y + np.sin(theta) * x + cy
  src_x = -np.sin(theta) * y + np.cos(theta) * x + cx
  # Snap coordinates within 1e-9 of a pixel center, so right angles copy pixels exactly.
  src_y = np.where(np.abs(src_y - np.round(src_y)) < 1e-9, np.round(src_y), src_y)
  src_x = np.where(np.abs(src_x - np.round(src_x)) < 1e-9, np.round(src_x), src_x)
  y0, x0 = np.floor(src_y).astype(np.int64), np.floor(src_x).astype(np.int64)
  fy, fx = (src_y - y0)[..., None], (src_x - x0)[..., None]
  out = np.zeros_like(images)
  for dy, dx, weight in (
    (0, 0, (1 - fy) * (1 - fx)),
    (0, 1, (1 - fy) * fx),
    (1, 0, fy * (1 - fx)),
    (1, 1, fy * fx),
  ):
    yy, xx = y0 + dy, x0 + dx
    inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
    pixels = images[:, np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)]
    out += np.where(inside[..., None], weight, 0.0).astype(images.dtype) * pixels
  return np.clip(out, 0.0, 1.0)


def apply(
  images: np.ndarray, indices: np.ndarray, *, shift: str, severity: int = 3, seed: int = 0
) -> np.ndarray:
  """`images` (N, H, W, C) float in [0, 1] with `shift` applied; `indices` are the examples'
  global positions in the split (they key the random draws). Empty `shift`: unchanged."""
  check(shift, severity)
  if not shift or len(images) == 0:
    return images
  images = np.asarray(images, np.float32)
  level = int(severity) - 1
  if shift == 'gaussian_noise':
    rngs = [np.random.default_rng((int(seed) % 2**63, int(i))) for i in indices]
    return gaussian_noise(images, NOISE_STD[level], rngs)
  if shift == 'contrast':
    return contrast(images, CONTRAST[level])
  return rotate(images, ROTATION_DEG[level])

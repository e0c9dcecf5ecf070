"""The training views of config.augment made inside the jitted train step (`augment.on='device'`).

The host only sends each example's base image (uint8, made once) and its global element index;
the step makes every view here, per example and sharded with the batch, so an accelerator is never
waiting on host CPUs. The ops, their parameters and their distributions are those of the host
path (`ssljax.data.augment`, tf.data); the random numbers differ (JAX's, not TensorFlow's), so the
two paths make different views of the same distribution. View v of element e is keyed by
(config.seed, e, v): the same whatever the device count or the step a run resumed at.

Every op is written as a map of explicit parameters (`crop_resize`, `contrast`, ...) apart from
the draws that choose them (`sample_crop`, ...), so each can be checked against TensorFlow's op on
the same parameters. No TensorFlow here: this runs on a machine with JAX alone.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

GRAY = (0.2989, 0.5870, 0.1140)  # tf.image.rgb_to_grayscale's weights
HIGHEST = jax.lax.Precision.HIGHEST  # resampling at full float32 precision on every backend


# ----------------------------------------------------------------------------- keys


def split_elements(elements: np.ndarray) -> np.ndarray:
  """int64 global element indices (B,) -> uint32 (B, 2) [high, low]: JAX keeps 32-bit ints."""
  e = np.asarray(elements, np.int64).astype(np.uint64)
  return np.stack([e >> np.uint64(32), e & np.uint64(0xFFFFFFFF)], axis=-1).astype(np.uint32)


def view_key(seed: int, element: jax.Array, view: int) -> jax.Array:
  """The key of view `view` of the element (uint32 [high, low]): a function of the three alone."""
  key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), element[0]), element[1])
  return jax.random.fold_in(key, view)


# ----------------------------------------------------------------------------- resampling


def _keys_cubic(t: jax.Array) -> jax.Array:
  """Keys' cubic convolution kernel with a = -0.5 (TensorFlow's bicubic) at offsets t."""
  t = jnp.abs(t)
  a = -0.5
  near = ((a + 2) * t - (a + 3)) * t * t + 1
  far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
  return jnp.where(t <= 1, near, jnp.where(t < 2, far, 0.0))


def _bicubic_matrix(start: jax.Array, length: jax.Array, out: int, full: int) -> jax.Array:
  """(out, full) weights resampling rows [start, start + length) of a `full`-row image to `out`
  rows as tf.image.resize(method='bicubic') does: half-pixel centres, four Keys taps, taps outside
  the crop dropped and the rest renormalised."""
  scale = length / out
  centre = (jnp.arange(out, dtype=jnp.float32) + 0.5) * scale - 0.5
  base = jnp.floor(centre)
  taps = base[:, None] + jnp.arange(-1, 3, dtype=jnp.float32)[None]  # (out, 4), crop coordinates
  weights = _keys_cubic(centre[:, None] - taps)
  weights = jnp.where((taps >= 0) & (taps <= length - 1), weights, 0.0)
  weights = weights / jnp.sum(weights, axis=1, keepdims=True)
  rows = jnp.arange(full, dtype=jnp.float32)
  onehot = (start + taps)[:, :, None] == rows[None, None]
  return jnp.sum(jnp.where(onehot, weights[:, :, None], 0.0), axis=1)


def _resample(image: jax.Array, rows: jax.Array, cols: jax.Array) -> jax.Array:
  """rows (S, H) @ image (H, W, C) @ cols^T (W, T) -> (S, T, C)."""
  return jnp.einsum('sh,hwc,tw->stc', rows, image, cols, precision=HIGHEST)


def crop_resize(image: jax.Array, y, x, height, width, size: int) -> jax.Array:
  """The crop [y, y + height) x [x, x + width) of image (H, W, C), bicubic-resized to
  (size, size) and clipped to [0, 1]: tf.image.resize(tf.slice(image, ...), 'bicubic')."""
  h, w = image.shape[0], image.shape[1]
  rows = _bicubic_matrix(jnp.asarray(y, jnp.float32), jnp.asarray(height, jnp.float32), size, h)
  cols = _bicubic_matrix(jnp.asarray(x, jnp.float32), jnp.asarray(width, jnp.float32), size, w)
  return jnp.clip(_resample(image, rows, cols), 0.0, 1.0)


def upsample(image: jax.Array, size: int) -> jax.Array:
  """Bilinear resize to (size, size) of an image smaller than that (the host's `upsample`)."""
  h, w, c = image.shape
  if min(h, w) >= size:
    return image
  return jax.image.resize(image, (size, size, c), 'bilinear', antialias=False)


# ----------------------------------------------------------------------------- the ops


def sample_crop(key: jax.Array, height: int, width: int, scale, ratio, attempts: int = 10):
  """(y, x, crop height, crop width) of a random resized crop, drawn as the host draws them:
  area fraction U(scale), log-uniform aspect in ratio, the first of `attempts` draws that fits,
  else the whole image narrowed to the ratio range, centred (torchvision's rule)."""
  k_scale, k_ratio, k_y, k_x = jax.random.split(key, 4)
  h, w = float(height), float(width)
  area = h * w * jax.random.uniform(k_scale, (attempts,), minval=scale[0], maxval=scale[1])
  log_ratio = jax.random.uniform(
    k_ratio, (attempts,), minval=math.log(ratio[0]), maxval=math.log(ratio[1])
  )
  aspect = jnp.exp(log_ratio)
  cw = jnp.round(jnp.sqrt(area * aspect))
  ch = jnp.round(jnp.sqrt(area / aspect))
  fits = (cw >= 1) & (ch >= 1) & (cw <= w) & (ch <= h)
  first = jnp.argmax(fits)
  found = jnp.any(fits)
  image_ratio = w / h
  fw = round(h * ratio[1]) if image_ratio > ratio[1] else w
  fh = round(w / ratio[0]) if image_ratio < ratio[0] else h
  cw = jnp.where(found, cw[first], fw)
  ch = jnp.where(found, ch[first], fh)
  y = jnp.where(found, jnp.floor(jax.random.uniform(k_y) * (h - ch + 1)), jnp.floor((h - ch) / 2))
  x = jnp.where(found, jnp.floor(jax.random.uniform(k_x) * (w - cw + 1)), jnp.floor((w - cw) / 2))
  return jnp.clip(y, 0, h - ch), jnp.clip(x, 0, w - cw), ch, cw


def flip(image: jax.Array, do: jax.Array) -> jax.Array:
  return jnp.where(do, image[:, ::-1], image)


def brightness(image: jax.Array, factor) -> jax.Array:
  """Multiplicative brightness (SimCLR's), as the host path."""
  return image * factor


def contrast(image: jax.Array, factor) -> jax.Array:
  """tf.image.adjust_contrast: each channel's mean + factor x (pixel - that mean)."""
  mean = jnp.mean(image, axis=(0, 1), keepdims=True)
  return (image - mean) * factor + mean


def rgb_to_hsv(image: jax.Array) -> jax.Array:
  """RGB in [0, 1] -> HSV with hue in [0, 1) (tf.image.rgb_to_hsv)."""
  r, g, b = image[..., 0], image[..., 1], image[..., 2]
  v = jnp.max(image, axis=-1)
  delta = v - jnp.min(image, axis=-1)
  s = jnp.where(v > 0, delta / jnp.where(v > 0, v, 1.0), 0.0)
  safe = jnp.where(delta > 0, delta, 1.0)
  h = jnp.where(
    v == r, (g - b) / safe, jnp.where(v == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe)
  )
  h = jnp.where(delta > 0, h / 6.0, 0.0)
  return jnp.stack([jnp.where(h < 0, h + 1.0, h), s, v], axis=-1)


def hsv_to_rgb(image: jax.Array) -> jax.Array:
  """HSV (hue in [0, 1)) -> RGB (tf.image.hsv_to_rgb)."""
  h, s, v = image[..., 0], image[..., 1], image[..., 2]
  c = s * v
  m = v - c
  dh = h * 6.0
  x = c * (1.0 - jnp.abs(jnp.mod(dh, 2.0) - 1.0))
  sector = jnp.floor(dh).astype(jnp.int32) % 6
  zeros = jnp.zeros_like(c)
  table = jnp.stack(
    [
      jnp.stack([c, x, zeros], -1),
      jnp.stack([x, c, zeros], -1),
      jnp.stack([zeros, c, x], -1),
      jnp.stack([zeros, x, c], -1),
      jnp.stack([x, zeros, c], -1),
      jnp.stack([c, zeros, x], -1),
    ],
    axis=0,
  )
  rgb = jnp.take_along_axis(table, sector[None, ..., None], axis=0)[0]
  return rgb + m[..., None]


def saturation(image: jax.Array, factor) -> jax.Array:
  """tf.image.adjust_saturation: HSV saturation x factor, clipped to [0, 1]."""
  hsv = rgb_to_hsv(image)
  hsv = hsv.at[..., 1].set(jnp.clip(hsv[..., 1] * factor, 0.0, 1.0))
  return hsv_to_rgb(hsv)


def hue(image: jax.Array, delta) -> jax.Array:
  """tf.image.adjust_hue: the hue turned by delta (a fraction of the circle)."""
  hsv = rgb_to_hsv(image)
  return hsv_to_rgb(hsv.at[..., 0].set(jnp.mod(hsv[..., 0] + delta, 1.0)))


def grayscale(image: jax.Array) -> jax.Array:
  """tf.image.rgb_to_grayscale, kept three channels."""
  gray = jnp.tensordot(image, jnp.asarray(GRAY, image.dtype), axes=1, precision=HIGHEST)
  return jnp.repeat(gray[..., None], image.shape[-1], axis=-1)


def blur_kernel_size(side: int, kernel_frac: float) -> int:
  """round(kernel_frac * side), made odd, at least 3 (as the host's)."""
  k = max(3, int(round(kernel_frac * side)))
  return k if k % 2 else k + 1


def _blur_matrix(sigma, radius: int, side: int) -> jax.Array:
  """(side, side) Gaussian smoothing over SYMMETRIC-padded rows (the edge row repeated)."""
  t = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  kernel = jnp.exp(-(t**2) / (2 * sigma**2))
  kernel = kernel / jnp.sum(kernel)
  source = np.arange(side)[:, None] + np.arange(-radius, radius + 1)[None]  # (side, taps)
  source = np.where(source < 0, -source - 1, source)
  source = np.where(source >= side, 2 * side - source - 1, source)
  onehot = source[:, :, None] == np.arange(side)[None, None]  # static
  return jnp.einsum('t,stj->sj', kernel, jnp.asarray(onehot, jnp.float32), precision=HIGHEST)


def blur(image: jax.Array, sigma, kernel_frac: float) -> jax.Array:
  """Separable Gaussian blur with std `sigma` (pixels), the kernel kernel_frac of the side."""
  side = image.shape[0]
  radius = blur_kernel_size(side, kernel_frac) // 2
  m = _blur_matrix(jnp.asarray(sigma, jnp.float32), radius, side)
  return jnp.clip(_resample(image, m, m), 0.0, 1.0)


def solarize(image: jax.Array) -> jax.Array:
  return jnp.where(image < 0.5, image, 1.0 - image)


# ----------------------------------------------------------------------------- a view


def jitter_ops(channels: int) -> int:
  """How many colour-jitter ops apply: brightness and contrast, plus saturation and hue in RGB."""
  if channels not in (1, 3):
    raise ValueError(f'colour jitter expects 1 or 3 channels, got {channels}')
  return 2 if channels == 1 else 4


def sample_jitter(key: jax.Array, spec, channels: int):
  """(apply?, op order, factors (brightness, contrast, saturation, hue delta)) as the host
  draws them: factors in [1 - f s, 1 + f s] (floored at 0), hue delta in [-h s, h s]."""
  k_gate, k_order, *k_ops = jax.random.split(key, 6)
  b, c, sat, h = (float(spec.color_strength) * f for f in spec.color_jitter)
  lo_hi = [(max(0.0, 1 - x), 1 + x) for x in (b, c, sat)] + [(-min(h, 0.5), min(h, 0.5))]
  factors = jnp.stack(
    [jax.random.uniform(k, minval=lo, maxval=hi) for k, (lo, hi) in zip(k_ops, lo_hi, strict=True)]
  )
  n = jitter_ops(channels)
  order = jnp.argsort(jax.random.uniform(k_order, (n,)))
  return jax.random.uniform(k_gate) < float(spec.color_prob), order, factors


def color_jitter(image: jax.Array, order: jax.Array, factors: jax.Array) -> jax.Array:
  """The jitter ops in `order`, each clipped to [0, 1] (the host's)."""
  ops = [
    lambda x: brightness(x, factors[0]),
    lambda x: contrast(x, factors[1]),
    lambda x: saturation(x, factors[2]),
    lambda x: hue(x, factors[3]),
  ][: jitter_ops(image.shape[-1])]
  for i in range(len(ops)):
    image = jax.lax.switch(
      order[i], [lambda x, op=op: jnp.clip(op(x), 0.0, 1.0) for op in ops], image
    )
  return image


def _gate(key: jax.Array, prob: float) -> jax.Array:
  return jax.random.uniform(key) < prob


def augment_view(image: jax.Array, key: jax.Array, spec: ml_collections.ConfigDict) -> jax.Array:
  """One view of float (H, W, C) in [0, 1]: crop -> flip -> colour jitter -> grayscale -> blur ->
  solarize, as `spec` says (the host's `augment_view`)."""
  keys = jax.random.split(key, 7)
  h, w, channels = image.shape
  size = int(spec.image_size)
  y, x, ch, cw = sample_crop(keys[0], h, w, tuple(spec.crop_scale), tuple(spec.crop_ratio))
  image = crop_resize(image, y, x, ch, cw, size)
  if spec.flip:
    image = flip(image, _gate(keys[1], 0.5))
  if spec.color_strength > 0 and spec.color_prob > 0:
    apply, order, factors = sample_jitter(keys[2], spec, channels)
    image = jnp.where(apply, color_jitter(image, order, factors), image)
  if channels == 3 and spec.grayscale_prob > 0:
    image = jnp.where(_gate(keys[3], spec.grayscale_prob), grayscale(image), image)
  if spec.blur_prob > 0:
    lo, hi = spec.blur_sigma
    sigma = jax.random.uniform(keys[5], minval=lo, maxval=hi)
    image = jnp.where(
      _gate(keys[4], spec.blur_prob), blur(image, sigma, spec.blur_kernel_frac), image
    )
  if spec.solarize_prob > 0:
    image = jnp.where(_gate(keys[6], spec.solarize_prob), solarize(image), image)
  return image


def to_float(images: jax.Array) -> jax.Array:
  """uint8 [0, 255] -> float32 [0, 1]; float images are taken to be in [0, 1] already."""
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) / 255.0
  return images.astype(jnp.float32)


def make_views(
  images: jax.Array,
  elements: jax.Array,
  specs: list[ml_collections.ConfigDict],
  *,
  seed: int,
  image_size: int,
) -> list[jax.Array]:
  """Every view of a batch: base images (B, H, W, C) and their elements (B, 2) uint32 ->
  [float32 (B, S_v, S_v, C)], view v of element e keyed by (seed, e, v)."""

  base = jax.vmap(lambda image: upsample(to_float(image), image_size))(images)  # once, not per view

  def view(v: int, spec):
    return jax.vmap(lambda im, el: augment_view(im, view_key(seed, el, v), spec))(base, elements)

  return [view(v, spec) for v, spec in enumerate(specs)]

"""RandAugment as MAE fine-tunes with it (timm's 'rand-m9-mstd0.5-inc1'), per image inside the
jitted step, written from Cubuk et al. 2020 and the PIL operations timm applies:

two ops per image drawn uniformly (with replacement) from the 15 below, each applied with
probability 0.5 at magnitude m ~ N(9, 0.5) clipped to [0, 10]; the "increasing" variants, whose
strength grows with m. Pixels are float in [0, 1]; ops that PIL runs on 8-bit values (posterize,
solarize, equalize, autocontrast) see them rounded to the 256 levels. Geometric ops sample
bilinearly at PIL's pixel centres and fill with ImageNet's mean colour (timm's img_mean); MAE's
uses bicubic.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

NAMES = (
  'auto_contrast',
  'equalize',
  'invert',
  'rotate',
  'posterize',
  'solarize',
  'solarize_add',
  'color',
  'contrast',
  'brightness',
  'sharpness',
  'shear_x',
  'shear_y',
  'translate_x',
  'translate_y',
)
FILL = (124 / 255, 116 / 255, 104 / 255)  # timm: ImageNet's mean, rounded to 8 bits
_GRAY = (0.299, 0.587, 0.114)  # PIL's convert('L')


def _levels(x: jax.Array) -> jax.Array:
  return jnp.round(jnp.clip(x, 0.0, 1.0) * 255.0)


def _gray(x: jax.Array) -> jax.Array:
  """(H, W, C) -> (H, W, 1) luminance (the image itself when it has one channel)."""
  if x.shape[-1] == 1:
    return x
  return jnp.sum(x * jnp.asarray(_GRAY, x.dtype), axis=-1, keepdims=True)


def _blend(degenerate: jax.Array, x: jax.Array, factor) -> jax.Array:
  """PIL's Image.blend(degenerate, x, factor), clipped: ImageEnhance's every op."""
  return jnp.clip(degenerate + factor * (x - degenerate), 0.0, 1.0)


# ----------------------------------------------------------------------------- pixel ops


def auto_contrast(x: jax.Array) -> jax.Array:
  """Each channel stretched from its darkest to its brightest level (ImageOps.autocontrast)."""
  v = _levels(x)
  lo, hi = jnp.min(v, axis=(0, 1)), jnp.max(v, axis=(0, 1))
  stretched = jnp.clip(jnp.floor((v - lo) * 255.0 / jnp.maximum(hi - lo, 1.0)), 0, 255)
  return jnp.where(hi > lo, stretched, v) / 255.0


def _equalize_channel(v: jax.Array) -> jax.Array:
  """ImageOps.equalize of one channel of levels (H, W): PIL's lookup table from the histogram."""
  hist = jnp.zeros(256, jnp.int32).at[v.astype(jnp.int32).ravel()].add(1)
  last = hist[255 - jnp.argmax(hist[::-1] > 0)]  # the count of the brightest level present
  step = (jnp.sum(hist) - last) // 255
  before = jnp.cumsum(hist) - hist  # pixels below each level
  lut = jnp.clip((step // 2 + before) // jnp.maximum(step, 1), 0, 255)
  return jnp.where(step > 0, lut[v.astype(jnp.int32)], v)


def equalize(x: jax.Array) -> jax.Array:
  v = _levels(x)
  return jnp.stack([_equalize_channel(v[..., c]) for c in range(x.shape[-1])], -1) / 255.0


def invert(x: jax.Array) -> jax.Array:
  return 1.0 - x


def posterize(x: jax.Array, bits) -> jax.Array:
  """Keep the top `bits` bits of each 8-bit level."""
  v = _levels(x).astype(jnp.int32)
  mask = 255 - (2 ** (8 - bits.astype(jnp.int32)) - 1)
  return (v & mask).astype(x.dtype) / 255.0


def solarize(x: jax.Array, threshold) -> jax.Array:
  """Levels at or above `threshold` (0-256) inverted."""
  v = _levels(x)
  return jnp.where(v >= threshold, 255.0 - v, v) / 255.0


def solarize_add(x: jax.Array, add, threshold=128) -> jax.Array:
  """timm's: `add` levels added to those below `threshold`, capped at 255."""
  v = _levels(x)
  return jnp.where(v < threshold, jnp.minimum(v + add, 255.0), v) / 255.0


def color(x: jax.Array, factor) -> jax.Array:
  return _blend(jnp.broadcast_to(_gray(x), x.shape), x, factor)


def contrast(x: jax.Array, factor) -> jax.Array:
  """Blend with the mean luminance, as an 8-bit level (ImageEnhance.Contrast)."""
  mean = jnp.floor(jnp.mean(_levels(_gray(x))) + 0.5) / 255.0
  return _blend(jnp.full_like(x, mean), x, factor)


def brightness(x: jax.Array, factor) -> jax.Array:
  return _blend(jnp.zeros_like(x), x, factor)


def sharpness(x: jax.Array, factor) -> jax.Array:
  """Blend with PIL's SMOOTH filter (3x3, centre 5, the rest 1, / 13), whose 1-pixel border is
  the image itself (ImageEnhance.Sharpness)."""
  h, w, _ = x.shape
  pad = jnp.pad(x, ((1, 1), (1, 1), (0, 0)), mode='edge')
  total = sum(pad[i : i + h, j : j + w] for i in range(3) for j in range(3))
  smooth = (total + 4.0 * x) / 13.0
  inner = jnp.zeros((h, w, 1), bool).at[1:-1, 1:-1].set(True)
  return _blend(jnp.where(inner, smooth, x), x, factor)


# ----------------------------------------------------------------------------- geometric ops


def affine(x: jax.Array, matrix, fill: tuple[float, ...] = FILL) -> jax.Array:
  """PIL's Image.transform(AFFINE, (a, b, c, d, e, f), BILINEAR): output pixel centre (X, Y)
  samples the input at (aX + bY + c, dX + eY + f); outside the input it is `fill`, inside the
  four neighbours are clamped to the edge."""
  h, w, channels = x.shape
  a, b, c, d, e, f = matrix
  ys, xs = jnp.meshgrid(jnp.arange(h) + 0.5, jnp.arange(w) + 0.5, indexing='ij')
  xin, yin = a * xs + b * ys + c, d * xs + e * ys + f
  inside = (xin >= 0) & (xin < w) & (yin >= 0) & (yin < h)
  xi, yi = xin - 0.5, yin - 0.5
  x0, y0 = jnp.floor(xi), jnp.floor(yi)
  dx, dy = (xi - x0)[..., None], (yi - y0)[..., None]
  col = lambda k: jnp.clip(k, 0, w - 1).astype(jnp.int32)  # noqa: E731
  row = lambda k: jnp.clip(k, 0, h - 1).astype(jnp.int32)  # noqa: E731
  top = x[row(y0), col(x0)] * (1 - dx) + x[row(y0), col(x0 + 1)] * dx
  bottom = x[row(y0 + 1), col(x0)] * (1 - dx) + x[row(y0 + 1), col(x0 + 1)] * dx
  out = top * (1 - dy) + bottom * dy
  fill = jnp.asarray(fill[:channels] if channels > 1 else fill[:1], x.dtype)
  return jnp.where(inside[..., None], out, fill)


def rotate(x: jax.Array, degrees) -> jax.Array:
  """Image.rotate(degrees): counter-clockwise about the centre."""
  h, w, _ = x.shape
  t = -jnp.deg2rad(degrees)
  cx, cy = w / 2.0, h / 2.0
  cos, sin = jnp.cos(t), jnp.sin(t)
  return affine(x, (cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy))


def shear_x(x: jax.Array, factor) -> jax.Array:
  return affine(x, (1.0, factor, 0.0, 0.0, 1.0, 0.0))


def shear_y(x: jax.Array, factor) -> jax.Array:
  return affine(x, (1.0, 0.0, 0.0, factor, 1.0, 0.0))


def translate_x(x: jax.Array, fraction) -> jax.Array:
  return affine(x, (1.0, 0.0, fraction * x.shape[1], 0.0, 1.0, 0.0))


def translate_y(x: jax.Array, fraction) -> jax.Array:
  return affine(x, (1.0, 0.0, 0.0, 0.0, 1.0, fraction * x.shape[0]))


# ----------------------------------------------------------------------------- the policy


def op_argument(name: str, magnitude, negate) -> jax.Array:
  """timm's *_level_to_arg of the increasing variants, magnitude in [0, 10]; `negate` flips
  the sign of the signed ones (a fair coin in the policy)."""
  level = magnitude / 10.0
  sign = jnp.where(negate, -1.0, 1.0)
  return {
    'rotate': sign * level * 30.0,
    'posterize': 4.0 - jnp.floor(level * 4.0),
    'solarize': 256.0 - jnp.floor(level * 256.0),
    'solarize_add': jnp.floor(level * 110.0),
    'color': 1.0 + sign * level * 0.9,
    'contrast': 1.0 + sign * level * 0.9,
    'brightness': 1.0 + sign * level * 0.9,
    'sharpness': 1.0 + sign * level * 0.9,
    'shear_x': sign * level * 0.3,
    'shear_y': sign * level * 0.3,
    'translate_x': sign * level * 0.45,
    'translate_y': sign * level * 0.45,
  }.get(name, jnp.zeros(()))


_OPS = {name: globals()[name] for name in NAMES}


def _apply(x: jax.Array, index, argument) -> jax.Array:
  branches = [
    (lambda x, a, op=_OPS[n]: op(x)) if n in ('auto_contrast', 'equalize', 'invert')
    else (lambda x, a, op=_OPS[n]: op(x, a))
    for n in NAMES
  ]  # fmt: skip
  return jax.lax.switch(index, branches, x, argument)


def rand_augment(
  key: jax.Array,
  image: jax.Array,
  *,
  num_ops: int = 2,
  magnitude: float = 9.0,
  magnitude_std: float = 0.5,
  prob: float = 0.5,
) -> jax.Array:
  """One image (H, W, C) in [0, 1] through the policy."""
  for k in jax.random.split(key, num_ops):
    k_op, k_mag, k_sign, k_do = jax.random.split(k, 4)
    index = jax.random.randint(k_op, (), 0, len(NAMES))
    m = jnp.clip(magnitude + magnitude_std * jax.random.normal(k_mag), 0.0, 10.0)
    negate = jax.random.uniform(k_sign) < 0.5
    arguments = jnp.stack([op_argument(n, m, negate) for n in NAMES])
    out = _apply(image, index, arguments[index])
    image = jnp.where(jax.random.uniform(k_do) < prob, out, image)
  return image


def rand_augment_batch(key: jax.Array, images: jax.Array, **kwargs) -> jax.Array:
  return jax.vmap(lambda k, x: rand_augment(k, x, **kwargs))(
    jax.random.split(key, images.shape[0]), images
  )

"""RandAugment (evaluators.randaugment): every op against PIL's on the same 8-bit images and
parameters (what timm runs), the magnitude mapping by hand, and the policy's per-image draws."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from ssljax.evaluators import randaugment as ra

FILL8 = (124, 116, 104)


def _image(mode):
  rng = np.random.default_rng(0 if mode == 'RGB' else 1)
  shape = (20, 24, 3) if mode == 'RGB' else (20, 24)
  a = rng.integers(0, 256, shape, dtype=np.uint8)
  a[:5, :5] = 40  # flat patches: sharpness and equalize see structure, not only noise
  return Image.fromarray(a, mode)


def _ours(op, img, *args):
  x = jnp.asarray(np.asarray(img, np.float32).reshape(img.size[1], img.size[0], -1) / 255.0)
  return np.asarray(op(x, *args)) * 255.0


def _pil(img):
  return np.asarray(img, np.float32).reshape(img.size[1], img.size[0], -1)


def _fill(img):
  return FILL8 if img.mode == 'RGB' else FILL8[0]


PIXEL_CASES = [
  ('auto_contrast', (), lambda im: ImageOps.autocontrast(im)),
  ('equalize', (), lambda im: ImageOps.equalize(im)),
  ('invert', (), lambda im: ImageOps.invert(im)),
  ('posterize', (jnp.float32(2),), lambda im: ImageOps.posterize(im, 2)),
  ('solarize', (jnp.float32(100),), lambda im: ImageOps.solarize(im, 100)),
  ('color', (0.3,), lambda im: ImageEnhance.Color(im).enhance(0.3)),
  ('contrast', (1.7,), lambda im: ImageEnhance.Contrast(im).enhance(1.7)),
  ('brightness', (0.6,), lambda im: ImageEnhance.Brightness(im).enhance(0.6)),
  ('sharpness', (1.8,), lambda im: ImageEnhance.Sharpness(im).enhance(1.8)),
  ('sharpness', (0.2,), lambda im: ImageEnhance.Sharpness(im).enhance(0.2)),
]


@pytest.mark.parametrize('mode', ['RGB', 'L'])
@pytest.mark.parametrize('name, args, reference', PIXEL_CASES, ids=[c[0] for c in PIXEL_CASES])
def test_pixel_ops_match_pil(mode, name, args, reference):
  img = _image(mode)
  ours, theirs = _ours(getattr(ra, name), img, *args), _pil(reference(img))
  assert np.abs(ours - theirs).max() <= 1.5, name  # PIL rounds or truncates to 8 bits


def test_solarize_add_by_hand():
  v = np.array([0, 27, 127, 128, 200, 255], np.float32).reshape(1, 6, 1)
  out = np.asarray(ra.solarize_add(jnp.asarray(v / 255), 99.0)) * 255
  np.testing.assert_allclose(out.ravel(), [99, 126, 226, 128, 200, 255], atol=1e-3)


GEOMETRIC_CASES = [
  ('rotate', 25.0, lambda im: im.rotate(25.0, resample=Image.BILINEAR, fillcolor=_fill(im))),
  ('rotate', -12.0, lambda im: im.rotate(-12.0, resample=Image.BILINEAR, fillcolor=_fill(im))),
  ('shear_x', 0.27, lambda im: _affine(im, (1, 0.27, 0, 0, 1, 0))),
  ('shear_y', -0.2, lambda im: _affine(im, (1, 0, 0, -0.2, 1, 0))),
  ('translate_x', 0.3, lambda im: _affine(im, (1, 0, 0.3 * im.size[0], 0, 1, 0))),
  ('translate_y', -0.4, lambda im: _affine(im, (1, 0, 0, 0, 1, -0.4 * im.size[1]))),
]


def _affine(im, matrix):
  return im.transform(im.size, Image.AFFINE, matrix, resample=Image.BILINEAR, fillcolor=_fill(im))


@pytest.mark.parametrize('mode', ['RGB', 'L'])
@pytest.mark.parametrize(
  'name, arg, reference', GEOMETRIC_CASES, ids=[c[0] for c in GEOMETRIC_CASES]
)
def test_geometric_ops_match_pil(mode, name, arg, reference):
  img = _image(mode)
  ours, theirs = _ours(getattr(ra, name), img, arg), _pil(reference(img))
  close = np.abs(ours - theirs) <= 1.5
  assert close.mean() > 0.97, (name, close.mean())  # the rest: PIL's fixed-point at fill edges


def test_magnitude_mapping_by_hand():
  # timm's increasing variants at magnitude 9
  assert float(ra.op_argument('rotate', 9.0, True)) == pytest.approx(-27.0)
  assert float(ra.op_argument('posterize', 9.0, False)) == 1.0  # 4 - int(3.6)
  assert float(ra.op_argument('solarize', 9.0, False)) == 26.0  # 256 - int(230.4)
  assert float(ra.op_argument('solarize_add', 9.0, False)) == 99.0  # int(99)
  assert float(ra.op_argument('contrast', 9.0, True)) == pytest.approx(1 - 0.81)
  assert float(ra.op_argument('translate_x', 10.0, False)) == pytest.approx(0.45)
  assert float(ra.op_argument('equalize', 9.0, True)) == 0.0  # no argument


def test_policy_changes_images_independently_and_keeps_the_range():
  x = jnp.asarray(np.random.default_rng(0).uniform(size=(64, 12, 12, 3)), jnp.float32)
  out = np.asarray(jax.jit(ra.rand_augment_batch)(jax.random.PRNGKey(0), x))
  assert out.shape == x.shape and out.min() >= 0.0 and out.max() <= 1.0
  changed = np.any(np.abs(out - np.asarray(x)) > 1e-6, axis=(1, 2, 3))
  # each of 2 ops applies with p 0.5: an image is untouched with p 0.25 (or an op is neutral)
  assert 0.1 < 1 - changed.mean() < 0.45
  again = np.asarray(jax.jit(ra.rand_augment_batch)(jax.random.PRNGKey(0), x))
  np.testing.assert_array_equal(out, again)  # a function of the key

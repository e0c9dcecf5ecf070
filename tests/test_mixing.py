"""Mixup, cutmix and random erasing (evaluators.mixing) against the formulas: label mixing with
smoothing by hand, images mixed with the same lam as their targets, cutmix's box and its
corrected lam in a hand-worked case, the batch's switch between the two, and erasing's one
rectangle per image of the right size, filled with the standardization's noise."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssljax.evaluators import mixing


def test_targets_mix_smoothed_one_hots_by_hand():
  labels = jnp.array([0, 2, 1])
  t = np.asarray(mixing.mix_targets(labels, 3, 0.7, 0.1))
  on, off = 1 - 0.1 + 0.1 / 3, 0.1 / 3
  y = np.full((3, 3), off)
  y[[0, 1, 2], [0, 2, 1]] = on
  np.testing.assert_allclose(t, 0.7 * y + 0.3 * y[::-1], rtol=1e-6)
  np.testing.assert_allclose(t.sum(1), 1.0, rtol=1e-6)
  assert t[0, 0] == pytest.approx(0.7 * on + 0.3 * off)  # row 0 mixes with row 2 (label 1)


def _batch(b=8, side=10):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.uniform(size=(b, side, side, 1)), jnp.float32)
  return x, jnp.arange(b) % 4  # labels: row i and row b-1-i differ


def test_mixup_images_use_the_lam_of_their_targets():
  x, y = _batch()
  images, targets = mixing.mix_batch(jax.random.PRNGKey(0), x, y, 4, mixing.MixSettings(mixup=0.8))
  lam = float(targets[0, y[0]])  # smoothing 0: the weight on row 0's own label
  assert 0 < lam < 1
  np.testing.assert_allclose(images, lam * x + (1 - lam) * x[::-1], rtol=1e-5, atol=1e-6)


def test_cutmix_box_hand_worked_and_lam_corrected_to_its_area():
  # 10 x 10, lam 0.75: sides int(10 * 0.5) = 5, centre (0, 9): rows 0-2, cols 7-10, 6 pixels.
  box = mixing.cutmix_box(jnp.array([0.0, 0.95]), 10, 10, 0.75)
  assert tuple(int(v) for v in box) == (0, 2, 7, 10)
  x, y = _batch()
  for seed in range(5):
    images, targets = mixing.mix_batch(
      jax.random.PRNGKey(seed), x, y, 4, mixing.MixSettings(cutmix=1.0)
    )
    from_reverse = np.isclose(images, x[::-1]) & ~np.isclose(x, x[::-1])
    assert np.all(np.isclose(images, x) | np.isclose(images, x[::-1]))  # pasted, not blended
    share = from_reverse[0].mean()
    np.testing.assert_allclose(targets[0, y[0]], 1 - share, atol=1e-6)  # the box's area


def test_with_both_a_batch_is_mixup_or_cutmix_half_the_time():
  x, y = _batch()
  s = mixing.MixSettings(mixup=0.8, cutmix=1.0, switch_prob=0.5)
  draw = jax.jit(jax.vmap(lambda k: mixing.mix_batch(k, x, y, 4, s)[0]))
  images = np.asarray(draw(jax.random.split(jax.random.PRNGKey(0), 400)))
  pasted = np.all(np.isclose(images, x) | np.isclose(images, x[::-1]), axis=(1, 2, 3, 4))
  assert abs(pasted.mean() - 0.5) < 0.1  # 400 draws: 5 standard errors


def test_erasing_one_rectangle_of_noise_per_image():
  x = jnp.full((256, 20, 20, 3), 2.0)  # outside the noise's range
  mean, std = (0.2, 0.5, 0.7), (0.1, 0.2, 0.3)
  out = np.asarray(mixing.erase(jax.random.PRNGKey(0), x, 1.0, mean, std))
  changed = np.any(out != 2.0, axis=-1)
  for mask in changed:
    rows, cols = np.nonzero(mask)
    h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    assert mask.sum() == h * w  # one filled rectangle
    assert 0.02 * 400 - 2 * (h + w) <= h * w <= 400 / 3 + 2 * (h + w)  # area 2-33%, rounded
    assert 0.3 / 2 <= h / w <= 2 / 0.3  # aspect within [0.3, 3.3], rounded
  filled = out[changed]  # (pixels, 3)
  np.testing.assert_allclose(filled.mean(0), mean, atol=0.01)
  np.testing.assert_allclose(filled.std(0), std, rtol=0.05)
  np.testing.assert_array_equal(mixing.erase(jax.random.PRNGKey(0), x, 0.0, mean, std), x)
  some = np.any(mixing.erase(jax.random.PRNGKey(1), x, 0.25, mean, std) != 2.0, axis=(1, 2, 3))
  assert abs(some.mean() - 0.25) < 0.1


def test_the_fine_tune_step_trains_on_mixed_erased_batches():
  import flax.linen as nn

  from ssljax import data, sharding
  from ssljax.evaluators import finetune as finetune_lib
  from ssljax.evaluators import protocols
  from ssljax.methods import SimCLR

  class Tiny(nn.Module):
    @nn.compact
    def __call__(self, x, *, train: bool):
      return nn.Dense(8)(x.reshape(x.shape[0], -1))

  c = SimCLR.default_config()
  c.data.image_size = c.augment.image_size = 8
  ft = protocols.finetune_config(c)
  ft.epochs, ft.min_steps, ft.mixup, ft.cutmix, ft.random_erasing = 0.0, 5, 0.8, 1.0, 0.25
  ft.randaugment = 'rand-m9-mstd0.5-inc1'
  recipe = finetune_lib.resolve_recipe(Tiny(), 10, ft)
  assert recipe.mix == mixing.MixSettings(0.8, 1.0, 0.5, 0.25, 0.0, (2, 9.0, 0.5))
  mesh = sharding.make_mesh()
  train, test = (data.load_eval_split(c, s) for s in ('train', 'test'))
  start = finetune_lib.random_encoder_variables(Tiny(), (8, 8, 1), 0, mesh)
  result = finetune_lib.finetune(
    Tiny(), start, train, {'': test}, num_classes=10, num_train=len(train[1]), mesh=mesh, ft=ft,
    eval_batch_size=64,
  )  # fmt: skip
  assert result.steps == 5 and np.isfinite(result.train_loss)


def test_randaugment_names_parse_as_timm_writes_them():
  assert mixing.parse_randaugment('') == ()
  assert mixing.parse_randaugment('rand-m9-mstd0.5-inc1') == (2, 9.0, 0.5)
  assert mixing.parse_randaugment('rand-m7-n3-inc1') == (3, 7.0, 0.5)
  with pytest.raises(ValueError, match=r"randaugment='rand-m9'.*-inc1"):
    mixing.parse_randaugment('rand-m9')

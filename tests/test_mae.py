"""MAE: loss against NumPy (the official formula), masking, the encoder sees visible patches only,
reconstructions."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import parameterized

from ssljax import build, losses, masking, methods, optim, sharding
from ssljax.models import vit


def mae_reference(pred, target, mask, norm_pix):
  """Loops over the official formula in float64."""
  pred, target, mask = (np.asarray(a, np.float64) for a in (pred, target, mask))
  num, den = 0.0, 0.0
  for b in range(pred.shape[0]):
    for i in range(pred.shape[1]):
      t = target[b, i]
      if norm_pix:
        t = (t - t.mean()) / np.sqrt(t.var(ddof=1) + 1e-6)
      num += mask[b, i] * np.mean((pred[b, i] - t) ** 2)
      den += mask[b, i]
  return num / den


class LossTest(parameterized.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.product(norm_pix=(True, False), shape=((2, 16, 48), (3, 49, 16)))
  def test_matches_reference(self, norm_pix, shape):
    rng = np.random.default_rng(shape[1])
    pred, target = rng.normal(size=(2,) + shape).astype(np.float32)
    mask = (rng.uniform(size=shape[:2]) < 0.75).astype(np.float32)
    out = self.variant(functools.partial(losses.mae, norm_pix=norm_pix))(pred, target, mask)
    chex.assert_shape(out, ())
    np.testing.assert_allclose(out, mae_reference(pred, target, mask, norm_pix), rtol=1e-5)

  def test_only_removed_patches_count(self):
    rng = np.random.default_rng(0)
    pred, target = rng.normal(size=(2, 2, 8, 12)).astype(np.float32)
    mask = np.zeros((2, 8), np.float32)
    mask[:, ::2] = 1.0
    base = losses.mae(pred, target, mask)
    changed = pred.copy()
    changed[:, 1::2] += 100.0  # visible patches: ignored
    np.testing.assert_allclose(losses.mae(changed, target, mask), base, rtol=1e-6)
    changed[:, 0] += 1.0  # a removed patch: counted
    assert abs(float(losses.mae(changed, target, mask)) - float(base)) > 1e-3

  def test_unbiased_variance(self):
    """ddof = 1: a 2-pixel patch [0, 2] has variance 2, so it normalizes to [-1/sqrt2, 1/sqrt2]."""
    target = np.array([[[0.0, 2.0]]], np.float32)
    pred = np.array([[[-1.0, 1.0]]], np.float32) / np.sqrt(2.0 + 1e-6)
    np.testing.assert_allclose(losses.mae(pred, target, np.ones((1, 1))), 0.0, atol=1e-10)


class MaskingTest(parameterized.TestCase):
  @parameterized.parameters((16, 0.75), (49, 0.75), (196, 0.75), (10, 0.5), (7, 0.0))
  def test_keeps_the_configured_count_and_restore_inverts_the_shuffle(self, length, ratio):
    keep = masking.num_visible(length, ratio)
    assert keep == max(int(length * (1 - ratio)), 1)
    noise = jax.random.uniform(jax.random.PRNGKey(length), (5, length))
    ids_keep, mask, ids_restore = masking.random_masking(noise, keep)
    chex.assert_shape((ids_keep, mask, ids_restore), ((5, keep), (5, length), (5, length)))
    np.testing.assert_array_equal(np.sum(mask, axis=1), length - keep)  # every sample
    for b in range(5):
      assert len(set(np.asarray(ids_keep[b]).tolist())) == keep
      np.testing.assert_array_equal(np.asarray(mask[b])[np.asarray(ids_keep[b])], 0.0)
    # unshuffling the shuffled sequence gives the original back
    x = jnp.broadcast_to(jnp.arange(length)[None], (5, length))
    shuffled = jnp.take_along_axis(x, jnp.argsort(noise, axis=1), axis=1)
    np.testing.assert_array_equal(jnp.take_along_axis(shuffled, ids_restore, axis=1), x)
    # the kept patches are those with the smallest noise
    smallest = np.sort(np.argsort(np.asarray(noise), axis=1)[:, :keep], axis=1)
    np.testing.assert_array_equal(np.sort(np.asarray(ids_keep), axis=1), smallest)

  def test_ratio_out_of_range_is_refused(self):
    with self.assertRaisesRegex(ValueError, 'config.mae.mask_ratio'):
      masking.num_visible(16, 1.0)


@functools.lru_cache(maxsize=1)
def tiny_mae():
  c = methods.MAE.default_config(image_size=16)
  c.model.encoder = 'vit_tiny'
  c.model.patch_size = 4
  c.model.vit_width, c.model.vit_depth, c.model.vit_heads = 16, 2, 2
  c.mae.decoder_width, c.mae.decoder_depth, c.mae.decoder_heads = 8, 1, 2
  c.batch_size = 8
  mesh = sharding.make_mesh()
  method = methods.build(c, mesh, total_steps=10)
  tx, schedule = optim.build_optimizer(c, total_steps=10, warmup_steps=0)
  state = jax.jit(build.init_state(method, tx, [(16, 16, 3)]))(jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  batch = {'views': [jnp.asarray(rng.uniform(size=(8, 16, 16, 3)), jnp.float32)]}
  return method, jax.jit(build.make_train_step(method, tx, schedule)), state, batch


class MethodTest(parameterized.TestCase):
  def test_shapes_and_the_encoder_never_sees_removed_patches(self):
    method, _, state, batch = tiny_mae()
    x = batch['views'][0]
    noise = jax.random.uniform(jax.random.PRNGKey(3), (8, 16))
    apply = jax.jit(functools.partial(method.net.apply, train=False))
    pred, mask = apply({'params': state.params}, x, noise)
    chex.assert_shape((pred, mask), ((8, 16, 4 * 4 * 3), (8, 16)))
    np.testing.assert_array_equal(np.sum(mask, axis=1), 12)  # 4 of 16 visible
    # Rewrite every removed patch's pixels: nothing the model outputs may change.
    patches = vit.patchify(x, 4)
    other = jax.random.normal(jax.random.PRNGKey(4), patches.shape)
    noisy = patches + 10.0 * mask[..., None] * other
    pred2, _ = apply({'params': state.params}, vit.unpatchify(noisy, 4, (4, 4), 3), noise)
    np.testing.assert_allclose(pred2, pred, rtol=1e-5, atol=1e-5)
    # ...while a visible patch's pixels do matter
    visible = patches + 10.0 * (1 - mask[..., None])
    pred3, _ = apply({'params': state.params}, vit.unpatchify(visible, 4, (4, 4), 3), noise)
    assert float(jnp.max(jnp.abs(pred3 - pred))) > 1e-3

  def test_train_step_lowers_the_loss_on_a_fixed_batch(self):
    method, step, state, batch = tiny_mae()
    first = None
    for _ in range(8):
      state, metrics = step(state, batch)
      first = float(metrics['loss']) if first is None else first
      np.testing.assert_allclose(metrics['mask_fraction'], 0.75)
    assert float(metrics['loss']) < first

  def test_reconstruction_pastes_the_visible_patches_back(self):
    method, _, state, batch = tiny_mae()
    x = batch['views'][0]
    out = jax.jit(method.reconstruct)(state.params, state.model_state, x, jax.random.PRNGKey(0))
    chex.assert_shape(list(out.values()), [x.shape] * 4)
    masked = vit.patchify(out['masked'], 4)
    visible = jnp.any(masked != 0, axis=-1)  # removed patches are zeroed
    np.testing.assert_array_equal(np.sum(visible, axis=1), 4)
    pasted, original = vit.patchify(out['pasted'], 4), vit.patchify(x, 4)
    np.testing.assert_allclose(
      jnp.where(visible[..., None], pasted, 0), jnp.where(visible[..., None], original, 0)
    )
    # removed patches come from the reconstruction
    recon = vit.patchify(out['reconstruction'], 4)
    np.testing.assert_allclose(
      jnp.where(visible[..., None], 0, pasted), jnp.where(visible[..., None], 0, recon), atol=1e-6
    )

  def test_features_are_the_encoders_cls_token(self):
    method, _, state, batch = tiny_mae()
    h = jax.jit(method.features)(state.params, state.model_state, batch['views'][0])
    chex.assert_shape(h, (8, 16))
    apply = jax.jit(lambda v, x: method.encoder.apply(v, x, train=False))
    direct = apply({'params': state.params['encoder']}, batch['views'][0])
    np.testing.assert_allclose(h, direct)

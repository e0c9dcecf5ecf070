"""BYOL: loss against NumPy, the EMA teacher schedule and update, no gradient into the target."""

import functools
import tempfile

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import parameterized

from ssljax import build, checkpoint, ema, losses, methods, models, optim, sharding


def byol_reference(p, z):
  p = p.astype(np.float64) / np.linalg.norm(p, axis=1, keepdims=True)
  z = z.astype(np.float64) / np.linalg.norm(z, axis=1, keepdims=True)
  return np.mean([np.sum((pi - zi) ** 2) for pi, zi in zip(p, z, strict=True)])


@functools.lru_cache(maxsize=1)
def tiny_byol():
  """A tiny BYOL and one jitted step, built once for the whole file (compiling is the cost).
  A one-block ViT compiles in a fraction of a ResNet's time; the projector's BatchNorm still
  gives the target statistics of its own (the ResNet path runs in the tiny SimCLR run and the
  slow tier's BYOL configs)."""
  c = methods.BYOL.default_config(image_size=8)
  c.model.encoder, c.model.patch_size = 'vit_tiny', 4
  c.model.vit_width, c.model.vit_depth, c.model.vit_heads = 32, 1, 2
  c.model.proj_hidden = 16
  c.model.proj_dim = 8
  c.batch_size = 16
  c.ema.base = 0.9
  mesh = sharding.make_mesh()
  method = methods.build(c, mesh, total_steps=10)
  tx, schedule = optim.build_optimizer(c, total_steps=10, warmup_steps=0)
  init = build.init_state(method, tx, [(8, 8, 1), (8, 8, 1)])
  state = jax.jit(init)(jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  batch = {'views': [jnp.asarray(rng.uniform(size=(16, 8, 8, 1)), jnp.float32) for _ in range(2)]}
  step = jax.jit(build.make_train_step(method, tx, schedule))
  after_one, _ = step(state, batch)
  return method, init, step, state, batch, after_one


class LossTest(parameterized.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters((1, 4), (7, 16), (32, 256))
  def test_matches_reference(self, n, d):
    rng = np.random.default_rng(n)
    p, z = rng.normal(size=(2, n, d)).astype(np.float32)
    out = self.variant(losses.byol)(p, z)
    chex.assert_shape(out, ())
    np.testing.assert_allclose(out, byol_reference(p, z), rtol=1e-5)
    # = 2 - 2 cos(p, z)
    cos = np.sum(p * z, 1) / np.linalg.norm(p, axis=1) / np.linalg.norm(z, axis=1)
    np.testing.assert_allclose(out, np.mean(2 - 2 * cos), rtol=1e-5, atol=1e-6)

  def test_symmetrized_loss_is_zero_when_predictions_equal_targets(self):
    rng = np.random.default_rng(0)
    z1, z2 = rng.normal(size=(2, 5, 8)).astype(np.float32)
    total = losses.byol(3 * z2, z2) + losses.byol(0.5 * z1, z1)  # scale does not matter
    np.testing.assert_allclose(total, 0.0, atol=1e-6)
    assert float(losses.byol(z1, z2)) > 0.1


class EMATest(parameterized.TestCase):
  @parameterized.parameters(0.9, 0.99, 0.996)
  def test_cosine_schedule_at_start_middle_end(self, base):
    k = 1000
    np.testing.assert_allclose(ema.cosine_momentum(0, k, base), base, rtol=1e-6)
    np.testing.assert_allclose(ema.cosine_momentum(k // 2, k, base), 1 - (1 - base) / 2, rtol=1e-6)
    np.testing.assert_allclose(ema.cosine_momentum(k, k, base), 1.0, rtol=1e-6)
    assert float(ema.cosine_momentum(k // 4, k, base)) < float(ema.cosine_momentum(k // 2, k, base))

  def test_linear_schedule(self):
    np.testing.assert_allclose(ema.linear_momentum(0, 100, 0.996), 0.996)
    np.testing.assert_allclose(ema.linear_momentum(50, 100, 0.996), 0.998, rtol=1e-6)
    np.testing.assert_allclose(ema.linear_momentum(100, 100, 0.996), 1.0)

  def test_update_formula(self):
    t = {'a': jnp.array([1.0, 2.0]), 'b': jnp.array(3.0)}
    o = {'a': jnp.array([0.0, 4.0]), 'b': jnp.array(-1.0)}
    out = ema.ema_update(t, o, 0.75)
    np.testing.assert_allclose(out['a'], [0.75, 2.5])
    np.testing.assert_allclose(out['b'], 2.0)


class MethodTest(parameterized.TestCase):
  def test_no_gradient_reaches_the_target(self):
    method, _, _, state, batch, _ = tiny_byol()

    def loss(params, target):
      model_state = {**state.model_state, 'target': target}
      return method.loss(params, model_state, batch, None, state.step)[0]

    # Both gradients from one jitted function: one compilation, no op-by-op dispatch.
    online, grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(
      state.params, state.model_state['target']
    )
    assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in jax.tree.leaves(grads))
    assert float(optim.optax.tree.norm(online)) > 0  # the online network does learn
    assert 'predictor' in online and 'predictor' not in state.model_state['target']['params']

  def test_one_step_moves_target_by_tau(self):
    method, _, _, state, batch, new_state = tiny_byol()
    old_target = state.model_state['target']['params']
    tau = float(method.momentum(0))
    np.testing.assert_allclose(tau, 0.9, rtol=1e-6)
    new_online = {k: new_state.params[k] for k in ('encoder', 'projector')}
    expected = jax.tree.map(lambda t, o: tau * t + (1 - tau) * o, old_target, new_online)
    chex.assert_trees_all_close(new_state.model_state['target']['params'], expected, rtol=1e-6)
    # the target is no longer a copy of the online network, nor what it was
    diff = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), old_target, new_online)
    assert max(jax.tree.leaves(diff)) > 0
    # target BatchNorm statistics come from the target's own forward pass: they moved
    moved = jax.tree.map(
      lambda a, b: float(jnp.max(jnp.abs(a - b))),
      state.model_state['target']['batch_stats'],
      new_state.model_state['target']['batch_stats'],
    )
    assert max(jax.tree.leaves(moved)) > 0

  def test_checkpoint_keeps_the_teacher(self):
    method, init, step, _, batch, state = tiny_byol()
    state, _ = step(state, batch)
    with tempfile.TemporaryDirectory() as workdir:
      ckpt = checkpoint.Checkpointer(workdir, max_to_keep=1)
      ckpt.save(2, state._asdict())
      ckpt.wait()
      fresh = jax.jit(init)(jax.random.PRNGKey(1))
      restored = methods.TrainState(**ckpt.restore(2, fresh._asdict()))
      ckpt.close()
    chex.assert_trees_all_equal(restored.model_state['target'], state.model_state['target'])
    chex.assert_trees_all_equal(restored.params, state.params)

  def test_features_pick_the_configured_encoder(self):
    method, _, _, _, batch, state = tiny_byol()
    x = batch['views'][0]
    h = {}
    for which in ('online', 'target'):
      config = method.config.copy_and_resolve_references()
      config.eval_encoder = which
      built = methods.build(config, method.mesh, total_steps=10)
      h[which] = jax.jit(built.features)(state.params, state.model_state, x)  # one compile
    online, target = h['online'], h['target']
    chex.assert_shape(online, (16, 32))
    chex.assert_shape(target, (16, 32))
    assert float(jnp.max(jnp.abs(online - target))) > 0
    t = state.model_state['target']
    apply = jax.jit(lambda v, x: models.build_encoder(method.config).apply(v, x, train=False))
    direct = apply({'params': t['params']['encoder']}, x)
    chex.assert_trees_all_close(target, direct)

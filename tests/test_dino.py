"""DINO: loss against NumPy, the center over 8 devices, schedules, no gradient into the teacher,
the frozen last layer, the weight-normalized head, multi-crop train steps."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from jax.sharding import PartitionSpec as P

from ssljax import build, losses, methods, models, optim, sharding


def dino_reference(student, teacher, center, student_temp, teacher_temp):
  """Loops over the formula in float64: mean over pairs i != j of the batch-mean cross-entropy."""
  student, teacher, center = (np.asarray(a, np.float64) for a in (student, teacher, center))

  def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()

  terms = []
  for i in range(teacher.shape[0]):
    for j in range(student.shape[0]):
      if i == j:
        continue
      ce = []
      for b in range(teacher.shape[1]):
        p_t = softmax((teacher[i, b] - center) / teacher_temp)
        log_p_s = np.log(softmax(student[j, b] / student_temp))
        ce.append(-np.sum(p_t * log_p_s))
      terms.append(np.mean(ce))
  return np.mean(terms)


class LossTest(parameterized.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters((2, 2, 3, 8), (2, 6, 4, 16), (2, 10, 2, 5), (1, 3, 3, 7))
  def test_matches_reference(self, v_t, v_s, batch, k):
    rng = np.random.default_rng(v_s * k)
    student = rng.normal(size=(v_s, batch, k)).astype(np.float32)
    teacher = rng.normal(size=(v_t, batch, k)).astype(np.float32)
    center = rng.normal(size=(k,)).astype(np.float32)  # not zero: centering matters
    fn = self.variant(functools.partial(losses.dino, student_temp=0.1, teacher_temp=0.04))
    out = fn(student, teacher, center)
    chex.assert_shape(out, ())
    ref = dino_reference(student, teacher, center, 0.1, 0.04)
    np.testing.assert_allclose(out, ref, rtol=1e-5)
    # a different center gives a different loss (the center is used)
    assert abs(float(fn(student, teacher, 0 * center)) - ref) > 1e-4

  def test_no_gradient_into_the_teacher_logits_or_center(self):
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(2, 4, 3, 6)).astype(np.float32)
    c = rng.normal(size=(6,)).astype(np.float32)
    grads = jax.grad(
      functools.partial(losses.dino, student_temp=0.1, teacher_temp=0.04), argnums=(0, 1, 2)
    )(s, t[:2], c)
    assert float(jnp.max(jnp.abs(grads[0]))) > 0
    assert float(jnp.max(jnp.abs(grads[1]))) == 0.0
    assert float(jnp.max(jnp.abs(grads[2]))) == 0.0

  def test_a_single_pair_of_views_is_required(self):
    with self.assertRaisesRegex(ValueError, 'pair'):
      losses.dino(jnp.zeros((1, 2, 3)), jnp.zeros((1, 2, 3)), jnp.zeros(3), student_temp=1.0,
                  teacher_temp=1.0)  # fmt: skip


class CenterTest(parameterized.TestCase):
  def test_formula(self):
    rng = np.random.default_rng(1)
    t = rng.normal(size=(2, 5, 7)).astype(np.float32)
    c = rng.normal(size=(7,)).astype(np.float32)
    out = losses.dino_center(c, t, momentum=0.9)
    np.testing.assert_allclose(out, 0.9 * c + 0.1 * t.reshape(-1, 7).mean(0), rtol=1e-6)

  def test_eight_devices_equal_one(self):
    assert jax.device_count() == 8, 'tests/conftest.py sets 8 CPU devices'
    mesh = sharding.make_mesh()
    rng = np.random.default_rng(2)
    t = rng.normal(size=(2, 32, 5)).astype(np.float32)  # (V_t, B, K), B sharded
    c = rng.normal(size=(5,)).astype(np.float32)
    single = losses.dino_center(c, t, momentum=0.9)
    sharded = jax.shard_map(
      functools.partial(losses.dino_center, momentum=0.9, axis_name='data'),
      mesh=mesh,
      in_specs=(P(), P(None, 'data')),
      out_specs=P(),
    )
    t_global = jax.device_put(t, jax.sharding.NamedSharding(mesh, P(None, 'data')))
    np.testing.assert_allclose(jax.jit(sharded)(c, t_global), single, rtol=1e-6)
    # and jit on the sharded global array (what the train step does) gives the same
    jitted = jax.jit(functools.partial(losses.dino_center, momentum=0.9))(c, t_global)
    np.testing.assert_allclose(jitted, single, rtol=1e-6)


class HeadTest(parameterized.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  def test_shapes_normalized_last_layer_and_fixed_norm(self):
    head = models.DINOHead(out_dim=10, hidden_dim=16, bottleneck_dim=4, num_layers=3)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 8)), jnp.float32)
    params = head.init(jax.random.PRNGKey(0), x, train=True)['params']
    assert set(params['last_layer']) == {'kernel'}  # no norm parameter: fixed at 1
    chex.assert_shape(params['last_layer']['kernel'], (4, 10))
    out = self.variant(functools.partial(head.apply, train=False))({'params': params}, x)
    chex.assert_shape(out, (3, 10))
    # scaling v changes nothing (weight norm), and |logit| <= 1 (unit bottleneck, unit columns)
    scaled = jax.tree.map(lambda a: a, params)
    scaled['last_layer'] = {'kernel': 5.0 * params['last_layer']['kernel']}
    np.testing.assert_allclose(head.apply({'params': scaled}, x, train=False), out, rtol=1e-5)
    assert float(jnp.max(jnp.abs(out))) <= 1.0 + 1e-5
    free = models.DINOHead(out_dim=10, hidden_dim=16, bottleneck_dim=4, norm_last_layer=False)
    free_params = free.init(jax.random.PRNGKey(0), x, train=True)['params']
    assert set(free_params['last_layer']) == {'kernel', 'scale'}


def tiny_dino_config(encoder='vit_tiny', use_bn=False):
  c = methods.DINO.default_config(image_size=16, local_size=8, num_local=2)
  c.model.encoder = encoder
  c.model.patch_size = 4
  c.model.vit_width, c.model.vit_depth, c.model.vit_heads = 16, 2, 2
  c.model.width = 4  # resnet
  c.model.drop_path = 0.1
  c.dino.out_dim = 12
  c.dino.hidden_dim = 16
  c.dino.bottleneck_dim = 8
  c.dino.use_bn = use_bn
  c.dino.freeze_last_layer_epochs = 1.0
  c.dino.warmup_teacher_temp = 0.04
  c.dino.teacher_temp = 0.07
  c.dino.warmup_teacher_temp_epochs = 2.0
  c.ema.base = 0.9
  c.batch_size = 8
  return c


@functools.lru_cache(maxsize=2)
@functools.cache
def tiny_dino(encoder='vit_tiny', use_bn=False):
  """A tiny DINO (2 global 16-px + 2 local 8-px crops) and a jitted step; steps_per_epoch 2.

  Cached: the tests share one compiled step (nothing donates or mutates the returned state)."""
  c = tiny_dino_config(encoder, use_bn)
  mesh = sharding.make_mesh()
  method = methods.build(c, mesh, total_steps=10, steps_per_epoch=2)
  tx, schedule = optim.build_optimizer(c, 10, 0, method.held_parameters())
  shapes = [(16, 16, 1)] * 2 + [(8, 8, 1)] * 2
  init = build.init_state(method, tx, shapes)
  state = jax.jit(init)(jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  batch = {'views': [jnp.asarray(rng.uniform(size=(8,) + s), jnp.float32) for s in shapes]}
  step = jax.jit(build.make_train_step(method, tx, schedule))
  return method, step, state, batch


class MethodTest(parameterized.TestCase):
  def test_teacher_temperature_schedule(self):
    method, *_ = tiny_dino()
    temps = [float(method.teacher_temperature(s)) for s in (0, 2, 4, 8)]
    np.testing.assert_allclose(temps, [0.04, 0.055, 0.07, 0.07], rtol=1e-6)  # 2 epochs x 2 steps

  def test_no_gradient_reaches_the_teacher(self):
    method, _, state, batch = tiny_dino()
    rng = jax.random.PRNGKey(1)
    step = jnp.asarray(5)  # after the freeze: every student parameter learns

    def loss(params, teacher):
      model_state = {**state.model_state, 'teacher': teacher}
      return method.loss(params, model_state, batch, rng, step)[0]

    # Both gradients from one jitted function: one compilation, no op-by-op dispatch.
    student, grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(
      state.params, state.model_state['teacher']
    )
    assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in jax.tree.leaves(grads))
    norms = jax.tree.map(lambda g: float(jnp.max(jnp.abs(g))), student)
    assert norms['head']['last_layer']['kernel'] > 0
    assert max(jax.tree.leaves(norms['encoder'])) > 0

  def test_last_layer_frozen_for_the_first_epoch(self):
    method, _, state, batch = tiny_dino()
    rng = jax.random.PRNGKey(1)
    # The step is a traced argument: one compilation serves the three steps.
    grad = jax.jit(jax.grad(lambda p, s: method.loss(p, state.model_state, batch, rng, s)[0]))
    for step, frozen in ((0, True), (1, True), (2, False)):
      grads = grad(state.params, jnp.asarray(step))
      moved = float(jnp.max(jnp.abs(grads['head']['last_layer']['kernel'])))
      assert (moved == 0.0) == frozen, (step, moved)

  def test_frozen_last_layer_starts_a_fresh_adamw_at_unfreezing(self):
    """Steps 0 and 1 (the first epoch) leave the last layer exactly as it was (no update, no
    weight decay); step 2 is its AdamW's first step, bias-corrected from scratch: each element
    moves by -lr(2) * (g / (|g| + 1e-8) + wd(2) * w), g its gradient clipped to norm 3."""
    method, step, state, batch = tiny_dino()
    c = method.config
    s = state
    for _ in range(2):
      s, _ = step(s, batch)
      np.testing.assert_array_equal(
        s.params['head']['last_layer']['kernel'], state.params['head']['last_layer']['kernel']
      )
    w = s.params['head']['last_layer']['kernel']
    new, _ = step(s, batch)
    moved = np.asarray(new.params['head']['last_layer']['kernel'] - w)
    lr = float(optim.learning_rate_schedule(c, 10, 0)(2))
    wd = float(optim.weight_decay_schedule(c, 10)(2))
    # |g / (|g| + eps)| is 1 wherever g is not tiny, so the move is -lr * (+-1 + wd * w); with the
    # step count shared with the rest (the bug this replaces) it would be about +-3.16.
    sign = np.sign(-moved / lr - wd * np.asarray(w))
    np.testing.assert_allclose(moved, -lr * (sign + wd * np.asarray(w)), rtol=1e-4, atol=1e-7)
    assert np.all(sign != 0)

  def test_train_step_updates_center_and_teacher(self):
    method, step, state, batch = tiny_dino()
    new, metrics = step(state, batch)
    assert np.isfinite(float(metrics['loss']))
    # center: 0.9 * 0 + 0.1 * mean of the teacher's logits on the two global crops
    teacher_vars = state.model_state['teacher']
    logits = [
      method.net.apply(teacher_vars, v, train=False)[1] for v in batch['views'][:2]
    ]  # fmt: skip
    expected = 0.1 * jnp.mean(jnp.concatenate(logits), axis=0)
    np.testing.assert_allclose(new.model_state['center'], expected, rtol=1e-4, atol=1e-6)
    # teacher <- m teacher + (1 - m) new student
    m = float(method.momentum(0))
    expected_teacher = jax.tree.map(
      lambda t, s: m * t + (1 - m) * s, teacher_vars['params'], new.params
    )
    chex.assert_trees_all_close(
      new.model_state['teacher']['params'], expected_teacher, rtol=1e-5, atol=1e-7
    )

  def test_features_and_attention_use_the_teacher(self):
    method, step, state, batch = tiny_dino()
    new, _ = step(state, batch)
    x = batch['views'][0]
    h = jax.jit(method.features)(new.params, new.model_state, x)
    chex.assert_shape(h, (8, 16))
    attn = jax.jit(method.attention)(new.params, new.model_state, x)
    chex.assert_shape(attn, (8, 2, 4, 4))  # heads, 16/4 x 16/4 patch grid
    np.testing.assert_array_less(-1e-6, attn)
    teacher_encoder = {'params': new.model_state['teacher']['params']['encoder']}
    direct = jax.jit(lambda v, x: method.encoder.apply(v, x, train=False))(teacher_encoder, x)
    chex.assert_trees_all_close(h, direct)

  def _check_batchnorm_statistics(self, method, step, state, batch, parts):
    new, metrics = step(state, batch)
    assert np.isfinite(float(metrics['loss']))
    for stats in (new.model_state['batch_stats'], new.model_state['teacher']['batch_stats']):
      assert sorted(stats) == parts
    # The student's and the teacher's statistics both come from their own forward passes.
    for before, after in [
      (state.model_state['batch_stats'], new.model_state['batch_stats']),
      (state.model_state['teacher']['batch_stats'], new.model_state['teacher']['batch_stats']),
    ]:
      moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), before, after)
      assert max(jax.tree.leaves(moved)) > 0

  def test_batchnorm_in_the_head_updates_student_and_teacher_statistics(self):
    """The BatchNorm path (statistics threaded through the crops' passes, the teacher's own
    statistics) with BatchNorm in the head: a ViT compiles in a fraction of a ResNet's time."""
    self._check_batchnorm_statistics(*tiny_dino('vit_tiny', use_bn=True), parts=['head'])

  @pytest.mark.slow
  def test_resnet_encoder_with_batchnorm(self):
    self._check_batchnorm_statistics(*tiny_dino('resnet18'), parts=['encoder'])


class WeightDecayScheduleTest(parameterized.TestCase):
  def test_cosine_from_start_to_end(self):
    c = methods.DINO.default_config(32, 16)
    wd = optim.weight_decay_schedule(c, 100)
    np.testing.assert_allclose([wd(0), wd(50), wd(100)], [0.04, 0.22, 0.4], rtol=1e-6)
    c.weight_decay_end = None
    assert optim.weight_decay_schedule(c, 100) == 0.04

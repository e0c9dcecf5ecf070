"""Optimizer pieces against hand computations: DINO's per-parameter clipping and the hold that
gives a frozen parameter a fresh optimizer when it starts to move."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ssljax import optim
from ssljax.config import defaults


def test_clip_by_parameter_norm_scales_each_array_on_its_own():
  grads = {'a': jnp.array([3.0, 4.0]), 'b': jnp.array([0.3, 0.4]), 'c': jnp.zeros(3)}
  tx = optim.clip_by_parameter_norm(1.0)
  clipped, _ = tx.update(grads, tx.init(grads))
  # |a| = 5 > 1: a * 1 / (5 + 1e-6); |b| = 0.5 and |c| = 0 stay (coefficient above 1).
  np.testing.assert_allclose(clipped['a'], np.array([3.0, 4.0]) / (5 + 1e-6), rtol=1e-6)
  np.testing.assert_array_equal(clipped['b'], grads['b'])
  np.testing.assert_array_equal(clipped['c'], grads['c'])
  # The global norm would have scaled b as well.
  global_clip, _ = optax.clip_by_global_norm(1.0).update(grads, optax.EmptyState())
  assert float(global_clip['b'][0]) < 0.3 - 1e-3


def test_hold_until_freezes_then_starts_fresh():
  params = {'w': jnp.array([1.0, -2.0])}
  inner = optax.adam(0.1)
  tx = optim.hold_until(inner, 3)
  state = tx.init(params)
  g = {'w': jnp.array([0.5, 0.25])}
  update = jax.jit(tx.update)
  for _ in range(3):
    u, state = update(g, state, params)
    np.testing.assert_array_equal(u['w'], 0.0)
  # The inner state is still the initial one (count 0, zero moments)...
  jax.tree.map(np.testing.assert_array_equal, state.inner, inner.init(params))
  # ...so the first real step is Adam's first: -lr * g / (|g| + eps) = -0.1 * sign(g).
  u, state = update(g, state, params)
  np.testing.assert_allclose(u['w'], [-0.1, -0.1], rtol=2e-5)
  assert int(state.count) == 4


def test_held_parameters_read_the_schedule_at_the_global_step():
  """build_optimizer with held=(mask, 2): the held leaf's first update, at global step 2, uses
  the learning rate of step 2, not of its own step 0 (which the warm-up makes 0)."""
  c = defaults.base_config('simclr')
  c.optimizer, c.base_lr, c.batch_size, c.weight_decay, c.momentum = 'adamw', 1.0, 256, 0.0, 0.9
  params = {'free': jnp.ones(2), 'late': jnp.ones(2)}
  held = (lambda p: {'free': False, 'late': True}, 2)
  tx, schedule = optim.build_optimizer(c, total_steps=10, warmup_steps=4, held=held)
  state = tx.init(params)
  g = {'free': jnp.ones(2), 'late': jnp.ones(2)}
  for step in range(3):
    u, state = tx.update(g, state, params)
    if step < 2:
      np.testing.assert_array_equal(u['late'], 0.0)
  # Adam's first step for 'late' at global step 2: -lr(2) * 1 (g = 1, bias-corrected m/sqrt(v)).
  np.testing.assert_allclose(u['late'], -float(schedule(2)) * np.ones(2), rtol=1e-5)
  assert float(schedule(2)) > 0 and float(schedule(0)) == 0

"""The CPU BatchNorm: nn.BatchNorm's variables, outputs, gradients and running averages."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssljax.cpu import batch_norm as cpu_batch_norm


def _inputs(dtype=jnp.float32):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(2.0, 3.0, size=(6, 5, 4, 8)), dtype)
  target = jnp.asarray(rng.normal(size=(6, 5, 4, 8)), jnp.float32)
  params = {'scale': jnp.linspace(0.5, 2.0, 8), 'bias': jnp.linspace(-1.0, 1.0, 8)}
  return x, target, params


def _loss_and_grads(module, variables, x, target, params):
  def loss(x, params):
    y, state = module.apply(
      {'params': params, 'batch_stats': variables['batch_stats']}, x, mutable=['batch_stats']
    )
    return jnp.sum(nn.relu(y.astype(jnp.float32)) * target), (y, state)

  (value, (y, state)), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(x, params)
  return value, y, state, grads


def test_forward_is_the_formula_with_flax_variables():
  x, _, params = _inputs()
  module = cpu_batch_norm.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5)
  variables = module.init(jax.random.key(0), x)
  flax_variables = nn.BatchNorm(use_running_average=False).init(jax.random.key(0), x)
  assert jax.tree.map(np.shape, variables) == jax.tree.map(np.shape, flax_variables)
  y, state = module.apply(
    {'params': params, 'batch_stats': variables['batch_stats']}, x, mutable=['batch_stats']
  )
  xs = np.asarray(x, np.float64).reshape(-1, 8)
  mean, var = xs.mean(0), xs.var(0)
  want = (xs - mean) / np.sqrt(var + 1e-5) * np.asarray(params['scale']) + np.asarray(
    params['bias']
  )
  np.testing.assert_allclose(np.asarray(y).reshape(-1, 8), want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(state['batch_stats']['mean'], 0.1 * mean, rtol=1e-5)
  np.testing.assert_allclose(state['batch_stats']['var'], 0.9 + 0.1 * var, rtol=1e-5)


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_gradients_and_statistics_match_flax(dtype):
  x, target, params = _inputs(dtype)
  kwargs = dict(use_running_average=False, momentum=0.9, epsilon=1e-5, dtype=dtype)
  ours = cpu_batch_norm.BatchNorm(**kwargs)
  theirs = nn.BatchNorm(**kwargs)
  got = _loss_and_grads(ours, ours.init(jax.random.key(0), x), x, target, params)
  want = _loss_and_grads(theirs, theirs.init(jax.random.key(0), x), x, target, params)
  assert got[1].dtype == want[1].dtype == dtype
  assert got[3][0].dtype == want[3][0].dtype == dtype
  tol = 1e-5 if dtype == jnp.float32 else 2e-2
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol * max(1.0, np.abs(b).max()))


def test_inference_uses_the_running_averages():
  x, _, params = _inputs()
  stats = {'mean': jnp.linspace(-1.0, 1.0, 8), 'var': jnp.linspace(0.5, 4.0, 8)}
  variables = {'params': params, 'batch_stats': stats}
  got = cpu_batch_norm.BatchNorm(use_running_average=True).apply(variables, x)
  want = nn.BatchNorm(use_running_average=True).apply(variables, x)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('channels', [1, 2, 3, 4, 8, 16, 24])
def test_channel_sums_are_the_definition(channels):
  """Fewer channels than LANES are summed as rows of LANES values (2, 4 and 8 here), the rest
  directly: either way each channel's own sum."""
  rng = np.random.default_rng(channels)
  x = rng.normal(size=(5, 3, 8, channels)).astype(np.float32)
  y = rng.normal(size=(5, 3, 8, channels)).astype(np.float32)
  got = jax.jit(cpu_batch_norm._sums)(x), jax.jit(cpu_batch_norm._sums)(x, y)
  want = x.astype(np.float64).sum((0, 1, 2)), (x.astype(np.float64) * y).sum((0, 1, 2))
  for a, b in zip(got, want, strict=True):
    assert a.shape == (channels,)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)

"""Losses against NumPy references written straight from the lecture's formulas."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from jax.sharding import PartitionSpec as P

from ssljax import losses, sharding


def nt_xent_reference(z1, z2, temperature):
  """L = 1/(2N) sum_i [l(i, i+N) + l(i+N, i)], loops over the formula with float64."""
  z = np.concatenate([z1, z2]).astype(np.float64)
  n2 = len(z)
  n = n2 // 2

  def sim(u, v):
    return u @ v / (np.linalg.norm(u) * np.linalg.norm(v))

  def ell(i, j):
    num = np.exp(sim(z[i], z[j]) / temperature)
    den = sum(np.exp(sim(z[i], z[k]) / temperature) for k in range(n2) if k != i)
    return -np.log(num / den)

  return sum(ell(i, i + n) + ell(i + n, i) for i in range(n)) / n2


def triplet_reference(a, p, n, margin, squared):
  out = []
  for ai, pi, ni in zip(a.astype(np.float64), p, n, strict=True):
    dp, dn = np.sum((ai - pi) ** 2), np.sum((ai - ni) ** 2)
    if not squared:
      dp, dn = np.sqrt(dp), np.sqrt(dn)
    out.append(max(0.0, dp - dn + margin))
  return np.mean(out)


class NTXentTest(parameterized.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.product(temperature=(0.07, 0.5, 1.0), n=(1, 3, 8))
  def test_matches_reference(self, temperature, n):
    rng = np.random.default_rng(n)
    z1, z2 = rng.normal(size=(2, n, 16)).astype(np.float32)
    loss = self.variant(functools.partial(losses.nt_xent, temperature=temperature))(z1, z2)
    chex.assert_shape(loss, ())
    np.testing.assert_allclose(loss, nt_xent_reference(z1, z2, temperature), rtol=2e-5, atol=1e-6)

  def test_scale_invariant_and_perfect_pairs(self):
    rng = np.random.default_rng(0)
    z1 = rng.normal(size=(6, 8)).astype(np.float32)
    z2 = rng.normal(size=(6, 8)).astype(np.float32)
    base = losses.nt_xent(z1, z2, temperature=0.5)
    # cosine similarity: rescaling an embedding changes nothing.
    np.testing.assert_allclose(losses.nt_xent(3 * z1, 0.1 * z2, temperature=0.5), base, rtol=1e-5)
    # orthogonal one-hot pairs with equal views: the loss is the hand-computed value.
    e = np.eye(4, dtype=np.float32)
    t = 0.5
    expected = -np.log(np.exp(1 / t) / (np.exp(1 / t) + 6 * np.exp(0.0)))
    np.testing.assert_allclose(losses.nt_xent(e, e, temperature=t), expected, rtol=1e-6)

  def test_gradients_finite_and_bfloat16_computes_in_float32(self):
    rng = np.random.default_rng(1)
    z1, z2 = rng.normal(size=(2, 5, 8)).astype(np.float32)
    g1, g2 = jax.grad(losses.nt_xent, argnums=(0, 1))(z1, z2, temperature=0.1)
    assert np.all(np.isfinite(g1)) and np.all(np.isfinite(g2))
    lo = losses.nt_xent(z1.astype(jnp.bfloat16), z2.astype(jnp.bfloat16), temperature=0.1)
    assert lo.dtype == jnp.float32
    ref = nt_xent_reference(
      np.asarray(z1.astype(jnp.bfloat16), np.float32),
      np.asarray(z2.astype(jnp.bfloat16), np.float32),
      0.1,
    )
    np.testing.assert_allclose(lo, ref, rtol=1e-5)


class ShardedNTXentTest(parameterized.TestCase):
  """The all-gather version over 8 devices is the single-device loss on the global batch."""

  @parameterized.parameters(0.1, 0.5)
  def test_value_and_gradients_match_single_device(self, temperature):
    assert jax.device_count() == 8, 'tests/conftest.py sets 8 CPU devices'
    mesh = sharding.make_mesh()
    rng = np.random.default_rng(2)
    z1, z2 = rng.normal(size=(2, 32, 16)).astype(np.float32)
    sharded = jax.shard_map(
      functools.partial(losses.nt_xent, temperature=temperature, axis_name='data'),
      mesh=mesh,
      in_specs=(P('data'), P('data')),
      out_specs=P(),
    )
    single = functools.partial(losses.nt_xent, temperature=temperature)
    g_z1, g_z2 = (jax.device_put(x, sharding.data_sharding(mesh)) for x in (z1, z2))
    v_s, grads_s = jax.jit(jax.value_and_grad(sharded, argnums=(0, 1)))(g_z1, g_z2)
    v_1, grads_1 = jax.value_and_grad(single, argnums=(0, 1))(z1, z2)
    np.testing.assert_allclose(v_s, v_1, rtol=1e-5)
    np.testing.assert_allclose(v_s, nt_xent_reference(z1, z2, temperature), rtol=1e-5)
    for a, b in zip(grads_s, grads_1, strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)

  def test_per_device_logits_are_local_rows_only(self):
    """Each device's logits are (2 n_local, 2N): the full 2N x 2N matrix is never formed."""
    mesh = sharding.make_mesh()
    z = jnp.zeros((32, 4))
    fn = jax.shard_map(
      functools.partial(losses.nt_xent, temperature=0.1, axis_name='data'),
      mesh=mesh,
      in_specs=(P('data'), P('data')),
      out_specs=P(),
    )
    jaxpr = str(jax.make_jaxpr(fn)(z, z))
    assert 'f32[8,64]' in jaxpr  # 2 * 32/8 local rows, 2 * 32 global columns
    assert 'f32[64,64]' not in jaxpr


class TripletTest(parameterized.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.product(margin=(0.0, 0.5, 2.0), squared=(True, False), n=(1, 7))
  def test_matches_reference(self, margin, squared, n):
    rng = np.random.default_rng(n)
    a, p, neg = rng.normal(size=(3, n, 5)).astype(np.float32)
    fn = self.variant(functools.partial(losses.triplet, margin=margin, squared=squared))
    np.testing.assert_allclose(
      fn(a, p, neg), triplet_reference(a, p, neg, margin, squared), rtol=1e-5, atol=1e-6
    )

  def test_hand_worked_case_and_gradients(self):
    a = np.array([[0.0, 0.0]], np.float32)
    p = np.array([[1.0, 0.0]], np.float32)  # d+ = 1
    n = np.array([[0.0, 2.0]], np.float32)  # d- = 4
    assert float(losses.triplet(a, p, n, margin=1.0)) == 0.0  # 1 - 4 + 1 < 0
    np.testing.assert_allclose(losses.triplet(a, p, n, margin=4.0), 1.0)  # 1 - 4 + 4
    np.testing.assert_allclose(losses.triplet(a, p, n, margin=1.5, squared=False), 0.5)  # 1-2+1.5
    g = jax.grad(losses.triplet, argnums=(0, 1, 2))(a, a, a, margin=1.0, squared=False)
    assert all(np.all(np.isfinite(x)) for x in g)


if __name__ == '__main__':
  pytest.main([__file__])

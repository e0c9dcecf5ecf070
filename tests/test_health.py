"""Label-free health metrics: RankMe against its formula, on embeddings of known rank."""

import jax.numpy as jnp
import numpy as np
import pytest

from ssljax import health


def _rankme_reference(z):
  s = np.linalg.svd(np.asarray(z, np.float64), compute_uv=False)
  p = s / s.sum() + health.EPS
  return float(np.exp(-(p * np.log(p)).sum()))


def test_rankme_is_its_formula():
  z = np.random.default_rng(0).normal(size=(64, 16)) * np.linspace(0.1, 3, 16)
  assert float(health.rankme(jnp.asarray(z))) == pytest.approx(_rankme_reference(z), rel=1e-4)


@pytest.mark.parametrize('rank', [1, 3, 10])
def test_rankme_of_embeddings_of_known_rank(rank):
  """k orthogonal directions with equal singular values: an effective rank of k."""
  rng = np.random.default_rng(rank)
  q, _ = np.linalg.qr(rng.normal(size=(200, rank)))  # orthonormal columns, 200 images
  basis, _ = np.linalg.qr(rng.normal(size=(32, rank)))
  z = q @ basis.T  # (200, 32), k equal singular values
  assert float(health.rankme(jnp.asarray(z, jnp.float32))) == pytest.approx(rank, rel=1e-3)


def test_normalized_std_is_one_spread_and_zero_collapsed():
  rng = np.random.default_rng(1)
  spread = rng.normal(size=(4000, 16)).astype(np.float32)
  assert float(health.normalized_std(jnp.asarray(spread))) == pytest.approx(1.0, abs=0.03)
  collapsed = np.tile(rng.normal(size=(1, 16)), (50, 1)) + 1e-6 * rng.normal(size=(50, 16))
  assert float(health.normalized_std(jnp.asarray(collapsed, jnp.float32))) < 1e-4
  metrics = health.health_metrics(lambda x: x.reshape(len(x), -1))(jnp.asarray(spread[:100]))
  assert set(metrics) == {'health/rankme_h', 'health/std_h'}
  assert 14 < float(metrics['health/rankme_h']) <= 16

"""Label-free health metrics: RankMe against its formula, on embeddings of known rank."""

import jax.numpy as jnp
import numpy as np
import pytest

from ssljax.monitor import collapse, health


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
  metrics = health.embedding_health('h', jnp.asarray(spread[:100]))
  assert set(metrics) == {'health/rankme_h', 'health/std_h'}
  assert 14 < float(metrics['health/rankme_h']) <= 16


def _config(**health_fields):
  return {'method': 'dino', 'health': {'min_rankme': 2.0, 'min_std': 0.05, **health_fields}}


def test_cosine_agreement_by_hand():
  a = jnp.asarray([[1.0, 0.0], [0.0, 2.0]])
  b = jnp.asarray([[3.0, 0.0], [1.0, 1.0]])  # cosines 1 and 1/sqrt(2)
  assert float(health.cosine_agreement(a, b)) == pytest.approx((1 + 2**-0.5) / 2, rel=1e-6)


def test_floors_apply_to_every_rank_and_std_but_not_the_agreement():
  config = _config()
  assert collapse.floor('health/rankme_z', config) == 2.0
  assert collapse.floor('health/std_h', config) == 0.05
  assert collapse.floor('health/agreement', config) is None
  healthy = {'health/rankme_h': 30.0, 'health/std_h': 0.3, 'health/agreement': 0.01}
  assert collapse.below_floor(healthy, config) is None
  assert collapse.below_floor({**healthy, 'health/rankme_z': 1.04}, config) == (
    'health/rankme_z 1.04 < 2'
  )
  assert collapse.below_floor({**healthy, 'health/std_h': 0.01}, config) == (
    'health/std_h 0.01 < 0.05'
  )
  assert collapse.below_floor({**healthy, 'health/std_h': float('nan')}, config)
  assert collapse.below_floor({'loss': -5.0}, config) is None  # not a health metric


def test_first_collapse_names_the_first_step_below_and_the_methods_remedies():
  rows = [
    (60, {'health/rankme_h': 1.5}),
    (20, {'health/rankme_h': 9.0}),
    (40, {'health/std_h': 0.01}),
  ]
  message = collapse.first_collapse(rows, _config())
  assert message.startswith('representation collapse at step 40: health/std_h 0.01 < 0.05')
  assert 'dino.center_momentum' in message and 'dino.teacher_temp' in message
  assert collapse.first_collapse(rows[1:2], _config()) is None
  for method, remedy in (('byol', 'ema.base'), ('simclr', 'loss.temperature'), ('ijepa', 'pred')):
    assert remedy in collapse.warning(1, 'x', {'method': method})

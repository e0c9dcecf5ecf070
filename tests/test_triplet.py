"""Triplet training (issue 20): the batch triplet loss with random, hardest and semi-hard
negatives against a NumPy reference written from the definitions, hand-worked cases (ties, the
semi-hard fallback, all-zero losses), the 8-device loss equal to the single-device one, and the
method end to end."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from jax.sharding import PartitionSpec as P

from ssljax import build, data, losses, methods, sharding, train
from ssljax.errors import ConfigError
from ssljax.methods.base import stack_views


def reference(z1, z2, margin, negatives, normalize, draws=None):
  """(loss, chosen): loops over the definitions in float64. Anchor k of the 2N views [z1; z2],
  its positive the other view of its image, its negative chosen[k] among the views of the other
  images."""
  z = np.concatenate([z1, z2]).astype(np.float64)
  if normalize:
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
  n = len(z1)
  out, chosen = [], []
  for k in range(2 * n):
    pos = (k + n) % (2 * n)
    others = [c for c in range(2 * n) if c % n != k % n]  # in global order
    d = {c: np.sum((z[k] - z[c]) ** 2) for c in others}
    d_pos = np.sum((z[k] - z[pos]) ** 2)
    if negatives == 'random':
      neg = others[draws[k]]  # the draw-th allowed candidate
    elif negatives == 'hardest':
      neg = min(others, key=lambda c: (d[c], c))
    else:
      farther = [c for c in others if d[c] > d_pos]
      neg = min(farther, key=lambda c: (d[c], c)) if farther else max(others, key=lambda c: d[c])
    out.append(max(0.0, d_pos - d[neg] + margin))
    chosen.append(neg)
  return np.mean(out), chosen


def grads_with(z1, z2, chosen, margin, normalize):
  """d loss / d (z1, z2) when anchor k's negative is view chosen[k] (losses.triplet, itself
  checked against NumPy): equal gradients from batch_triplet mean it mined these negatives."""

  def loss(a, b):
    if normalize:
      a, b = (x / jnp.linalg.norm(x, axis=1, keepdims=True) for x in (a, b))
    views = jnp.concatenate([a, b])
    return losses.triplet(views, jnp.concatenate([b, a]), views[np.asarray(chosen)], margin=margin)

  return jax.grad(loss, argnums=(0, 1))(z1, z2)


def _draws(rng, n):
  return np.asarray(jax.random.randint(rng, (2 * n,), 0, 2 * n - 2))


class BatchTripletTest(parameterized.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.product(
    negatives=losses.NEGATIVE_RULES, normalize=(True, False), n=(2, 5), margin=(0.2, 1.0)
  )
  def test_matches_reference(self, negatives, normalize, n, margin):
    rng = np.random.default_rng(n)
    z1, z2 = rng.normal(size=(2, n, 6)).astype(np.float32)
    key = jax.random.PRNGKey(n)
    fn = self.variant(
      functools.partial(
        losses.batch_triplet, margin=margin, negatives=negatives, normalize=normalize
      )
    )
    loss = fn(z1, z2, rng=key)
    chex.assert_shape(loss, ())
    want, chosen = reference(z1, z2, margin, negatives, normalize, _draws(key, n))
    np.testing.assert_allclose(loss, want, rtol=1e-5, atol=1e-6)
    got = jax.grad(fn, argnums=(0, 1))(z1, z2, rng=key)
    for a, b in zip(got, grads_with(z1, z2, chosen, margin, normalize), strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)

  def test_hand_worked_cases(self):
    """Two images on a line, unnormalized: image 0 at 0 and 1, image 1 at 3 and 3.5."""
    z1 = np.array([[0.0], [3.0]], np.float32)
    z2 = np.array([[1.0], [3.5]], np.float32)
    f = functools.partial(losses.batch_triplet, normalize=False)
    # Hardest: anchor 0 (at 0): d+ = 1, d- = 9 -> 0 at margin 1; anchor 1 (at 3): d+ = .25, the
    # closest other view is 1 (d 4); anchor 2 (at 1): d+ 1, d- 4; anchor 3 (3.5): d+ .25, d- 6.25.
    np.testing.assert_allclose(f(z1, z2, margin=4.0, negatives='hardest'), (0 + 0.25 + 1 + 0) / 4)
    # Every hinge at 0 when the margin is small: the loss and its gradients vanish.
    assert float(f(z1, z2, margin=0.1, negatives='hardest')) == 0.0
    g = jax.grad(f, argnums=(0, 1))(z1, z2, margin=0.1, negatives='semi_hard')
    assert all(float(jnp.abs(x).max()) == 0.0 for x in g)
    # Semi-hard with no candidate farther than the positive: the farthest one (anchor 0 with
    # its positive at 10 and the other image at 3 and 3.5 picks 3.5: 100 - 12.25 + 1).
    far = np.array([[10.0], [3.5]], np.float32)
    np.testing.assert_allclose(
      f(z1, far, margin=1.0, negatives='semi_hard'),
      reference(z1, far, 1.0, 'semi_hard', False)[0],
    )

  def test_ties_go_to_the_lowest_global_index(self):
    """Anchor 0 (at 0) has two other images at +1 and -1, equally hard: it mines view 1 (index
    1 of the global order), not view 2; the gradients say which one was taken."""
    z1 = np.array([[0.0], [1.0], [-1.0]], np.float32)
    z2 = np.array([[0.5], [5.0], [5.0]], np.float32)
    f = functools.partial(losses.batch_triplet, margin=10.0, negatives='hardest', normalize=False)
    _, chosen = reference(z1, z2, 10.0, 'hardest', False)
    assert chosen[0] == 1
    got = jax.grad(f, argnums=(0, 1))(z1, z2)
    for a, b in zip(got, grads_with(z1, z2, chosen, 10.0, False), strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-6)
    other = list(chosen)
    other[0] = 2  # the tie broken the other way changes the gradient
    assert not np.allclose(got[0], grads_with(z1, z2, other, 10.0, False)[0])

  def test_random_negatives_are_uniform_over_other_images(self):
    """The draw maps onto the 2N - 2 views of other images, each equally often."""
    n = 4
    z1 = np.eye(n, dtype=np.float32) * np.arange(1, n + 1)[:, None]
    counts = np.zeros((2 * n, 2 * n))
    for seed in range(600):
      draws = _draws(jax.random.PRNGKey(seed), n)
      for k in range(2 * n):
        counts[k, [c for c in range(2 * n) if c % n != k % n][draws[k]]] += 1
    own = (np.arange(2 * n)[:, None] % n) == (np.arange(2 * n)[None, :] % n)
    assert np.all(counts[own] == 0)
    expected = 600 / (2 * n - 2)
    assert np.all(np.abs(counts[~own] - expected) < 5 * np.sqrt(expected))
    del z1

  def test_refuses_an_unknown_rule(self):
    with pytest.raises(ValueError, match='negatives'):
      losses.batch_triplet(np.ones((2, 2)), np.ones((2, 2)), margin=1.0, negatives='easy')


@pytest.mark.parametrize('negatives', losses.NEGATIVE_RULES)
def test_eight_devices_equal_one(negatives):
  """Loss and gradients over 8 devices equal the single-device ones on the same global batch.
  At margin 10 every hinge is active, so every chosen negative shapes the gradient: equal to
  the gradient with the reference's negatives means the same ones were mined."""
  assert jax.device_count() == 8, 'tests/conftest.py sets 8 CPU devices'
  mesh = sharding.make_mesh()
  rng = np.random.default_rng(3)
  z1, z2 = rng.normal(size=(2, 32, 8)).astype(np.float32)
  key = jax.random.PRNGKey(7)
  kw = dict(margin=10.0, negatives=negatives, normalize=True)

  def local(a, b, k):
    return losses.batch_triplet(a, b, rng=k, axis_name='data', **kw)

  sharded = jax.shard_map(local, mesh=mesh, in_specs=(P('data'), P('data'), P()), out_specs=P())
  g_z1, g_z2 = (jax.device_put(x, sharding.data_sharding(mesh)) for x in (z1, z2))
  v_s, grads_s = jax.jit(jax.value_and_grad(sharded, argnums=(0, 1)))(g_z1, g_z2, key)
  v_1, grads_1 = jax.value_and_grad(
    functools.partial(losses.batch_triplet, rng=key, **kw), argnums=(0, 1)
  )(z1, z2)
  np.testing.assert_allclose(v_s, v_1, rtol=1e-5)
  want, chosen = reference(z1, z2, 10.0, negatives, True, _draws(key, 32))
  np.testing.assert_allclose(v_1, want, rtol=1e-5)
  for a, b, c in zip(grads_s, grads_1, grads_with(z1, z2, chosen, 10.0, True), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(a, c, rtol=1e-4, atol=1e-6)


def test_the_method_trains_and_checks_its_section():
  """config.method='triplet' builds, its training loss is the batch triplet loss of its own
  projections, and a bad triplet section is refused before anything compiles."""
  mesh = sharding.make_mesh()
  c = methods.Triplet.default_config(16)
  c.data.source = 'synthetic'
  c.model.encoder, c.model.width, c.model.proj_hidden, c.model.proj_dim = 'resnet18', 4, 16, 8
  c.batch_size = 16
  c.triplet.negatives = 'semi_hard'
  state = jax.jit(build.build_run(c, mesh, data.DatasetInfo(64, 10, (16, 16, 3))).init)(
    jax.random.PRNGKey(0)
  )
  rng = np.random.default_rng(0)
  views = [jnp.asarray(rng.uniform(size=(16, 16, 16, 3)), jnp.float32) for _ in range(2)]
  method = methods.build(c, mesh)
  loss, _ = jax.jit(method.loss)(
    state.params, state.model_state, {'views': views}, jax.random.PRNGKey(1), state.step
  )
  (_, z), _ = method.model.apply(
    {'params': state.params, **state.model_state},
    stack_views(views),
    train=True,
    mutable=['batch_stats'],
  )
  z = np.asarray(z).reshape(16, 2, -1)
  want, _ = reference(z[:, 0], z[:, 1], c.triplet.margin, 'semi_hard', True)
  np.testing.assert_allclose(loss, want, rtol=1e-4, atol=1e-6)
  c.triplet.negatives, c.triplet.margin = 'easiest', -1.0
  with pytest.raises(ConfigError, match=r'(?s)triplet.negatives.*triplet.margin'):
    train.validate(c, mesh)

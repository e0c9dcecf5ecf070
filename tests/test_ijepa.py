"""I-JEPA: multi-block mask properties over many seeds, the loss against NumPy, padding that
changes nothing, no gradient into the target encoder, the EMA update."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from ssljax import losses, masking, methods, sharding
from ssljax.models import vit

TARGET, ASPECT, CONTEXT = (0.15, 0.2), (0.75, 1.5), (0.85, 1.0)


def brute_force_sizes(grid, scale, aspect, n=1500):
  """Every (h, w) the official formula gives on a dense grid of (scale, aspect), in float64."""
  gh, gw = grid
  s, a = np.meshgrid(np.linspace(*scale, n), np.linspace(*aspect, n))
  area = np.floor(s * gh * gw + 1e-4)
  h = np.clip(np.round(np.sqrt(area * a)), 1, gh).astype(int)
  w = np.clip(np.round(np.sqrt(area / a)), 1, gw).astype(int)
  return set(zip(h.ravel().tolist(), w.ravel().tolist(), strict=True))


def bounding_box(mask_2d):
  rows, cols = np.nonzero(mask_2d)
  return rows.min(), rows.max() + 1, cols.min(), cols.max() + 1


@pytest.mark.parametrize('grid', [(7, 7), (8, 8), (14, 14), (16, 16), (6, 9)])
def test_block_sizes_enumerates_every_shape_the_formula_gives(grid):
  exact = masking.block_sizes(grid, TARGET, ASPECT)
  dense = brute_force_sizes(grid, TARGET, ASPECT)
  assert dense <= exact
  # the padding is tight: the largest block the formula can draw, no more
  assert masking.max_block_area(grid, TARGET, ASPECT) == max(h * w for h, w in dense)
  for h, w in exact:  # every shape is within rounding of the ranges
    area_lo, area_hi = (np.floor(x * grid[0] * grid[1] + 1e-4) for x in TARGET)
    assert (h - 0.5) * (w - 0.5) <= area_hi + 1e-6 or h == 1 or w == 1
    assert (h + 0.5) * (w + 0.5) >= area_lo - 1e-6
    assert (h - 0.5) / (w + 0.5) <= ASPECT[1] + 1e-6 and (h + 0.5) / (w - 0.5) >= ASPECT[0] - 1e-6


@functools.cache
def _sampler(grid, batch, options):
  return jax.jit(functools.partial(masking.multi_block, batch=batch, grid=grid, **dict(options)))


def _draw(grid, batch, seed, **kw):
  fn = _sampler(grid, batch, tuple(sorted(kw.items())))
  return jax.device_get(fn(jax.random.PRNGKey(seed)))


@pytest.mark.parametrize(
  'grid,kw',
  [
    ((8, 8), {}),
    ((14, 14), {}),
    ((7, 7), {'min_keep': 20}),  # crowded: some images must drop target blocks
    ((8, 8), {'max_context': 24}),  # capped context
  ],
)
def test_multi_block_properties_over_many_seeds(grid, kw):
  gh, gw = grid
  options = dict(num_targets=4, min_keep=10, max_context=0)
  options.update(kw)
  nt, nc = masking.check_multi_block(
    grid,
    options['num_targets'],
    TARGET,
    ASPECT,
    CONTEXT,
    (1.0, 1.0),
    options['min_keep'],
    options['max_context'],
  )
  target_shapes = masking.block_sizes(grid, TARGET, ASPECT)
  context_shapes = masking.block_sizes(grid, CONTEXT, (1.0, 1.0))
  dropped = 0
  for seed in range(25):
    m = _draw(grid, 16, seed, **kw)
    b = 16
    # static shapes: the same whatever the draw
    chex.assert_shape([m.context, m.context_valid], (b, nc))
    chex.assert_shape([m.targets, m.targets_valid], (b, 4, nt))
    chex.assert_shape(m.context_mask, (b, gh * gw))
    chex.assert_shape(m.target_mask, (b, 4, gh * gw))
    th, tw = (int(v) for v in m.target_size)
    ch, cw = (int(v) for v in m.context_size)
    assert (th, tw) in target_shapes and (ch, cw) in context_shapes
    for i in range(b):
      ctx = m.context_mask[i]
      kept = m.targets_valid[i].any(axis=-1)
      assert kept[0] or options['min_keep'] > 10  # a block is dropped only when crowded
      assert np.all(kept[: kept.sum()]) and not np.any(kept[kept.sum() :])  # last ones dropped
      dropped += int((~kept).sum())
      # min_keep honoured; context inside one context block; disjoint from every target
      n_ctx = int(ctx.sum())
      assert n_ctx >= options['min_keep']
      r0, r1, c0, c1 = bounding_box(ctx.reshape(grid))
      assert r1 - r0 <= ch and c1 - c0 <= cw
      assert not np.any(ctx & m.target_mask[i].any(axis=0))
      # the context list holds context patches only (a random subset when capped)
      valid_ids = m.context[i][m.context_valid[i]]
      assert len(valid_ids) == min(n_ctx, nc) and len(set(valid_ids.tolist())) == len(valid_ids)
      assert np.all(ctx[valid_ids])
      for j in range(4):
        blk = m.target_mask[i, j]
        if not kept[j]:
          assert not blk.any() and not m.targets_valid[i, j].any()
          continue
        # every kept target is an h x w rectangle of the batch's shape, listed in row-major order
        r0, r1, c0, c1 = bounding_box(blk.reshape(grid))
        assert (r1 - r0, c1 - c0) == (th, tw) and blk.sum() == th * tw
        ids = m.targets[i, j][m.targets_valid[i, j]]
        np.testing.assert_array_equal(ids, np.flatnonzero(blk))
  if options['min_keep'] > 10:
    assert dropped > 0  # the crowded case did exercise the fallback


def test_a_grid_too_small_for_min_keep_is_refused():
  with pytest.raises(ValueError, match='min_keep'):
    masking.check_multi_block((4, 4), 4, TARGET, ASPECT, CONTEXT, (1.0, 1.0), 17, 0)
  with pytest.raises(ValueError, match='raise max_context'):
    masking.check_multi_block((4, 4), 4, TARGET, ASPECT, CONTEXT, (1.0, 1.0), 4, 3)
  with pytest.raises(ValueError, match='target_scale'):
    masking.check_multi_block((8, 8), 4, (0.3, 0.2), ASPECT, CONTEXT, (1.0, 1.0), 10, 0)


def official_collator_reference(
  rng, batches, batch, grid, num_targets, tscale, taspect, cscale, min_keep, tries=20
):
  """facebookresearch/ijepa's MaskCollator rewritten in NumPy loops from its description: one
  uniform for a block's scale and aspect, sides shrunk below the grid, corners drawn with an
  exclusive upper end, the context redrawn until it keeps more than min_keep (dropping the last
  avoided target after every `tries` failures), contexts cut to the batch minimum."""
  gh, gw = grid

  def size(scale, aspect):
    u = rng.random()
    keep = int(gh * gw * (scale[0] + u * (scale[1] - scale[0])))
    a = aspect[0] + u * (aspect[1] - aspect[0])
    h, w = int(round(np.sqrt(keep * a))), int(round(np.sqrt(keep / a)))
    return min(h, gh - 1), min(w, gw - 1)

  def rectangle(h, w):
    m = np.zeros(grid, bool)
    top, left = rng.integers(0, gh - h), rng.integers(0, gw - w)
    m[top : top + h, left : left + w] = True
    return m

  out = []
  for _ in range(batches):
    (th, tw), (ch, cw) = size(tscale, taspect), size(cscale, (1.0, 1.0))
    targets, contexts = [], []
    for _ in range(batch):
      ts = [rectangle(th, tw) for _ in range(num_targets)]
      relaxed, failures = 0, 0
      while True:
        ctx = rectangle(ch, cw)
        for t in ts[: num_targets - relaxed]:
          ctx &= ~t
        if ctx.sum() > min_keep:
          break
        failures += 1
        if failures == tries:
          relaxed, failures = relaxed + 1, 0
      targets.append(ts)
      contexts.append(ctx)
    keep = min(int(c.sum()) for c in contexts)
    for ctx in contexts:  # the first `keep` in row-major order
      ctx.ravel()[np.flatnonzero(ctx)[keep:]] = False
    out.append((np.array(targets), np.array(contexts), (th, tw)))
  return out


def official_statistics(targets, contexts):
  """Per batch: its context length; per row of the grid: how often a target / the context
  covers it; how often a context overlaps a target."""
  return dict(
    context=contexts.reshape(contexts.shape[0], contexts.shape[1], -1).sum(-1)[:, 0],
    target_rows=targets.any(axis=-1).mean(axis=(0, 1, 2)),
    context_rows=contexts.any(axis=-1).mean(axis=(0, 1)),
    overlap=(contexts[:, :, None] & targets).any(axis=(2, 3, 4)),
  )


@pytest.mark.parametrize(
  'grid,cscale,min_keep',
  [((14, 14), CONTEXT, 10), ((8, 8), (0.5, 0.6), 12)],  # ImageNet's; crowded, 4 context places
)
def test_official_geometry_matches_a_numpy_port_of_the_collator(grid, cscale, min_keep):
  gh, gw = grid
  options = dict(
    num_targets=4,
    target_scale=TARGET,
    target_aspect=ASPECT,
    context_scale=cscale,
    context_aspect=(1.0, 1.0),
    min_keep=min_keep,
    tries=20,
  )
  draw = jax.jit(
    jax.vmap(lambda k: masking.multi_block(k, 16, grid, geometry='official', **options))
  )
  m = jax.device_get(draw(jax.random.split(jax.random.PRNGKey(0), 300)))
  shapes = {(int(h), int(w)) for h, w in m.target_size}
  assert max(max(s) for s in shapes) <= min(gh, gw) - 1 and len(shapes) > 1
  targets = m.target_mask.reshape(300, 16, 4, gh, gw)
  contexts = m.context_mask.reshape(300, 16, gh, gw)
  # the last row and column are in no block; the context is never the whole grid
  assert not targets[..., -1, :].any() and not targets[..., -1].any()
  assert not contexts[..., -1, :].any() and not contexts[..., -1].any()
  n = m.context_valid.sum(-1)
  assert np.all(n == n[:, :1]) and np.all(n > min_keep) and np.all(n < gh * gw)
  # every target listed whole, in row-major order; the context list is its mask, row-major
  area = np.prod(m.target_size, axis=-1)
  np.testing.assert_array_equal(
    m.targets_valid.sum(-1), np.broadcast_to(area[:, None, None], n.shape + (4,))
  )
  for b, i in [(0, 0), (7, 3), (299, 15)]:
    np.testing.assert_array_equal(m.context[b, i, : n[b, 0]], np.flatnonzero(m.context_mask[b, i]))
    for j in range(4):
      ids = m.targets[b, i, j][m.targets_valid[b, i, j]]
      np.testing.assert_array_equal(ids, np.flatnonzero(m.target_mask[b, i, j]))
      r0, r1, c0, c1 = bounding_box(targets[b, i, j])
      assert (r1 - r0, c1 - c0) == tuple(m.target_size[b])

  reference = official_collator_reference(
    np.random.default_rng(0), 300, 16, grid, 4, TARGET, ASPECT, cscale, min_keep
  )
  assert {s for _, _, s in reference} <= masking.block_sizes(grid, TARGET, ASPECT, official=True)
  ours = official_statistics(targets, contexts)
  theirs = official_statistics(
    np.array([t for t, _, _ in reference]), np.array([c for _, c, _ in reference])
  )
  for key, tolerance in (('context', None), ('target_rows', 0.03), ('context_rows', 0.03)):
    a, b = ours[key].astype(float), theirs[key].astype(float)
    if tolerance is None:  # means of 300 batches: within 4 standard errors
      se = np.hypot(a.std() / np.sqrt(len(a)), b.std() / np.sqrt(len(b)))
      assert abs(a.mean() - b.mean()) <= 4 * se + 1e-9, (key, a.mean(), b.mean())
    else:
      np.testing.assert_allclose(a, b, atol=tolerance, err_msg=key)
  assert abs(ours['overlap'].mean() - theirs['overlap'].mean()) < 0.03
  if grid == (8, 8):
    assert theirs['overlap'].mean() > 0.05  # the crowded case does give up avoiding targets


def test_official_geometry_needs_more_than_min_keep_in_the_context():
  # 8x8, context 0.5-0.6: a 6x6 block; official needs more than min_keep, ssljax min_keep
  args = ((8, 8), 4, TARGET, ASPECT, (0.5, 0.6), (1.0, 1.0), 36, 0)
  assert masking.check_multi_block(*args)[1] == 36
  with pytest.raises(ValueError, match='more than 36'):
    masking.check_multi_block(*args, geometry='official')
  with pytest.raises(ValueError, match='mask_geometry'):
    masking.check_multi_block(*args, geometry='paper')


def ijepa_reference(pred, target, kind, valid):
  """The two formulas looped over in float64."""
  pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
  rows, k, d = pred.shape
  total, blocks, elems = 0.0, 0, 0
  for r in range(rows):
    if not valid[r].any():
      continue
    blocks += 1
    for j in range(k):
      if not valid[r, j]:
        continue
      t = target[r, j]
      s = (t - t.mean()) / np.sqrt(t.var() + 1e-5)
      e = pred[r, j] - s
      if kind == 'l2':
        total += np.sum(e**2)
      else:
        a = np.abs(e)
        total += np.sum(np.where(a < 1, 0.5 * a**2, a - 0.5))
        elems += d
  return total / blocks if kind == 'l2' else total / elems


class LossTest(parameterized.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.product(kind=('l2', 'smooth_l1'), padded=(False, True))
  def test_matches_reference(self, kind, padded):
    rng = np.random.default_rng(3)
    pred = rng.normal(size=(8, 6, 16)).astype(np.float32)
    target = (3.0 * rng.normal(size=(8, 6, 16)) + 1.0).astype(np.float32)
    valid = np.ones((8, 6), bool)
    if padded:
      valid[:, 4:] = False  # blocks of 4 padded to 6
      valid[5] = False  # a dropped block
    fn = self.variant(functools.partial(losses.ijepa, kind=kind))
    out = fn(pred, target, valid=valid if padded else None)
    chex.assert_shape(out, ())
    np.testing.assert_allclose(out, ijepa_reference(pred, target, kind, valid), rtol=1e-5)

  def test_hand_worked_l2(self):
    """Target [1, -1] normalizes to itself (mean 0, var 1): a prediction [0, 0] is off by 2 per
    patch; two patches in a block -> 4; the mean over blocks of (4, 2) -> 3."""
    target = np.array([[[1.0, -1.0]] * 2, [[1.0, -1.0]] * 2], np.float32)
    pred = np.zeros_like(target)
    pred[1, 1] = target[1, 1]
    np.testing.assert_allclose(losses.ijepa(pred, target), 3.0, rtol=1e-4)

  def test_no_gradient_into_the_target(self):
    pred, target = np.ones((2, 3, 8), np.float32), np.arange(48.0).reshape(2, 3, 8)
    g = jax.grad(lambda t: losses.ijepa(pred, t))(jnp.asarray(target, jnp.float32))
    np.testing.assert_array_equal(g, 0.0)

  def test_unknown_kind_is_refused(self):
    with pytest.raises(ValueError, match='config.loss.kind'):
      losses.ijepa(np.ones((1, 1, 2)), np.ones((1, 1, 2)), kind='l1')


def tiny_config():
  c = methods.IJEPA.default_config(image_size=16)
  c.model.encoder = 'vit_tiny'
  c.model.patch_size = 2
  c.model.vit_width, c.model.vit_depth, c.model.vit_heads = 16, 1, 2
  c.ijepa.pred_width, c.ijepa.pred_depth = 8, 1
  return c


@pytest.fixture(scope='module')
def method_and_state():
  method = methods.build(tiny_config(), sharding.make_mesh(), total_steps=10)
  images = jax.random.uniform(jax.random.PRNGKey(0), (4, 16, 16, 1))
  params, model_state = jax.jit(method.init)(jax.random.PRNGKey(1), {'views': [images]})
  return method, params, model_state, images


def test_predictor_gives_one_vector_per_target_position(method_and_state):
  method, params, _, images = method_and_state
  masks = method.masks(jax.random.PRNGKey(2), images)
  apply = jax.jit(functools.partial(method.net.apply, train=False))
  pred = apply({'params': params}, images, masks)
  chex.assert_shape(pred, masks.targets.shape + (16,))  # (B, M, Nt, encoder width)
  # padding entries change nothing: scramble the padded ids, the real predictions stay
  b, m, nt = masks.targets.shape
  noise = jax.random.randint(jax.random.PRNGKey(3), masks.targets.shape, 0, 64)
  ctx_noise = jax.random.randint(jax.random.PRNGKey(4), masks.context.shape, 0, 64)
  scrambled = masks._replace(
    targets=jnp.where(masks.targets_valid, masks.targets, noise),
    context=jnp.where(masks.context_valid, masks.context, ctx_noise),
  )
  assert not np.all(np.asarray(scrambled.context) == np.asarray(masks.context))
  again = apply({'params': params}, images, scrambled)
  valid = np.asarray(masks.targets_valid)
  np.testing.assert_allclose(np.asarray(again)[valid], np.asarray(pred)[valid], atol=1e-5)
  # and each prediction depends on its own target position
  moved = masks._replace(targets=jnp.where(masks.targets_valid, (masks.targets + 1) % 64, 0))
  shifted = apply({'params': params}, images, moved)
  assert np.max(np.abs(np.asarray(shifted)[valid] - np.asarray(pred)[valid])) > 1e-4


def test_no_gradient_reaches_the_target_encoder(method_and_state):
  method, params, model_state, images = method_and_state
  batch, rng, step = {'views': [images]}, jax.random.PRNGKey(5), jnp.zeros((), jnp.int32)
  loss = lambda p, ms: method.loss(p, ms, batch, rng, step)[0]
  g_online, g_target = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, model_state)  # 1 compile
  for leaf in jax.tree.leaves(g_target):
    np.testing.assert_array_equal(leaf, 0.0)
  for part in ('encoder', 'predictor'):
    assert max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(g_online[part])) > 0


def test_target_is_the_ema_of_the_context_encoder(method_and_state):
  method, params, model_state, _ = method_and_state
  # the target starts as a copy of the context encoder
  chex.assert_trees_all_equal(model_state['target']['params']['encoder'], params['encoder'])
  moved = jax.tree.map(lambda p: p + 1.0, params)
  for step in (0, 5, 10):
    tau = 0.996 + (1.0 - 0.996) * step / 10  # linear from ema.base to 1 over the 10 steps
    out = method.after_step(moved, model_state, jnp.asarray(step))
    expected = jax.tree.map(
      lambda t, o, tau=tau: tau * t + (1 - tau) * o,
      model_state['target']['params']['encoder'],
      moved['encoder'],
    )
    chex.assert_trees_all_close(out['target']['params']['encoder'], expected, atol=1e-6)


def test_features_are_mean_pooled_tokens_of_the_chosen_encoder(method_and_state):
  _, params, _, images = method_and_state
  model_state = {
    'target': {'params': {'encoder': jax.tree.map(lambda p: p * 0.5, params)['encoder']}}
  }
  for which in ('target', 'context'):
    config = tiny_config()
    config.eval_encoder = which
    method = methods.build(config, sharding.make_mesh(), total_steps=10)
    enc = model_state['target']['params']['encoder'] if which == 'target' else params['encoder']
    tokens = method.encoder.apply({'params': enc}, images, train=False, method=vit.ViT.tokens)
    chex.assert_shape(tokens, (4, 64, 16))  # no CLS token
    h = jax.jit(method.features)(params, model_state, images)
    np.testing.assert_allclose(h, jnp.mean(tokens, axis=1), atol=1e-5)
  assert 'cls_token' not in params['encoder']
  attn = jax.jit(method.attention)(params, model_state, images)  # what each patch receives
  chex.assert_shape(attn, (4, 2, 8, 8))
  np.testing.assert_allclose(np.sum(attn, axis=(2, 3)), 1.0, rtol=1e-5)


def test_bad_configs_are_refused_before_compiling():
  mesh = sharding.make_mesh()
  c = tiny_config()
  c.model.patch_size = 4  # a 4x4 grid: no room for min_keep = 17 context patches
  c.ijepa.min_keep = 17
  with pytest.raises(ValueError, match='min_keep'):
    methods.build(c, mesh)
  c = tiny_config()
  c.loss.kind = 'cosine'
  with pytest.raises(ValueError, match='config.loss.kind'):
    methods.build(c, mesh)
  c = tiny_config()
  c.model.encoder = 'resnet18'
  with pytest.raises(ValueError, match='ViT'):
    methods.build(c, mesh)
  c = tiny_config()
  c.model.pool = 'cls'  # no CLS token to pool
  with pytest.raises(ValueError, match='cls_token'):
    m = methods.build(c, mesh)
    m.init(jax.random.PRNGKey(0), {'views': [jnp.zeros((2, 16, 16, 1))]})

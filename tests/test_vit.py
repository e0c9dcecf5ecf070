"""ViT: shapes at two input sizes, parameter counts, patch order, sin-cos table, position
resizing, stochastic depth, and the forward pass against a NumPy re-implementation."""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import parameterized

from ssljax import models
from ssljax.config import defaults
from ssljax.models import vit


def n_params(tree):
  return sum(x.size for x in jax.tree.leaves(tree))


def vit_param_count(width, depth, patch, image, channels=3, mlp_ratio=4):
  """Parameters of a ViT trunk (no classifier, learned position embedding) from layer shapes."""
  d, hidden = width, mlp_ratio * width
  total = patch * patch * channels * d + d  # patch embedding
  total += d  # CLS token
  total += (1 + (image // patch) ** 2) * d  # position embedding, CLS included
  block = 4 * d  # two LayerNorms
  block += d * 3 * d + 3 * d  # qkv
  block += d * d + d  # attention output projection
  block += d * hidden + hidden + hidden * d + d  # MLP
  return total + depth * block + 2 * d  # final LayerNorm


def tiny(**kw):
  """A ViT with 32-px nominal input, 4-px patches: 8x8 grid at 32 px, 4x4 at 16 px."""
  kw = dict(patch_size=4, width=32, depth=2, num_heads=2, image_size=32) | kw
  return vit.ViT(**kw)


@functools.cache
def tiny_variables():
  """Initialised once: compiling the init (a threefry per parameter) is the slowest step here.

  Every `tiny(...)` variant except pos_embed='sincos' has exactly these parameters.
  """
  init = lambda: tiny().init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False)
  return jax.jit(init)()


def images(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape).astype(np.float32))


# ---- NumPy reference of the forward pass, written from the architecture, not the module ----


def np_layernorm(x, p):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + 1e-6) * p['scale'] + p['bias']


def np_softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


_erf = np.vectorize(math.erf)


def np_vit(params, x, patch, heads):
  """(final-normed tokens, last attention) of a ViT with learned position embedding at its
  nominal grid."""
  params = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  x = np.asarray(x, np.float64)
  n, hh, ww, c = x.shape
  gh, gw = hh // patch, ww // patch
  k = params['patch_embed']['kernel']  # (p, p, C, D)
  d = k.shape[-1]
  tokens = np.zeros((n, gh * gw, d))
  for i in range(gh):
    for j in range(gw):
      window = x[:, i * patch : (i + 1) * patch, j * patch : (j + 1) * patch, :]
      tokens[:, i * gw + j] = np.einsum('npqc,pqcd->nd', window, k)
  tokens += params['patch_embed']['bias']
  cls = np.broadcast_to(params['cls_token'], (n, 1, d))
  t = np.concatenate([cls, tokens], axis=1) + params['pos_embed']
  hd = d // heads
  attn = None
  for b in range(len([key for key in params if key.startswith('blocks_')])):
    p = params[f'blocks_{b}']
    y = np_layernorm(t, p['norm1'])
    qkv = y @ p['attn']['qkv']['kernel'] + p['attn']['qkv']['bias']  # (n, T, 3D)
    q, kk, v = (qkv[..., s * d : (s + 1) * d].reshape(n, -1, heads, hd) for s in range(3))
    attn = np_softmax(np.einsum('nqhd,nkhd->nhqk', q, kk) / np.sqrt(hd))
    o = np.einsum('nhqk,nkhd->nqhd', attn, v).reshape(n, -1, d)
    t = t + o @ p['attn']['proj']['kernel'] + p['attn']['proj']['bias']
    y = np_layernorm(t, p['norm2'])
    y = y @ p['mlp']['fc1']['kernel'] + p['mlp']['fc1']['bias']
    y = 0.5 * y * (1 + _erf(y / np.sqrt(2)))
    t = t + y @ p['mlp']['fc2']['kernel'] + p['mlp']['fc2']['bias']
  return np_layernorm(t, params['norm']), attn


class ViTTest(parameterized.TestCase):
  @chex.variants(with_jit=True)  # sizes are static: eager adds nothing but op-by-op time
  def test_one_set_of_params_takes_two_input_sizes(self):
    """Like DINO's 224-px global and 96-px local crops through one model."""
    model = tiny()
    variables = tiny_variables()
    apply = functools.partial(model.apply, variables, train=False, return_attention=True)
    outputs = self.variant(lambda big, small: (apply(big), apply(small)))(
      images((3, 32, 32, 3)), images((3, 16, 16, 3))
    )
    for (h, attn), side in zip(outputs, (32, 16), strict=True):
      tokens = 1 + (side // 4) ** 2
      chex.assert_shape(h, (3, 32))
      chex.assert_shape(attn, (3, 2, tokens, tokens))
      assert h.dtype == attn.dtype == jnp.float32
      chex.assert_tree_all_finite((h, attn))
      np.testing.assert_allclose(attn.sum(-1), 1.0, rtol=1e-5)

  def test_224_and_96_px_crops_through_one_set_of_parameters(self):
    """DINO's actual sizes: a patch-16 model made for 224 px (a narrow one: shapes only)."""
    model = vit.ViT(patch_size=16, width=32, depth=1, num_heads=2, image_size=224)
    big, small = images((2, 224, 224, 3)), images((2, 96, 96, 3))
    variables = jax.jit(functools.partial(model.init, train=False))(jax.random.PRNGKey(0), big)
    chex.assert_shape(variables['params']['pos_embed'], (1, 1 + 14 * 14, 32))
    apply = jax.jit(functools.partial(model.apply, train=False, return_attention=True))
    for x, grid in ((big, 14), (small, 6)):
      h, attn = apply(variables, x)
      chex.assert_shape((h, attn), ((2, 32), (2, 2, 1 + grid * grid, 1 + grid * grid)))
      chex.assert_tree_all_finite((h, attn))

  @chex.variants(with_jit=True, without_jit=True)
  def test_forward_matches_numpy_reference(self):
    """h for pool='cls' and 'mean' (one set of params), and the last block's attention."""
    x = images((2, 32, 32, 3), seed=1)
    params = tiny_variables()['params']
    # Random biases and norm parameters, so their wiring is checked too (they init to 0 / 1).
    rng = np.random.default_rng(2)
    params = jax.tree.map(lambda a: a + 0.1 * rng.normal(size=a.shape).astype(np.float32), params)
    models_ = {pool: tiny(pool=pool) for pool in ('cls', 'mean')}
    outputs = self.variant(
      lambda v, x: {
        pool: m.apply(v, x, train=False, return_attention=True) for pool, m in models_.items()
      }
    )({'params': params}, x)
    tokens, attn_ref = np_vit(params, x, patch=4, heads=2)
    for pool, h_ref in (('cls', tokens[:, 0]), ('mean', tokens[:, 1:].mean(1))):
      h, attn = outputs[pool]
      chex.assert_shape(h, (2, 32))
      np.testing.assert_allclose(h, h_ref, rtol=1e-4, atol=1e-4)
      np.testing.assert_allclose(attn, attn_ref, rtol=1e-4, atol=1e-5)

  def test_qkv_projection_layouts_agree(self):
    """The CPU layout (three per-head projections) gives the same q, k, v and gradients as the
    one wide matmul sliced three ways that GPUs and TPUs keep."""
    x = images((3, 5, 12), seed=4)
    wide, per_head = (vit.QkvProjection(3, heads_first=h) for h in (False, True))
    params = wide.init(jax.random.PRNGKey(0), x)
    params = jax.tree.map(lambda a: a + 0.1 * jnp.ones_like(a), params)  # a nonzero bias
    out_wide, out_heads = wide.apply(params, x), per_head.apply(params, x)
    for a, b in zip(out_wide, out_heads, strict=True):
      chex.assert_shape((a, b), ((3, 5, 3, 4), (3, 3, 5, 4)))
      np.testing.assert_allclose(a.transpose(0, 2, 1, 3), b, rtol=1e-6, atol=1e-6)
    # q, k, v are columns [0, D), [D, 2D), [2D, 3D) of x @ kernel + bias (timm's qkv Linear).
    dense = x @ params['params']['kernel'] + params['params']['bias']
    np.testing.assert_allclose(out_wide[1].reshape(3, 5, 12), dense[..., 12:24], rtol=1e-5)
    weights = [images(o.shape, seed=i) for i, o in enumerate(out_heads)]

    def loss(p, x, module, heads_first):
      outs = module.apply(p, x)
      if not heads_first:
        outs = [o.transpose(0, 2, 1, 3) for o in outs]
      return sum(jnp.sum(w * o) for w, o in zip(weights, outs, strict=True))

    g_wide = jax.grad(loss, argnums=(0, 1))(params, x, wide, False)
    g_heads = jax.grad(loss, argnums=(0, 1))(params, x, per_head, True)
    chex.assert_trees_all_close(g_wide, g_heads, rtol=1e-5, atol=1e-5)

  @parameterized.parameters(
    ('vit_small', 384, 21_665_664),
    ('vit_base', 768, 85_798_656),
  )
  def test_parameter_count_matches_standard_architecture(self, name, width, known):
    model = vit.vit(name, patch_size=16, image_size=224)
    shapes = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)), train=False)
    )
    count = n_params(shapes['params'])
    assert count == vit_param_count(width, 12, 16, 224)
    assert count == known  # timm vit_{small,base}_patch16_224 with num_classes=0
    assert vit.feature_dim(name) == width

  def test_patchify_order_and_inverse(self):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 6, 9, 2)).astype(np.float32)  # 2x3 grid of 3-px patches
    p = 3
    expected = np.zeros((2, 6, p * p * 2), np.float32)
    for i in range(2):
      for j in range(3):
        for r in range(p):
          for s in range(p):
            for c in range(2):
              expected[:, i * 3 + j, (r * p + s) * 2 + c] = x[:, i * p + r, j * p + s, c]
    patches = vit.patchify(jnp.asarray(x), p)
    np.testing.assert_array_equal(patches, expected)
    np.testing.assert_array_equal(vit.unpatchify(patches, p, (2, 3), 2), x)
    y = rng.normal(size=(3, 8, 4, 3)).astype(np.float32)  # tall, non-square
    np.testing.assert_array_equal(vit.unpatchify(vit.patchify(jnp.asarray(y), 2), 2, (4, 2), 3), y)
    with self.assertRaisesRegex(ValueError, 'not divisible'):
      vit.patchify(jnp.zeros((1, 10, 8, 3)), 4)

  def test_patch_embedding_is_a_linear_map_of_patchified_pixels(self):
    """The conv kernel flattened in (p q c) order is the matrix that acts on `patchify`."""
    model = tiny()
    x = images((2, 16, 24, 3), seed=3)
    params = tiny_variables()['params']
    k = params['patch_embed']['kernel']
    direct = vit.patchify(x, 4) @ k.reshape(-1, 32) + params['patch_embed']['bias']
    embed = jax.jit(functools.partial(model.apply, method=vit.ViT.embed))
    pos = embed({'params': params}, jnp.zeros_like(x))
    tokens = embed({'params': params}, x)
    np.testing.assert_allclose(tokens - pos, direct, rtol=1e-4, atol=1e-5)

  def test_sincos_matches_loop_formula(self):
    dim, gh, gw = 16, 3, 5
    table = vit.sincos_2d(dim, gh, gw)
    assert table.shape == (gh * gw, dim)
    quarter = dim // 4
    expected = np.zeros((gh * gw, dim))
    for i in range(gh):
      for j in range(gw):
        for k in range(quarter):
          omega = 1.0 / 10000 ** (k / quarter)
          row = expected[i * gw + j]
          row[k], row[quarter + k] = math.sin(j * omega), math.cos(j * omega)  # column first
          row[2 * quarter + k], row[3 * quarter + k] = math.sin(i * omega), math.cos(i * omega)
    np.testing.assert_allclose(table, expected, rtol=1e-6, atol=1e-6)
    with self.assertRaisesRegex(ValueError, 'divisible by 4'):
      vit.sincos_2d(18, 2, 2)

  def test_learned_position_embedding_exact_at_nominal_size_resized_otherwise(self):
    model = tiny()
    variables = tiny_variables()
    embed = jax.jit(functools.partial(model.apply, method=vit.ViT.embed))
    pos = variables['params']['pos_embed']
    assert pos.shape == (1, 1 + 64, 32)
    # Zero pixels and zero-init bias: `embed` is then the position embedding alone.
    assert not np.any(variables['params']['patch_embed']['bias'])
    at_nominal = embed(variables, jnp.zeros((2, 32, 32, 3)))
    np.testing.assert_array_equal(at_nominal, jnp.broadcast_to(pos[:, 1:], (2, 64, 32)))
    chex.assert_shape(embed(variables, jnp.zeros((2, 16, 16, 3))), (2, 16, 32))
    # An embedding whose channel 0 is the row and channel 1 the column, the rest 0.5: resized to
    # a 3x5 grid, rows stay rows (channel 0 rises down, is constant across), columns stay
    # columns, and constants stay constant.
    rows, cols = np.meshgrid(np.arange(8.0), np.arange(8.0), indexing='ij')
    ramp = np.full((1, 65, 32), 0.5, np.float32)
    ramp[0, 1:, 0], ramp[0, 1:, 1] = rows.reshape(-1), cols.reshape(-1)
    ramp_vars = {'params': {**variables['params'], 'pos_embed': jnp.asarray(ramp)}}
    rect = np.asarray(embed(ramp_vars, jnp.zeros((1, 12, 20, 3))))
    chex.assert_shape(rect, (1, 15, 32))
    r, c = rect[0, :, 0].reshape(3, 5), rect[0, :, 1].reshape(3, 5)
    np.testing.assert_allclose(r, r[:, :1] * np.ones((1, 5)), rtol=1e-5)
    np.testing.assert_allclose(c, c[:1] * np.ones((3, 1)), rtol=1e-5)
    assert np.all(np.diff(r[:, 0]) > 0) and np.all(np.diff(c[0]) > 0)
    np.testing.assert_allclose(r[:, 0].mean(), 3.5, rtol=1e-5)  # symmetric about the centre
    np.testing.assert_allclose(rect[0, :, 2:], 0.5, rtol=1e-6)
    # The CLS position is kept: transform adds cls_token + pos_embed[:, 0] whatever the grid.
    tokens = jnp.zeros((1, 15, 32))
    out = jax.jit(lambda v: model.apply(v, tokens, train=False, method=vit.ViT.transform)[:, 0])
    p = variables['params']
    moved = {'params': {**p, 'pos_embed': p['pos_embed'].at[0, 0].add(1.0)}}
    shifted = {'params': {**p, 'cls_token': p['cls_token'] + 1.0}}
    np.testing.assert_allclose(out(moved), out(shifted), rtol=1e-4, atol=1e-4)
    assert not np.allclose(out(moved), out(variables))

  def test_sincos_position_embedding_for_any_grid(self):
    model = tiny(pos_embed='sincos')
    shapes = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False)
    )
    assert 'pos_embed' not in shapes['params']  # fixed, not learned
    assert n_params(shapes['params']) == vit_param_count(32, 2, 4, 32) - 65 * 32
    params = tiny_variables()['params']
    variables = {'params': {k: v for k, v in params.items() if k != 'pos_embed'}}
    out = jax.jit(functools.partial(model.apply, method=vit.ViT.embed))(
      variables, jnp.zeros((1, 12, 20, 3))
    )
    np.testing.assert_allclose(out[0], vit.sincos_2d(32, 3, 5), rtol=1e-6, atol=1e-7)

  def test_transform_on_a_subset_of_patches(self):
    """What MAE / I-JEPA do: embed all patches, keep some, run the blocks on those."""
    model = tiny()
    x = images((2, 32, 32, 3))
    variables = tiny_variables()

    @jax.jit
    def run(v, x):
      tokens = model.apply(v, x, method=vit.ViT.embed)
      kept = tokens[:, ::4]  # 16 of 64 patches
      transform = functools.partial(model.apply, v, train=False, method=vit.ViT.transform)
      return (
        transform(kept, return_attention=True),
        transform(kept, add_cls=False),
        transform(tokens)[:, 0],
        model.apply(v, x, train=False),
      )

    (out, attn), no_cls, full_cls, h = run(variables, x)
    chex.assert_shape(out, (2, 17, 32))
    chex.assert_shape(attn, (2, 2, 17, 17))
    chex.assert_shape(no_cls, (2, 16, 32))
    np.testing.assert_allclose(full_cls, h, rtol=1e-6)  # __call__ = embed -> transform -> CLS

  def test_padded_tokens_change_nothing_for_the_real_ones(self):
    """I-JEPA pads token lists to static lengths: with `valid`, the real tokens' outputs equal
    those of the unpadded sequence, whatever the padding holds."""
    model = tiny()
    variables = tiny_variables()
    tokens = jax.jit(lambda v, x: model.apply(v, x, method=vit.ViT.embed))(
      variables, images((2, 32, 32, 3))
    )
    real = tokens[:, :10]
    padded = jnp.concatenate([real, 100.0 * images((2, 6, 32), seed=1)], axis=1)
    valid = jnp.arange(16)[None, :] < 10
    run = jax.jit(lambda v, x, m: model.apply(v, x, train=False, valid=m, method=vit.ViT.transform))
    np.testing.assert_allclose(
      run(variables, padded, jnp.broadcast_to(valid, (2, 16)))[:, :11],
      run(variables, real, None),
      atol=1e-5,
    )
    # without the mask the padding does leak into the real tokens
    assert np.max(np.abs(run(variables, padded, None)[:, :11] - run(variables, real, None))) > 1e-3

  def test_vit_without_cls_token(self):
    """I-JEPA's ViT-H/14: no CLS token, fixed positions; h is the mean of the patch tokens."""
    model = vit.vit(
      'vit_huge', patch_size=14, image_size=224, pos_embed='sincos', pool='mean', use_cls=False
    )
    shapes = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)), train=False)
    )
    d, grid = 1280, 16
    # no CLS token and no learned position embedding (CLS row included) in the trunk's count
    assert n_params(shapes['params']) == vit_param_count(d, 32, 14, 224) - d - (1 + grid**2) * d
    small = tiny(use_cls=False, pool='mean')
    x = images((2, 32, 32, 3))
    v = jax.jit(lambda: small.init(jax.random.PRNGKey(0), x, train=False))()
    assert 'cls_token' not in v['params'] and v['params']['pos_embed'].shape == (1, 64, 32)
    tokens = small.apply(v, x, train=False, method=vit.ViT.tokens)
    chex.assert_shape(tokens, (2, 64, 32))
    np.testing.assert_allclose(small.apply(v, x, train=False), tokens.mean(1), atol=1e-6)

  def test_drop_path_is_per_sample_and_only_in_training(self):
    x = jnp.ones((64, 3, 2))
    y = vit.drop_path(x, 0.25, jax.random.PRNGKey(0))
    per_sample = np.asarray(y).reshape(64, -1)
    kept = per_sample[:, 0] != 0
    assert np.all(per_sample == per_sample[:, :1])  # whole samples kept or dropped
    np.testing.assert_allclose(per_sample[kept], 1 / 0.75, rtol=1e-6)
    assert 0 < (~kept).sum() < 64

    # The rate rises linearly over the blocks, from 0 at the first to drop_path at the last.
    deeper = tiny(depth=3, drop_path=0.5)
    shapes = jax.eval_shape(
      lambda: deeper.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False)
    )
    assert [b.drop_rate for b in deeper.bind(shapes).blocks] == [0.0, 0.25, 0.5]

    x = images((4, 32, 32, 3))
    model = tiny(drop_path=0.5)
    variables = tiny_variables()

    @jax.jit
    def run(v, x):
      train = lambda m, seed: m.apply(v, x, train=True, rngs={'dropout': jax.random.key(seed)})
      return (
        jax.vmap(functools.partial(train, model))(jnp.array([1, 2, 1])),  # one trace, 3 seeds
        [model.apply(v, x, train=False), tiny().apply(v, x, train=False), train(tiny(), 3)],
      )

    (t1, t2, t1_again), (evaluated, no_drop, no_drop_train) = run(variables, x)
    assert not np.allclose(t1, t2)
    np.testing.assert_array_equal(t1, t1_again)
    np.testing.assert_array_equal(evaluated, no_drop)
    np.testing.assert_array_equal(evaluated, no_drop_train)  # rate 0: nothing to drop

  def test_bfloat16_compute_keeps_float32_params(self):
    model = tiny(dtype=jnp.bfloat16)
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), x)
    assert {v.dtype for v in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    jaxpr = str(jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(variables, x))
    # The qkv activations run in bfloat16: one (N, T, 3D) matmul, or per head (N, heads, T, D/heads)
    # on the CPU backend.
    assert 'bf16[2,65,96]' in jaxpr or 'bf16[2,2,65,16]' in jaxpr
    h, attn = jax.eval_shape(
      lambda v, x: model.apply(v, x, train=False, return_attention=True), variables, x
    )
    assert h.dtype == attn.dtype == jnp.float32

  def test_build_encoder_from_config(self):
    c = defaults.base_config()
    c.model.encoder = 'vit_tiny'
    c.model.patch_size = 8
    c.model.pos_embed = 'sincos'
    c.model.drop_path = 0.1
    c.model.pool = 'mean'
    c.augment.image_size = 32
    encoder = models.build_encoder(c)
    assert isinstance(encoder, vit.ViT)
    assert (encoder.width, encoder.depth, encoder.num_heads) == (192, 12, 3)
    assert (encoder.patch_size, encoder.image_size, encoder.pos_embed) == (8, 32, 'sincos')
    assert (encoder.drop_path, encoder.pool) == (0.1, 'mean')
    assert models.encoder_dim(c) == 192
    shapes = jax.eval_shape(
      lambda: encoder.init(jax.random.PRNGKey(0), jnp.zeros((2, 32, 32, 3)), train=False)
    )
    h = jax.eval_shape(lambda v: encoder.apply(v, jnp.zeros((2, 32, 32, 3)), train=False), shapes)
    assert h.shape == (2, 192)

  def test_bad_config_is_a_clear_error(self):
    with self.assertRaisesRegex(ValueError, 'config.model.encoder.*vit_small'):
      vit.vit('vit_giant', patch_size=16, image_size=224)
    with self.assertRaisesRegex(ValueError, 'model.pool'):
      tiny(pool='max').init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False)
    with self.assertRaisesRegex(ValueError, 'not divisible'):
      tiny().init(jax.random.PRNGKey(0), jnp.zeros((1, 30, 30, 3)), train=False)
    with self.assertRaisesRegex(ValueError, 'cls_token'):
      tiny(use_cls=False).init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False)

"""Fine-tuning and the supervised baseline: layer-wise lr decay by hand, every weight trained, the
caller's weights untouched, BatchNorm statistics in train mode, results keys."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssljax import build, data, sharding
from ssljax.config import checks as config_checks
from ssljax.evaluators import finetune as finetune_lib
from ssljax.evaluators import protocols
from ssljax.methods import SimCLR
from ssljax.models import vit as vit_lib


def _tiny_vit_config():
  """SimCLR with a 2-block ViT on 8-px digits; every fine-tune below shares one compilation."""
  c = SimCLR.default_config()
  c.data.image_size = c.augment.image_size = 8
  c.augment.crop_scale = (0.5, 1.0)  # the fine-tune crops (finetune.crop_scale is None)
  c.augment.flip = False
  c.model.encoder = 'vit_tiny'
  c.model.patch_size = 4
  c.model.vit_width, c.model.vit_depth, c.model.vit_heads = 32, 2, 2
  c.model.proj_hidden, c.model.proj_dim = 16, 8
  c.batch_size = 16
  c.eval_config.batch_size = 64
  ft = c.eval_config.finetune
  ft.base_lr = 0.02  # x 64 / 256; enough for a few epochs from scratch
  ft.epochs, ft.min_steps = 5.0, 10
  ls = c.eval_config.linear_sgd
  ls.preset, ls.last_blocks, ls.batch_size, ls.epochs, ls.min_steps = 'dino', 2, 64, 1.0, 5
  return c


@pytest.fixture(scope='module')
def setup():
  config = _tiny_vit_config()
  mesh = sharding.make_mesh()
  method, _, _, init, _ = build.build_run(config, mesh, data.dataset_info(config))
  state = jax.jit(init, out_shardings=sharding.replicated(mesh))(jax.random.PRNGKey(1))
  splits = {s: data.load_eval_split(config, s) for s in ('train', 'test')}
  return config, mesh, method, state, splits


# ----------------------------------------------------------------------------- layer-wise decay


def _tiny_vit(depth=2):
  return vit_lib.vit('vit_tiny', patch_size=4, image_size=8, width=16, depth=depth, num_heads=2)


def _classifier_params(encoder, num_classes=3):
  model = finetune_lib.Classifier(encoder, num_classes)
  shapes = jax.eval_shape(
    lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)), train=False)
  )
  return shapes['params']


def test_layer_decay_scales_by_hand():
  params = _classifier_params(_tiny_vit(depth=2))
  scales = finetune_lib.layer_decay_scales(params, depth=2, decay=0.5)
  flat = {
    '/'.join(str(k.key) for k in path): s
    for path, s in jax.tree_util.tree_flatten_with_path(scales)[0]
  }
  # MAE: layer 0 (embedding) 0.5^3, block i 0.5^(2 - i), final norm and head 0.5^0.
  want = {'patch_embed': 0.125, 'cls_token': 0.125, 'pos_embed': 0.125}
  want |= {'blocks_0': 0.25, 'blocks_1': 0.5, 'norm': 1.0}
  for name, scale in flat.items():
    part = name.split('/')[1] if name.startswith('encoder/') else 'head'
    assert scale == want.get(part, 1.0), name
  assert {n.split('/')[1] for n in flat if n.startswith('encoder/')} == set(want)
  assert flat['head/fc/kernel'] == flat['head/fc/bias'] == 1.0


def test_layer_decay_scales_the_adamw_step():
  """Adam's first step is lr * g / |g| per element: with decay it is lr * scale, leaf by leaf."""
  encoder = _tiny_vit(depth=2)
  model = finetune_lib.Classifier(encoder, 3)
  params = _classifier_params(encoder)  # shapes; the values do not matter to Adam's first step
  params = jax.tree.map(lambda p: jnp.ones(p.shape, p.dtype), params)
  recipe = finetune_lib.Recipe(model, 'adamw', 0.0, 0.9, 0.5, 2, 0.0)
  leaves, treedef = jax.tree.flatten(params)
  grads = jax.tree.unflatten(
    treedef, [jnp.full(p.shape, (-1.0) ** i * (1 + i), p.dtype) for i, p in enumerate(leaves)]
  )

  @functools.partial(jax.jit, static_argnums=0)
  def first_step(recipe, grads, params):
    tx = recipe.tx(0.1, params)
    return tx.update(grads, tx.init(params), params)[0]

  updates = first_step(recipe, grads, params)
  scales = finetune_lib.layer_decay_scales(params, 2, 0.5)
  leaves = zip(
    jax.tree.leaves(updates), jax.tree.leaves(grads), jax.tree.leaves(scales), strict=True
  )
  for u, g, s in leaves:
    np.testing.assert_allclose(u, -0.1 * s * jnp.sign(g), rtol=1e-5)
  # Without decay every leaf moves by the full lr.
  recipe = finetune_lib.Recipe(model, 'adamw', 0.0, 0.9, 1.0, 2, 0.0)
  updates = first_step(recipe, grads, params)
  for u, g in zip(jax.tree.leaves(updates), jax.tree.leaves(grads), strict=True):
    np.testing.assert_allclose(u, -0.1 * jnp.sign(g), rtol=1e-5)


def test_weight_decay_skips_biases_norms_and_tokens():
  params = _classifier_params(_tiny_vit(depth=1))
  mask = finetune_lib.weight_decay_mask(params)
  flat = {
    '/'.join(str(k.key) for k in path): m
    for path, m in jax.tree_util.tree_flatten_with_path(mask)[0]
  }
  decayed = sorted(n for n, m in flat.items() if m)
  assert decayed == [
    'encoder/blocks_0/attn/proj/kernel',
    'encoder/blocks_0/attn/qkv/kernel',
    'encoder/blocks_0/mlp/fc1/kernel',
    'encoder/blocks_0/mlp/fc2/kernel',
    'encoder/patch_embed/kernel',
    'head/fc/kernel',
  ]


def test_auto_optimizer_and_bad_settings():
  ft = SimCLR.default_config().eval_config.finetune
  assert finetune_lib.resolve_recipe(_tiny_vit(), 10, ft).optimizer == 'adamw'
  assert finetune_lib.resolve_recipe(_tiny_vit(), 10, ft).layer_decay == 0.75
  assert finetune_lib.resolve_recipe(_BNEncoder(), 10, ft).optimizer == 'sgd'
  assert finetune_lib.resolve_recipe(_BNEncoder(), 10, ft).layer_decay == 1.0  # ViTs only
  config = SimCLR.default_config()
  config.eval = ('finetune',)
  config.eval_config.finetune.optimizer = 'adam'
  match = r"config\.eval_config\.finetune\.optimizer='adam': one of auto, sgd"
  with pytest.raises(ValueError, match=match):
    config_checks.check(config, protocols.check_eval_config)


# ----------------------------------------------------------------------------- training


def _leaves_differ(a, b) -> list[bool]:
  pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
  return [not np.array_equal(x, y) for x, y in pairs]


@pytest.mark.slow
def test_supervised_from_scratch_learns_digits_and_moves_every_weight(setup):
  config, mesh, method, state, splits = setup
  ft = protocols.finetune_config(config)
  # The method's untrained encoder: a random init (random_encoder_variables is tested below).
  start = method.encoder_variables(state.params, state.model_state)
  before = jax.device_get(start)
  result = finetune_lib.finetune(
    method.encoder,
    start,
    splits['train'],
    {'test': splits['test']},
    num_classes=10,
    num_train=len(splits['train'][1]),
    mesh=mesh,
    ft=ft,
    eval_batch_size=64,
  )
  assert result.steps == int(np.ceil(5 * 1347 / 64))
  assert result.accuracy['test'] > 0.6  # chance: 0.1
  # Every encoder weight was trained, and the caller's arrays were left alone.
  assert all(_leaves_differ(result.variables['params']['encoder'], before['params']))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(start), before)


@pytest.mark.slow  # ~30 s: fine-tunes, trains the supervised baseline, probes OOD
def test_evaluate_finetune_keys_and_the_frozen_protocols_keep_weights(setup, monkeypatch):
  config, mesh, method, state, splits = setup
  config = config.copy_and_resolve_references()
  # knn: the cheapest feature protocol; linear_sgd: DINO's, on the CLS of both blocks
  config.eval = ('knn', 'finetune', 'supervised', 'linear_sgd')
  config.eval_config.label_budgets = ('10_per_class',)
  config.eval_config.ood_data = dict(shift='contrast')
  params_before = jax.device_get((state.params, state.model_state))
  cache = protocols.SupervisedCache()  # owned by the run
  results = protocols.evaluate(
    config, method, state.params, state.model_state, splits, mesh, supervised_cache=cache
  )
  assert len(cache) == 1
  keys = [f'{k}@10_per_class' for k in ('knn', 'finetune', 'supervised', 'linear_sgd')]
  assert sorted(results) == sorted(keys + [k + '/ood' for k in keys])
  assert all(0.0 <= v <= 1.0 for v in results.values())
  # Neither the probe nor fine-tuning (which donates its own copy) touched the pretrained weights.
  jax.tree.map(
    np.testing.assert_array_equal, jax.device_get((state.params, state.model_state)), params_before
  )
  # The supervised baseline ignores the encoder's weights: with other weights (the random-init
  # pass, a later evaluation) the run reuses its result instead of training again.
  config.eval = ('supervised',)
  monkeypatch.setattr(finetune_lib, 'finetune', None)  # calling it would fail
  other = jax.tree.map(lambda x: x + 1.0, state.params)
  again = protocols.evaluate(
    config, method, other, state.model_state, splits, mesh, supervised_cache=cache
  )
  # Another run (its own cache) trains its own baseline: nothing is shared across runs.
  with pytest.raises(TypeError, match='not callable'):
    protocols.evaluate(config, method, other, state.model_state, splits, mesh)
  assert again == {
    k: results[k] for k in ('supervised@10_per_class', 'supervised@10_per_class/ood')
  }


class _BNEncoder(nn.Module):
  """A conv + BatchNorm encoder: the ResNet path (SGD, batch statistics) at a fraction of the
  compile time."""

  @nn.compact
  def __call__(self, x, *, train: bool):
    x = nn.Conv(8, (3, 3), use_bias=False)(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
    return jnp.mean(x, axis=(1, 2))


def test_batchnorm_statistics_update_in_train_mode(setup):
  config, mesh, _, _, splits = setup
  ft = protocols.finetune_config(config)
  ft.epochs, ft.min_steps = 0.0, 5
  encoder = _BNEncoder()
  start = finetune_lib.random_encoder_variables(encoder, (8, 8, 1), 0, mesh)
  before = jax.device_get(start)
  result = finetune_lib.finetune(
    encoder,
    start,
    splits['train'],
    {'': splits['test']},
    num_classes=10,
    num_train=len(splits['train'][1]),
    mesh=mesh,
    ft=ft,
    eval_batch_size=64,
  )
  assert result.steps == 5
  stats = result.variables['batch_stats']['encoder']
  assert all(_leaves_differ(stats, before['batch_stats']))  # running mean and variance moved
  assert all(_leaves_differ(result.variables['params']['encoder'], before['params']))
  # The running mean is an EMA (0.9) of batch means of the first conv's output: from 0 after 5
  # steps it is 1 - 0.9^5 of a typical batch mean, computed here from the trained conv.
  kernel = result.variables['params']['encoder']['Conv_0']['kernel']
  conv = jax.lax.conv_general_dilated(
    jnp.asarray(splits['train'][0]),
    kernel,
    (1, 1),
    'SAME',
    dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
  )
  typical = np.asarray(jnp.mean(conv, axis=(0, 1, 2)))
  np.testing.assert_allclose(
    stats['BatchNorm_0']['mean'], (1 - 0.9**5) * typical, rtol=0.3, atol=0.02
  )

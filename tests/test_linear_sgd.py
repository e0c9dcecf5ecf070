"""The papers' linear protocol (evaluators.linear_sgd): presets resolved as the official code
sets them, a frozen encoder that does not move while its head learns from augmented crops, the
reported top-1 recomputed from the returned classifier, MAE's non-affine BatchNorm and DINO's
last-blocks CLS features by hand, and bad settings refused by name."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssljax import data, sharding
from ssljax.config import checks as config_checks
from ssljax.evaluators import finetune as finetune_lib
from ssljax.evaluators import linear_sgd, protocols
from ssljax.methods import DINO, MAE, SimCLR
from ssljax.models import vit as vit_lib


class _BNEncoder(nn.Module):
  """Conv + BatchNorm: the ResNet path (running statistics that must not move when frozen)."""

  @nn.compact
  def __call__(self, x, *, train: bool):
    x = nn.Conv(16, (3, 3), use_bias=False)(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
    return jnp.mean(x, axis=(1, 2))


def _digits_config():
  c = SimCLR.default_config()
  c.data.image_size = c.augment.image_size = 8
  c.augment.crop_scale, c.augment.flip = (0.6, 1.0), False
  c.eval = ('linear_sgd',)
  ls = c.eval_config.linear_sgd
  ls.preset, ls.batch_size, ls.epochs, ls.min_steps = 'byol', 64, 8.0, 10
  ls.head_norm = True  # the random conv's features are small and alike: standardized first
  return c


def test_presets_resolve_as_the_official_code_sets_them():
  c = SimCLR.default_config()
  s = linear_sgd.settings(c)  # auto: SimCLR's
  assert (s.optimizer, s.base_lr, s.weight_decay, s.epochs, s.batch_size) == (
    'sgd',
    0.1,
    0.0,
    90.0,
    4096,
  )
  assert (s.head_init_std, s.layer_decay, s.drop_path, s.label_smoothing) == (0.0, 1.0, 0.0, 0.0)
  assert s.crop_scale == tuple(c.augment.crop_scale) and s.flip == c.augment.flip
  d = linear_sgd.settings(DINO.default_config())
  assert (d.optimizer, d.base_lr, d.epochs, d.last_blocks, d.head_norm) == (
    'momentum',
    1e-3,
    100.0,
    4,
    False,
  )
  m = linear_sgd.settings(MAE.default_config())
  assert (m.optimizer, m.base_lr, m.warmup_epochs, m.batch_size, m.head_norm) == (
    'lars',
    0.1,
    10.0,
    16384,
    True,
  )
  c.eval_config.linear_sgd.preset = 'mae'
  c.eval_config.linear_sgd.epochs = 5.0  # a field set beside the preset wins
  c.eval_config.linear_sgd.crop_scale = (0.08, 1.0)
  s = linear_sgd.settings(c)
  assert (s.optimizer, s.epochs, s.crop_scale) == ('lars', 5.0, (0.08, 1.0))


@pytest.mark.parametrize(
  'field, value, message',
  [
    ('preset', 'moco', "eval_config.linear_sgd.preset='moco'"),
    ('optimizer', 'adam', "eval_config.linear_sgd.optimizer='adam'"),
    ('last_blocks', 4, 'eval_config.linear_sgd.last_blocks=4: 1 for an encoder without a ViT'),
  ],
)
def test_bad_settings_are_refused_by_name(field, value, message):
  c = _digits_config()
  c.eval_config.linear_sgd[field] = value
  checks = config_checks.Checks(c)
  protocols.check_eval_config(checks)
  assert any(message in p for p in checks.problems), checks.problems


@pytest.fixture(scope='module')
def digits():
  config = _digits_config()
  return (
    config,
    sharding.make_mesh(),
    {s: data.load_eval_split(config, s) for s in ('train', 'test')},
  )


def test_frozen_encoder_stays_put_while_the_head_learns(digits):
  config, mesh, splits = digits
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
    ft=linear_sgd.settings(config),
    eval_batch_size=64,
    frozen=True,
  )
  assert result.steps == int(np.ceil(8 * 1347 / 64))
  # Not one encoder weight or BatchNorm statistic moved; the head did.
  v = jax.device_get(result.variables)
  jax.tree.map(np.testing.assert_array_equal, v['params']['encoder'], before['params'])
  jax.tree.map(np.testing.assert_array_equal, v['batch_stats']['encoder'], before['batch_stats'])
  assert np.abs(v['params']['head']['fc']['kernel']).max() > 0.05  # from N(0, 0.01)
  # The reported top-1 is the returned classifier's, recomputed here on the test images.
  x, y = splits['test']
  h = encoder.apply(before, x, train=False)
  norm = v['batch_stats']['head']['BatchNorm_0']  # inference: its running statistics
  h = (h - norm['mean']) / np.sqrt(norm['var'] + 1e-6)
  logits = h @ v['params']['head']['fc']['kernel'] + v['params']['head']['fc']['bias']
  assert result.accuracy[''] == pytest.approx(float(np.mean(np.argmax(logits, -1) == y)), abs=1e-3)
  assert result.accuracy[''] > 0.5  # chance 0.1: a linear head on random conv features


def test_mae_head_normalizes_without_affine_parameters():
  h = np.random.default_rng(0).normal(3.0, 2.0, size=(32, 5)).astype(np.float32)
  head = finetune_lib.LinearHead(4, norm=True, init_std=0.01)
  variables = head.init(jax.random.PRNGKey(0), h, train=False)
  assert set(variables['params']) == {'fc'}  # no scale or bias on the norm
  out, _ = head.apply(variables, h, train=True, mutable=['batch_stats'])
  by_hand = (h - h.mean(0)) / np.sqrt(h.var(0) + 1e-6)
  fc = variables['params']['fc']
  np.testing.assert_allclose(out, by_hand @ fc['kernel'] + fc['bias'], rtol=1e-4, atol=1e-5)


def test_last_cls_is_dinos_concatenation_of_the_last_blocks():
  vit = vit_lib.vit('vit_tiny', patch_size=4, image_size=8, width=16, depth=3, num_heads=2)
  x = np.random.default_rng(0).uniform(size=(2, 8, 8, 1)).astype(np.float32)
  variables = vit.init(jax.random.PRNGKey(0), x, train=False)
  h = vit.apply(variables, x, train=False)
  feats = vit.apply(variables, x, 3, method=vit_lib.ViT.last_cls)
  assert feats.shape == (2, 3 * 16)
  np.testing.assert_allclose(feats[:, -16:], h, atol=1e-6)  # the last block's CLS is h

  # The first: block 0's output CLS through the final norm, by hand from the modules.
  def first(m, x):
    t, _ = m._with_cls(m.embed(x), None, True)
    t, _ = m.blocks[0](t, train=False, valid=None)
    return m.norm(t[:, 0])

  np.testing.assert_allclose(feats[:, :16], vit.apply(variables, x, method=first), atol=1e-6)
  with pytest.raises(ValueError, match='n=4'):
    vit.apply(variables, x, 4, method=vit_lib.ViT.last_cls)

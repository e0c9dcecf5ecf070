"""The Method interface: what a method declares (views, eval_encoder values, its config sections)
is checked before anything compiles; a new method is one class and one registry line; every
method trains a ViT with stochastic depth."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ssljax import build, checkpoint, data, methods, models, sharding, train
from ssljax.config import defaults
from ssljax.methods.base import Method, submodule_variables


def _tiny(name: str) -> ml_collections.ConfigDict:
  """METHOD.default_config shrunk: a ViT of width 16 and depth 1 on 16-px synthetic images."""
  c = methods.METHODS[name].default_config(16) if name != 'dino' else None
  if name == 'dino':
    c = methods.DINO.default_config(16, local_size=8, num_local=1)
    c.dino.out_dim, c.dino.hidden_dim, c.dino.bottleneck_dim = 16, 16, 8
  c.data.source = 'synthetic'
  c.model.encoder, c.model.patch_size = 'vit_tiny', 4
  c.model.vit_width, c.model.vit_depth, c.model.vit_heads = 16, 1, 2
  c.model.proj_hidden, c.model.proj_dim = 16, 8
  if name == 'mae':
    c.mae.decoder_width, c.mae.decoder_depth, c.mae.decoder_heads = 16, 1, 2
  if name == 'ijepa':
    c.ijepa.pred_width, c.ijepa.pred_depth, c.ijepa.pred_heads = 8, 1, 2
  c.batch_size = 8
  return c


# ----------------------------------------------------------------------------- refused configs


def _refused(config, match, tmp_path):
  with pytest.raises(ValueError, match=match):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not os.path.exists(tmp_path / 'run')  # refused before anything was written


def test_a_wrong_view_count_is_refused_naming_the_views(tmp_path):
  c = _tiny('simclr')
  c.views.view3 = {}
  views = r"config.views=\('view1', 'view2', 'view3'\): simclr takes 2 view\(s\) per example"
  _refused(c, views + r', this config makes 3; see configs/simclr_digits.py', tmp_path)
  c = _tiny('mae')
  c.views.view2 = {}
  _refused(c, r'mae takes 1 view\(s\) per example, this config makes 2', tmp_path)
  c = _tiny('dino')
  c.views = ml_collections.ConfigDict(dict(global1={}))
  _refused(c, r'config.dino.global_views=2: at most the 1 views config.views makes', tmp_path)


@pytest.mark.parametrize(
  'name, bad, allowed',
  [
    ('simclr', 'target', 'online'),
    ('mae', 'target', 'online'),
    ('byol', 'teacher', 'online, target'),
    ('dino', 'student', 'online, target'),
    ('ijepa', 'predictor', 'target, context, online'),
  ],
)
def test_an_eval_encoder_the_method_lacks_is_refused(name, bad, allowed, tmp_path):
  c = _tiny(name)
  c.eval_encoder = bad
  _refused(c, f'config.eval_encoder={bad!r}: one of {allowed}; e.g. --config.eval_', tmp_path)


def test_switching_method_to_one_whose_section_is_missing_names_a_config_to_start_from(tmp_path):
  c = _tiny('simclr')
  c.method = 'dino'
  _refused(
    c, r"config.method='dino' needs config.dino, config.ema.*configs/dino_digits.py", tmp_path
  )
  c.method = 'moco'
  _refused(c, r"config.method='moco': one of simclr, byol, dino, mae, ijepa", tmp_path)


def test_the_registry_and_the_classes_agree():
  mesh = sharding.make_mesh()
  for name, cls in methods.METHODS.items():
    config = cls.default_config()
    assert config.method == name and issubclass(cls, Method)
    assert config.eval_encoder in cls.eval_encoders
    train.validate(config, mesh)  # the defaults pass every check
    views = len(data.view_specs(config))
    assert cls.num_views in (None, views)
  assert [n for n, c in methods.METHODS.items() if c.reconstructs] == ['mae']


# ----------------------------------------------------------------------------- a new method


class BrightnessNet(nn.Module):
  encoder: nn.Module

  @nn.compact
  def __call__(self, x, *, train: bool):
    return nn.Dense(1, name='head')(self.encoder(x, train=train))[:, 0]


class Brightness(Method):
  """A toy sixth method, written as a new file in ssljax/methods/ would be: regress each view's
  mean brightness from h with a linear head. One view, no teacher."""

  num_views = 1

  @classmethod
  def default_config(cls, image_size: int = 16) -> ml_collections.ConfigDict:
    c = defaults.base_config('brightness', image_size)
    c.views = ml_collections.ConfigDict(dict(view1={}))
    c.brightness = ml_collections.ConfigDict(dict(weight=1.0))
    return c

  def __init__(self, config, mesh, total_steps=1, steps_per_epoch=1):
    super().__init__(config, mesh, total_steps, steps_per_epoch)
    self.encoder = models.build_encoder(config)
    self.net = BrightnessNet(self.encoder)

  def init(self, rng, batch):
    return self.net.init(rng, batch['views'][0], train=False)['params'], {}

  def loss(self, params, model_state, batch, rng, step):
    x = batch['views'][0]
    pred = self.net.apply({'params': params}, x, train=True, rngs={'dropout': rng})
    loss = self.config.brightness.weight * jnp.mean((pred - jnp.mean(x, axis=(1, 2, 3))) ** 2)
    return loss, (model_state, {'loss': loss})

  def encoder_variables(self, params, model_state):
    return submodule_variables({'params': params}, 'encoder')


def test_a_new_method_is_one_class_and_one_registry_line(monkeypatch, tmp_path):
  monkeypatch.setitem(methods.METHODS, 'brightness', Brightness)  # the registry line
  config = Brightness.default_config()
  config.data.source = 'synthetic'
  config.model.encoder, config.model.patch_size = 'vit_tiny', 4
  config.model.vit_width, config.model.vit_depth, config.model.vit_heads = 16, 1, 2
  config.batch_size, config.total_steps, config.log_every = 16, 2, 1
  config.eval, config.visualize.embeddings, config.report = (), False, False
  del config['brightness']
  _refused(config, r"config.method='brightness' needs config.brightness", tmp_path)
  config.brightness = ml_collections.ConfigDict(dict(weight=1.0))
  results = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert results['step'] == 2 and checkpoint.latest_saved_step(str(tmp_path / 'run')) == 2
  assert os.listdir(tmp_path / 'run' / 'pictures') == ['attention']  # a ViT, no reconstructions
  lines = [json.loads(x) for x in open(tmp_path / 'run' / 'metrics.jsonl')]
  losses = [x['loss'] for x in lines if 'loss' in x]
  assert len(losses) == 2 and np.all(np.isfinite(losses))


# ----------------------------------------------------------------------------- stochastic depth


@pytest.mark.parametrize(
  'name',
  # Two in the fast tier (a contrastive and a masked method), every one in the slow tier.
  [
    n if n in ('simclr', 'mae') else pytest.param(n, marks=pytest.mark.slow)
    for n in methods.METHODS
  ],
)
def test_every_method_trains_a_vit_with_stochastic_depth(name):
  """drop_path draws from the 'dropout' rng in every method's training pass: the same
  parameters, batch and rng give another loss once paths are dropped, and inference (h) does
  not depend on it."""
  mesh = sharding.make_mesh()
  info = data.DatasetInfo(64, 10, (16, 16, 3))
  config = _tiny(name)
  config.model.vit_depth = 2  # drop_path applies at the last block, 0 at the first
  state = jax.jit(build.build_run(config, mesh, info).init)(jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  views = [
    jnp.asarray(rng.uniform(size=(8, s.image_size, s.image_size, 3)), jnp.float32)
    for s in data.view_specs(config)
  ]
  losses, features = [], []
  for drop_path in (0.0, 0.5):
    config.model.drop_path = drop_path
    method = methods.build(config, mesh)  # the parameters do not depend on drop_path
    loss, _ = jax.jit(method.loss)(
      state.params, state.model_state, {'views': views}, jax.random.PRNGKey(1), state.step
    )
    losses.append(float(loss))
    features.append(jax.jit(method.features)(state.params, state.model_state, views[0]))
  assert np.all(np.isfinite(losses)) and losses[0] != losses[1]
  np.testing.assert_array_equal(features[0], features[1])

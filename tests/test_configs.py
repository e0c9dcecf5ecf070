"""Every file in configs/ builds: it validates, its method and optimizer build, and its train
state has the right shapes (jax.eval_shape: nothing is compiled, nothing is read). The ImageNet
configs build the published architectures, so their parameter counts are the papers'."""

import glob
import os

import jax
import pytest

from ssljax import build, data, models, sharding, train
from ssljax.config import blocks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, 'configs', '*.py')))
# Encoder parameters (no classifier) of the published networks at 224 px, as timm counts them,
# less what ssljax does not learn: MAE's and I-JEPA's fixed sin-cos positions, I-JEPA's CLS.
PUBLISHED = {
  'byol_imagenet': 23_508_032,  # ResNet-50
  'simclr_imagenet': 23_508_032,  # ResNet-50
  'dino_imagenet': 21_665_664,  # ViT-S/16, learned positions
  'mae_imagenet': 85_798_656 - 197 * 768,  # ViT-B/16
  'ijepa_imagenet': 630_764_800 - 257 * 1280 - 1280,  # ViT-H/14
}


def _info(config) -> data.DatasetInfo:
  """What the data would report: 3 channels for tfds datasets, 1 for digits and Fashion-MNIST
  (the test machine need not hold the data)."""
  channels = 3 if config.data.source == 'tfds' else 1
  size = config.data.image_size
  return data.DatasetInfo(num_train=50_000, num_classes=10, image_shape=(size, size, channels))


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: os.path.basename(p)[:-3])
def test_config_validates_and_builds_its_train_state(path, config_file, monkeypatch):
  config = config_file(path)
  name = os.path.basename(path)[:-3]
  assert config.method == name.split('_')[0]
  mesh = sharding.make_mesh()
  # train.validate without data.check_available: the data need not be on this machine.
  monkeypatch.setattr(data, 'check_available', lambda config: None)
  train.validate(config, mesh)
  run = build.build_run(config, mesh, _info(config))
  state = jax.eval_shape(run.init, jax.random.PRNGKey(0))
  assert state.step.shape == () and run.total_steps > 0
  encoder = run.method.encoder_variables(state.params, state.model_state)
  count = sum(x.size for x in jax.tree.leaves(encoder['params']))
  if name in PUBLISHED:
    assert count == PUBLISHED[name]
  # h has the width the evaluation and the heads are built for.
  image = jax.ShapeDtypeStruct((2,) + _info(config).image_shape, 'float32')
  h = jax.eval_shape(run.method.features, state.params, state.model_state, image)
  assert h.shape == (2, models.encoder_dim(config))


def test_parse_arg_types_values_like_the_defaults():
  assert blocks.parse_arg(None, epochs=300).epochs == 300
  assert blocks.parse_arg('100', epochs=300).epochs == 100
  options = blocks.parse_arg('epochs=50,variant=B/16', variant='H/14', epochs=300)
  assert (options.variant, options.epochs) == ('B/16', 50)
  with pytest.raises(ValueError, match=r'takes :variant=\.\.\.,epochs=\.\.\., got .size=1'):
    blocks.parse_arg('size=1', variant='H/14', epochs=300)
  with pytest.raises(ValueError, match=r':epochs= takes a int, got .ten'):
    blocks.parse_arg('ten', epochs=300)


@pytest.mark.parametrize('arg, epochs', [(None, 300), ('100', 100), ('epochs=1000', 1000)])
def test_byol_imagenet_presets_follow_the_arg(arg, epochs, config_file):
  config = config_file('byol_imagenet.py', arg)
  assert config.epochs == epochs
  assert (config.base_lr, config.ema.base) == {300: (0.3, 0.99), 100: (0.45, 0.99)}.get(
    epochs, (0.2, 0.996)
  )

"""config.defaults: base_config assembled from one function per section."""

import ml_collections
import pytest

from ssljax import methods
from ssljax.config import defaults


def _sections(config: ml_collections.ConfigDict, prefix: str = ''):
  """(dotted name, ConfigDict) of every nested section of `config`."""
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      yield prefix + key, value
      yield from _sections(value, f'{prefix}{key}.')


@pytest.mark.parametrize('image_size', [28, 96])
def test_image_size_reaches_data_and_views(image_size):
  config = defaults.base_config('simclr', image_size)
  assert config.data.image_size == config.augment.image_size == image_size
  assert config.method == 'simclr'


def test_every_call_builds_its_own_sections():
  # A section shared between calls would let one run's overrides change the next run's defaults.
  first, second = defaults.base_config(), defaults.base_config()
  fresh = defaults.base_config().to_dict()
  names = [name for name, _ in _sections(first)]
  assert {'data', 'model', 'health', 'eval_config.finetune', 'visualize'} <= set(names)
  for name, section in _sections(first):
    with section.unlocked():
      section.added_by_test = name
  assert second.to_dict() == fresh
  for name, section in _sections(first):
    assert section.added_by_test == name


def test_optimizer_fields_are_top_level_and_typed():
  config = defaults.base_config()
  for name in defaults.optim_defaults():
    assert name in config and not isinstance(config[name], ml_collections.ConfigDict)
  # A placeholder stays typed once merged: a string where a float belongs is refused.
  assert config.weight_decay_end is None
  with pytest.raises(TypeError):
    config.weight_decay_end = 'high'
  config.weight_decay_end = 0.4
  assert config.weight_decay_end == 0.4


@pytest.mark.parametrize('name', sorted(methods.METHODS))
def test_every_method_starts_from_base_config(name):
  config = methods.METHODS[name].default_config()
  base = defaults.base_config(name, config.data.image_size)
  for key in base:
    assert key in config, key

"""The paper configs hold the official settings (tests/recipes.py, each with the file it comes
from), and configs/README.md shows exactly that table: neither can drift without the other."""

import glob
import os

import pytest
import recipes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _field(config, dotted: str):
  for key in dotted.split('.'):
    config = config[key]
  return config


def _plain(value):
  return tuple(value) if isinstance(value, list | tuple) else value


@pytest.mark.parametrize('name', sorted(recipes.RECIPES))
def test_paper_config_holds_the_official_settings(name, config_file):
  path, _, arg = name.partition(':')
  config = config_file(path, arg or None)
  wrong = {
    s.field: (_plain(_field(config, s.field)), recipes.expected(s))
    for s in recipes.RECIPES[name]
    if _plain(_field(config, s.field)) != _plain(recipes.expected(s))
  }
  assert not wrong, f'{name}: (config, recipe) differ for {wrong}'


def test_every_paper_config_has_a_recipe():
  papers = {os.path.basename(p) for p in glob.glob(os.path.join(ROOT, 'configs', '*_imagenet.py'))}
  assert papers == {name.partition(':')[0] for name in recipes.RECIPES}


def test_a_differing_value_says_why():
  for name, settings in recipes.RECIPES.items():
    for s in settings:
      assert (s.ours is recipes.SAME) == (not s.why), (name, s.field)
      assert s.ours is recipes.SAME or _plain(s.ours) != _plain(s.official), (name, s.field)


def test_configs_readme_shows_the_recipe_table():
  with open(os.path.join(ROOT, 'configs', 'README.md')) as f:
    text = f.read()
  assert recipes.markdown() in text, 'regenerate it: python tests/recipes.py'

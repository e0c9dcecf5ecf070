"""The documentation points at things that exist: every relative link and heading anchor in
README.md, docs/, configs/README.md and experiments/README.md resolves, every config they name is a
file, README.md stays short, and its Layout section lists exactly the packages and root modules of
ssljax/ (read from the tree, so a module added or moved without updating the README fails here)."""

from __future__ import annotations

import glob
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = sorted(
  [os.path.join(ROOT, 'README.md'), os.path.join(ROOT, 'configs', 'README.md')]
  + [os.path.join(ROOT, 'experiments', 'README.md')]
  + glob.glob(os.path.join(ROOT, 'docs', '*.md'))
)
_LINK = re.compile(r'\[[^\]]*\]\(([^)\s]+)\)')
_CONFIG = re.compile(r'(?<=[`=(])configs/([A-Za-z0-9_]+\.py)')  # ours, not another repository's
_FENCE = re.compile(r'^```.*?^```', re.M | re.S)


def _read(path: str) -> str:
  with open(path, encoding='utf-8') as f:
    return f.read()


def _slug(heading: str) -> str:
  """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
  text = re.sub(r'[^\w\- ]', '', heading.strip().lower())
  return text.replace(' ', '-')


def _anchors(path: str) -> set[str]:
  text = _FENCE.sub('', _read(path))
  return {_slug(m) for m in re.findall(r'^#{1,6}\s+(.+?)\s*$', text, re.M)}


def test_slug_matches_githubs_rule():
  assert _slug('Kernels: `config.model.kernels`') == 'kernels-configmodelkernels'
  assert _slug('GPUs and TPU pods') == 'gpus-and-tpu-pods'
  assert _slug('Fashion-MNIST presets') == 'fashion-mnist-presets'


def test_the_documents_exist():
  names = {os.path.relpath(p, ROOT) for p in DOCS}
  assert {'README.md', 'configs/README.md', 'experiments/README.md'} <= names
  assert len([n for n in names if n.startswith('docs/')]) >= 8


@pytest.mark.parametrize('path', DOCS, ids=lambda p: os.path.relpath(p, ROOT))
def test_every_relative_link_resolves(path):
  broken = []
  for target in _LINK.findall(_read(path)):
    if re.match(r'[a-z]+:', target):  # http:, https:, mailto:
      continue
    file_part, _, anchor = target.partition('#')
    resolved = path
    if file_part:
      resolved = os.path.normpath(os.path.join(os.path.dirname(path), file_part))
    if not os.path.exists(resolved):
      broken.append(f'{target}: no such file')
    elif anchor and resolved.endswith('.md') and anchor not in _anchors(resolved):
      broken.append(f'{target}: no heading with that anchor')
  assert not broken, broken


@pytest.mark.parametrize('path', DOCS, ids=lambda p: os.path.relpath(p, ROOT))
def test_every_named_config_exists(path):
  named = set(_CONFIG.findall(_read(path)))
  missing = sorted(n for n in named if not os.path.isfile(os.path.join(ROOT, 'configs', n)))
  assert not missing, missing


def test_config_pattern_finds_ours_only():
  text = '`configs/a.py`, --config=configs/b.py, [c](configs/c.py), deepmind/byol configs/byol.py'
  assert _CONFIG.findall(text) == ['a.py', 'b.py', 'c.py']


def test_readme_is_short():
  assert len(_read(os.path.join(ROOT, 'README.md')).splitlines()) <= 250


def test_readme_keeps_opening_with_the_two_commands():
  lines = _read(os.path.join(ROOT, 'README.md')).splitlines()
  commands = [line for line in lines[:14] if line.startswith('python3 -m venv')]
  assert len(commands) == 2
  assert commands[0].endswith('--config=configs/simclr_digits.py --workdir=runs/simclr_digits')
  assert commands[1].endswith('python -m pytest -q tests')


def _layout_entries() -> set[str]:
  text = _read(os.path.join(ROOT, 'README.md'))
  section = re.search(r'^## Layout\n(.*?)(?=^## )', text, re.M | re.S)
  assert section, 'README.md has no Layout section'
  block = re.search(r'^```\n(.*?)^```', section.group(1), re.M | re.S)
  assert block, 'the Layout section has no code block'
  return {m for m in re.findall(r'^(ssljax/\S+)', block.group(1), re.M)}


def _tree_entries() -> set[str]:
  package = os.path.join(ROOT, 'ssljax')
  entries = set()
  for name in os.listdir(package):
    full = os.path.join(package, name)
    if name.endswith('.py'):
      entries.add(f'ssljax/{name}')
    elif os.path.isfile(os.path.join(full, '__init__.py')):
      entries.add(f'ssljax/{name}/')
  return entries


def test_readme_layout_lists_exactly_the_tree():
  listed, tree = _layout_entries(), _tree_entries()
  assert 'ssljax/cpu/' in tree and 'ssljax/main.py' in tree  # the tree is read, not empty
  assert not tree - listed, f'in ssljax/ but not in README Layout: {sorted(tree - listed)}'
  assert not listed - tree, f'in README Layout but not in ssljax/: {sorted(listed - tree)}'

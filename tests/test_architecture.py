"""The shape of the house: no import cycles in ssljax/, TensorFlow only inside ssljax/data/, layers
that point one way.

Imports are read from the source (every `import` statement, inside functions too, except under
`if TYPE_CHECKING:`), so a loop closed by an import inside a function counts. Run this file as
a script to print the graph's cycles:

  python tests/test_architecture.py
"""

from __future__ import annotations

import ast
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = 'ssljax'


def _modules(root: str = ROOT) -> dict[str, str]:
  """{'ssljax.data.pipeline': path, ...} for every .py file under ssljax/."""
  out = {}
  for dirpath, _, files in os.walk(os.path.join(root, PACKAGE)):
    for name in files:
      if name.endswith('.py'):
        rel = os.path.relpath(os.path.join(dirpath, name), root)[:-3].split(os.sep)
        if rel[-1] == '__init__':
          rel = rel[:-1]
        out['.'.join(rel)] = os.path.join(dirpath, name)
  return out


def _is_type_checking(node: ast.If) -> bool:
  test = node.test
  return (isinstance(test, ast.Name) and test.id == 'TYPE_CHECKING') or (
    isinstance(test, ast.Attribute) and test.attr == 'TYPE_CHECKING'
  )


def _imports(tree: ast.AST) -> list[ast.stmt]:
  found = []
  for node in ast.iter_child_nodes(tree):
    if isinstance(node, ast.If) and _is_type_checking(node):
      found.extend(_imports(ast.Module(body=node.orelse, type_ignores=[])))
      continue
    if isinstance(node, ast.Import | ast.ImportFrom):
      found.append(node)
    found.extend(_imports(node))
  return found


def import_graph(root: str = ROOT) -> dict[str, set[str]]:
  """module -> the ssljax modules it imports (a package's submodules named in `from pkg import
  sub` count as the submodule, not the package)."""
  modules = _modules(root)
  graph: dict[str, set[str]] = {m: set() for m in modules}
  for module, path in modules.items():
    with open(path) as f:
      tree = ast.parse(f.read(), path)
    is_package = path.endswith('__init__.py')
    for node in _imports(tree):
      if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
      else:
        base = node.module or ''
        if node.level:
          parts = module.split('.')[: len(module.split('.')) - node.level + int(is_package)]
          base = '.'.join(parts + ([base] if base else []))
        targets = [
          f'{base}.{alias.name}' if f'{base}.{alias.name}' in modules else base
          for alias in node.names
        ]
      graph[module] |= {t for t in targets if t in modules and t != module}
  return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Every elementary cycle, each once, starting at its smallest module name."""
  found = []

  def walk(start: str, node: str, path: list[str]) -> None:
    for nxt in sorted(graph[node]):
      if nxt == start:
        found.append(path[:])
      elif nxt > start and nxt not in path:
        walk(start, nxt, path + [nxt])

  for start in sorted(graph):
    walk(start, start, [start])
  return found


def test_no_import_cycles():
  found = cycles(import_graph())
  assert not found, '\n'.join(' -> '.join(c + c[:1]) for c in found)


def test_cycle_finder_finds_a_loop_closed_inside_a_function(tmp_path):
  pkg = tmp_path / PACKAGE
  (pkg / 'sub').mkdir(parents=True)
  (pkg / '__init__.py').write_text('')
  (pkg / 'a.py').write_text('from ssljax import b\n')
  (pkg / 'b.py').write_text('def f():\n  from ssljax.sub import c\n')
  (pkg / 'sub' / '__init__.py').write_text('')
  (pkg / 'sub' / 'c.py').write_text('from .. import a\nfrom ..sub import d\n')
  (pkg / 'sub' / 'd.py').write_text(
    'from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n  import ssljax.a\n'
  )
  graph = import_graph(str(tmp_path))
  assert graph['ssljax.b'] == {'ssljax.sub.c'}
  assert graph['ssljax.sub.c'] == {'ssljax.a', 'ssljax.sub.d'}
  assert graph['ssljax.sub.d'] == set()  # TYPE_CHECKING imports never run
  assert cycles(graph) == [['ssljax.a', 'ssljax.b', 'ssljax.sub.c']]


def test_tensorflow_is_imported_only_inside_data():
  modules = _modules()
  offenders = []
  for module, path in modules.items():
    if module.startswith(f'{PACKAGE}.data'):
      continue
    with open(path) as f:
      for node in _imports(ast.parse(f.read(), path)):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
        if any((n or '').split('.')[0] in ('tensorflow', 'tensorflow_datasets') for n in names):
          offenders.append(module)
  assert not offenders


def _reaches(graph: dict[str, set[str]], start: str) -> set[str]:
  """Every module `start` imports, directly or through others."""
  seen, todo = set(), [start]
  while todo:
    for nxt in graph[todo.pop()] - seen:
      seen.add(nxt)
      todo.append(nxt)
  return seen


def test_layers_point_one_way():
  """Losses, models and methods reach nothing of the input pipeline's package (what a view is
  lives in ssljax.config.views); the CPU kernels import no other ssljax module; the loop imports no
  method's file."""
  graph = import_graph()
  data = {m for m in graph if m == f'{PACKAGE}.data' or m.startswith(f'{PACKAGE}.data.')}
  for layer in ('losses', 'models', 'methods', 'cpu'):
    for module in (
      m for m in graph if m == f'{PACKAGE}.{layer}' or m.startswith(f'{PACKAGE}.{layer}.')
    ):
      assert not _reaches(graph, module) & data, module
  kernels = [f'{PACKAGE}.cpu.{name}' for name in ('conv', 'winograd', 'batch_norm', 'gelu')]
  assert not set().union(*(_reaches(graph, m) for m in kernels)) - set(kernels)
  assert not {m for m in graph[f'{PACKAGE}.train'] if m.startswith(f'{PACKAGE}.methods.')}


if __name__ == '__main__':
  found = cycles(import_graph())
  for c in found:
    print(' -> '.join(c + c[:1]))
  print(f'{len(found)} import cycles in {PACKAGE}/ ({len(import_graph())} modules)')
  sys.exit(1 if found else 0)

"""Scans an image folder once: how many files of each format, size and pixel mode, and every
file that cannot be read (what the folder source would skip).

  python -m ssljax.data.check --path=DIR
"""

from __future__ import annotations

import argparse
import collections
import os
import sys

from ssljax.data import images


def scan(path: str) -> dict:
  """{'files': n, 'formats': Counter, 'sizes': Counter, 'modes': Counter, 'bad': [(file, why)]};
  files without an image extension are not counted."""
  report = {
    'files': 0,
    'formats': collections.Counter(),
    'sizes': collections.Counter(),
    'modes': collections.Counter(),
    'bad': [],
  }
  for root, dirs, names in os.walk(path):
    dirs.sort()
    for name in sorted(names):
      file = os.path.join(root, name)
      if not images.is_image_file(file):
        continue
      report['files'] += 1
      report['formats'][os.path.splitext(name)[1].lower().lstrip('.')] += 1
      try:
        info = images.describe(file)
      except images.BadImageError as e:
        report['bad'].append((file, e.reason))
        continue
      report['sizes'][info['size']] += 1
      report['modes'][info['mode']] += 1
  return report


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--path', required=True, help='the folder (data.path)')
  args = parser.parse_args(argv)
  if not os.path.isdir(args.path):
    print(f'error: {args.path} is not a directory', file=sys.stderr)
    return 2
  report = scan(args.path)
  print(f'{report["files"]} image files under {args.path}')
  for key in ('formats', 'sizes', 'modes'):
    counts = ', '.join(f'{k}: {n}' for k, n in report[key].most_common())
    print(f'{key}: {counts or "-"}')
  print(f'{len(report["bad"])} unreadable:')
  for file, why in report['bad']:
    print(f'  {file}: {why}')
  return 0


if __name__ == '__main__':
  sys.exit(main())

"""Scans an image folder once: how many files of each format, size and pixel mode, every file
that cannot be read (what the folder source would skip), and the per-channel pixel mean and std
to standardize with (config.model.pixel_mean / pixel_std).

  python -m ssljax.data.scan --path=DIR
"""

from __future__ import annotations

import argparse
import collections
import os
import sys

import numpy as np

from ssljax.data import images


def scan(path: str) -> dict:
  """{'files': n, 'formats': Counter, 'sizes': Counter, 'modes': Counter, 'bad': [(file, why)],
  'pixel_mean': (...), 'pixel_std': (...)}; files without an image extension are not counted.

  The statistics are over every pixel of the readable files, in [0, 1] as the folder source
  reads them (DICOM in its own window); with any colour file there are three channels and a
  grayscale file counts in each, as the source would replicate it."""
  report = {
    'files': 0,
    'formats': collections.Counter(),
    'sizes': collections.Counter(),
    'modes': collections.Counter(),
    'bad': [],
  }
  sums = {1: np.zeros((3, 1)), 3: np.zeros((3, 3))}  # channels -> (pixels, sum, sum of squares)
  for root, dirs, names in os.walk(path):
    dirs.sort()
    for name in sorted(names):
      file = os.path.join(root, name)
      if not images.is_image_file(file):
        continue
      report['files'] += 1
      report['formats'][os.path.splitext(name)[1].lower().lstrip('.')] += 1
      try:
        pixels = images.read_image(file)
        info = images.describe(file, pixels)
      except images.BadImageError as e:
        report['bad'].append((file, e.reason))
        continue
      report['sizes'][info['size']] += 1
      report['modes'][info['mode']] += 1
      x = pixels.reshape(-1, pixels.shape[-1]).astype(np.float64)
      sums[x.shape[1]] += [np.full(x.shape[1], len(x)), x.sum(0), np.square(x).sum(0)]
  total = sums[3] + sums[1] if sums[3][0, 0] else sums[1]  # a gray file adds to each channel
  n = np.maximum(total[0], 1)
  mean = total[1] / n
  report['pixel_mean'] = tuple(np.round(mean, 4).tolist())
  report['pixel_std'] = tuple(np.round(np.sqrt(np.maximum(total[2] / n - mean**2, 0)), 4).tolist())
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
  mean, std = (','.join(map(str, report[k])) for k in ('pixel_mean', 'pixel_std'))
  print(
    f'pixel statistics: --config.model.pixel_mean="({mean},)" --config.model.pixel_std="({std},)"'
  )
  print(f'{len(report["bad"])} unreadable:')
  for file, why in report['bad']:
    print(f'  {file}: {why}')
  return 0


if __name__ == '__main__':
  sys.exit(main())

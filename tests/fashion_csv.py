"""A medical-style folder made from Fashion-MNIST for the multi-label tests: 16-bit PNGs, a CSV of
multi-hot labels derived from the classes, uncertain entries, fake patients with several images
each, and a few bad rows (a missing file, a value that is not a label)."""

from __future__ import annotations

import csv
import os

import numpy as np
from PIL import Image

from ssljax.data.sources.idx import read_idx

FASHION_MNIST = '/usr/share/datasets/fashion-mnist'
# Fashion-MNIST classes: 0 T-shirt/top, 1 trouser, 2 pullover, 3 dress, 4 coat, 5 sandal,
# 6 shirt, 7 sneaker, 8 bag, 9 ankle boot.
LABELS = {'top': (0, 2, 4, 6), 'long_sleeves': (2, 4, 6), 'footwear': (5, 7, 9)}
BAD_ROWS = 2  # one missing file, one value that is not a label


def fashion(n: int, split: str = 't10k') -> tuple[np.ndarray, np.ndarray]:
  """The first n images (uint8 (n, 28, 28)) and classes of a Fashion-MNIST file pair."""
  images = read_idx(os.path.join(FASHION_MNIST, f'{split}-images-idx3-ubyte.gz'))[:n]
  labels = read_idx(os.path.join(FASHION_MNIST, f'{split}-labels-idx1-ubyte.gz'))[:n]
  return images, labels.astype(np.int64)


def write(
  root,
  n: int = 240,
  *,
  per_patient: int = 4,
  uncertain: float = 0.1,
  seed: int = 0,
  split_column: bool = False,
  bad_rows: bool = True,
) -> str:
  """root/images/pNNNN/iMMMMM.png (16-bit) and root/labels.csv; returns the CSV's path.
  Uncertain entries are written as -1 or blank, half each."""
  images, classes = fashion(n)
  rng = np.random.default_rng(seed)
  folder = os.path.join(root, 'images')
  rows = []
  for i, (pixels, c) in enumerate(zip(images, classes, strict=True)):
    patient = f'p{i // per_patient:04d}'
    rel = f'{patient}/i{i:05d}.png'
    os.makedirs(os.path.join(folder, patient), exist_ok=True)
    Image.fromarray(pixels.astype(np.uint16) * 257).save(os.path.join(folder, rel))
    values = []
    for members in LABELS.values():
      v = '1' if c in members else '0'
      if rng.random() < uncertain:
        v = '-1' if rng.random() < 0.5 else ''
      values.append(v)
    row = {'path': rel, **dict(zip(LABELS, values, strict=True)), 'patient': patient}
    if split_column:
      row['split'] = 'test' if (i // per_patient) % 5 == 0 else 'train'
    rows.append(row)
  if bad_rows:
    rows.append({**rows[0], 'path': 'p9999/missing.png', 'patient': 'p9999'})
    rows.append({**rows[1], 'path': rows[1]['path'].replace('.png', '_x.png'), 'top': 'maybe'})
    Image.fromarray(images[1].astype(np.uint16) * 257).save(os.path.join(folder, rows[-1]['path']))
  file = os.path.join(root, 'labels.csv')
  with open(file, 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  return file

"""Peak host memory of an evaluation whose protocol trains on the images (`linear_sgd`) against
the number of train images: the protocol streams them from the split, so it should stay flat.

python experiments/eval_memory.py [--sizes=20000,200000] [--steps=50] [--root=/tmp/eval_memory]
    [--code=DIR ...] [--out=experiments/results/eval_memory.json]

Writes folders of N grey 28 px PNGs (Fashion-MNIST's train images, cycled past 60,000; a test
split of 2,000), pretrains SimCLR (configs/simclr_fashion_mnist.py on the folder, 32 px) for 2
steps with evaluation off, then runs `python -m ssljax.evaluate` with eval=('linear_sgd',) for
--steps steps (batch 256, min_steps; the random-init pass off) and reports its peak RSS and wall
time. --code runs the same with another checkout (a commit before the streaming: its
evaluation held the budget's images as float32 in memory).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import json
import os
import platform
import sys
import tempfile

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from folder_scale import FASHION_MNIST, REPO, measured  # noqa: E402


def _png(pixels: np.ndarray) -> bytes:
  out = io.BytesIO()
  Image.fromarray(pixels).save(out, format='PNG')
  return out.getvalue()


def write_folder(root: str, n: int, n_test: int = 2000) -> str:
  """root/fmnist_cycled_N/{train,test}/class_C/*.png: image i is Fashion-MNIST's i % 60000."""
  sys.path.insert(0, REPO)
  from ssljax.data import sources

  folder = os.path.join(root, f'fmnist_cycled_{n}')
  done = os.path.join(folder, 'done')
  if os.path.exists(done):
    return folder
  images = sources.read_idx(os.path.join(FASHION_MNIST, 'train-images-idx3-ubyte.gz'))
  labels = sources.read_idx(os.path.join(FASHION_MNIST, 'train-labels-idx1-ubyte.gz'))
  encoded = [_png(x) for x in images[: min(n + n_test, len(images))]]
  for split in ('train', 'test'):
    for c in range(10):
      os.makedirs(os.path.join(folder, split, f'class_{c}'), exist_ok=True)

  def write(job):  # test: the last n_test encoded images; train: the others, cycled
    split, i = job
    k = (len(encoded) - 1 - i) if split == 'test' else i % (len(encoded) - n_test)
    path = os.path.join(folder, split, f'class_{labels[k]}', f'{i:07d}.png')
    with open(path, 'wb') as f:
      f.write(encoded[k])

  jobs = [('train', i) for i in range(n)] + [('test', i) for i in range(n_test)]
  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    list(pool.map(write, jobs, chunksize=1024))
  open(done, 'w').close()
  return folder


def evaluation(folder: str, steps: int, code: str) -> dict:
  """Pretrain 2 steps, then `ssljax.evaluate` with linear_sgd only; the evaluation's numbers."""
  workdir = tempfile.mkdtemp(prefix='eval_memory_')
  common = [
    '--config=configs/simclr_fashion_mnist.py',
    f'--workdir={workdir}',
    '--config.data.source=folder',
    f'--config.data.path={folder}',
    '--config.data.image_size=32',
    '--config.augment.image_size=32',
    '--config.eval_config.random_init=False',
    '--config.report=False',
  ]
  train = ['--config.total_steps=2', '--config.batch_size=64', '--config.eval=()']
  measured([sys.executable, '-m', 'ssljax.main', *common, *train], cwd=code)
  protocol = [
    "--config.eval=('linear_sgd',)",
    '--config.eval_config.linear_sgd.batch_size=256',
    '--config.eval_config.linear_sgd.epochs=0.001',
    f'--config.eval_config.linear_sgd.min_steps={steps}',
  ]
  row = measured([sys.executable, '-m', 'ssljax.evaluate', *common, *protocol], cwd=code)
  with open(os.path.join(workdir, 'eval.json')) as f:
    row['linear_sgd'] = json.load(f)['pretrained']['linear_sgd']
  return row


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--sizes', default='20000,200000')
  parser.add_argument('--steps', type=int, default=50)
  parser.add_argument('--root', default='/tmp/eval_memory')
  parser.add_argument('--code', action='append', default=[], help='another checkout to run too')
  parser.add_argument('--out', default=os.path.join(REPO, 'experiments/results/eval_memory.json'))
  args = parser.parse_args()
  rows = []
  for code in [REPO, *args.code]:
    for n in [int(s) for s in args.sizes.split(',')]:
      folder = write_folder(args.root, n)
      row = {'code': code, 'train_images': n, **evaluation(folder, args.steps, code)}
      print(json.dumps(row), flush=True)
      rows.append(row)
  print(f'\n{"code":<24} {"train images":>12} {"peak RSS MB":>12} {"wall s":>8} {"top-1":>7}')
  for r in rows:
    name = os.path.basename(r['code'].rstrip('/'))
    print(
      f'{name:<24} {r["train_images"]:>12,} {r["peak_rss_mb"]:>12,.0f} {r["wall_s"]:>8.0f} '
      f'{r["linear_sgd"]:>7.4f}'
    )
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump({'machine': platform.processor() or platform.machine(), 'rows': rows}, f, indent=2)


if __name__ == '__main__':
  main()

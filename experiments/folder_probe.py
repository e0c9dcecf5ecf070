"""The linear probe of a run on a folder of 50,000 train images, and the host memory evaluation
takes: splits are encoded a batch at a time, so only features stay in memory, never the images.

python experiments/folder_probe.py [--train=50000] [--steps=100] [--root=/tmp/folder_scale]
    [--out=experiments/results/folder_probe.json] [-- extra --config.* flags]

Writes Fashion-MNIST as 96 px RGB PNGs (train/: its first N train images, test/: its 10,000
test images, one subfolder per class), pretrains SimCLR for --steps steps at --image_size (32 px)
with evaluation off, then runs `python -m ssljax.evaluate` (linear probe and k-NN, pretrained
and random encoder) on the run and reports its accuracies, wall time and peak RSS: the
evaluation alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from folder_scale import REPO, run, write_folder  # noqa: E402


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--train', type=int, default=50_000)
  parser.add_argument('--steps', type=int, default=100)
  parser.add_argument('--image_size', type=int, default=32)
  parser.add_argument('--root', default='/tmp/folder_scale')
  parser.add_argument('--out', default=os.path.join(REPO, 'experiments/results/folder_probe.json'))
  args, extra = parser.parse_known_args()
  extra = [e for e in extra if e != '--']
  t = time.perf_counter()
  folder = os.path.join(args.root, f'fmnist_split_{args.train}')
  if not os.path.isdir(os.path.join(folder, 'test')):
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    os.rename(write_folder(args.root, args.train), os.path.join(folder, 'train'))
    os.rename(write_folder(args.root, 10_000, split='test'), os.path.join(folder, 'test'))
  print(f'{folder}: {time.perf_counter() - t:.0f} s to write', flush=True)
  workdir = tempfile.mkdtemp(prefix='probe_')
  size = args.image_size
  pretrain = run(folder, workdir, args.steps, extra, image_size=size)
  evaluation = run(
    folder,
    workdir,
    args.steps,
    extra,
    evaluation=("--config.eval=('linear', 'knn')", '--config.eval_config.random_init=True'),
    module='ssljax.evaluate',
    image_size=size,
  )
  with open(os.path.join(workdir, 'eval.json')) as f:
    results = json.load(f)
  row = {
    'train_images': args.train,
    'test_images': 10_000,
    'pretrain_steps': args.steps,
    'image_size': size,
    'pretrain': pretrain,
    'evaluation': evaluation,
    'accuracy': {k: results[k] for k in ('pretrained', 'random_init')},
  }
  print(f'\n{args.train} train / 10000 test PNGs (96 px, read at {size} px), {args.steps} steps')
  print(f'{"phase":>12} {"peak RSS MB":>12} {"wall s":>8}')
  for phase in ('pretrain', 'evaluation'):
    print(f'{phase:>12} {row[phase]["peak_rss_mb"]:>12.0f} {row[phase]["wall_s"]:>8.1f}')
  for encoder, accuracy in row['accuracy'].items():
    print(f'{encoder:>12}: ' + ', '.join(f'{k} {v:.4f}' for k, v in accuracy.items()))
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump({'machine': f'{platform.machine()} {os.cpu_count()} CPUs', **row}, f, indent=2)
  print(f'wrote {args.out}')


if __name__ == '__main__':
  main()

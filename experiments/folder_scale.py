"""Peak host memory and time of a short run on image folders of growing size: the streamed folder
source should keep both flat in the number of images.

python experiments/folder_scale.py [--sizes=6000,60000] [--steps=20] [--root=/tmp/folder_scale]
    [--out=experiments/results/folder_scale.json] [-- extra --config.* flags]

Writes Fashion-MNIST's train images (Debian's dataset-fashion-mnist) as 96 px RGB PNGs, one
subfolder per class, the first N for each size; then, per size, runs `python -m ssljax.main` for
`--steps` steps with evaluation off, twice: in a fresh workdir (the folder is listed) and in a
second one holding the first's cached file list (a restart); then the input pipeline alone for
100 steps. Reports each child's peak RSS (getrusage), the time to its first step and its wall
time, and the input pipeline's images/s.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FASHION_MNIST = '/usr/share/datasets/fashion-mnist'


def _write_one(args) -> None:
  path, pixels = args
  Image.fromarray(pixels).convert('RGB').resize((96, 96), Image.BICUBIC).save(path)


def write_folder(root: str, n: int, split: str = 'train') -> str:
  """The first n Fashion-MNIST images of `split` ('train' or 'test') as 96 px RGB PNGs under
  root/fmnist_[test_]n/CLASS/."""
  sys.path.insert(0, REPO)
  from ssljax.data import sources

  folder = os.path.join(root, f'fmnist_{"test_" if split == "test" else ""}{n}')
  if os.path.isdir(folder) and sum(len(f) for _, _, f in os.walk(folder)) == n:
    return folder
  shutil.rmtree(folder, ignore_errors=True)
  prefix = 't10k' if split == 'test' else 'train'
  images = sources.read_idx(os.path.join(FASHION_MNIST, f'{prefix}-images-idx3-ubyte.gz'))[:n]
  labels = sources.read_idx(os.path.join(FASHION_MNIST, f'{prefix}-labels-idx1-ubyte.gz'))[:n]
  for c in range(10):
    os.makedirs(os.path.join(folder, f'class_{c}'))
  jobs = [
    (os.path.join(folder, f'class_{y}', f'{i:06d}.png'), x)
    for i, (x, y) in enumerate(zip(images, labels, strict=True))
  ]
  with concurrent.futures.ProcessPoolExecutor() as pool:
    list(pool.map(_write_one, jobs, chunksize=256))
  return folder


EVAL_OFF = ('--config.eval=()', '--config.eval_config.random_init=False')


def run(
  folder: str,
  workdir: str,
  steps: int,
  extra: list[str],
  *,
  evaluation=EVAL_OFF,
  module: str = 'ssljax.main',
  image_size: int = 64,
) -> dict:
  """Runs `python -m MODULE` (ssljax.main or ssljax.evaluate) on the folder; its peak RSS, time
  to the first logged step and wall time."""
  args = [
    sys.executable,
    '-m',
    module,
    '--config=configs/simclr_fashion_mnist.py',
    f'--workdir={workdir}',
    '--config.data.source=folder',
    f'--config.data.path={folder}',
    f'--config.data.image_size={image_size}',
    f'--config.augment.image_size={image_size}',
    '--config.batch_size=64',
    f'--config.total_steps={steps}',
    '--config.log_every=1',
    f'--config.checkpoint_every={steps}',
    *evaluation,
    '--config.report=False',
    *extra,
  ]
  return measured(args)


def measured(args: list[str], cwd: str = REPO) -> dict:
  """Runs `args` in `cwd`; its peak RSS, time to its first ' step 1/' line and wall time."""
  env = {**os.environ, 'PYTHONUNBUFFERED': '1', 'JAX_PLATFORMS': 'cpu'}
  start = time.perf_counter()
  proc = subprocess.Popen(
    args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
  )
  marks, lines = {}, []

  def watch():
    for line in proc.stdout:
      lines.append(line)
      if 'first_step' not in marks and ' step 1/' in line:
        marks['first_step'] = time.perf_counter()

  reader = threading.Thread(target=watch, daemon=True)
  reader.start()
  _, status, usage = os.wait4(proc.pid, 0)
  end = time.perf_counter()
  reader.join(10)
  proc.returncode = os.waitstatus_to_exitcode(status)
  if proc.returncode != 0:
    raise SystemExit(f'run failed ({proc.returncode}):\n' + ''.join(lines[-40:]))
  return {
    'peak_rss_mb': round(usage.ru_maxrss / 1024, 1),  # Linux: kilobytes
    'first_step_s': round(marks['first_step'] - start, 2) if marks else None,
    'wall_s': round(end - start, 2),
    **{k: float(v) for k, v in (ln.split()[1:3] for ln in lines if ln.startswith('measured '))},
  }


def input_only(folder: str, steps: int) -> None:
  """The input pipeline alone (run in a child by `--input_only`): batch 64 views at 64 px."""
  sys.path.insert(0, REPO)
  from ml_collections import config_flags  # noqa: F401  (the configs import it)

  from ssljax import data
  from ssljax.methods import SimCLR

  config = SimCLR.default_config(64)
  config.data.source, config.data.path = 'folder', folder
  config.batch_size = 64
  batches = data.build_train_iterator(config)
  next(batches)
  print(' step 1/', flush=True)
  start = time.perf_counter()
  for _ in range(steps):
    next(batches)
  print(f'measured input_img_per_s {steps * 64 / (time.perf_counter() - start):.1f}', flush=True)
  batches.close()


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--sizes', default='6000,60000')
  parser.add_argument('--steps', type=int, default=20)
  parser.add_argument('--root', default='/tmp/folder_scale')
  parser.add_argument('--out', default=os.path.join(REPO, 'experiments/results/folder_scale.json'))
  parser.add_argument('--input_only', default='', help=argparse.SUPPRESS)
  args, extra = parser.parse_known_args()
  extra = [e for e in extra if e != '--']
  if args.input_only:
    return input_only(args.input_only, 100)
  rows = []
  for n in (int(s) for s in args.sizes.split(',')):
    t = time.perf_counter()
    folder = write_folder(args.root, n)
    print(f'{n} PNGs in {folder} ({time.perf_counter() - t:.0f} s)', flush=True)
    first = tempfile.mkdtemp(prefix=f'scale_{n}_')
    listed = run(folder, first, args.steps, extra)
    second = tempfile.mkdtemp(prefix=f'scale_{n}_cached_')
    for f in os.listdir(first):
      if f.startswith('folder_index_'):
        shutil.copy(os.path.join(first, f), second)
    cached = run(folder, second, args.steps, extra)
    alone = measured([sys.executable, os.path.abspath(__file__), f'--input_only={folder}'])
    rows.append({'images': n, 'listed': listed, 'cached_list': cached, 'input_only': alone})
  print(f'\n{args.steps}-step runs, batch 64 at 64 px, evaluation off ({os.cpu_count()} CPUs)')
  print(f'{"images":>8} {"run":>11} {"peak RSS MB":>12} {"first step s":>13} {"wall s":>8}')
  for r in rows:
    for kind in ('listed', 'cached_list', 'input_only'):
      m = r[kind]
      print(
        f'{r["images"]:>8} {kind:>11} {m["peak_rss_mb"]:>12.0f} {m["first_step_s"]:>13.1f} '
        f'{m["wall_s"]:>8.1f}'
      )
  for r in rows:
    rate = r['input_only']['input_img_per_s']
    print(f'input pipeline alone, {r["images"]} images: {rate:.0f} img/s (100 steps of 64)')
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump(
      {'machine': f'{platform.machine()} {os.cpu_count()} CPUs', 'steps': args.steps, 'rows': rows},
      f,
      indent=2,
    )
  print(f'wrote {args.out}')


if __name__ == '__main__':
  np.seterr(all='ignore')
  main()

"""The quickstart (configs/simclr_digits.py) on both kernel paths of config.model.kernels, over
seeds: is the accelerator's path ('xla', run here on the CPU) as good as the CPU kernels ('cpu'),
and how fast is each on this CPU? Issue 42.

python experiments/kernels_quickstart.py [--seeds=0,1,2,3,4] [--root=runs/kernels_quickstart]

Each run is `python -m ssljax.main --config=configs/simclr_digits.py --config.model.kernels=K
--config.seed=S --workdir=ROOT/qs_K_sS`, one at a time, alternating the paths seed by seed; a run
whose workdir already holds results.json is read, not run again. Then the same seed-0 runs on one
XLA:CPU device (SSLJAX_XLA_CPU_FLAGS=none), which sums in another order on the same path: how far
rounding alone moves the probes. Writes experiments/results/kernels_quickstart.json: linear / 5
per class / k-NN, the last logged loss, and the median images/s of the logged windows after the
first (which holds the compile).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

from absl import app, flags

_SEEDS = flags.DEFINE_list('seeds', ['0', '1', '2', '3', '4'], 'seeds of each path')
_ROOT = flags.DEFINE_string('root', 'runs/kernels_quickstart', 'where the runs are kept')
_OUT = flags.DEFINE_string('out', 'experiments/results/kernels_quickstart.json', 'results file')


def _run(workdir: str, kernels: str, seed: str, env: dict | None = None) -> dict:
  if not os.path.exists(os.path.join(workdir, 'results.json')):
    command = [
      sys.executable,
      '-m',
      'ssljax.main',
      '--config=configs/simclr_digits.py',
      f'--config.model.kernels={kernels}',
      f'--config.seed={seed}',
      f'--workdir={workdir}',
    ]
    subprocess.run(command, check=True, env={**os.environ, **(env or {})})
  with open(os.path.join(workdir, 'results.json')) as f:
    probes = json.load(f)['pretrained']
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    lines = [json.loads(line) for line in f]
  steps = [x for x in lines if 'images_per_sec' in x]
  return {
    'kernels': kernels,
    'seed': int(seed),
    **{k: round(100 * v, 2) for k, v in probes.items()},
    'loss': steps[-1]['loss'],
    'images_per_sec': round(statistics.median(x['images_per_sec'] for x in steps[1:])),
  }


def main(argv):
  del argv
  rows = []
  for seed in _SEEDS.value:
    for kernels in ('cpu', 'xla'):
      rows.append(_run(os.path.join(_ROOT.value, f'qs_{kernels}_s{seed}'), kernels, seed))
  for kernels in ('cpu', 'xla'):
    one_device = _run(
      os.path.join(_ROOT.value, f'qs_{kernels}_s0_1dev'),
      kernels,
      '0',
      {'SSLJAX_XLA_CPU_FLAGS': 'none'},
    )
    rows.append({**one_device, 'devices': 1})
  print('kernels  seed dev  linear 5/class   k-NN  img/s')
  for r in rows:
    print(
      f'{r["kernels"]:8s} {r["seed"]:4d} {r.get("devices", 2):3d} {r["linear"]:7.1f} '
      f'{r["linear_5_per_class"]:7.1f} {r["knn"]:6.1f} {r["images_per_sec"]:6d}'
    )
  summary = {}
  for kernels in ('cpu', 'xla'):
    mine = [r for r in rows if r['kernels'] == kernels and 'devices' not in r]
    summary[kernels] = {
      k: [
        round(statistics.mean(r[k] for r in mine), 2),
        round(statistics.stdev(r[k] for r in mine), 2),
      ]
      for k in ('linear', 'linear_5_per_class', 'knn', 'images_per_sec')
    }
    print(kernels, 'mean, std over seeds:', summary[kernels])
  with open(_OUT.value, 'w') as f:
    json.dump({'rows': rows, 'mean_std': summary}, f, indent=2)


if __name__ == '__main__':
  app.run(main)

"""The five Fashion-MNIST presets against their random encoders and raw pixels (issue 18).

python experiments/fashion_mnist_presets.py [--only=simclr,ijepa] [--runs=runs/presets]

Runs `python -m ssljax.main --config=configs/<method>_fashion_mnist.py` for each method, one at a
time (run it on an otherwise idle machine: the wall time is part of the result), keeps each
workdir under --runs (label_efficiency.py reads their checkpoints), and records the wall time,
linear / 5-per-class / k-NN of the pretrained and random encoders, the last health metrics and
the bar of issue 18 (+5 points over the random encoder on k-NN and 5 per class; SimCLR also
above raw pixels on all three) in experiments/results/fashion_mnist_presets.json, merged with
the methods run before. --summarize prints the table only.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

from absl import app, flags
from scipy.stats import spearmanr  # scikit-learn's dependency

_ONLY = flags.DEFINE_list('only', [], 'methods to run (default: all five)')
_RUNS = flags.DEFINE_string('runs', 'runs/presets', 'where the workdirs are kept')
_OUT = flags.DEFINE_string('out', 'experiments/results/fashion_mnist_presets.json', 'results')
_SUMMARIZE = flags.DEFINE_bool('summarize', False, 'only print the table of --out')

METHODS = ('simclr', 'byol', 'dino', 'mae', 'ijepa')
PROBES = ('linear', 'linear_5_per_class', 'knn')
RAW_PIXELS = 'experiments/results/raw_pixels_simclr_fashion_mnist.json'  # raw_pixel_baseline.py
BUDGET_S = 30 * 60


def run(method: str) -> dict:
  return run_config(
    f'configs/{method}_fashion_mnist.py', os.path.join(_RUNS.value, f'{method}_fashion_mnist')
  )


def run_config(config: str, workdir: str, overrides: tuple[str, ...] = ()) -> dict:
  """`python -m ssljax.main` on `config` in a fresh `workdir`: its wall time, results, last
  health metrics and median training speed."""
  if os.path.exists(workdir):
    shutil.rmtree(workdir)  # a fresh run: the wall time covers training and evaluation
  command = [
    sys.executable,
    '-m',
    'ssljax.main',
    f'--config={config}',
    f'--workdir={workdir}',
    *overrides,
  ]
  start = time.perf_counter()
  subprocess.run(command, check=True)
  wall = time.perf_counter() - start
  with open(os.path.join(workdir, 'results.json')) as f:
    results = json.load(f)
  lines = [json.loads(x) for x in open(os.path.join(workdir, 'metrics.jsonl'))]
  health = [x for x in lines if 'health/rankme_h' in x]
  speeds = sorted(x['images_per_sec'] for x in lines if 'images_per_sec' in x)
  return dict(
    wall_s=round(wall, 1),
    step=results['step'],
    pretrained=results['pretrained'],
    random_init=results['random_init'],
    health={k: v for k, v in (health[-1] if health else {}).items() if k.startswith('health/')},
    train_images_per_sec_median=speeds[len(speeds) // 2] if speeds else None,
    command=' '.join(command[1:]),
  )


def passes(method: str, r: dict, raw: dict) -> bool:
  gain = all(r['pretrained'][k] - r['random_init'][k] >= 0.05 for k in ('knn', PROBES[1]))
  above_raw = method != 'simclr' or all(r['pretrained'][k] > raw[k] for k in PROBES)
  return gain and above_raw and r['wall_s'] <= BUDGET_S


def main(argv):
  del argv
  with open(RAW_PIXELS) as f:
    raw = json.load(f)['raw_pixels']
  out = {}
  if os.path.exists(_OUT.value):
    with open(_OUT.value) as f:
      out = json.load(f)['presets']
  for method in [] if _SUMMARIZE.value else _ONLY.value or METHODS:
    out[method] = run(method)
    with open(_OUT.value, 'w') as f:  # after every run: a later failure keeps the earlier ones
      json.dump({'raw_pixels': raw, 'presets': out}, f, indent=1)
  print(f'{"method":8s} {"wall":>7s}  ' + '  '.join(f'{k:>26s}' for k in PROBES) + '  bar')
  print(f'{"":17s}' + '  '.join(f'{"pretrained / random / raw":>26s}' for _ in PROBES))
  for method in (m for m in METHODS if m in out):
    r = out[method]
    cells = [
      f'{100 * r["pretrained"][k]:8.2f} / {100 * r["random_init"][k]:6.2f} / {100 * raw[k]:5.2f}'
      for k in PROBES
    ]
    ok = 'met' if passes(method, r, raw) else 'NOT met'
    print(f'{method:8s} {r["wall_s"] / 60:5.1f}m  ' + '  '.join(cells) + f'  {ok}')
  done = [out[m] for m in METHODS if m in out and out[m]['health']]
  if len(done) >= 3:
    rho = float(
      spearmanr(
        [r['health']['health/rankme_h'] for r in done], [r['pretrained']['knn'] for r in done]
      )[0]
    )
    print(f'Spearman(final RankMe of h, k-NN) over these {len(done)} runs: {rho:.3f}')


if __name__ == '__main__':
  app.run(main)

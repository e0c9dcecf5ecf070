"""Healthy and collapsed runs on digits: where do the label-free health metrics sit at each end?

Trains every method's digits config as it is (the healthy end) and variants made to collapse
(the other end), then prints, per run, the lowest RankMe and normalised std of h over its log
steps, their last values and the k-NN accuracy. config.health.min_rankme / min_std
(`monitor.collapse`) must lie between the two ends; the rank correlation of the last RankMe with
k-NN over all runs is item 3's evidence (`experiments/results/collapse_health.json`).

python experiments/collapse_health.py --out=experiments/results/collapse_health.json
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app, flags
from scipy.stats import spearmanr  # scikit-learn's dependency

from ssljax.monitor import collapse

_OUT = flags.DEFINE_string('out', 'experiments/results/collapse_health.json', 'results file')
_ONLY = flags.DEFINE_list('only', [], 'run names to run (default: all)')
_SUMMARIZE = flags.DEFINE_bool('summarize', False, 'only print the table of the runs in --out')

# name -> (config, overrides, expected end)
RUNS = {
  'simclr': ('simclr_digits', [], 'healthy'),
  'byol': ('byol_digits', [], 'healthy'),
  'dino': ('dino_digits', [], 'healthy'),
  'mae': ('mae_digits', [], 'healthy'),
  'ijepa': ('ijepa_digits', [], 'healthy'),
  # No BatchNorm in the head and no centering: the teacher's sharpened output has nothing
  # keeping it from one prototype.
  'dino_no_center': (
    'dino_digits',
    ['--config.dino.use_bn=False', '--config.dino.center_momentum=1.0'],
    'collapsed',
  ),
  # Centering without sharpening (the teacher as soft as the student): uniform collapse.
  'dino_no_sharpen': (
    'dino_digits',
    [
      '--config.dino.use_bn=False',
      '--config.dino.teacher_temp=0.1',
      '--config.dino.warmup_teacher_temp=0.1',
    ],
    'collapsed',
  ),
  # The target is the online network itself (momentum 0): nothing stops both drifting together.
  'byol_no_ema': ('byol_digits', ['--config.ema.base=0.0', '--config.base_lr=3.0'], 'no_collapse'),
  # A SimCLR sweep (item 3: does RankMe rank runs of one method by their k-NN accuracy?).
  'simclr_t0.05': ('simclr_digits', ['--config.loss.temperature=0.05'], 'sweep'),
  'simclr_t1': ('simclr_digits', ['--config.loss.temperature=1.0'], 'sweep'),
  'simclr_5ep': ('simclr_digits', ['--config.epochs=5'], 'sweep'),
  'simclr_lr0.1': ('simclr_digits', ['--config.base_lr=0.1'], 'sweep'),
}


def first_collapse(run: dict) -> int | None:
  """The first logged step whose health is below the default floors (ssljax.monitor.collapse)."""
  config = {'health': {'min_rankme': collapse.MIN_RANKME, 'min_std': collapse.MIN_STD}}
  for i, step in enumerate(run['steps']):
    if collapse.below_floor({k: v[i] for k, v in run['other'].items()}, config):
      return step
  return None


def run_one(name: str, config: str, overrides: list[str], workdir: str) -> dict:
  start = time.perf_counter()
  command = [
    sys.executable,
    '-m',
    'ssljax.main',
    f'--config=configs/{config}.py',
    f'--workdir={workdir}',
    "--config.eval=('knn', 'linear_few')",
    '--config.eval_config.random_init=False',
    '--config.visualize.embeddings=False',
    '--config.visualize.attention=False',
    '--config.visualize.reconstructions=False',
    '--config.report=False',
    *overrides,
  ]
  done = subprocess.run(command, capture_output=True, text=True)
  if done.returncode != 0:
    raise RuntimeError(f'{name} failed:\n{done.stderr[-3000:]}')
  lines = [json.loads(x) for x in open(os.path.join(workdir, 'metrics.jsonl'))]
  health = [x for x in lines if 'health/rankme_h' in x]
  with open(os.path.join(workdir, 'results.json')) as f:
    results = json.load(f)['pretrained']
  return dict(
    config=config,
    overrides=overrides,
    seconds=round(time.perf_counter() - start, 1),
    steps=[x['step'] for x in health],
    rankme_h=[x['health/rankme_h'] for x in health],
    std_h=[x['health/std_h'] for x in health],
    other={k: [x[k] for x in health] for k in health[0] if k.startswith('health/')},
    knn=results['knn'],
    linear_few=results['linear_5_per_class'],
    warned='representation collapse' in done.stderr,
  )


def main(argv):
  del argv
  out = {}
  if os.path.exists(_OUT.value):
    with open(_OUT.value) as f:
      out = json.load(f).get('runs', {})
  names = [] if _SUMMARIZE.value else _ONLY.value or list(RUNS)
  with tempfile.TemporaryDirectory() as tmp:
    for name in names:
      config, overrides, end = RUNS[name]
      out[name] = {**run_one(name, config, overrides, os.path.join(tmp, name)), 'end': end}
      print(name, json.dumps({k: out[name][k] for k in ('knn', 'seconds', 'warned')}), flush=True)
  names = ('rankme_h', 'std_h', 'rankme_z', 'std_z', 'agreement')
  print(
    f'{"run":16s} {"end":9s} ' + ' '.join(f'{n:>17s}' for n in names) + '   k-NN  5/cls collapse at'
  )
  print(f'{"":26s}' + ' '.join(f'{"min / last":>17s}' for _ in names))
  for name, r in out.items():
    cells = []
    for n in names:
      v = r['other'].get(f'health/{n}')
      cells.append(f'{min(v):8.3g} / {v[-1]:6.3g}' if v else f'{"-":>17s}')
    print(
      f'{name:16s} {r["end"]:9s} ' + ' '.join(cells) + f' {100 * r["knn"]:6.1f} '
      f'{100 * r["linear_few"]:6.1f} {first_collapse(r)}'
    )
  correlations = {}
  for method in sorted({r['config'].split('_')[0] for r in out.values()}) + ['all']:
    runs = [r for r in out.values() if method in ('all', r['config'].split('_')[0])]
    if len(runs) < 3:
      continue
    rho = float(spearmanr([r['rankme_h'][-1] for r in runs], [r['knn'] for r in runs])[0])
    correlations[method] = {'spearman': rho, 'runs': len(runs)}
    print(f'Spearman(final RankMe of h, k-NN), {method}: {rho:.3f} over {len(runs)} runs')
  os.makedirs(os.path.dirname(_OUT.value) or '.', exist_ok=True)
  with open(_OUT.value, 'w') as f:
    json.dump({'runs': out, 'spearman_rankme_knn': correlations}, f, indent=1)


if __name__ == '__main__':
  app.run(main)

"""The collapse warning on real runs, as a user starts them (slow tier): silent on the README's
quickstart, fired on a DINO run made to collapse (no centering, no BatchNorm in the head: the
teacher's sharpened output has nothing keeping it off one prototype; the two ends of
experiments/results/collapse_health.json)."""

import json
import os

import pytest

from ssljax.monitor import collapse

WARNING = 'representation collapse at step'


def _main(start_main, workdir: str, config: str, *overrides: str) -> str:
  """The output (stdout and stderr) of `python -m ssljax.main` on one CPU device, as the README
  runs it: conftest's start_main, whose environment drops the fast tier's unoptimised-code flag
  (a full run would be several times slower)."""
  run = start_main(workdir, f'--config=configs/{config}', *overrides, devices=1)
  out, _ = run.communicate(timeout=900)
  assert run.returncode == 0, out[-3000:]
  return out


def _health_rows(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  return [r for r in rows if 'health/rankme_h' in r]


@pytest.mark.slow  # the whole quickstart (~2 minutes on 2 cores)
def test_the_quickstart_trains_without_a_collapse_warning(tmp_path, start_main):
  workdir = str(tmp_path / 'quickstart')
  out = _main(start_main, workdir, 'simclr_digits.py', "--config.eval=('knn',)")
  assert WARNING not in out
  with open(os.path.join(workdir, 'report.md')) as f:
    assert WARNING not in f.read()
  rows = _health_rows(workdir)
  assert len(rows) >= 7  # every 20th of its 150 steps
  # Well clear of the floors (collapse.MIN_RANKME, MIN_STD), not just above them.
  assert min(r['health/rankme_z'] for r in rows) > 4.0
  assert min(r['health/std_h'] for r in rows) > 0.1
  with open(os.path.join(workdir, 'results.json')) as f:
    assert json.load(f)['pretrained']['knn'] > 0.8  # and it learned


@pytest.mark.slow  # ~1 minute: 80 DINO steps on digits
def test_a_dino_run_made_to_collapse_warns_once_with_dinos_remedies(tmp_path, start_main):
  workdir = str(tmp_path / 'collapsing')
  out = _main(
    start_main,
    workdir,
    'dino_digits.py',
    '--config.dino.use_bn=False',
    '--config.dino.center_momentum=1.0',  # the center never moves from zero: no centering
    '--config.total_steps=80',
    '--config.log_every=20',
    "--config.eval=('knn',)",
    '--config.eval_config.random_init=False',
  )
  warnings = [line for line in out.splitlines() if WARNING in line]
  assert len(warnings) == 1, out[-3000:]
  assert 'health/rankme_z' in warnings[0]
  for remedy in ('teacher_temp', 'center_momentum'):
    assert remedy in warnings[0]
  # The warning names the first log step whose rank of z fell below its floor.
  rows = _health_rows(workdir)
  first = next(r['step'] for r in rows if r['health/rankme_z'] < collapse.MIN_RANKME)
  assert f'{WARNING} {first}:' in warnings[0]
  with open(os.path.join(workdir, 'report.md')) as f:
    assert f'**Warning: {WARNING} {first}' in f.read()

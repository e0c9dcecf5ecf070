"""ssljax.monitor.steps.StepLogger: what the loop logs between two log lines, on its own."""

import json
import logging

import numpy as np

from ssljax.config import defaults
from ssljax.monitor import report
from ssljax.monitor.steps import StepLogger


def _lines(workdir):
  with open(workdir / 'metrics.jsonl') as f:
    return [json.loads(line) for line in f]


def _logger(tmp_path, health, skipped=()):
  config = defaults.base_config('simclr')
  config.batch_size = 8
  return config, StepLogger(config, str(tmp_path), 10, 0, health, lambda: list(skipped))


def test_log_writes_the_window_means_and_starts_a_new_window(tmp_path):
  config, steps = _logger(tmp_path, lambda state: {'health/rankme_h': state, 'health/std_h': 0.5})
  losses = [3.0, 2.0, 1.5]
  steps.add([{'loss': np.float32(v), 'finite': True} for v in losses[:2]])
  steps.add([{'loss': np.float32(losses[2]), 'finite': True}])
  assert steps.log(3, state=5.0) is None
  steps.add([{'loss': np.float32(0.5), 'finite': True}])
  assert steps.log(4, state=6.0) is None
  steps.close()
  first, second = _lines(tmp_path)
  assert first['step'] == 3 and second['step'] == 4
  assert abs(first['loss'] - np.mean(losses)) < 1e-6 and second['loss'] == 0.5
  assert 'finite' not in first
  assert first['images_per_sec'] > 0 and second['images_per_sec'] > 0
  assert (first['health/rankme_h'], second['health/rankme_h']) == (5.0, 6.0)


def test_collapse_warns_once_or_stops(tmp_path, caplog):
  collapsed = {'health/rankme_h': 1.0, 'health/std_h': 0.5}  # below the default RankMe floor
  config, steps = _logger(tmp_path / 'warn', lambda state: collapsed)
  with caplog.at_level(logging.WARNING):
    for step in (1, 2):
      steps.add([{'loss': 1.0, 'finite': True}])
      assert steps.log(step, None) is None
  steps.close()
  warnings = [r for r in caplog.records if 'health/rankme_h' in r.getMessage()]
  assert len(warnings) == 1 and 'step 1' in warnings[0].getMessage()

  config, steps = _logger(tmp_path / 'stop', lambda state: collapsed)
  config.health.stop_on_collapse = True
  steps.add([{'loss': 1.0, 'finite': True}])
  message = steps.log(7, None)
  steps.close()
  assert message and 'step 7' in message and 'rankme' in message
  assert _lines(tmp_path / 'stop')[0]['health/rankme_h'] == 1.0  # written before it stops


def test_skipped_files_are_counted_and_named(tmp_path):
  config, steps = _logger(tmp_path, None, skipped=['b.png', 'a.png'])
  steps.add([{'loss': 1.0, 'finite': True}])
  steps.log(2, None)
  steps.record_skipped(3)  # nothing new: no second line
  steps.close()
  assert [m['data/skipped_files'] for m in _lines(tmp_path) if 'data/skipped_files' in m] == [2.0]
  assert (tmp_path / report.SKIPPED_FILES).read_text() == 'a.png\nb.png\n'

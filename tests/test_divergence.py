"""A run that diverges stops before it saves a non-finite state: the checkpoints already on disk
stay, the command exits with code 3 and one message, and evaluation reports the last good step.
A run whose health metrics fall below their floors warns once, or stops (code 4) when told to."""

import json
import os

import jax
import numpy as np
import pytest

from ssljax import checkpoint, data, errors, evaluate, train


def _nan_from(step: int, build_train_iterator):
  """data.build_train_iterator whose batches turn to NaN from `step` on (a run whose inputs, and
  so its loss and gradients, go non-finite there)."""

  def poisoned(config, *, start_step=0):
    for i, batch in enumerate(build_train_iterator(config, start_step=start_step), start_step):
      if i >= step:
        batch = {'views': [np.full_like(v, np.nan) for v in batch['views']]}
      yield batch

  return poisoned


def test_a_diverging_run_stops_before_saving_and_keeps_the_good_checkpoint(
  tmp_path, config_file, shrink, monkeypatch, capsys
):
  config = shrink(config_file('mae_digits.py'))
  config.total_steps = 6
  config.checkpoint_every = 2
  config.keep_checkpoints = 1  # rotation would have dropped step 2 for a NaN step 4
  config.log_every = 100  # the flags are fetched only for the save at step 4: still caught
  config.eval = ('knn',)
  config.eval_config.random_init = False
  workdir = str(tmp_path / 'run')
  # Steps are 0-based: steps 0-2 train on real batches (done = 1..3), step 3 (done = 4) on NaN.
  monkeypatch.setattr(data, 'build_train_iterator', _nan_from(3, data.build_train_iterator))

  with pytest.raises(SystemExit) as exit_info:
    errors.run_command(train.train_and_evaluate, config, workdir)
  assert exit_info.value.code == 3
  err = capsys.readouterr().err
  assert 'Traceback' not in err and err.count('\n') == 1
  assert err.startswith('error: training diverged at step 4: loss nan')
  assert f'last good checkpoint is step 2 in {workdir}' in err
  for advice in ('--config.base_lr', '--config.grad_clip', '--config.model.compute_dtype'):
    assert advice in err

  # On disk: step 2 only, finite; no results.
  assert checkpoint.latest_saved_step(workdir) == 2
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['2']
  saved = checkpoint.restore_arrays(workdir, 2, ('params', 'opt_state'))
  leaves = [np.asarray(x) for x in jax.tree.leaves(saved)]
  assert leaves and all(np.isfinite(x).all() for x in leaves)
  assert not os.path.exists(os.path.join(workdir, 'results.json'))

  # Evaluating the run reports its last good checkpoint.
  monkeypatch.undo()
  results = evaluate.evaluate_run(config, workdir)
  assert results['step'] == 2 and 0.0 <= results['pretrained']['knn'] <= 1.0
  with open(os.path.join(workdir, 'eval.json')) as f:
    assert json.load(f)['step'] == 2


def test_a_collapse_warns_once_and_stop_on_collapse_keeps_the_last_checkpoint(
  tmp_path, config_file, shrink, capsys, caplog
):
  """Floors above anything reachable make every log step a collapse: the run warns once and
  finishes (the report shows it); with stop_on_collapse it exits with code 4 at the first log
  step after a checkpoint, without saving that step."""
  config = shrink(config_file('simclr_digits.py'))
  config.health.images = 16
  config.health.min_std = 1.5  # sqrt(D) x std of unit vectors is at most 1
  config.eval = ()
  workdir = str(tmp_path / 'warned')
  train.train_and_evaluate(config, workdir)
  warnings = [r.getMessage() for r in caplog.records if 'representation collapse' in r.getMessage()]
  assert len(warnings) == 1 and warnings[0].startswith('representation collapse at step 1: ')
  assert 'health/std_h' in warnings[0] and 'loss.temperature' in warnings[0]
  with open(os.path.join(workdir, 'report.md')) as f:
    report = f.read()
  assert '**Warning: representation collapse at step 1: health/std_h' in report
  assert os.path.exists(os.path.join(workdir, 'report', 'health.png'))

  config.health.stop_on_collapse = True
  config.log_every = 3
  config.checkpoint_every = 2
  workdir = str(tmp_path / 'stopped')
  capsys.readouterr()
  with pytest.raises(SystemExit) as exit_info:
    errors.run_command(train.train_and_evaluate, config, workdir)
  assert exit_info.value.code == 4
  err = capsys.readouterr().err
  assert 'Traceback' not in err
  assert err.startswith('error: representation collapse at step 3: health/std_h')
  assert f'the last checkpoint before it is step 2 in {workdir}' in err
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['2']
  assert not os.path.exists(os.path.join(workdir, 'results.json'))
  with open(os.path.join(workdir, 'report.md')) as f:
    assert 'representation collapse at step 3' in f.read()

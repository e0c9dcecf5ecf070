"""Bad config values are refused before anything compiles, each by a one-line message that names
the field, with exit code 2 and no traceback; bugs keep their tracebacks.

The table parses each case exactly as `python -m ssljax.main` does (config_flags, --config.*
overrides on a locked config) and runs the same validation and error handling in-process; a
few cases also run the real command."""

import os
import subprocess
import sys
import time

import pytest
from absl import flags
from ml_collections import config_flags

from ssljax import errors, sharding, train
from ssljax.config import checks as config_checks
from ssljax.methods import SimCLR

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (config file, --config.* overrides, text the message must contain: the field and its value)
BAD = [
  ('simclr_digits', ['--config.model.encoder=resnet19'], "model.encoder='resnet19'"),
  ('simclr_digits', ['--config.augment.crop_scale=(1.0, 0.2)'], 'augment.crop_scale=(1.0, 0.2)'),
  ('simclr_digits', ['--config.augment.crop_scale=(0.0, 1.0)'], 'augment.crop_scale=(0.0, 1.0)'),
  ('simclr_digits', ['--config.augment.crop_ratio=(2.0, 0.5)'], 'augment.crop_ratio=(2.0, 0.5)'),
  ('simclr_digits', ['--config.loss.temperature=0.0'], 'loss.temperature=0.0'),
  ('simclr_digits', ['--config.augment.color_prob=1.5'], 'augment.color_prob=1.5'),
  ('simclr_digits', ['--config.base_lr=-0.1'], 'base_lr=-0.1'),
  ('simclr_digits', ['--config.warmup_epochs=-1.0'], 'warmup_epochs=-1.0'),
  ('simclr_digits', ['--config.epochs=-2'], 'epochs=-2'),
  ('simclr_digits', ['--config.momentum=1.5'], 'momentum=1.5'),
  ('simclr_digits', ['--config.optimizer=sgd'], "optimizer='sgd'"),
  ('simclr_digits', ['--config.batch_size=12'], 'batch_size=12'),
  ('simclr_digits', ['--config.eval_config.knn_k=0'], 'eval_config.knn_k=0'),
  ('simclr_digits', ["--config.eval=('linear', 'knnn')"], 'knnn'),
  ('simclr_digits', ["--config.eval_config.label_budgets=('5 per class',)"], '5 per class'),
  ('simclr_digits', ['--config.data.source=hdf5'], "data.source='hdf5'"),
  ('simclr_digits', ['--config.data.dicom_window=(40, -5)'], 'data.dicom_window=(40, -5)'),
  ('simclr_digits', ['--config.visualize.projection=mds'], "visualize.projection='mds'"),
  ('simclr_digits', ['--config.log_every=0'], 'log_every=0'),
  ('simclr_digits', ['--config.method=dino'], 'configs/dino_digits.py'),
  ('simclr_digits', ['--config.model.compute_dtype=float16'], "compute_dtype='float16'"),
  ('simclr_digits', ['--config.model.stage_widths=(8, 16, 32)'], 'stage_widths=(8, 16, 32)'),
  ('byol_digits', ['--config.ema.base=1.5'], 'ema.base=1.5'),
  ('byol_digits', ['--config.views.view2.solarize_prob=-0.1'], 'views.view2.solarize_prob=-0.1'),
  ('byol_digits', ['--config.method=mae'], 'configs/mae_digits.py'),
  ('dino_digits', ['--config.dino.teacher_temp=0.0'], 'dino.teacher_temp=0.0'),
  ('dino_digits', ['--config.dino.global_views=7'], 'dino.global_views=7'),
  ('dino_digits', ['--config.model.patch_size=5'], 'model.patch_size=5'),
  ('dino_digits', ['--config.dino.center_momentum=2.0'], 'dino.center_momentum=2.0'),
  ('dino_digits', ['--config.views.local.crop_scale=(0.4, 0.1)'], 'views.local.crop_scale'),
  ('mae_digits', ['--config.mae.mask_ratio=1.0'], 'mae.mask_ratio=1.0'),
  ('mae_digits', ['--config.model.encoder=resnet18'], "model.encoder='resnet18'"),
  ('mae_digits', ['--config.mae.decoder_heads=3'], 'mae.decoder_heads=3'),
  ('mae_digits', ['--config.model.drop_path=1.0'], 'model.drop_path=1.0'),
  ('ijepa_digits', ['--config.ijepa.target_scale=(0.3, 0.1)'], 'ijepa.target_scale=(0.3, 0.1)'),
  ('ijepa_digits', ['--config.loss.kind=l1'], "loss.kind='l1'"),
  ('ijepa_digits', ['--config.eval_encoder=predictor'], "eval_encoder='predictor'"),
  ('ijepa_digits', ['--config.ijepa.num_targets=0'], 'ijepa.num_targets=0'),
  ('ijepa_digits', ['--config.eval_config.finetune.layer_decay=0.0'], 'layer_decay=0.0'),
]


def parse(name: str, overrides: list[str]):
  """The config `python -m ssljax.main --config=configs/NAME.py OVERRIDES...` trains."""
  argv = ['ssljax.main', f'--config={os.path.join(ROOT, "configs", name)}.py', *overrides]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file(
    'config', None, '', flag_values=flag_values, lock_config=True, sys_argv=argv
  )
  flag_values(argv)
  return flag_values.config


@pytest.mark.parametrize('name, overrides, named', BAD, ids=[' '.join(c[1]) for c in BAD])
def test_a_bad_value_is_refused_with_its_field_exit_code_2_and_no_traceback(
  name, overrides, named, capsys
):
  config = parse(name, overrides)
  if name == 'ijepa_digits':
    config.eval = ('finetune',)  # the layer-decay case: fine-tuning is evaluated
  start = time.perf_counter()
  with pytest.raises(SystemExit) as exit_info:
    errors.run_command(train.validate, config, sharding.make_mesh())
  seconds = time.perf_counter() - start
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert err.startswith('error: ') and 'Traceback' not in err
  assert named in err
  # What is allowed and an example of a fix, on the field's own line.
  line = next(line for line in err.splitlines() if named in line)
  assert ': ' in line and ('e.g.' in line or 'configs/' in line), line
  assert seconds < 10


def test_every_problem_is_reported_at_once_each_on_its_line():
  config = parse('mae_digits', ['--config.mae.mask_ratio=1.5', '--config.base_lr=0.0'])
  config.eval_config.knn_k = -3
  with pytest.raises(errors.ConfigError) as e:
    train.validate(config, sharding.make_mesh())
  assert [p.split('=')[0] for p in e.value.problems] == [
    'config.base_lr',
    'config.mae.mask_ratio',
    'config.eval_config.knn_k',
  ]
  assert str(e.value).startswith('3 problems in the config:\n  config.base_lr=0.0: a number > 0')


def test_example_fixes_come_from_the_methods_defaults_and_are_valid():
  config = SimCLR.default_config(32)
  config.augment.crop_scale = (0.9, 0.1)
  config.momentum = -1.0
  checks = config_checks.Checks(config, defaults=SimCLR.default_config(32))
  assert not checks.pair('augment.crop_scale', 0, 1, low_open=True)
  assert not checks.probability('momentum')
  assert checks.problems == [
    'config.augment.crop_scale=(0.9, 0.1): a pair (low, high) with low <= high, each in (0, 1]; '
    'e.g. --config.augment.crop_scale="(0.08, 1.0)"',
    'config.momentum=-1.0: a number in [0, 1]; e.g. --config.momentum=0.9',
  ]
  # The fixes themselves pass: applying them clears every problem.
  config.augment.crop_scale, config.momentum = (0.08, 1.0), 0.9
  checks = config_checks.Checks(config)
  assert checks.pair('augment.crop_scale', 0, 1, low_open=True) and checks.probability('momentum')


def test_a_bug_keeps_its_traceback():
  """A ValueError that is not a ConfigError (whatever its text) is a bug: not turned into exit 2."""

  def buggy():
    raise ValueError('config.model.width went wrong inside the code')

  with pytest.raises(ValueError, match='inside the code'):
    errors.run_command(buggy)


def _command(*args: str) -> tuple[subprocess.CompletedProcess, float]:
  start = time.perf_counter()
  proc = subprocess.run(
    [sys.executable, *args], capture_output=True, text=True, timeout=120, cwd=ROOT
  )
  return proc, time.perf_counter() - start


@pytest.mark.slow
def test_the_command_refuses_a_bad_value_in_seconds_without_a_traceback(tmp_path):
  """The real commands (two fresh interpreters importing JAX and TensorFlow). Fast stand-ins:
  the table above, which runs the same validation through the same handler in-process, and
  test_a_bug_keeps_its_traceback."""
  workdir = str(tmp_path / 'run')
  proc, seconds = _command(
    '-m',
    'ssljax.main',
    '--config=configs/dino_digits.py',
    f'--workdir={workdir}',
    '--config.model.patch_size=5',
    '--config.method=mae',
  )
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr
  assert "error: config.method='mae' needs config.mae" in proc.stderr
  assert 'configs/mae_digits.py' in proc.stderr
  # Alone on 2 cores this takes about 7 s, nearly all of it importing JAX and TensorFlow; the
  # bound only catches a refusal that waited for data or compilation (a loaded CI machine).
  assert not os.path.exists(workdir) and seconds < 30
  # A bug in a command keeps its traceback and a non-zero code that is not a user error's.
  code = 'from ssljax import errors\nerrors.run_command(lambda: 1 / 0)'
  proc, _ = _command('-c', code)
  assert proc.returncode == 1 and 'Traceback' in proc.stderr
  assert 'ZeroDivisionError' in proc.stderr

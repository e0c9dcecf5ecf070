"""End to end: every config trains a few steps with a tiny model; checkpoint, SIGTERM, resume."""

import glob
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from ssljax import checkpoint, sharding, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, 'configs', '*.py')))


def load_config(path):
  spec = importlib.util.spec_from_file_location('cfg', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def tiny(config, *, source='synthetic'):
  """Shrinks any config to seconds on a CPU: tiny ResNet, 16 px, batch 16, 3 steps."""
  config.data.source = source
  config.data.image_size = config.augment.image_size = 16
  config.data.num_examples = 64
  config.data.channels = 3
  config.model.encoder = 'resnet18'
  config.model.width = 4
  config.model.proj_dim = 8
  config.model.proj_hidden = 16
  config.model.compute_dtype = 'float32'
  config.batch_size = 16
  config.total_steps = 3
  config.log_every = 1
  config.eval = ('linear', 'linear_few', 'knn')
  config.eval_config.batch_size = 16
  config.eval_config.few_per_class = 2
  config.eval_config.random_init = True
  return config


def test_configs_exist_for_every_dataset():
  names = {os.path.basename(p) for p in CONFIGS}
  assert {
    'simclr_digits.py',
    'simclr_fashion_mnist.py',
    'simclr_cifar10.py',
    'simclr_imagenet.py',
  } <= names


@pytest.mark.parametrize('path', CONFIGS, ids=os.path.basename)
def test_each_config_trains_and_writes_results(path, tmp_path):
  config = load_config(path)
  config.name = os.path.basename(path)[:-3]
  source = 'digits' if config.data.source == 'digits' else 'synthetic'
  results = train.train_and_evaluate(tiny(config, source=source), str(tmp_path))
  with open(tmp_path / 'results.json') as f:
    on_disk = json.load(f)
  assert on_disk == results
  assert on_disk['step'] == 3 and on_disk['config'] == config.name
  keys = {'linear', 'linear_2_per_class', 'knn'}
  assert set(on_disk['pretrained']) == keys == set(on_disk['random_init'])
  assert all(0.0 <= v <= 1.0 for v in on_disk['pretrained'].values())
  lines = [json.loads(x) for x in open(tmp_path / 'metrics.jsonl')]
  losses = [x['loss'] for x in lines if 'loss' in x]
  assert len(losses) == 3 and all(np.isfinite(losses))
  assert os.path.isdir(tmp_path / 'tensorboard')


def test_indivisible_batch_is_refused_before_compiling(tmp_path):
  config = tiny(load_config(os.path.join(ROOT, 'configs', 'simclr_digits.py')))
  config.batch_size = 12  # 8 devices
  with pytest.raises(ValueError, match=r'config.batch_size=12 .*8 devices.*--config.batch_size=16'):
    train.train_and_evaluate(config, str(tmp_path))
  assert not os.path.exists(tmp_path / 'checkpoints')


def _main(workdir, *extra):
  args = [
    sys.executable,
    '-m',
    'ssljax.main',
    '--config=configs/simclr_digits.py',
    f'--workdir={workdir}',
    '--config.model.width=4',
    '--config.model.proj_dim=8',
    '--config.batch_size=16',
    '--config.total_steps=40',
    '--config.checkpoint_every=5',
    '--config.log_every=5',
    "--config.eval=('knn',)",
    '--config.eval_config.batch_size=64',
    '--config.eval_config.random_init=False',
    *extra,
  ]
  env = {
    **os.environ,
    'JAX_PLATFORMS': 'cpu',
    'XLA_FLAGS': '--xla_force_host_platform_device_count=2',
  }
  return subprocess.Popen(
    args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
  )


def _final_params(workdir):
  ckpt = checkpoint.Checkpointer(str(workdir), max_to_keep=3)
  step = ckpt.latest_step()
  restored = ckpt._manager.restore(step)  # untyped restore: numpy leaves
  ckpt.close()
  return step, restored


def test_sigterm_saves_and_rerun_resumes_exactly(tmp_path):
  """checkpoint -> kill -> resume ends with the same weights as an uninterrupted run."""
  straight = _main(tmp_path / 'straight')
  log_straight = straight.communicate(timeout=600)[0]
  assert straight.returncode == 0, log_straight[-3000:]

  killed = _main(tmp_path / 'killed')
  deadline = time.time() + 600
  while not glob.glob(str(tmp_path / 'killed' / 'checkpoints' / '5')) and time.time() < deadline:
    time.sleep(0.2)
  killed.send_signal(signal.SIGTERM)
  log_killed = killed.communicate(timeout=300)[0]
  assert killed.returncode == 143, log_killed[-3000:]
  saved_step, _ = _final_params(tmp_path / 'killed')
  assert 5 <= saved_step < 40

  resumed = _main(tmp_path / 'killed')
  log_resumed = resumed.communicate(timeout=600)[0]
  assert resumed.returncode == 0, log_resumed[-3000:]
  assert f'Resumed from step {saved_step}' in log_resumed

  step_a, state_a = _final_params(tmp_path / 'straight')
  step_b, state_b = _final_params(tmp_path / 'killed')
  assert step_a == step_b == 40
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), state_a, state_b
  )


def test_sharding_helpers_refuse_bad_batches():
  mesh = sharding.make_mesh()
  sharding.check_batch_size(64, mesh)
  for bad in (0, 4, 65):
    with pytest.raises(ValueError, match='multiple of the device count'):
      sharding.check_batch_size(bad, mesh)


def test_main_without_imagenet_exits_with_how_to_prepare(tmp_path):
  env = {**os.environ, 'TFDS_DATA_DIR': str(tmp_path / 'tfds')}
  proc = subprocess.run(
    [
      sys.executable,
      '-m',
      'ssljax.main',
      '--config=configs/simclr_imagenet.py',
      f'--workdir={tmp_path / "run"}',
    ],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr
  assert 'downloads/manual' in proc.stderr and 'tfds build imagenet2012' in proc.stderr
  assert not os.path.exists(tmp_path / 'run')  # nothing written, nothing compiled

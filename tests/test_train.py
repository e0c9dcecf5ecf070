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
  """Shrinks any config to seconds on a CPU: tiny ResNet or ViT, 16 px (8-px local crops),
  batch 16, 3 steps."""
  config.data.source = source
  config.data.image_size = config.augment.image_size = 16
  config.data.num_examples = 64
  config.data.channels = 3
  for view in config.views.values():
    if 'image_size' in view:
      view.image_size = 8
  if config.model.encoder.startswith('vit'):
    config.model.patch_size = 4
    config.model.vit_width, config.model.vit_depth, config.model.vit_heads = 16, 1, 2
  else:
    config.model.encoder = 'resnet18'
  if 'dino' in config:
    config.dino.out_dim, config.dino.hidden_dim, config.dino.bottleneck_dim = 16, 16, 8
  if 'mae' in config:
    config.mae.decoder_width, config.mae.decoder_depth, config.mae.decoder_heads = 16, 1, 2
  if 'ijepa' in config:
    config.ijepa.pred_width, config.ijepa.pred_depth, config.ijepa.pred_heads = 8, 1, 2
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
  config.visualize.num_points = 32
  config.visualize.num_images = 2
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
  # pictures: an embedding frame before training and after it, the GIF of the frames
  pictures = tmp_path / 'pictures'
  frames = sorted(os.listdir(pictures / 'embeddings'))
  assert frames == ['step_0000000.png', 'step_0000003.png']
  assert (pictures / 'embeddings.gif').exists() and (pictures / 'embeddings_grid.png').exists()
  if config.model.encoder.startswith('vit'):
    assert sorted(os.listdir(pictures / 'attention')) == frames
  if config.method == 'mae':
    assert sorted(os.listdir(pictures / 'reconstructions')) == frames


def test_visualize_command_draws_attention_from_a_run(tmp_path):
  config = tiny(load_config(os.path.join(ROOT, 'configs', 'dino_digits.py')), source='digits')
  config.visualize.attention = config.visualize.embeddings = False
  config.eval = ()
  train.train_and_evaluate(config, str(tmp_path))
  assert not os.path.exists(tmp_path / 'pictures')
  proc = subprocess.run(
    [sys.executable, '-m', 'ssljax.visualize', 'attention', f'--workdir={tmp_path}'],
    cwd=ROOT,
    env={**os.environ, 'JAX_PLATFORMS': 'cpu'},
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert os.listdir(tmp_path / 'pictures' / 'attention') == ['step_0000003.png']


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


@pytest.mark.parametrize('name', ['simclr_digits.py', 'byol_digits.py'])
def test_vit_encoder_with_stochastic_depth_trains_with_every_method(name, tmp_path):
  config = tiny(load_config(os.path.join(ROOT, 'configs', name)))
  config.model.encoder = 'vit_tiny'
  config.model.patch_size = 4
  config.model.vit_width, config.model.vit_depth, config.model.vit_heads = 16, 2, 2
  config.model.drop_path = 0.2  # needs the 'dropout' rng in the training forward pass
  config.eval = ('knn',)
  config.eval_config.random_init = False
  config.visualize.embeddings = False
  results = train.train_and_evaluate(config, str(tmp_path))
  assert results['step'] == 3 and 0.0 <= results['pretrained']['knn'] <= 1.0
  assert os.listdir(tmp_path / 'pictures' / 'attention') == ['step_0000000.png', 'step_0000003.png']

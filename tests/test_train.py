"""End to end: tiny runs write everything a run writes; every config trains (slow tier);
checkpoint, SIGTERM and exact resume (slow tier); the visualize command."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import MAIN_FLAGS
from PIL import Image

from ssljax import checkpoint, models, sharding, train
from ssljax.errors import ConfigError
from ssljax.methods import TrainState
from ssljax.monitor import visualize
from ssljax.restore import load_config, restore_latest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, 'configs', '*.py')))
TINY_RUNS = ('mae_digits', 'simclr_digits')  # the fast tier's real runs (tests/conftest.py)


def check_run_outputs(workdir, results, config):
  """What every run writes: results.json (as returned), metrics, TensorBoard events, the
  embedding frames before and after training, attention maps for ViTs, reconstructions for
  MAE, the report, and a checkpoint at the last step."""
  with open(os.path.join(workdir, 'results.json')) as f:
    on_disk = json.load(f)
  assert on_disk == results
  assert on_disk['step'] == 3 and on_disk['config'] == config.name
  keys = {'linear', 'linear_2_per_class', 'knn'}
  assert set(on_disk['pretrained']) == keys
  assert set(on_disk.get('random_init', {})) == (keys if config.eval_config.random_init else set())
  assert all(0.0 <= v <= 1.0 for v in on_disk['pretrained'].values())
  lines = [json.loads(x) for x in open(os.path.join(workdir, 'metrics.jsonl'))]
  train_lines = [x for x in lines if 'loss' in x]
  # The state one device holds, logged once at the start: here replicated, the whole state.
  saved = checkpoint.restore_arrays(workdir, 3, TrainState._fields)
  held = [x['state_bytes_per_device'] for x in lines if 'state_bytes_per_device' in x]
  assert held == [sum(np.asarray(a).nbytes for a in jax.tree.leaves(saved))] and held[0] > 0
  assert [x['step'] for x in train_lines] == [1, 2, 3]
  assert all(np.isfinite(x['loss']) and x['images_per_sec'] > 0 for x in train_lines)
  for x in train_lines if config.health.images else []:  # label-free health, inference mode
    assert 1.0 <= x['health/rankme_h'] <= models.encoder_dim(config) + 1e-3
    assert 0.0 <= x['health/std_h'] <= 1.0 + 1e-3
  evals = [x for x in lines if 'eval/knn' in x]
  assert evals[-1]['step'] == 3 and evals[-1]['eval/knn'] == on_disk['pretrained']['knn']
  assert glob.glob(os.path.join(workdir, 'tensorboard', 'events.out.tfevents.*'))
  assert checkpoint.latest_saved_step(workdir) == 3
  assert open(os.path.join(workdir, 'report.md')).read().startswith(f'# {config.name}')
  pictures = os.path.join(workdir, 'pictures')
  frames = sorted(os.listdir(os.path.join(pictures, 'embeddings')))
  assert frames == ['step_0000000.png', 'step_0000003.png']
  for name in ('embeddings.gif', 'embeddings_grid.png'):
    assert os.path.exists(os.path.join(pictures, name))
  drawn = sorted(d for d in os.listdir(pictures) if os.path.isdir(os.path.join(pictures, d)))
  expected = ['embeddings']
  expected += ['attention'] if config.model.encoder.startswith('vit') else []
  expected += ['reconstructions'] if config.method == 'mae' else []
  assert drawn == sorted(expected)
  for kind in expected:
    assert sorted(os.listdir(os.path.join(pictures, kind))) == frames


@pytest.mark.parametrize('run', TINY_RUNS)
def test_tiny_run_writes_results_metrics_checkpoints_and_pictures(run, request):
  check_run_outputs(*request.getfixturevalue(f'{run}_run'))


@pytest.mark.slow
@pytest.mark.parametrize(
  'path', [p for p in CONFIGS if os.path.basename(p)[:-3] not in TINY_RUNS], ids=os.path.basename
)
def test_each_config_trains_and_writes_results(path, tmp_path, config_file, shrink):
  config = config_file(path)
  config.name = os.path.basename(path)[:-3]
  source = 'digits' if config.data.source == 'digits' else 'synthetic'
  results = train.train_and_evaluate(shrink(config, source=source), str(tmp_path))
  check_run_outputs(str(tmp_path), results, config)


def test_pictures_are_drawn_again_from_a_runs_checkpoint(mae_digits_run, tmp_path):
  """What `python -m ssljax.visualize` does, in process: the run's config and latest state read
  back draw the same attention map as the run drew at its last step."""
  workdir, _, _ = mae_digits_run
  config = load_config(workdir)
  with config.unlocked():
    config.visualize.embeddings = config.visualize.reconstructions = False
  method, state = restore_latest(config, workdir)
  assert int(state.step) == 3
  drawer = visualize.Pictures(config, method, str(tmp_path))
  drawer.draw(state, int(state.step))
  assert os.listdir(tmp_path / 'pictures') == ['attention']
  again = np.asarray(Image.open(tmp_path / 'pictures' / 'attention' / 'step_0000003.png'))
  drawn = os.path.join(workdir, 'pictures', 'attention', 'step_0000003.png')
  np.testing.assert_array_equal(again, np.asarray(Image.open(drawn)))


@pytest.mark.slow
def test_visualize_command_draws_attention_from_a_run(tmp_path, config_file, shrink):
  config = shrink(config_file('dino_digits.py'), source='digits')
  config.visualize.attention = config.visualize.embeddings = False
  config.eval = ()
  train.train_and_evaluate(config, str(tmp_path))
  assert not os.path.exists(tmp_path / 'pictures')
  proc = subprocess.run(
    [sys.executable, '-m', 'ssljax.monitor.visualize', 'attention', f'--workdir={tmp_path}'],
    cwd=ROOT,
    env={**os.environ, 'JAX_PLATFORMS': 'cpu'},
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert os.listdir(tmp_path / 'pictures' / 'attention') == ['step_0000003.png']


def test_indivisible_batch_is_refused_before_compiling(tmp_path, config_file, shrink):
  config = shrink(config_file('simclr_digits.py'))
  config.batch_size = 12  # 8 devices
  with pytest.raises(ConfigError, match=r'batch_size=12: .*8 devices.*--config.batch_size=16'):
    train.train_and_evaluate(config, str(tmp_path))
  assert not os.path.exists(tmp_path / 'checkpoints')


@pytest.mark.slow
def test_sigterm_saves_and_rerun_resumes_exactly(tmp_path, start_main, final_checkpoint):
  """checkpoint -> kill -> resume ends with the same weights as an uninterrupted run."""
  straight = start_main(tmp_path / 'straight', *MAIN_FLAGS)
  log_straight = straight.communicate(timeout=600)[0]
  assert straight.returncode == 0, log_straight[-3000:]

  killed = start_main(tmp_path / 'killed', *MAIN_FLAGS)
  deadline = time.time() + 600
  while not glob.glob(str(tmp_path / 'killed' / 'checkpoints' / '5')) and time.time() < deadline:
    time.sleep(0.2)
  killed.send_signal(signal.SIGTERM)
  signalled = time.perf_counter()
  log_killed = killed.communicate(timeout=300)[0]
  # Within a step and the final save, input threads closed: not a hang (the bound).
  assert time.perf_counter() - signalled < 30
  assert killed.returncode == 143, log_killed[-3000:]
  saved_step, _ = final_checkpoint(tmp_path / 'killed')
  assert 5 <= saved_step < 40

  resumed = start_main(tmp_path / 'killed', *MAIN_FLAGS)
  log_resumed = resumed.communicate(timeout=600)[0]
  assert resumed.returncode == 0, log_resumed[-3000:]
  assert f'Resumed from step {saved_step}' in log_resumed

  step_a, state_a = final_checkpoint(tmp_path / 'straight')
  step_b, state_b = final_checkpoint(tmp_path / 'killed')
  assert step_a == step_b == 40
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), state_a, state_b
  )


def test_sharding_helpers_refuse_bad_batches():
  mesh = sharding.make_mesh()
  sharding.check_batch_size(64, mesh)
  for bad in (0, 4, 65):
    with pytest.raises(ValueError, match='multiple of the device count') as refused:
      sharding.check_batch_size(bad, mesh)
    # the 8 test devices are XLA:CPU devices: the message says where they come from
    message = str(refused.value)
    assert 'xla_cpu_flags' in message and 'SSLJAX_XLA_CPU_FLAGS=none' in message


@pytest.mark.slow
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

"""Reading a run back (ssljax.restore, ssljax.evaluate): evaluating a run's checkpoint again,
`ssljax.load_encoder`, and warm starts from another run's encoder (config.init_from). The tiny
SimCLR run on digits of tests/conftest.py serves every test."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from absl import flags

import ssljax
from ssljax import build, checkpoint, data, evaluate, models, restore, sharding, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _quiet(config):
  config.visualize.embeddings = False
  if 'report' in config:
    config.report = False
  return config


def _command_line(argv):
  """The config `python -m ssljax.evaluate ARGV` evaluates with."""
  flag_values = flags.FlagValues()
  evaluate.define_flags(argv, flag_values)
  flag_values(argv)
  return evaluate.run_name(flag_values.config, flag_values.workdir)


@pytest.mark.slow  # trains the tiny SimCLR run in this worker (~50 s)
def test_evaluate_reproduces_the_runs_results(simclr_digits_run):
  workdir, results, _ = simclr_digits_run
  with open(os.path.join(workdir, 'results.json')) as f:
    results_json = f.read()
  checkpoints = sorted(os.listdir(os.path.join(workdir, 'checkpoints')))

  config = _command_line(['evaluate', f'--workdir={workdir}'])
  assert config.name == 'simclr_digits' and config.eval == ('linear', 'linear_few', 'knn')
  out = evaluate.evaluate_run(config, workdir)
  for part in ('pretrained', 'random_init'):
    assert set(out[part]) == {'linear', 'linear_2_per_class', 'knn'}
    assert out[part] == pytest.approx(results[part], abs=1e-6)
  assert out['step'] == 3
  with open(os.path.join(workdir, 'eval.json')) as f:
    assert json.load(f)['pretrained'] == out['pretrained']
  with open(os.path.join(workdir, 'results.json')) as f:
    assert f.read() == results_json
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == checkpoints


@pytest.mark.slow  # trains the tiny SimCLR run in this worker (~50 s)
def test_evaluate_takes_config_overrides(simclr_digits_run):
  workdir, _, _ = simclr_digits_run
  config = _command_line(
    [
      'evaluate',
      f'--workdir={workdir}',
      "--config.eval=('knn',)",
      '--config.eval_config.knn_k=5',
      '--config.eval_config.random_init=False',
    ]
  )
  assert config.eval == ('knn',) and config.eval_config.knn_k == 5
  assert not config.eval_config.random_init
  out = evaluate.evaluate_run(config, workdir)
  assert set(out['pretrained']) == {'knn'} and 'random_init' not in out
  with open(os.path.join(workdir, 'eval.json')) as f:
    assert json.load(f)['eval_config']['knn_k'] == 5


def test_load_config_fills_in_what_an_old_run_predates(tmp_path, byol_config):
  saved = json.loads(byol_config('').to_json_best_effort())
  del saved['init_from'], saved['eval_config']['knn_k']
  (tmp_path / 'config.json').write_text(json.dumps(saved))
  config = restore.load_config(str(tmp_path))
  assert config.init_from == '' and config.eval_config.knn_k == 20
  assert config.method == 'byol' and config.eval == ()
  assert config.augment.crop_scale == tuple(saved['augment']['crop_scale'])  # tuples again
  assert config.get_type('weight_decay_end') is float  # a null placeholder keeps its type


@pytest.mark.slow  # fast stand-in: load_encoder's error on a directory that is not a run
def test_evaluate_command_refuses_a_directory_that_is_not_a_run(tmp_path):
  proc = subprocess.run(
    [sys.executable, '-m', 'ssljax.evaluate', f'--workdir={tmp_path}'],
    cwd=ROOT,
    env={**os.environ, 'JAX_PLATFORMS': 'cpu'},
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert f'{tmp_path}/config.json not found' in proc.stderr
  assert not os.listdir(tmp_path)


def test_import_ssljax_is_light_and_load_encoder_is_lazy():
  code = (
    'import sys, ssljax\n'
    "heavy = lambda: sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'orbax'})\n"
    'assert heavy() == [], heavy()\n'
    'assert callable(ssljax.load_encoder)\n'
    "assert heavy() == ['orbax'], heavy()\n"
  )
  proc = subprocess.run(
    [sys.executable, '-c', code],
    cwd=ROOT,
    env={**os.environ, 'JAX_PLATFORMS': 'cpu'},
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow  # trains the tiny SimCLR run in this worker (~50 s)
def test_load_encoder_gives_the_runs_features(simclr_digits_run):
  workdir, _, _ = simclr_digits_run
  apply_fn, params = ssljax.load_encoder(workdir)
  config = restore.load_config(workdir)
  images = data.load_eval_split(config, 'test')[0][:16]
  h = np.asarray(apply_fn(params, images))
  assert h.shape == (16, models.encoder_dim(config))

  method, state = restore.restore_latest(config, workdir)
  expected = jax.jit(method.features)(state.params, state.model_state, images)
  np.testing.assert_allclose(h, np.asarray(expected), rtol=1e-5, atol=1e-6)
  jax.tree.map(
    np.testing.assert_array_equal,
    params,
    method.encoder_variables(state.params, state.model_state),
  )
  with pytest.raises(FileNotFoundError, match=r'config\.json not found.*run directory'):
    ssljax.load_encoder(os.path.join(workdir, 'checkpoints'))


@pytest.fixture
def byol_config(config_file, shrink):
  """init_from, **model -> configs/byol_digits.py shrunk, warm-started from init_from."""

  def make(init_from: str, **model):
    config = shrink(config_file('byol_digits.py'), source='digits')
    config.init_from = init_from
    config.eval = ()
    config.model.update(model)
    return _quiet(config)

  return make


@pytest.mark.slow  # trains the tiny SimCLR run in this worker (~50 s)
@pytest.mark.parametrize('fsdp', [1, 8])
def test_warm_start_loads_the_encoder_into_online_and_target(
  simclr_digits_run, tmp_path, capsys, byol_config, fsdp
):
  """A BYOL run from a SimCLR run's encoder: every encoder array (parameters and BatchNorm
  statistics) of the online network and of the EMA target is the source's; the heads are new.
  The steps train_and_evaluate takes before its first train step (no train step compiled), on a
  data-only mesh and with every tensor split 8 ways (the split kept)."""
  source_dir, _, _ = simclr_digits_run
  config = byol_config(source_dir)
  config.mesh.fsdp, config.mesh.fsdp_min_size = fsdp, 0
  mesh = sharding.make_mesh(config.mesh)
  method, _, _, init, _ = build.build_run(config, mesh, data.dataset_info(config))
  abstract, layout = build.state_layout(config, mesh, init)
  warm = restore.prepare_warm_start(config, method, abstract, str(tmp_path))
  fresh = jax.jit(init, out_shardings=layout)(jax.random.PRNGKey(config.seed))
  state = restore.warm_start(method, fresh, warm)
  assert jax.tree.structure(state) == jax.tree.structure(fresh)
  assert jax.tree.leaves(jax.tree.map(lambda a: a.sharding, state)) == jax.tree.leaves(layout)

  source = checkpoint.restore_arrays(source_dir, 3, ('params', 'model_state'))
  params, stats = source['params']['encoder'], source['model_state']['batch_stats']['encoder']
  assert not np.array_equal(fresh.params['encoder']['stem_conv']['kernel'], params['stem_conv'])
  equal = lambda a, b: jax.tree.map(np.testing.assert_array_equal, a, b)
  target, fresh_target = state.model_state['target'], fresh.model_state['target']
  for loaded, expected in [
    (state.params['encoder'], params),
    (state.model_state['batch_stats']['encoder'], stats),
    (target['params']['encoder'], params),
    (target['batch_stats']['encoder'], stats),
  ]:
    equal(loaded, expected)
  for part in ('projector', 'predictor'):
    equal(state.params[part], fresh.params[part])
    equal(state.model_state['batch_stats'][part], fresh.model_state['batch_stats'][part])
  equal(target['params']['projector'], fresh_target['params']['projector'])
  equal(target['batch_stats']['projector'], fresh_target['batch_stats']['projector'])
  equal(state.opt_state, fresh.opt_state)

  n = len(jax.tree.leaves(params)) + len(jax.tree.leaves(stats))
  assert len(warm.loaded) == n and warm.not_loaded == ()
  out = capsys.readouterr().out
  assert f'loaded {n} encoder variables' in out and 'params/stem_conv/kernel' in out
  assert 'not loaded (0): none' in out
  # A run that has a checkpoint of its own resumes it and ignores init_from.
  assert restore.prepare_warm_start(config, method, abstract, source_dir) is None


@pytest.mark.slow  # trains the tiny SimCLR run in this worker (~50 s)
def test_warm_start_refuses_bad_sources_before_compiling(simclr_digits_run, tmp_path, byol_config):
  workdir, _, _ = simclr_digits_run
  run = str(tmp_path / 'run')
  with pytest.raises(
    ValueError,
    match=r'encoder variable batch_stats/BasicBlock_0/BatchNorm_0/mean has shape \(4,\) there '
    r'and \(8,\) in this run.*config\.model',
  ):
    train.train_and_evaluate(byol_config(workdir, width=8), run)
  with pytest.raises(ValueError, match=r'config\.init_from=.*config\.json not found'):
    train.train_and_evaluate(byol_config(str(tmp_path / 'nowhere')), run)
  untrained = tmp_path / 'untrained'
  untrained.mkdir()
  (untrained / 'config.json').write_text(byol_config('').to_json_best_effort())
  with pytest.raises(ValueError, match=r'config\.init_from=.*no checkpoint under'):
    train.train_and_evaluate(byol_config(str(untrained)), run)
  assert not os.path.exists(os.path.join(run, 'checkpoints'))
  assert os.listdir(untrained) == ['config.json']

"""Test setup and the fixtures several test files share.

- 8 virtual CPU devices, so sharded code runs as on a pod slice.
- Tiny models spend their time compiling, not running: XLA:CPU generates unoptimised code
  (about half the compile time), and compiled programs go to a persistent cache beside pytest's
  temporary directories, which later runs (the slow tier after the fast one, a developer's next
  run, the subprocesses the tests start) read back instead of compiling again.
- `config_file`, `shrink` and the session-scoped tiny runs (`simclr_digits_run`, a ResNet;
  `mae_digits_run`, a ViT) that the end-to-end, restore and picture tests all read.

Tiers: `python -m pytest -q tests` runs the fast tier; `python -m pytest -q -m slow tests` the
heavy end-to-end tests (setup.cfg deselects them by default). Either runs on one pytest-xdist
worker per core (at most 4), since compiling is single-threaded; a file's tests stay on one
worker (its cached models compile once), and the workers share each tiny run: the first to
need it trains it, the others wait for it and read it from disk.
"""

import fcntl
import functools
import glob
import importlib.util
import json
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
os.environ['XLA_FLAGS'] = ' '.join(
  [os.environ.get('XLA_FLAGS', ''), '--xla_backend_optimization_level=0']
).strip()

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

jax.config.update('jax_num_cpu_devices', 8)

# tests/test_weights.py compares against timm. With a CUDA build of torch, timm's torchvision
# loads triton, whose LLVM crashes the process when TensorFlow's is already loaded (every worker
# collects modules that import TensorFlow): there, timm is imported first. CPU wheels lack triton.
if importlib.util.find_spec('triton') and importlib.util.find_spec('timm'):
  import timm  # noqa: E402, F401

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, 'configs', '*.py')))
# Programs that compile faster than this are not worth a file.
MIN_CACHED_COMPILE_SECS = 0.2
MAX_WORKERS = 4  # each worker holds 8 virtual devices and compiles its own programs


# The files that take longest (measured on 2 cores), started first so that no worker is left
# with a long file at the end; files not named here follow in their usual order.
LONGEST_FIRST = (
  'test_restore.py',  # trains the shared SimCLR run
  'test_train.py',  # trains the shared MAE run
  'test_kernels.py',
  'test_vit_scan.py',
  'test_accumulation.py',
  'test_dino.py',
  'test_byol.py',
  'test_methods.py',
  'test_ijepa.py',
  'test_finetune.py',
  'test_vit.py',
  'test_data.py',
  'test_mae.py',
)


def pytest_xdist_auto_num_workers(config):
  return max(1, min(os.cpu_count() or 1, MAX_WORKERS))


def pytest_collection_modifyitems(config, items):
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(os.path.basename(str(item.fspath)), len(rank)))


def _run_directory(tmp_path_factory):
  """This pytest run's directory, pytest-of-USER/pytest-N, which all its xdist workers share
  (each has its own pytest-N/popen-gwK below it)."""
  base = tmp_path_factory.getbasetemp()
  return base.parent if os.environ.get('PYTEST_XDIST_WORKER') else base


@pytest.fixture(scope='session', autouse=True)
def compilation_cache(tmp_path_factory):
  """A persistent compilation cache in pytest-of-USER, shared by every pytest run of this user
  (and by the subprocesses the tests start, through the environment)."""
  directory = str(_run_directory(tmp_path_factory).parent / 'ssljax-jax-cache')
  settings = {
    'jax_compilation_cache_dir': directory,
    'jax_persistent_cache_min_compile_time_secs': MIN_CACHED_COMPILE_SECS,
    'jax_persistent_cache_min_entry_size_bytes': 0,
  }
  for name, value in settings.items():
    jax.config.update(name, value)
    os.environ[name.upper()] = str(value)
  return directory


def load_config_file(name: str, arg: str | None = None):
  """configs/NAME (a file name or path) as its get_config(arg) builds it."""
  path = name if os.path.isabs(name) else os.path.join(ROOT, 'configs', name)
  spec = importlib.util.spec_from_file_location('cfg', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def shrink_config(config, *, source: str = 'synthetic'):
  """Any config shrunk to seconds on a CPU: a tiny ResNet or ViT, 16 px (8-px local crops),
  batch 16, 3 steps, every picture, the three frozen-feature protocols on 512 images a split."""
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
    config.ijepa.min_keep = 4  # a 4x4 grid: the official geometry's context is 3x3
  config.model.width = 4
  config.model.proj_dim = 8
  config.model.proj_hidden = 16
  config.model.compute_dtype = 'float32'
  config.batch_size = 16
  config.total_steps = 3
  config.log_every = 1
  config.health.images = 0  # its compile and first read cost ~10 s a run; the tiny runs keep it
  config.eval = ('linear', 'linear_few', 'knn')
  config.eval_config.batch_size = 128
  config.eval_config.max_examples = 512  # of each split
  config.eval_config.few_per_class = 2
  config.eval_config.random_init = True
  config.visualize.num_points = 32
  config.visualize.num_images = 2
  return config


@pytest.fixture(scope='session')
def config_file():
  return load_config_file


@pytest.fixture(scope='session')
def shrink():
  return shrink_config


# A tiny SimCLR run for `start_main`: 40 steps, a checkpoint every 5, k-NN at the end.
MAIN_FLAGS = (
  '--config=configs/simclr_digits.py',
  '--config.model.width=4',
  '--config.model.proj_dim=8',
  '--config.batch_size=16',
  '--config.total_steps=40',
  '--config.checkpoint_every=5',
  '--config.log_every=5',
  "--config.eval=('knn',)",
  '--config.eval_config.batch_size=64',
  '--config.eval_config.random_init=False',
)


def _start_main(workdir, *flags: str, devices: int = 2, env: dict | None = None):
  """`python -m ssljax.main --workdir=WORKDIR FLAGS...` as a subprocess on CPU devices; `env`
  adds to the environment."""
  import subprocess
  import sys

  env = {
    **os.environ,
    'JAX_PLATFORMS': 'cpu',
    'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}',
    **(env or {}),
  }
  args = [sys.executable, '-m', 'ssljax.main', f'--workdir={workdir}', *flags]
  return subprocess.Popen(
    args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
  )


def _final_checkpoint(workdir):
  """(step, state as numpy leaves) of the run's latest checkpoint."""
  from ssljax import checkpoint

  ckpt = checkpoint.Checkpointer(str(workdir), max_to_keep=3)
  step = ckpt.latest_step()
  restored = ckpt._manager.restore(step)  # untyped restore: numpy leaves
  ckpt.close()
  return step, restored


@pytest.fixture(scope='session')
def start_main():
  return _start_main


@pytest.fixture(scope='session')
def final_checkpoint():
  return _final_checkpoint


def _tiny_run(tmp_path_factory, name: str, **eval_config):
  """Trains configs/NAME.py shrunk once per pytest run, whatever the number of xdist workers:
  under xdist the run lives beside the workers' directories, behind a file lock."""
  from ssljax import train

  config = shrink_config(load_config_file(f'{name}.py'), source='digits')
  config.name = name
  config.health.images = 64  # these runs check the health metrics
  config.eval_config.update(eval_config)
  root = _run_directory(tmp_path_factory)
  workdir = root / f'tiny_run_{name}'
  with open(root / f'tiny_run_{name}.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
    done = workdir / 'results.json'
    trained = None if done.exists() else train.train_and_evaluate(config, str(workdir))
    with open(done) as f:
      results = json.load(f)
  assert trained in (None, results)  # results.json holds what the run returned
  return str(workdir), results, config


@pytest.fixture(scope='session')
def simclr_digits_run(tmp_path_factory):
  """(workdir, results, config) of configs/simclr_digits.py shrunk: a ResNet, 3 steps on digits,
  a checkpoint, results.json, metrics, pictures and the report."""
  return _tiny_run(tmp_path_factory, 'simclr_digits')


@pytest.fixture(scope='session')
def mae_digits_run(tmp_path_factory):
  """(workdir, results, config) of configs/mae_digits.py shrunk: a ViT, so the run also draws
  attention maps and reconstructions. The random-init baseline is left to the SimCLR run."""
  return _tiny_run(tmp_path_factory, 'mae_digits', random_init=False)


@pytest.fixture
def fresh_index(monkeypatch):
  """No file list kept in memory from other tests, nor any skipped file."""
  from ssljax.data import folder

  monkeypatch.setattr(folder, '_INDEXES', {})
  monkeypatch.setattr(folder, '_WRITTEN', {})
  monkeypatch.setattr(folder, '_SKIPPED', folder.collections.defaultdict(dict))


@functools.cache
def _tiny_tfds_builders():
  """Two local tfds datasets (no download): fixed 32 px images, and variable-size ones."""
  import tensorflow_datasets as tfds

  def make(image_shape):
    class TinyBase(tfds.core.GeneratorBasedBuilder, skip_registration=True):
      VERSION = tfds.core.Version('1.0.0')

      def _info(self):
        features = dict(
          image=tfds.features.Image(shape=image_shape),
          label=tfds.features.ClassLabel(num_classes=3),
        )
        return tfds.core.DatasetInfo(
          builder=self,
          features=tfds.features.FeaturesDict(features),
          supervised_keys=('image', 'label'),
        )

      def _split_generators(self, dl_manager):
        return {'train': self._generate_examples(40, 0), 'test': self._generate_examples(10, 1)}

      def _generate_examples(self, n, seed):
        rng = np.random.default_rng(seed)
        for i in range(n):
          h, w = (32, 32) if image_shape[0] else rng.integers(20, 48, 2)
          yield i, dict(image=rng.integers(0, 256, (h, w, 3), dtype=np.uint8), label=i % 3)

    return TinyBase

  # Registered under these names, so tfds.builder(name, data_dir=...) finds them.
  fixed = type('SsljaxTinyFixed', (make((32, 32, 3)),), {})
  variable = type('SsljaxTinyVariable', (make((None, None, 3)),), {})
  return {False: fixed, True: variable}


@pytest.fixture
def tiny_tfds_builders():
  return _tiny_tfds_builders()

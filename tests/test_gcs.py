"""gs:// workdirs, offline: every file of a run against a local GCS emulator (gcp-storage-emulator,
one in-memory server per test process, on a free localhost port).

The libraries find the emulator through environment variables, read lazily (when the first gs://
file is opened, not at import), so the fixture may set them in this process after JAX and Orbax
are imported, and hands them to the subprocesses it starts:

- STORAGE_EMULATOR_HOST: gcsfs (what etils.epath uses for gs://, hence ssljax and Orbax's
  metadata files); GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false, else gcsfs asks a gRPC endpoint for
  each bucket's type and waits 60 s for an answer; FSSPEC_GCS_TOKEN=anon and NO_GCE_CHECK=true:
  no credential search (a developer's own credentials, the metadata server).
- TENSORSTORE_GCS_HTTP_URL: tensorstore, Orbax's array writer; GOOGLE_AUTH_TOKEN_FOR_TESTING: its
  credentials, so it neither searches for real ones nor asks the metadata server.
- EPATH_USE_TF=false: `ssljax.paths` sets it; with TensorFlow installed epath would otherwise send
  gs:// through tf.io.gfile, which cannot be pointed at an emulator. It is read once, at epath's
  first use, which importing ssljax precedes.
"""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import ROOT, load_config_file, shrink_config
from PIL import Image

from ssljax import checkpoint, data, errors, paths, train
from ssljax.monitor import report
from ssljax.monitor.metrics import MetricWriter

gcp_server = pytest.importorskip('gcp_storage_emulator.server')

BUCKET = 'ssljax-test'


def _with_generation_header(server_module) -> None:
  """The emulator's downloads carry the object's generation in x-goog-generation, as GCS's do:
  tensorstore needs it ("Malformed StorageGeneration" without it) to read the OCDBT manifest that
  Orbax's parallel array writes share. Wraps the emulator's download handler, in its route table
  and where its JSON `get` (?alt=media) calls it."""
  from gcp_storage_emulator.handlers import objects

  original = getattr(objects.download, 'original', objects.download)

  def download(request, response, storage, *args, **kwargs):
    try:
      obj = storage.get_file_obj(request.params['bucket_name'], request.params['object_id'])
      response['x-goog-generation'] = str(obj['generation'])
    except Exception:  # not found: the original handler answers 404
      pass
    return original(request, response, storage, *args, **kwargs)

  download.original = original
  objects.download = download
  for _, methods in server_module.HANDLERS:
    for method, handler in list(methods.items()):
      if handler is original:
        methods[method] = download


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.fixture(scope='session')
def gcs_env():
  """The emulator, started once; yields the variables that point every library at it."""
  port = _free_port()
  url = f'http://127.0.0.1:{port}'
  env = {
    'STORAGE_EMULATOR_HOST': url,
    'TENSORSTORE_GCS_HTTP_URL': url,
    'GOOGLE_AUTH_TOKEN_FOR_TESTING': 'fake',
    'FSSPEC_GCS_TOKEN': 'anon',
    'GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT': 'false',
    'NO_GCE_CHECK': 'true',
    'EPATH_USE_TF': 'false',
  }
  saved = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  import fsspec.config  # imported before the variables were set: set its copy too

  fsspec.config.conf.setdefault('gcs', {})['token'] = 'anon'
  logging.getLogger('gcp_storage_emulator').setLevel(logging.CRITICAL)  # every 404 is an ERROR
  _with_generation_header(gcp_server)
  server = gcp_server.create_server('127.0.0.1', port, in_memory=True, default_bucket=BUCKET)
  server.start()
  yield env
  server.stop()
  for k, v in saved.items():
    if v is None:
      os.environ.pop(k, None)
    else:
      os.environ[k] = v


def test_path_layer_round_trips_files_on_gcs(gcs_env, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # anything written locally by mistake would land here
  run = f'gs://{BUCKET}/paths'
  paths.write_atomic(f'{run}/a/b.txt', 'hello\n')
  paths.write_atomic(f'{run}/a/c.png', b'\x89PNG')
  assert paths.path(f'{run}/a/b.txt').read_text() == 'hello\n'
  assert paths.path(f'{run}/a/c.png').read_bytes() == b'\x89PNG'
  assert paths.path(f'{run}/a').is_dir() and not paths.path(f'{run}/missing').exists()
  assert list(paths.names(f'{run}/a')) == ['b.txt', 'c.png']
  assert list(paths.names(f'{run}/missing')) == []

  # metrics.jsonl and TensorBoard events reach the bucket at every write; a second writer (a
  # resumed run) appends to the first one's lines.
  writer = MetricWriter(run)
  writer.write(1, {'loss': 2.5})
  assert paths.path(f'{run}/metrics.jsonl').read_text() == '{"step": 1, "loss": 2.5}\n'
  writer.close()
  writer = MetricWriter(run)
  writer.write(2, {'loss': 1.25})
  writer.close()
  lines = paths.path(f'{run}/metrics.jsonl').read_text().splitlines()
  assert [json.loads(line) for line in lines] == [
    {'step': 1, 'loss': 2.5},
    {'step': 2, 'loss': 1.25},
  ]
  events = sorted(paths.names(f'{run}/tensorboard'))
  assert len(events) == 2 and all(n.startswith('events.out.tfevents.') for n in events)
  scalars = {}
  from tensorboard.backend.event_processing import event_file_loader
  from tensorboard.util import tensor_util

  for name in events:
    local = tmp_path / name
    local.write_bytes(paths.path(f'{run}/tensorboard/{name}').read_bytes())
    for event in event_file_loader.EventFileLoader(str(local)).Load():
      for value in event.summary.value:
        scalars[event.step] = float(tensor_util.make_ndarray(value.tensor))
  assert scalars == {1: 2.5, 2: 1.25}

  # The report reads the run and writes report.md and its plot beside it.
  paths.write_atomic(f'{run}/config.json', json.dumps({'name': 'gcs', 'method': 'simclr'}))
  report.write_report(run)
  page = paths.path(f'{run}/report.md').read_text()
  assert page.startswith('# gcs') and '](report/loss.png)' in page
  from PIL import Image

  assert Image.open(io.BytesIO(paths.path(f'{run}/report/loss.png').read_bytes())).size[0] > 0
  assert not os.path.exists(tmp_path / 'gs:')


def test_checkpoint_saves_and_restores_on_gcs(gcs_env, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  run = f'gs://{BUCKET}/ckpt'
  rng = np.random.default_rng(0)
  state = {'w': rng.normal(size=(8, 3)).astype(np.float32), 'step': np.int32(7)}
  on_devices = jax.tree.map(jax.numpy.asarray, state)
  ckpt = checkpoint.Checkpointer(run, max_to_keep=2)
  assert ckpt.directory == f'{run}/checkpoints'
  ckpt.save(7, on_devices, force=True)
  ckpt.wait()
  ckpt.close()
  assert checkpoint.latest_saved_step(run) == 7
  restored = checkpoint.Checkpointer(run, max_to_keep=2).restore(7, on_devices)
  jax.tree.map(np.testing.assert_array_equal, restored, state)
  arrays = checkpoint.restore_arrays(run, 7, ('w',))
  np.testing.assert_array_equal(arrays['w'], state['w'])
  assert not os.path.exists(tmp_path / 'gs:')  # the old os.path.abspath join made ./gs:/...


def test_gs_workdir_without_gcsfs_is_one_line_naming_the_extra(monkeypatch, capsys):
  monkeypatch.setitem(sys.modules, 'gcsfs', None)  # `import gcsfs` raises ImportError
  paths.require('runs/local', '', None)  # local paths need nothing
  config = shrink_config(load_config_file('simclr_digits.py'))

  def compiled(*args, **kwargs):
    raise AssertionError('reached the model: the check came too late')

  monkeypatch.setattr(train.build, 'build_run', compiled)
  monkeypatch.setattr(train.data, 'dataset_info', compiled)
  with pytest.raises(SystemExit) as exited:
    errors.run_command(train.train_and_evaluate, config, f'gs://{BUCKET}/nogcsfs')
  assert exited.value.code == 2
  err = capsys.readouterr().err
  assert err == (
    f'error: gs://{BUCKET}/nogcsfs is in a cloud bucket: gs:// needs gcsfs, '
    "pip install 'ssljax[gcs]'\n"
  )


# ----------------------------------------------------------------------------- a whole run

MAIN_FLAGS = (
  '--config=configs/simclr_digits.py',
  '--config.model.width=4',
  '--config.model.proj_dim=8',
  '--config.batch_size=16',
  '--config.total_steps=20',
  '--config.checkpoint_every=5',
  '--config.log_every=5',
  "--config.eval=('knn',)",
  '--config.eval_config.batch_size=64',
  '--config.eval_config.random_init=False',
  '--config.health.images=0',
  '--config.visualize.num_points=32',
)


def _run(module: str, workdir: str, env: dict, *flags: str) -> subprocess.Popen:
  """`python -m MODULE --workdir=WORKDIR FLAGS...` on 2 CPU devices, pointed at the emulator
  (launched as conftest's `start_main` launches the entry point)."""
  env = {
    **os.environ,
    **env,
    'JAX_PLATFORMS': 'cpu',
    'XLA_FLAGS': '--xla_force_host_platform_device_count=2',
  }
  return subprocess.Popen(
    [sys.executable, '-m', module, f'--workdir={workdir}', *flags],
    cwd=ROOT,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )


def _finish(proc: subprocess.Popen) -> str:
  log = proc.communicate(timeout=600)[0]
  assert proc.returncode == 0, log[-3000:]
  return log


def _arrays(workdir: str) -> tuple[int, dict]:
  """(step, {'params': ..., 'model_state': ...} as NumPy) of the run's latest checkpoint."""
  step = checkpoint.latest_saved_step(workdir)
  return step, checkpoint.restore_arrays(workdir, step, ('params', 'model_state', 'opt_state'))


@pytest.mark.slow
def test_gs_workdir_run_killed_and_rerun_is_bit_identical(gcs_env, tmp_path):
  """SIGKILL after the step-5 checkpoint, the same command again: the bucket's final checkpoint
  equals an uninterrupted run's bit for bit; ssljax.evaluate and load_encoder read it back."""
  straight, killed = f'gs://{BUCKET}/straight', f'gs://{BUCKET}/killed'
  started = time.perf_counter()
  log = _finish(_run('ssljax.main', straight, gcs_env, *MAIN_FLAGS))
  straight_secs = time.perf_counter() - started
  assert 'results:' in log and not os.path.exists(os.path.join(ROOT, 'gs:'))

  started = time.perf_counter()
  proc = _run('ssljax.main', killed, gcs_env, *MAIN_FLAGS)
  deadline = time.time() + 600
  while checkpoint.latest_saved_step(killed) is None and time.time() < deadline:
    time.sleep(0.2)
  proc.send_signal(signal.SIGKILL)
  proc.communicate(timeout=60)
  saved = checkpoint.latest_saved_step(killed)
  assert saved is not None and saved < 20, saved
  log = _finish(_run('ssljax.main', killed, gcs_env, *MAIN_FLAGS))
  killed_secs = time.perf_counter() - started
  assert f'Resumed from step {saved}' in log

  (step_a, a), (step_b, b) = _arrays(straight), _arrays(killed)
  assert step_a == step_b == 20
  jax.tree.map(np.testing.assert_array_equal, a, b)
  for name in ('config.json', 'results.json', 'metrics.jsonl', 'report.md'):
    assert paths.path(f'{killed}/{name}').exists(), name
  lines = paths.path(f'{killed}/metrics.jsonl').read_text().splitlines()
  steps = [json.loads(line)['step'] for line in lines]
  assert steps[-1] == 20 and saved in steps  # both attempts' lines, in one file

  started = time.perf_counter()
  _finish(_run('ssljax.evaluate', killed, gcs_env))
  evaluate_secs = time.perf_counter() - started
  evaluated = json.loads(paths.path(f'{killed}/eval.json').read_text())
  results = json.loads(paths.path(f'{killed}/results.json').read_text())
  assert evaluated['step'] == 20 and evaluated['pretrained'] == results['pretrained']

  # load_encoder from the bucket, in a fresh process (the emulator variables set before
  # anything imports): h equals the one of the uninterrupted run's encoder.
  script = (
    'import sys, numpy as np, ssljax\n'
    'from ssljax import restore\n'
    'd = restore.load_config(sys.argv[1]).data\n'
    'size = (4, d.image_size, d.image_size, d.channels)\n'
    'x = np.random.default_rng(0).uniform(size=size).astype(np.float32)\n'
    'hs = [np.asarray(f(p, x)) for f, p in map(ssljax.load_encoder, sys.argv[1:])]\n'
    'assert hs[0].shape[0] == 4 and np.all(np.isfinite(hs[0])), hs[0].shape\n'
    'np.testing.assert_array_equal(hs[0], hs[1])\n'
    'print("h", hs[0].shape)\n'
  )
  started = time.perf_counter()
  proc = subprocess.run(
    [sys.executable, '-c', script, killed, straight],
    cwd=ROOT,
    env={**os.environ, **gcs_env, 'JAX_PLATFORMS': 'cpu'},
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  load_secs = time.perf_counter() - started
  print(
    f'gs:// wall times (killed after step {saved}): straight run {straight_secs:.0f} s, '
    f'killed + rerun {killed_secs:.0f} s, evaluate {evaluate_secs:.0f} s, '
    f'load_encoder x2 {load_secs:.0f} s'
  )


def test_a_folder_source_in_a_bucket_reads_what_the_same_folder_on_disk_gives(gcs_env, tmp_path):
  """data.source=folder with data.path=gs://...: the same classes, splits, evaluation images,
  training views and skipped files as the identical folder on this machine."""
  local = tmp_path / 'images'
  rng = np.random.default_rng(0)
  for split, count in (('train', 6), ('test', 3)):
    for label in ('cat', 'dog'):
      (local / split / label).mkdir(parents=True)
      for i in range(count):
        pixels = rng.integers(0, 256, (12, 12, 3), np.uint8)
        Image.fromarray(pixels).save(local / split / label / f'{i}.png')
  (local / 'train' / 'dog' / 'broken.png').write_bytes(b'not a png')
  remote = f'gs://{BUCKET}/folder'
  for file in local.rglob('*.png'):
    paths.path(f'{remote}/{file.relative_to(local).as_posix()}').write_bytes(file.read_bytes())

  def config(path: str):
    c = shrink_config(load_config_file('simclr_digits.py'))
    c.data.source, c.data.path, c.data.max_bad_fraction = 'folder', path, 0.5
    c.batch_size = 8
    return c

  here, there = config(str(local)), config(remote)
  assert data.dataset_info(there) == data.dataset_info(here)
  for split in ('train', 'test'):
    pairs = zip(data.load_eval_split(there, split), data.load_eval_split(here, split), strict=True)
    for a, b in pairs:
      np.testing.assert_array_equal(a, b)
  batches = [next(data.build_train_iterator(c)) for c in (there, here)]
  jax.tree.map(np.testing.assert_array_equal, *batches)
  skipped = [[s.split(': ')[0] for s in data.skipped_files(c)] for c in (there, here)]
  assert skipped == [[f'{remote}/train/dog/broken.png'], [str(local / 'train/dog/broken.png')]]

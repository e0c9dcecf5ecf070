"""`python -m ssljax.main` as 2 processes on localhost, launched the way `srun` launches it (the
SLURM variables `jax.distributed.initialize()` reads): the same run as 1 process over the same
batch and device count, each file written once, and a SIGTERM to one process that every
process agrees on. Slow tier: each run starts its processes from scratch."""

import json
import os
import signal
import socket
import time

import jax
import numpy as np
import pytest
from conftest import MAIN_FLAGS

from ssljax import checkpoint, cluster
from ssljax.methods import TrainState

# conftest's tiny SimCLR run, logged every step: 2 x 2 devices or 1 x 4, 8 rows a process.
FLAGS = (
  *(f for f in MAIN_FLAGS if not f.startswith('--config.log_every=')),
  '--config.log_every=1',
  '--config.eval_config.max_examples=512',
  '--config.health.images=0',
)
SECONDS = 600  # a run's limit: 2 cores shared by both processes


def _slurm_job_id() -> int:
  """A job id whose port (JAX's SLURM rule: 61440 + id mod 4096) is free on this host."""
  for _ in range(50):
    with socket.socket() as s:
      s.bind(('localhost', 0))
      port = s.getsockname()[1]
    if port >= 61440:
      return 4096 + port - 61440
  with socket.socket() as s:  # no ephemeral port landed in JAX's range: try one of its own
    for port in range(61440 + os.getpid() % 4000, 65536):
      try:
        s.bind(('localhost', port))
      except OSError:
        continue
      return 4096 + port - 61440
  raise RuntimeError('no free port in 61440-65535')


def _slurm_env(job_id: int, tasks: int, task: int) -> dict:
  """What srun sets for task `task` of `tasks` on one node called localhost."""
  return {
    'SLURM_JOB_ID': str(job_id),
    'SLURM_STEP_NODELIST': 'localhost',
    'SLURM_STEP_NUM_NODES': '1',
    'SLURM_NTASKS': str(tasks),
    'SLURM_PROCID': str(task),
    'SLURM_LOCALID': str(task),
  }


def _start(start_main, workdir, processes: int, devices: int, *flags: str) -> list:
  if processes == 1:
    return [start_main(workdir, *FLAGS, *flags, devices=devices)]
  job = _slurm_job_id()
  return [
    start_main(workdir, *FLAGS, *flags, devices=devices, env=_slurm_env(job, processes, i))
    for i in range(processes)
  ]


def _finish(procs, timeout: float = SECONDS) -> list[str]:
  deadline = time.time() + timeout
  logs = []
  for p in procs:
    try:
      logs.append(p.communicate(timeout=max(1.0, deadline - time.time()))[0])
    except Exception:
      for q in procs:
        q.kill()
      raise
  return logs


def _run(start_main, workdir, processes: int, devices: int, *flags: str) -> list[str]:
  procs = _start(start_main, workdir, processes, devices, *flags)
  logs = _finish(procs)
  for p, log in zip(procs, logs, strict=True):
    assert p.returncode == 0, log[-3000:]
  return logs


def _train_lines(workdir) -> list[dict]:
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [line for line in map(json.loads, f) if 'loss' in line]


@pytest.fixture(scope='module')
def two_process_run(tmp_path_factory, start_main):
  """(workdir, logs, seconds) of the uninterrupted 2-process run, which two tests compare with."""
  workdir = tmp_path_factory.mktemp('two') / 'run'
  started = time.perf_counter()
  logs = _run(start_main, workdir, 2, 2)
  return workdir, logs, time.perf_counter() - started


def test_slurm_launch_is_a_cluster_and_a_lone_task_is_not(monkeypatch):
  for name in (*cluster.CLUSTER_ENV, *cluster.SLURM_ENV, 'OMPI_COMM_WORLD_SIZE'):
    monkeypatch.delenv(name, raising=False)
  assert not cluster.is_cluster()
  monkeypatch.setenv('SLURM_NTASKS', '4')  # an sbatch script outside srun: JAX finds no step
  assert not cluster.is_cluster()
  for name, value in _slurm_env(7, 4, 1).items():
    monkeypatch.setenv(name, value)
  assert cluster.is_cluster()
  monkeypatch.setenv('SLURM_NTASKS', '1')  # srun with one task: one process
  assert not cluster.is_cluster()


@pytest.mark.slow
def test_two_processes_train_evaluate_and_write_each_file_once(
  two_process_run, tmp_path, start_main
):
  """2 processes x 2 devices against 1 x 4 over the same global batch."""
  two, logs, seconds = two_process_run
  started = time.perf_counter()
  _run(start_main, tmp_path / 'one', 1, 4)
  print(f'2 processes: {seconds:.0f} s; 1 process: {time.perf_counter() - started:.0f} s')
  assert [sum(f'Process {i}/2' in log for log in logs) for i in (0, 1)] == [1, 1]
  assert sum('results: ' in log for log in logs) == 1  # only process 0 prints them

  # Each file once: process 0 writes the metrics (every step once), the config, the results and
  # the report; the checkpoints are one shared Orbax directory.
  lines = _train_lines(two)
  assert [x['step'] for x in lines] == list(range(1, 41))
  with open(two / 'results.json') as f:
    results = json.load(f)
  assert results['step'] == 40
  with open(two / 'config.json') as f:
    assert json.load(f)['batch_size'] == 16
  assert open(two / 'report.md').read().startswith('# simclr_digits')
  assert sorted(os.listdir(two / 'checkpoints'), key=int) == ['30', '35', '40']

  # The same computation: the first steps agree to float32 rounding; later the cross-process
  # reduction order drifts and SimCLR amplifies it, so the probes agree within noise.
  one_lines = _train_lines(tmp_path / 'one')
  np.testing.assert_allclose(
    [x['loss'] for x in lines[:3]], [x['loss'] for x in one_lines[:3]], rtol=1e-5
  )
  with open(tmp_path / 'one' / 'results.json') as f:
    one_results = json.load(f)
  assert abs(results['pretrained']['knn'] - one_results['pretrained']['knn']) < 0.1


@pytest.mark.slow
def test_sigterm_to_one_process_saves_the_same_step_everywhere(
  two_process_run, tmp_path, start_main
):
  """SIGTERM to process 1 only, after a checkpoint: both processes save one step and exit 143;
  the rerun resumes there and ends bit for bit where the uninterrupted run ended."""
  straight, _, _ = two_process_run
  workdir = tmp_path / 'killed'
  started = time.perf_counter()
  procs = _start(start_main, workdir, 2, 2)
  deadline = time.time() + SECONDS
  while not os.path.exists(workdir / 'checkpoints' / '5') and time.time() < deadline:
    time.sleep(0.2)
  procs[1].send_signal(signal.SIGTERM)
  signalled = time.perf_counter()
  logs = _finish(procs, timeout=120)
  exited = time.perf_counter() - signalled
  assert exited < 60, logs[1][-3000:]
  assert [p.returncode for p in procs] == [143, 143], logs[0][-3000:] + logs[1][-3000:]
  saved = [
    int(line.split('saved step ')[1].split()[0])
    for log in logs
    for line in log.splitlines()
    if 'SIGTERM: saved step' in line
  ]
  assert len(saved) == 2 and saved[0] == saved[1], saved
  saved_step = checkpoint.latest_saved_step(workdir)
  assert 5 <= saved_step == saved[0] < 40

  resumed = _run(start_main, workdir, 2, 2)
  assert all(f'Resumed from step {saved_step}' in log for log in resumed)
  print(
    f'SIGTERM to process 1: both exited {exited:.1f} s later at step {saved_step}; '
    f'run, kill and resume {time.perf_counter() - started:.0f} s'
  )

  assert checkpoint.latest_saved_step(straight) == checkpoint.latest_saved_step(workdir) == 40
  state_a, state_b = (
    checkpoint.restore_arrays(w, 40, TrainState._fields) for w in (straight, workdir)
  )
  assert jax.tree.structure(state_a) == jax.tree.structure(state_b)
  jax.tree.map(np.testing.assert_array_equal, state_a, state_b)
  after = {x['step']: x['loss'] for x in _train_lines(workdir) if x['step'] > saved_step}
  assert after == {x['step']: x['loss'] for x in _train_lines(straight) if x['step'] > saved_step}


@pytest.mark.slow
def test_a_state_split_over_two_processes_trains_draws_and_restores_whole(
  two_process_run, tmp_path, start_main
):
  """config.mesh.fsdp=4 on 2 processes x 2 devices: every tensor is split across the processes.
  The same steps as 1 process x 4 devices on the same mesh, the pictures drawn (every process
  gathers the parameters for them), a quarter of the data-parallel run's state per device, and
  its checkpoint restored here (8 devices, one process, whole) equal to the 1-process run's."""
  flags = ('--config.mesh.fsdp=4', '--config.mesh.fsdp_min_size=0')
  _run(start_main, tmp_path / 'two', 2, 2, *flags)
  _run(start_main, tmp_path / 'one', 1, 4, *flags)
  two, one = (_train_lines(tmp_path / name) for name in ('two', 'one'))
  assert [x['step'] for x in two] == list(range(1, 41))
  np.testing.assert_allclose([x['loss'] for x in two[:3]], [x['loss'] for x in one[:3]], rtol=1e-5)
  assert os.path.exists(tmp_path / 'two' / 'pictures' / 'embeddings' / 'step_0000040.png')
  with open(tmp_path / 'two' / 'results.json') as f:
    assert 0.0 < json.load(f)['pretrained']['knn'] <= 1.0

  def state_bytes(workdir) -> int:
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      return json.loads(f.readline())['state_bytes_per_device']

  replicated, split = state_bytes(two_process_run[0]), state_bytes(tmp_path / 'two')
  print(f'state per device: data parallel {replicated} bytes, fsdp=4 {split} bytes')
  assert 3.0 <= replicated / split <= 4.0
  # Read without a target (no mesh): whole NumPy arrays from the shards both processes wrote.
  saved = checkpoint.restore_arrays(tmp_path / 'two', 40, ('params',))['params']
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(saved))


def _evaluate(workdir, processes: int, devices: int) -> dict:
  """`python -m ssljax.evaluate` of the run at WORKDIR as `processes` x `devices`: eval.json."""
  import subprocess
  import sys

  flags = (
    "--config.eval=('knn', 'linear', 'linear_few', 'linear_sgd')",
    '--config.eval_config.random_init=False',
    '--config.eval_config.linear_sgd.batch_size=32',
    '--config.eval_config.linear_sgd.epochs=0.0',
    '--config.eval_config.linear_sgd.min_steps=20',
    '--config.eval_config.linear_sgd.base_lr=2.0',
  )
  job = _slurm_job_id()
  procs = []
  for i in range(processes):
    env = {
      **os.environ,
      'JAX_PLATFORMS': 'cpu',
      'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}',
      **(_slurm_env(job, processes, i) if processes > 1 else {}),
    }
    args = [sys.executable, '-m', 'ssljax.evaluate', f'--workdir={workdir}', *flags]
    procs.append(
      subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    )
  logs = _finish(procs)
  for p, log in zip(procs, logs, strict=True):
    assert p.returncode == 0, log[-3000:]
  # Each process's bytes of train features (split over the mesh, so over the processes too).
  local = [
    int(line.split('bytes on this process')[0].split()[-1])
    for line in logs[0].splitlines()
    if 'features of train:' in line
  ]
  with open(os.path.join(workdir, 'eval.json')) as f:
    return json.load(f)['pretrained'], local[0]


@pytest.mark.slow
def test_evaluation_is_the_same_on_one_device_eight_and_two_processes(two_process_run):
  """One checkpoint evaluated with its features on 1 device, split over 8, and over 2 processes
  x 4 devices (each process reading its share of the splits): the same k-NN neighbours and the
  same linear probe, so the same accuracies; and the same linear_sgd head, whose batches each
  process reads by index, its half of every global batch."""
  workdir = two_process_run[0]
  evaluated = {layout: _evaluate(workdir, *layout) for layout in ((1, 1), (1, 8), (2, 4))}
  results = {layout: result for layout, (result, _) in evaluated.items()}
  local = {layout: nbytes for layout, (_, nbytes) in evaluated.items()}
  print(results, f'train features per process: {local} bytes')
  assert local[(2, 4)] * 2 == local[(1, 8)] == local[(1, 1)]  # halved over 2 processes
  one = results[(1, 1)]
  for layout in ((1, 8), (2, 4)):
    assert results[layout]['knn'] == one['knn']
    for key in ('linear', 'linear_5_per_class', 'linear_sgd'):
      assert abs(results[layout][key] - one[key]) <= 0.003  # a test image or so

"""2 processes x 2 devices over jax.distributed on localhost == 1 process x 4 devices."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

WORKER = os.path.join(os.path.dirname(__file__), 'multiprocess_worker.py')


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _run(num_processes, local_devices, out, timeout=300):
  port = _free_port()
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  procs = [
    subprocess.Popen(
      [sys.executable, WORKER, str(i), str(num_processes), str(port), str(local_devices), out],
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in range(num_processes)
  ]
  logs = [p.communicate(timeout=timeout)[0] for p in procs]
  for p, log in zip(procs, logs, strict=True):
    assert p.returncode == 0, log[-3000:]
  with open(out) as f:
    return json.load(f)


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
  one = _run(1, 4, str(tmp_path / 'one.json'))
  two = _run(2, 2, str(tmp_path / 'two.json'))
  assert one['devices'] == two['devices'] == 4
  np.testing.assert_allclose(two['loss'], one['loss'], rtol=1e-6)
  np.testing.assert_allclose(two['grad_norm'], one['grad_norm'], rtol=1e-5)
  # two SimCLR steps (global BatchNorm, sharded NT-Xent, LARS) agree too
  np.testing.assert_allclose(two['step_losses'], one['step_losses'], rtol=1e-4)
  assert one['step_losses'][0] != one['step_losses'][1]

"""Peak host memory of a large model trained with its state split over 8 CPU devices: Issue 44.

python experiments/fsdp_rss.py [--config=configs/ijepa_imagenet.py:variant=L/16] [--fsdp=8]
    [--steps=3] [--image_size=128] [--out=experiments/results/fsdp_rss.json]

Runs `python -m ssljax.main` (synthetic images, a few steps, no evaluation or pictures) on 8
XLA:CPU devices with config.mesh.fsdp = --fsdp, once with the ViT blocks unrolled and once
scanned, and reports each run's peak resident memory beside the state arithmetic: the bytes of
state one device holds (the run's `state_bytes_per_device`) and what 8 whole copies would take
(data parallel on this host). The runs write their checkpoints to a temporary directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app, flags

_CONFIG = flags.DEFINE_string('config', 'configs/ijepa_imagenet.py:variant=L/16', 'config')
_FSDP = flags.DEFINE_integer('fsdp', 8, 'config.mesh.fsdp (8 devices)')
_STEPS = flags.DEFINE_integer('steps', 3, 'training steps')
_SIZE = flags.DEFINE_integer('image_size', 128, 'image side (pixels)')
_OUT = flags.DEFINE_string('out', 'experiments/results/fsdp_rss.json', 'results file')
DEVICES = 8
GIB = 2**30


def run(workdir: str, scan: bool) -> dict:
  """One run in a child process: its wall time, peak RSS and logged state bytes."""
  size = _SIZE.value
  flags_ = [
    f'--config={_CONFIG.value}',
    f'--workdir={workdir}',
    '--config.data.source=synthetic',
    f'--config.data.image_size={size}',
    f'--config.augment.image_size={size}',
    '--config.data.num_examples=64',
    '--config.data.channels=3',
    f'--config.batch_size={DEVICES}',
    f'--config.total_steps={_STEPS.value}',
    '--config.log_every=1',
    '--config.health.images=0',
    '--config.eval=()',
    '--config.eval_config.random_init=False',
    '--config.visualize.embeddings=False',
    '--config.visualize.attention=False',
    '--config.report=False',
    f'--config.mesh.fsdp={_FSDP.value}',
    f'--config.model.scan={scan}',
  ]
  env = {**os.environ, 'XLA_FLAGS': f'--xla_force_host_platform_device_count={DEVICES}'}
  started = time.perf_counter()
  log = os.path.join(os.path.dirname(workdir), 'log.txt')
  with open(log, 'w') as out:
    child = subprocess.Popen(
      [sys.executable, '-m', 'ssljax.main', *flags_], env=env, stdout=out, stderr=out
    )
    _, status, usage = os.wait4(child.pid, 0)  # this child's own peak, in KiB on Linux
  if os.waitstatus_to_exitcode(status):
    raise RuntimeError(open(log).read()[-4000:])
  peak = usage.ru_maxrss * 1024
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    lines = [json.loads(line) for line in f]
  return {
    'scan': scan,
    'wall_s': round(time.perf_counter() - started, 1),
    'peak_rss_gib': round(peak / GIB, 2),
    'state_gib_per_device': round(lines[0]['state_bytes_per_device'] / GIB, 3),
    'losses': [round(x['loss'], 4) for x in lines if 'loss' in x],
  }


def main(argv):
  del argv
  rows = []
  for scan in (False, True):
    with tempfile.TemporaryDirectory() as tmp:
      rows.append(run(os.path.join(tmp, 'run'), scan))
  print(f'{_CONFIG.value}, {DEVICES} CPU devices, mesh.fsdp={_FSDP.value}, {_SIZE.value} px:')
  print('| blocks | state per device (GiB) | peak RSS (GiB) | wall (s) | losses |')
  print('|---|---|---|---|---|')
  for r in rows:
    print(
      f'| {"scanned" if r["scan"] else "unrolled"} | {r["state_gib_per_device"]:.3f} | '
      f'{r["peak_rss_gib"]:.2f} | {r["wall_s"]:.0f} | {r["losses"]} |'
    )
  result = {'config': _CONFIG.value, 'devices': DEVICES, 'fsdp': _FSDP.value, 'runs': rows}
  with open(_OUT.value, 'w') as f:
    json.dump(result, f, indent=2)


if __name__ == '__main__':
  app.run(main)

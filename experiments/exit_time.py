"""Seconds from SIGTERM to process exit for `python -m ssljax.main`, during training and during
evaluation, and from the printed results to exit when nothing is sent.

python experiments/exit_time.py [--config=configs/simclr_fashion_mnist.py] [--steps=40]
    [--repo=.] [--out=experiments/results/exit_time.json] [-- extra --config.* flags]

Each case starts a fresh run in a temporary directory (`--repo` picks the checkout to run, so two
versions can be compared on one machine) and watches its log: 'training' signals after the first
logged step, 'evaluation' 5 s after the last training step is logged, 'finished' sends nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time


def _run(repo: str, config: str, steps: int, extra: list[str], case: str) -> dict:
  workdir = tempfile.mkdtemp(prefix=f'exit_{case}_')
  args = [
    sys.executable,
    '-m',
    'ssljax.main',
    f'--config={config}',
    f'--workdir={workdir}',
    f'--config.total_steps={steps}',
    '--config.log_every=5',
    '--config.report=False',
    *extra,
  ]
  env = {**os.environ, 'PYTHONPATH': os.path.abspath(repo), 'PYTHONUNBUFFERED': '1'}
  proc = subprocess.Popen(
    args, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
  )
  marks: dict[str, float] = {}
  lines: list[str] = []

  def watch():
    for line in proc.stdout:
      lines.append(line)
      now = time.perf_counter()
      if ' step ' in line and '/' in line and 'first_step' not in marks:
        marks['first_step'] = now
      if f'step {steps}/{steps}' in line:
        marks['last_step'] = now
      if line.startswith('results:'):
        marks['results'] = now

  reader = threading.Thread(target=watch, daemon=True)
  reader.start()
  start = time.perf_counter()
  wait_for = {'training': 'first_step', 'evaluation': 'last_step', 'finished': 'results'}[case]
  while wait_for not in marks and proc.poll() is None and time.perf_counter() - start < 1800:
    time.sleep(0.05)
  sent = None
  if case != 'finished' and proc.poll() is None:
    if case == 'evaluation':
      time.sleep(5.0)
    sent = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
  code = proc.wait(timeout=600)
  ended = time.perf_counter()
  reader.join(timeout=5)
  origin = sent if sent is not None else marks.get('results', ended)
  return {
    'case': case,
    'signal': 'SIGTERM' if sent is not None else None,
    'seconds_to_exit': round(ended - origin, 2),
    'exit_code': code,
    'log_tail': ''.join(lines[-3:]).strip()[-300:],
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--config', default='configs/simclr_fashion_mnist.py')
  parser.add_argument('--steps', type=int, default=40)
  parser.add_argument('--repo', default='.')
  parser.add_argument('--out', default='experiments/results/exit_time.json')
  parser.add_argument('--cases', default='training,evaluation,finished')
  args, extra = parser.parse_known_args()
  extra = [a for a in extra if a != '--']
  rows = [_run(args.repo, args.config, args.steps, extra, c) for c in args.cases.split(',')]
  print(f'{"case":<12} {"signal":<8} {"s to exit":>9} {"code":>5}')
  for r in rows:
    signal_name = r['signal'] or '-'
    print(f'{r["case"]:<12} {signal_name:<8} {r["seconds_to_exit"]:>9.2f} {r["exit_code"]:>5}')
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump(
      dict(config=args.config, steps=args.steps, extra=extra, machine=platform.node(), rows=rows),
      f,
      indent=2,
    )


if __name__ == '__main__':
  main()

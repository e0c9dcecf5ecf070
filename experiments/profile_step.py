"""Where the time of one ssljax train step goes on this machine: a jax.profiler trace of a few
steps of a bench_vs_pytorch case, its XLA ops summed by kind.

python experiments/profile_step.py [--case=resnet18_w8] [--steps=5]
    [--out=experiments/results/profile_step_<case>.json]

Kinds, read from the compiled module: convolutions (forward, and the gradients with respect to
the input and to the weights), dots (matmuls), reductions (BatchNorm statistics, the loss,
gradient norms), copies and transposes, elementwise and other ops (the optimizer update among
them), as ssljax.cpu.step_profile classifies them. Each kind's share is its wall time (see
step_profile.wall_time_by_op) over the traced steps' wall time, which includes stopping the
trace. With several XLA:CPU devices (ssljax.cpu.xla_flags makes two), each device runs its part
of the batch on a timeline of its own: an op's seconds are the mean over the devices of its wall
time on each.
"""

from __future__ import annotations

import collections
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

if __name__ == '__main__':  # before JAX starts: XLA's options and the allocator are fixed then
  from ssljax.cpu import process

  process.prepare()

import jax  # noqa: E402
from absl import app, flags  # noqa: E402

from ssljax import build, data, sharding  # noqa: E402
from ssljax.cpu import allocator, cases, step_profile  # noqa: E402

_CASE = flags.DEFINE_string('case', 'resnet18_w8', 'A bench_vs_pytorch case.')
_STEPS = flags.DEFINE_integer('steps', 5, 'Traced steps.')
_OUT = flags.DEFINE_string('out', '', 'Results file (default results/profile_step_CASE.json).')


def main(argv) -> None:
  del argv
  config = cases.case_config(_CASE.value)
  step, state, mesh, synthetic = build.synthetic_step(config)
  batch = sharding.to_global(next(data.build_train_iterator(synthetic)), mesh)
  for _ in range(2):
    state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  directory = tempfile.mkdtemp(prefix='profile_')
  start = time.perf_counter()
  with jax.profiler.trace(directory):
    for _ in range(_STEPS.value):
      state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
  wall = time.perf_counter() - start
  (xspace,) = [
    os.path.join(root, f)
    for root, _, files in os.walk(directory)
    for f in files
    if f.endswith('.xplane.pb')
  ]
  profile = jax.profiler.ProfileData.from_file(xspace)
  hlo_ops = step_profile.parse_ops(step.lower(state, batch).compile().as_text())
  devices = mesh.devices.size  # each runs its share of the batch on a timeline of its own
  kinds = step_profile.op_kinds(hlo_ops, 2 * config.batch_size // devices)
  events = collections.defaultdict(list)  # device -> (start, end, op name) of each op it ran
  for plane in profile.planes:
    for line in plane.lines:
      for event in line.events:
        stats = dict(event.stats)
        if 'hlo_op' not in stats and 'hlo_module' not in stats:
          continue
        name = str(stats.get('hlo_op', event.name))
        span = (event.start_ns, event.start_ns + event.duration_ns, name)
        events[stats.get('device_ordinal', 0)].append(span)
  ops_by_kind: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
  loops = {name for name, kind in kinds.items() if kind == step_profile.LOOP}
  asynchronous = step_profile.finished_by(hlo_ops)
  for device_events in events.values():
    for name, seconds in step_profile.wall_time_by_op(device_events, asynchronous, loops).items():
      ops_by_kind[kinds.get(name, 'elementwise and other')][name] += seconds / devices
  totals = {kind: sum(kind_ops.values()) for kind, kind_ops in ops_by_kind.items()}
  ops = sum(ops_by_kind.values(), collections.Counter())
  print(f'{_CASE.value}: {_STEPS.value} steps in {wall:.2f} s on {devices} devices')
  print(f'{"kind":<36} {"s/step":>8} {"share":>7}')
  for k, s in sorted(totals.items(), key=lambda kv: -kv[1]):
    print(f'{k:<36} {s / _STEPS.value:>8.3f} {s / wall:>7.1%}')
  out = _OUT.value or f'experiments/results/profile_step_{_CASE.value}.json'
  with open(out, 'w') as f:
    json.dump(
      {
        'case': _CASE.value,
        'steps': _STEPS.value,
        'wall_s': wall,
        'devices': devices,
        'allocator': allocator.active(),
        'seconds_per_step_by_kind': {k: s / _STEPS.value for k, s in totals.items()},
        'top_ops': dict(ops.most_common(25)),
        'top_ops_by_kind_s_per_step': {
          kind: {name: s / _STEPS.value for name, s in kind_ops.most_common(12)}
          for kind, kind_ops in ops_by_kind.items()
        },
      },
      f,
      indent=2,
    )
  print(f'wrote {out}')


if __name__ == '__main__':
  app.run(main)

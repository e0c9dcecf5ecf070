"""Where the time of one ssljax train step goes on this machine: a jax.profiler trace of a few
steps of a bench_vs_pytorch case, its XLA ops summed by kind.

python experiments/profile_step.py [--case=resnet18_w8] [--steps=5]
    [--out=experiments/results/profile_step_<case>.json]

Kinds, read from the compiled module: convolutions (forward, and the gradients with respect to
the input and to the weights), dots (matmuls), reductions (BatchNorm statistics, the loss,
gradient norms), copies and transposes, elementwise and other ops (the optimizer update among
them). Each kind's share is its wall time (see wall_time_by_op) over the traced steps' wall
time, which includes stopping the trace. With several XLA:CPU devices (ssljax.cpu.xla_flags makes
two), each device runs its part of the batch on a timeline of its own: an op's seconds are the
mean over the devices of its wall time on each.
"""

from __future__ import annotations

import collections
import json
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

if __name__ == '__main__':  # before JAX starts: XLA's options and the allocator are fixed then
  from ssljax.cpu import process

  process.prepare()

import jax  # noqa: E402
from absl import app, flags  # noqa: E402
from bench_step import build_step, case_config  # noqa: E402

from ssljax import data, sharding  # noqa: E402
from ssljax.cpu import allocator

_CASE = flags.DEFINE_string('case', 'resnet18_w8', 'A bench_vs_pytorch case.')
_STEPS = flags.DEFINE_integer('steps', 5, 'Traced steps.')
_OUT = flags.DEFINE_string('out', '', 'Results file (default results/profile_step_CASE.json).')


LOOP = 'loop (counted in its body)'
_UNTIMED = ('bitcast', 'get-tuple-element', 'tuple')  # no trace event of their own
_COMPUTATION = re.compile(r'^(?:ENTRY )?%(\S+) .*\{$')
# name = shape opcode(: an array shape, or a tuple's (a while loop's state, a multi-output fusion's)
_INSTRUCTION = re.compile(r'^\s*(?:ROOT )?%(\S+) = (?:\w+\[([\d,]*)\]\S*|\(.*?\)) (\w[\w-]*)\(')


def parse_ops(hlo: str) -> dict[str, tuple[list[int], str, list[str], str]]:
  """Op name -> (output dims, opcode, operand names, text of the op and what it calls), for
  every op of the compiled module's text."""
  bodies: dict[str, list[str]] = {}
  current = None
  for line in hlo.splitlines():
    if m := _COMPUTATION.match(line):
      current = bodies.setdefault(m.group(1), [])
    elif line.startswith('}'):
      current = None
    elif current is not None:
      current.append(line)
  ops = {}
  for lines in bodies.values():
    for line in lines:
      if m := _INSTRUCTION.match(line):
        name, shape, opcode = m.groups()
        called = re.search(r'calls=%([\w.-]+)', line)
        text = '\n'.join([line, *bodies.get(called.group(1), [])]) if called else line
        operands = re.findall(r'%([\w.-]+)', line[m.end() :].split(')')[0])
        ops[name] = ([int(d) for d in (shape or '').split(',') if d], opcode, operands, text)
  return ops


def op_kinds(ops: dict[str, tuple[list[int], str, list[str], str]], views: int) -> dict[str, str]:
  """XLA op name -> kind, from the compiled module's text (which keeps no JAX names for the
  fused convolutions): what its fused computation holds (a convolution, a dot, a reduce). A
  convolution fed by a reversed kernel, or dilating its input (a strided one's), is the gradient
  with respect to the input; one whose output is (views, H, W, C) with H > 3 a forward one; the
  rest (kernel-shaped outputs, windows as large as the activations) the gradient with respect to
  the weights. Loops are LOOP, left out of the sums (the trace times each op of their
  bodies)."""

  def reversed_kernel(name: str, depth: int = 2) -> bool:
    if name not in ops or depth < 0:
      return False
    _, _, operands, text = ops[name]
    return ' reverse(' in text or any(reversed_kernel(o, depth - 1) for o in operands)

  kinds = {}
  for name, (dims, opcode, operands, text) in ops.items():
    if opcode in ('while', 'conditional'):  # the trace times their ops one by one: counted there
      kinds[name] = LOOP
    elif ' convolution(' in text:
      if 'lhs_dilate=' in text or any(reversed_kernel(o) for o in operands):
        kinds[name] = 'conv gradient wrt input'
      elif len(dims) == 4 and dims[0] == views and dims[1] > 3:
        kinds[name] = 'conv forward'
      else:
        kinds[name] = 'conv gradient wrt weights'
    elif ' dot(' in text:
      kinds[name] = 'dot (matmul)'
    elif ' reduce(' in text:
      kinds[name] = 'reductions (BatchNorm, loss, norms)'
    elif opcode in ('copy', 'transpose') or name.startswith(('copy', 'transpose', 'wrapped_copy')):
      kinds[name] = 'copy / transpose'
    else:
      kinds[name] = 'elementwise and other'
  return kinds


def finished_by(ops: dict[str, tuple[list[int], str, list[str], str]]) -> dict[str, set[str]]:
  """Unfused convolution -> the ops whose start shows it finished: those that read its output,
  directly or through ops the trace does not time (bitcasts, tuples and their elements)."""
  readers = collections.defaultdict(set)
  for name, (_, _, operands, _) in ops.items():
    for operand in operands:
      readers[operand].add(name)

  def timed_readers(name: str) -> set[str]:
    found = set()
    for reader in readers[name]:
      untimed = ops[reader][1] in _UNTIMED
      found |= timed_readers(reader) if untimed else {reader}
    return found

  return {name: timed_readers(name) for name, op in ops.items() if op[1] == 'convolution'}


def wall_time_by_op(
  events: list[tuple[int, int, str]],
  asynchronous: dict[str, set[str]],
  loops: set[str] = frozenset(),
) -> collections.Counter:
  """Seconds of wall time per op, each instant counted once: an op gets the part of its traced
  span no earlier op covered, and a gap when no op runs goes to the latest asynchronous op still
  at work, one started whose readers (asynchronous[op]) have not (XLA:CPU hands a convolution it
  does not fuse to a library: its trace event ends once the work is dispatched, 0.05 ms for a
  first-stage convolution at width 8, and the work fills the 13 ms until an op that reads its
  output starts). Summed traced durations left that time out. A gap with none at work goes to
  the op before it. Loops count nothing themselves (the ops of their bodies are timed one by one)
  but their start finishes what they read."""
  seconds: collections.Counter = collections.Counter()
  covered = last = None
  working: list[str] = []
  for start, end, name in sorted(events):
    if name not in loops:
      if covered is not None and start > covered:
        seconds[working[-1] if working else last] += (start - covered) * 1e-9
      if covered is None or end > covered:
        seconds[name] += (end - max(start, covered or start)) * 1e-9
        covered = end
      last = name
    working = [op for op in working if name not in asynchronous[op]]
    if name in asynchronous:
      working.append(name)
  return seconds


def main(argv) -> None:
  del argv
  config = case_config(_CASE.value)
  step, state, mesh, synthetic = build_step(config)
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
  hlo_ops = parse_ops(step.lower(state, batch).compile().as_text())
  devices = mesh.devices.size  # each runs its share of the batch on a timeline of its own
  kinds = op_kinds(hlo_ops, 2 * config.batch_size // devices)
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
  loops = {name for name, kind in kinds.items() if kind == LOOP}
  asynchronous = finished_by(hlo_ops)
  for device_events in events.values():
    for name, seconds in wall_time_by_op(device_events, asynchronous, loops).items():
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

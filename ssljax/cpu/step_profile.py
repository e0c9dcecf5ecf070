"""Where the time of a train step goes in XLA:CPU, from a jax.profiler trace and the compiled
module's text: each op's kind (convolutions forward and their two gradients, dots, reductions,
copies, elementwise) and its wall time, each instant counted once. experiments/profile_step.py
traces a step and sums these by kind."""

from __future__ import annotations

import collections
import re

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

"""ssljax.cpu.step_profile, experiments/step_profile.py's op classification, on a module XLA:CPU
really compiled."""

import jax
import jax.numpy as jnp
from jax import lax

from ssljax.cpu import step_profile


def test_op_kinds_of_a_compiled_step():
  def loss(x, w, v):
    y = lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    z, _ = lax.scan(lambda c, _: (jnp.tanh(c @ v), None), y.reshape(-1, 4), None, length=3)
    return jnp.sum(z)

  x, w, v = jnp.ones((6, 8, 8, 2)), jnp.ones((3, 3, 2, 4)), jnp.ones((4, 4))
  hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, w, v).compile().as_text()
  ops = step_profile.parse_ops(hlo)
  kinds = step_profile.op_kinds(ops, views=6)
  found = set(kinds.values())
  for kind in (
    step_profile.LOOP,  # the scans: their tuple-shaped while ops are not timed twice
    'conv forward',
    'conv gradient wrt input',
    'conv gradient wrt weights',
    'dot (matmul)',
  ):
    assert kind in found, (kind, kinds)
  loops = [line.split()[0][1:] for line in hlo.splitlines() if ' while(' in line]
  assert loops and all(kinds[name] == step_profile.LOOP for name in loops)
  # An unfused convolution is finished once an op reading its output starts: the forward one
  # feeds the loop (through a bitcast and the loop's tuple), the kernel gradient a copy.
  finished_by = step_profile.finished_by(ops)
  forward, kernel_gradient = (
    c for c in finished_by if kinds[c] in ('conv forward', 'conv gradient wrt weights')
  )
  assert [ops[r][1] for r in finished_by[forward]] == ['while']
  assert [ops[r][1] for r in finished_by[kernel_gradient]] == ['fusion']


def _assert_seconds(got, want_ms):
  assert got.keys() == want_ms.keys(), got
  for name, ms in want_ms.items():
    assert abs(got[name] - ms * 1e-3) < 1e-12, (name, got[name])


def test_wall_time_counts_each_instant_once():
  ms = 1_000_000
  # conv (asynchronous) is dispatched in 1 ms at t=0; relu, which does not read it, runs 1-2;
  # gap 2-10 is conv's (still at work); reader starts at 10 and overlaps norm (10-13 and 11-15);
  # gap 15-16 has no asynchronous op at work: it goes to norm, the op started last.
  events = [
    (0, 1 * ms, 'conv'),
    (1 * ms, 2 * ms, 'relu'),
    (10 * ms, 13 * ms, 'reader'),
    (11 * ms, 15 * ms, 'norm'),
    (16 * ms, 17 * ms, 'last'),
  ]
  seconds = step_profile.wall_time_by_op(events, {'conv': {'reader'}})
  _assert_seconds(seconds, {'conv': 9, 'relu': 1, 'reader': 3, 'norm': 3, 'last': 1})
  # A loop reading conv starts at 3 and its body runs 3-9: the loop finishes conv (gap 2-3 is
  # conv's, 9-10 the body's) and counts nothing itself (the trace times its body's ops).
  events.append((3 * ms, 9 * ms, 'loop'))
  events.append((3 * ms, 9 * ms, 'body'))
  seconds = step_profile.wall_time_by_op(events, {'conv': {'loop'}}, {'loop'})
  _assert_seconds(seconds, {'conv': 2, 'relu': 1, 'body': 7, 'reader': 3, 'norm': 3, 'last': 1})

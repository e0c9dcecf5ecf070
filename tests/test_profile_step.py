"""experiments/profile_step.py's op classification, on a module XLA:CPU really compiled."""

import os
import sys

import jax
import jax.numpy as jnp
from jax import lax

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), 'experiments'))
import profile_step  # noqa: E402


def test_op_kinds_of_a_compiled_step():
  def loss(x, w, v):
    y = lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    z, _ = lax.scan(lambda c, _: (jnp.tanh(c @ v), None), y.reshape(-1, 4), None, length=3)
    return jnp.sum(z)

  x, w, v = jnp.ones((6, 8, 8, 2)), jnp.ones((3, 3, 2, 4)), jnp.ones((4, 4))
  hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, w, v).compile().as_text()
  kinds = profile_step.op_kinds(hlo, views=6)
  found = set(kinds.values())
  for kind in (
    profile_step.LOOP,  # the scans: their tuple-shaped while ops are not timed twice
    'conv forward',
    'conv gradient wrt input',
    'conv gradient wrt weights',
    'dot (matmul)',
  ):
    assert kind in found, (kind, kinds)
  loops = [line.split()[0][1:] for line in hlo.splitlines() if ' while(' in line]
  assert loops and all(kinds[name] == profile_step.LOOP for name in loops)

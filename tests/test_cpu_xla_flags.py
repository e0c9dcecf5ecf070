"""ssljax.cpu.xla_flags: which XLA options the entry points add, and when they add none."""

import os
import subprocess
import sys

import numpy as np

from ssljax.cpu import xla_flags

YNN, DEVICES = xla_flags.FLAGS


def test_flags_are_added_after_the_users_own():
  assert xla_flags.with_flags({}) == f'{YNN} {DEVICES}'
  assert xla_flags.with_flags({'XLA_FLAGS': '--xla_dump_to=/tmp/d'}) == (
    f'--xla_dump_to=/tmp/d {YNN} {DEVICES}'
  )


def test_an_option_the_user_set_keeps_its_value():
  other = '--xla_cpu_experimental_xnn_fusion_type=dot'
  assert xla_flags.with_flags({'XLA_FLAGS': other}) == f'{other} {YNN} {DEVICES}'
  own = f'{other} --xla_cpu_experimental_ynn_fusion_type=reduce'
  assert xla_flags.with_flags({'XLA_FLAGS': own}) == f'{own} {DEVICES}'
  eight = '--xla_force_host_platform_device_count=8'
  assert xla_flags.with_flags({'XLA_FLAGS': eight}) == f'{eight} {YNN}'


def test_none_turns_them_off():
  env = {'XLA_FLAGS': '--xla_dump_to=/tmp/d', xla_flags.ENV: 'none'}
  assert xla_flags.with_flags(env) == '--xla_dump_to=/tmp/d'


def test_only_options_this_xla_has_are_added(monkeypatch):
  # The installed jaxlib has them (else the speed-up is lost: this test says so); a name no XLA
  # has is refused, so that an older or newer jaxlib without the options still starts.
  assert xla_flags.xla_knows(xla_flags.FLAGS)
  assert not xla_flags.xla_knows(('--xla_cpu_no_such_option_in_any_version=1',))
  monkeypatch.setattr(xla_flags, 'FLAGS', ('--xla_cpu_no_such_option_in_any_version=1',))
  assert xla_flags.with_flags({'XLA_FLAGS': '--a=1'}) == '--a=1'


# A child that starts the way `python -m ssljax.main` does, then takes the forward pass and both
# gradients of the convolutions the ResNets run (3x3 at stride 1 and 2, 8 and 32 channels: Eigen's
# and YNNPACK's sizes before the option moved both to Eigen).
_CHILD = """
import os, sys
import numpy as np
from ssljax.cpu import xla_flags
xla_flags.apply()
import jax, jax.numpy as jnp
from jax import lax
out = {}
for channels, stride in [(8, 1), (32, 2)]:
  rng = np.random.default_rng(channels)
  x = rng.normal(size=(4, 9, 9, channels)).astype(np.float32)
  w = rng.normal(size=(3, 3, channels, channels)).astype(np.float32) / channels
  conv = lambda x, w: lax.conv_general_dilated(x, w, (stride,) * 2, ((1, 1), (1, 1)),
                                             dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  y = jax.jit(conv)(x, w)
  g = rng.normal(size=y.shape).astype(np.float32)
  dx, dw = jax.jit(jax.grad(lambda x, w: jnp.sum(conv(x, w) * g), argnums=(0, 1)))(x, w)
  arrays = dict(x=x, w=w, g=g, y=y, dx=dx, dw=dw)
  out.update({f'{k}{channels}': np.asarray(v) for k, v in arrays.items()})
np.savez(sys.argv[1], **out)
print(os.environ['XLA_FLAGS'])
print(jax.device_count())
"""


def _convolution_reference(x, w, g, stride):
  """y = conv(x, w) with padding 1, and the gradients of sum(y * g), from the definition."""
  x, w, g = (a.astype(np.float64) for a in (x, w, g))
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  n, ho, wo, _ = g.shape
  y, dxp, dw = np.zeros(g.shape), np.zeros_like(xp), np.zeros_like(w)
  for i in range(3):
    for j in range(3):
      rows, cols = slice(i, i + stride * ho, stride), slice(j, j + stride * wo, stride)
      y += xp[:, rows, cols] @ w[i, j]
      dxp[:, rows, cols] += g @ w[i, j].T
      dw[i, j] = np.einsum('nhwc,nhwo->co', xp[:, rows, cols], g)
  return y, dxp[:, 1:-1, 1:-1], dw


def test_convolutions_under_the_options_match_their_definition(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)
  env.pop(xla_flags.ENV, None)
  path = tmp_path / 'conv.npz'
  child = subprocess.run(
    [sys.executable, '-c', _CHILD, str(path)], env=env, check=True, capture_output=True, text=True
  )
  flags_line, devices = child.stdout.splitlines()
  assert flags_line.split() == list(xla_flags.FLAGS)
  assert devices == '2'  # the host split into two XLA:CPU devices
  got = np.load(path)
  for channels, stride in [(8, 1), (32, 2)]:
    x, w, g = (got[f'{k}{channels}'] for k in 'xwg')
    for name, want in zip(['y', 'dx', 'dw'], _convolution_reference(x, w, g, stride), strict=True):
      np.testing.assert_allclose(got[f'{name}{channels}'], want, rtol=1e-4, atol=1e-4, err_msg=name)

"""ssljax.cpu.allocator: when an entry point restarts under tcmalloc, and that it pays."""

import os
import subprocess
import sys

import pytest

from ssljax.cpu import allocator

LIB = '/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4'


def test_preload_env_restarts_only_when_it_applies(monkeypatch):
  monkeypatch.setattr(sys, 'platform', 'linux')
  env = allocator.preload_env({'PATH': '/bin'}, LIB)
  assert env['LD_PRELOAD'] == LIB and env['PATH'] == '/bin'
  assert int(env['TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD']) >= 1 << 40
  # A user's own preload stays, after ours; a user's threshold is kept.
  env = allocator.preload_env(
    {'LD_PRELOAD': 'libfoo.so', 'TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD': '5'}, LIB
  )
  assert env['LD_PRELOAD'] == f'{LIB}:libfoo.so'
  assert env['TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD'] == '5'
  # No restart: nothing found, turned off, an allocator already preloaded (which also ends the
  # restart after one round), or not Linux.
  assert allocator.preload_env({}, None) is None
  assert allocator.preload_env({allocator.ENV: 'system'}, LIB) is None
  assert allocator.preload_env({'LD_PRELOAD': '/x/libjemalloc.so.2'}, LIB) is None
  assert allocator.preload_env({'LD_PRELOAD': LIB}, LIB) is None
  monkeypatch.setattr(sys, 'platform', 'darwin')
  assert allocator.preload_env({}, LIB) is None


def test_active_reads_the_preload(monkeypatch):
  monkeypatch.setenv('LD_PRELOAD', LIB)
  assert allocator.active() == 'tcmalloc'
  monkeypatch.delenv('LD_PRELOAD')
  assert allocator.active() == 'glibc'


# A child that restarts itself the way the entry points do, then counts the page faults of jitted
# calls whose 128 MB outputs are freed each time (XLA:CPU's buffers of that size are mmap'd anew
# by glibc on every call).
_CHILD = """
import os, resource, sys
from ssljax.cpu import allocator
allocator.reexec()
import jax, jax.numpy as jnp
f = jax.jit(lambda x: x * 2.0)
x = jnp.ones((32 * 1024 * 1024,), jnp.float32)
f(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
  f(x).block_until_ready()
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5
maps = open('/proc/self/maps').read()
print(allocator.active(), 'tcmalloc' in maps, int(faults))
"""


def _child(malloc: str) -> tuple[str, bool, int]:
  env = dict(os.environ, **{allocator.ENV: malloc}, JAX_PLATFORMS='cpu')
  env.pop('LD_PRELOAD', None)
  env.pop('XLA_FLAGS', None)  # one device is enough here
  out = subprocess.run(
    [sys.executable, '-c', _CHILD], env=env, capture_output=True, text=True, check=True
  )
  name, loaded, faults = out.stdout.split()
  return name, loaded == 'True', int(faults)


@pytest.mark.skipif(
  not sys.platform.startswith('linux') or allocator.find_tcmalloc() is None,
  reason='tcmalloc not installed (apt-get install libtcmalloc-minimal4)',
)
def test_restart_loads_tcmalloc_and_stops_the_page_faults():
  name, loaded, faults_tcmalloc = _child('auto')
  assert (name, loaded) == ('tcmalloc', True)
  name, loaded, faults_glibc = _child('system')
  assert (name, loaded) == ('glibc', False)
  # 128 MB is 32,768 pages of 4 KB: glibc faults most of them in on every call, tcmalloc reuses.
  assert faults_glibc > 16_000, faults_glibc
  assert faults_tcmalloc < faults_glibc / 4, (faults_tcmalloc, faults_glibc)

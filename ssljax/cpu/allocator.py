"""Run the entry points under tcmalloc when it is installed: XLA:CPU steps get faster.

glibc's malloc serves every request above 64 MB with a fresh mmap and returns it with munmap on
free. XLA:CPU allocates its temporary buffer and Eigen's convolution packing buffers that way, so
each step page-faults them back in; tcmalloc keeps freed pages for reuse
(experiments/bench_vs_pytorch.py prints the faults and kernel time per step). The allocator is
chosen when a process starts (LD_PRELOAD), so `reexec()` restarts the command under it before
anything is imported; `SSLJAX_MALLOC=system` keeps glibc's.
"""

from __future__ import annotations

import ctypes.util
import os
import sys
from collections.abc import Mapping

from absl import logging

ENV = 'SSLJAX_MALLOC'  # auto (default): tcmalloc when found | system: leave the process as it is
_CANDIDATES = ('libtcmalloc_minimal.so.4', 'libtcmalloc.so.4')
_DIRS = ('/usr/lib/x86_64-linux-gnu', '/usr/lib/aarch64-linux-gnu', '/usr/lib64', '/usr/lib')
_PRELOADED = ('tcmalloc', 'jemalloc', 'mimalloc')  # the user chose an allocator already
# tcmalloc prints a line per allocation above 1 GB by default (e.g. a dataset held in memory).
_QUIET = {'TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD': str(1 << 40)}


def find_tcmalloc() -> str | None:
  """Path of an installed tcmalloc (Debian/Ubuntu: libtcmalloc-minimal4; conda: gperftools)."""
  prefix = os.environ.get('CONDA_PREFIX')
  for directory in ((os.path.join(prefix, 'lib'),) if prefix else ()) + _DIRS:
    for name in _CANDIDATES:
      path = os.path.join(directory, name)
      if os.path.exists(path):
        return path
  return ctypes.util.find_library('tcmalloc_minimal') or ctypes.util.find_library('tcmalloc')


def _restart_wanted(environ: Mapping[str, str]) -> bool:
  """Linux, not turned off, and no allocator preloaded yet (so the restart happens once)."""
  preload = environ.get('LD_PRELOAD', '')
  return (
    sys.platform.startswith('linux')
    and environ.get(ENV, 'auto') != 'system'
    and not any(name in preload for name in _PRELOADED)
  )


def preload_env(environ: Mapping[str, str], library: str | None) -> dict[str, str] | None:
  """The environment to restart with so that `library` is the allocator, or None to go on as is
  (not Linux, none found, turned off, another allocator already preloaded, or already restarted)."""
  if not library or not _restart_wanted(environ):
    return None
  preload = environ.get('LD_PRELOAD', '')
  env = dict(environ)
  env['LD_PRELOAD'] = f'{library}:{preload}' if preload else library
  for key, value in _QUIET.items():
    env.setdefault(key, value)
  return env


def reexec() -> None:
  """Restart this command under tcmalloc when that applies (see preload_env); else return.
  Call it first thing in an entry point: the restart replaces the process (same PID)."""
  if not _restart_wanted(os.environ):  # before the search: ldconfig takes ~0.2 s when none is found
    return
  env = preload_env(os.environ, find_tcmalloc())
  if env is not None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def active() -> str:
  """The allocator this process runs with: tcmalloc, jemalloc, mimalloc or glibc."""
  preload = os.environ.get('LD_PRELOAD', '')
  return next((name for name in _PRELOADED if name in preload), 'glibc')


def log_choice(backend: str) -> None:
  """One log line with the allocator, and how to get tcmalloc where a CPU run goes without it."""
  name = active()
  if name == 'glibc' and backend == 'cpu' and os.environ.get(ENV, 'auto') != 'system':
    logging.info(
      'Host allocator: glibc malloc, which re-maps XLA:CPU buffers every step; steps run faster '
      'under tcmalloc, used automatically once installed (apt-get install libtcmalloc-minimal4, '
      'or conda install gperftools)'
    )
  else:
    logging.info('Host allocator: %s', name)

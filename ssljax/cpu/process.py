"""The process setup of ssljax's entry points (`python -m ssljax.main`, `ssljax.evaluate`, the
benchmarks): XLA:CPU options (`xla_flags`) and tcmalloc (`allocator`), both fixed when a process
starts, and quiet library start-up logs. Importing ssljax as a library never calls this: only an
entry point, first thing, before JAX is imported.

Every environment variable ssljax reads is listed in docs/performance.md.
"""

from __future__ import annotations

import os

from ssljax.cpu import allocator, xla_flags


def prepare() -> None:
  """Sets XLA_FLAGS, silences TensorFlow's C++ start-up notices, then restarts the command under
  tcmalloc when that applies (the restart replaces the process, which runs this again and goes
  on)."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  xla_flags.apply()
  allocator.reexec()

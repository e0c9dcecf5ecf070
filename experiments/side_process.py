"""One side of a side-by-side benchmark in a spawned process of its own.

In one process PyTorch's OpenMP workers, which spin after each parallel region, and XLA's thread
pool compete for the same cores (ssljax's ResNet-18 w8 step measured 332 img/s beside PyTorch, 406
alone), so each side of experiments/bench_vs_pytorch.py and bench_conv_layers.py runs in its own
process and the two take turns.
"""

from __future__ import annotations

import multiprocessing
import os
import platform
from collections.abc import Callable
from typing import Any


def cores() -> int:
  """The cores this process may run on (`taskset` narrows them; os.cpu_count() counts the host's):
  the PyTorch side takes as many threads, as XLA:CPU sizes its thread pool."""
  return len(os.sched_getaffinity(0))


def machine() -> str:
  """The host as the benchmarks' results name it: architecture, and cores used of the host's."""
  return f'{platform.machine()} {cores()} of {os.cpu_count()} CPUs'


def _serve(factory: Callable, args: tuple, connection) -> None:
  """Worker: `factory(*args)` gives (run, info); sends info, then answers each request with
  run(request) until it receives None."""
  run, info = factory(*args)
  connection.send(info)
  while (request := connection.recv()) is not None:
    connection.send(run(request))


class SideProcess:
  """`factory(*args)` (a module-level function returning (run, info)) built in a spawned process;
  `call(request)` runs run(request) there while this process waits; `close()` returns info."""

  def __init__(self, factory: Callable, *args: Any):
    context = multiprocessing.get_context('spawn')
    self._connection, theirs = context.Pipe()
    self._process = context.Process(target=_serve, args=(factory, args, theirs), daemon=True)
    self._process.start()
    self._info = self._connection.recv()

  def call(self, request: Any) -> Any:
    self._connection.send(request)
    return self._connection.recv()

  def close(self) -> Any:
    self._connection.send(None)
    self._process.join()
    return self._info

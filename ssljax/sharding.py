"""The device mesh and how arrays are laid out on it: batches split over 'data', rest replicated."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P


def make_mesh(devices=None) -> jax.sharding.Mesh:
  """A 1-D mesh over every device of every process, axis 'data'."""
  devices = jax.devices() if devices is None else devices
  return jax.sharding.Mesh(np.asarray(devices), ('data',))


def data_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P('data'))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_batch_size(batch_size: int, mesh: jax.sharding.Mesh, field: str = 'batch_size') -> None:
  """Refuses a batch the devices and processes cannot split evenly, before anything compiles."""
  n_dev, n_proc = mesh.devices.size, jax.process_count()
  if batch_size <= 0 or batch_size % n_dev or batch_size % n_proc:
    step = math.lcm(n_dev, n_proc)
    nearest = max(step, -(-batch_size // step) * step)
    raise ValueError(
      f'config.{field}={batch_size} must be a positive multiple of the device count '
      f'({n_dev} devices over {n_proc} processes); try --config.{field}={nearest}.'
    )


def to_global(batch: Any, mesh: jax.sharding.Mesh) -> Any:
  """Process-local numpy batch -> global jax arrays sharded over 'data' (async transfer)."""
  sharding = data_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def prefetch_to_mesh(it: Iterator[Any], mesh: jax.sharding.Mesh, size: int = 2) -> Iterator[Any]:
  """Keeps `size` batches in flight to the devices so the step never waits for a transfer."""
  queue: deque = deque()
  for batch in it:
    queue.append(to_global(batch, mesh))
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()

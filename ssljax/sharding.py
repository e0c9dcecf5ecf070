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

from ssljax.errors import ConfigError


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
  step = math.lcm(n_dev, n_proc)
  if not isinstance(batch_size, int) or batch_size <= 0 or batch_size % step:
    nearest = max(step, -(-int(batch_size) // step) * step) if isinstance(batch_size, int) else step
    cpu = n_dev > 1 and mesh.devices.flat[0].platform == 'cpu'
    why = (
      '; on CPU ssljax splits each host into XLA:CPU devices, see ssljax/xla_cpu_flags.py, '
      'and SSLJAX_XLA_CPU_FLAGS=none runs on one'
      if cpu
      else ''
    )
    raise ConfigError(
      f'config.{field}={batch_size!r}: a positive multiple of the device count '
      f'({n_dev} devices over {n_proc} processes{why}); e.g. --config.{field}={nearest}'
    )


def to_global(batch: Any, mesh: jax.sharding.Mesh) -> Any:
  """Process-local numpy batch -> global jax arrays sharded over 'data' (async transfer)."""
  sharding = data_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def prefetch_to_mesh(it: Iterator[Any], mesh: jax.sharding.Mesh, size: int = 2) -> Iterator[Any]:
  """Keeps `size` batches in flight to the devices so the step never waits for a transfer."""
  queue: deque = deque()
  try:
    for batch in it:
      queue.append(to_global(batch, mesh))
      if len(queue) > size:
        yield queue.popleft()
    while queue:
      yield queue.popleft()
  finally:
    # close() here closes the source too: a tf.data pipeline's threads stop now, not at exit.
    if hasattr(it, 'close'):
      it.close()


def replicated_init():
  """The random numbers to initialise parameters every device holds whole with: JAX's classic
  threefry, which XLA compiles several times faster than the partitionable one (that one pays
  only where parameters are split over devices). Use as `with sharding.replicated_init(): ...`."""
  return jax.threefry_partitionable(False)


def bytes_per_device(tree) -> int:
  """Bytes of `tree`'s arrays held by one device (the first of this process): the whole array
  where it is replicated, its shard where it is split."""
  device = jax.local_devices()[0]
  return sum(
    shard.data.nbytes
    for leaf in jax.tree.leaves(tree)
    for shard in leaf.addressable_shards
    if shard.device == device
  )

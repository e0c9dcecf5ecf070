"""The device mesh and how arrays are laid out on it.

The mesh has two axes, 'data' and 'fsdp' (config.mesh). A batch is split over both (every device
its rows). The train state (parameters, optimizer state, EMA copies) is split over 'fsdp' by one
rule (`fsdp_spec`, big_vision's): a tensor of at least config.mesh.fsdp_min_size elements is cut
along its largest dimension that the axis divides; the rest is replicated. With fsdp = 1 this is
plain data parallelism. XLA gathers each weight where a layer needs it and reduce-scatters its
gradient, so a device holds about 1/fsdp of the state between layers.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ssljax.errors import ConfigError

AXES = ('data', 'fsdp')  # the mesh's axes; a batch is split over both, in this order
FSDP_MIN_SIZE = 2**20  # elements (4 MiB in float32): smaller tensors stay whole (big_vision's)


def mesh_defaults() -> ml_collections.ConfigDict:
  """config.mesh: how the devices are arranged. data x fsdp = the device count; -1 takes the
  rest. The default is data parallelism over every device."""
  return ml_collections.ConfigDict(dict(data=-1, fsdp=1, fsdp_min_size=FSDP_MIN_SIZE))


def mesh_shape(mesh_config: ml_collections.ConfigDict | None, n_devices: int) -> tuple[int, int]:
  """(data, fsdp) from config.mesh for `n_devices` devices; ConfigError naming the field."""
  if mesh_config is None:
    return n_devices, 1
  sizes = {a: mesh_config.get(a, -1 if a == 'data' else 1) for a in AXES}
  for axis, size in sizes.items():
    if isinstance(size, bool) or not isinstance(size, int) or (size < 1 and size != -1):
      raise ConfigError(
        f'config.mesh.{axis}={size!r}: a positive number of devices, or -1 for the rest; '
        f'e.g. --config.mesh.{axis}=-1'
      )
  min_size = mesh_config.get('fsdp_min_size', FSDP_MIN_SIZE)
  if isinstance(min_size, bool) or not isinstance(min_size, int) or min_size < 0:
    raise ConfigError(
      f'config.mesh.fsdp_min_size={min_size!r}: a number of elements >= 0 (0 splits every '
      f'tensor the axis divides); e.g. --config.mesh.fsdp_min_size={FSDP_MIN_SIZE}'
    )
  free = [a for a, size in sizes.items() if size == -1]
  fixed = math.prod(size for size in sizes.values() if size != -1)
  if len(free) > 1 or n_devices % fixed or (not free and fixed != n_devices):
    raise ConfigError(
      f'config.mesh: data={sizes["data"]} x fsdp={sizes["fsdp"]} does not arrange the '
      f'{n_devices} devices: their product must be the device count, or leave one of them -1 '
      f'to take the rest; e.g. --config.mesh.data=-1 --config.mesh.fsdp={sizes["fsdp"]}'
    )
  if free:
    sizes[free[0]] = n_devices // fixed
  return sizes['data'], sizes['fsdp']


def make_mesh(
  mesh_config: ml_collections.ConfigDict | None = None, devices=None
) -> jax.sharding.Mesh:
  """The ('data', 'fsdp') mesh config.mesh asks for, over every device of every process (None:
  all 'data'). The devices are placed by `mesh_utils`, so that on a TPU slice each axis follows
  the chips' links; elsewhere in their order, each process's devices side by side."""
  devices = jax.devices() if devices is None else list(devices)
  shape = mesh_shape(mesh_config, len(devices))
  try:
    grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
  except (ValueError, NotImplementedError, AssertionError):  # a topology it does not know
    grid = np.asarray(devices).reshape(shape)
  return jax.sharding.Mesh(grid, AXES)


def fsdp_size(mesh: jax.sharding.Mesh) -> int:
  return dict(mesh.shape).get('fsdp', 1)


def data_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """A batch: its rows split over every device."""
  return NamedSharding(mesh, P(AXES))


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


def fsdp_spec(shape: tuple[int, ...], fsdp: int, min_size: int) -> P:
  """Where a state tensor of `shape` lives: split over 'fsdp' along its largest dimension that
  `fsdp` divides (the first such among equals) when it has at least `min_size` elements; else
  replicated."""
  if fsdp == 1 or not shape or math.prod(shape) < min_size:
    return P()
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % fsdp == 0:
      return P(*[None] * dim, 'fsdp')
  return P()


def state_sharding(tree: Any, mesh: jax.sharding.Mesh, min_size: int = FSDP_MIN_SIZE) -> Any:
  """The NamedSharding of every leaf of a state (shapes are enough: `jax.eval_shape`'s output):
  floating tensors by `fsdp_spec`, everything else (step, random key) replicated."""
  fsdp = fsdp_size(mesh)

  def leaf(x):
    floating = jax.numpy.issubdtype(x.dtype, jax.numpy.floating)
    spec = fsdp_spec(tuple(x.shape), fsdp, min_size) if floating else P()
    return NamedSharding(mesh, spec)

  return jax.tree.map(leaf, tree)


def constrain_state(tree: Any, mesh: jax.sharding.Mesh, min_size: int = FSDP_MIN_SIZE) -> Any:
  """Inside a jitted function: `tree` laid out as `state_sharding` says, so a jit that derives
  its shapes as it goes (fine-tuning's state) needs no sharding tree up front."""
  return jax.lax.with_sharding_constraint(tree, state_sharding(tree, mesh, min_size))


def init_numbers(mesh: jax.sharding.Mesh):
  """The random numbers to initialise parameters with on `mesh`. Whole on every device: JAX's
  classic threefry, which XLA compiles several times faster. Split over 'fsdp': the
  partitionable one, so each device draws only its shard (the classic one would draw every
  tensor whole on each device first), which gives other numbers from the same seed. Use as
  `with sharding.init_numbers(mesh): ...`."""
  return jax.threefry_partitionable(fsdp_size(mesh) > 1)


def replicated_init():
  """`init_numbers` for parameters every device holds whole."""
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

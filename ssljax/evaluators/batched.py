"""A per-example function of images run over an evaluation split on the mesh, in global batches."""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from ssljax import sharding
from ssljax.data.types import EvalSplit


@functools.lru_cache(maxsize=32)
def _jitted(fn: Callable, mesh: jax.sharding.Mesh) -> Callable:
  """One compiled program per (fn, mesh): `fn` must hash by value (a bound method, a frozen
  dataclass), so repeated evaluations of the same model reuse it."""

  @functools.partial(jax.jit, out_shardings=sharding.replicated(mesh))
  def run(args, x, y, position, valid):
    return fn(args, x), y, position, valid

  return run


def _global_batches(split: EvalSplit, mesh: jax.sharding.Mesh, batch_size: int):
  """(x, y, position, valid) global batches of `batch_size` over the mesh, the same number on
  every process: this process's share of the split (`EvalSplit.positions` says which examples),
  then empty (all invalid) batches while another's goes on."""
  n_proc = jax.process_count()
  local_bs = batch_size // n_proc
  sizes = multihost_utils.process_allgather(np.asarray(split.size)) if n_proc > 1 else [split.size]
  num_batches = max(math.ceil(int(np.max(sizes)) / local_bs), 0)
  empty = (
    np.zeros((local_bs, *split.image_shape), np.float32),
    np.zeros(local_bs, np.int32),
    np.zeros(local_bs, bool),
  )
  with contextlib.closing(split.batches(local_bs)) as batches:
    for i in range(num_batches):
      x, y, valid = next(batches, empty)
      pos = split.positions(i * local_bs + np.arange(local_bs)).astype(np.int32)
      yield sharding.to_global((x, y, pos, valid), mesh)


def apply_in_batches(
  fn: Callable,
  args,
  split: EvalSplit | tuple[np.ndarray, np.ndarray],
  mesh: jax.sharding.Mesh,
  batch_size: int,
  out_dtype: str | np.dtype | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(fn(args, x), label, global position) of every readable example of all processes, sorted by
  position: the split's global order, on every process (for small outputs: predictions, the
  pictures' features; `encode_rows` keeps large ones where they are computed).

  `split` is this process's share of an evaluation split (process p holds examples p, p + P, ...;
  see `ssljax.data.eval_split`), or its (images, labels) in memory. It is read a batch at a time:
  batches of `batch_size` (global) are split over the mesh, and only the outputs (as
  `out_dtype`, default fn's) are kept, so a split far larger than memory can be encoded.
  """
  if not isinstance(split, EvalSplit):
    split = EvalSplit.of_arrays(*split)
  run = _jitted(fn, mesh)
  outs, labs, poss = [], [], []
  for batch in _global_batches(split, mesh, batch_size):
    out, y, pos, valid = run(args, *batch)
    valid = np.asarray(valid)
    out = np.asarray(out)[valid]
    outs.append(out if out_dtype is None else out.astype(out_dtype))
    labs.append(np.asarray(y)[valid])
    poss.append(np.asarray(pos)[valid])
  if not outs:
    return np.zeros((0, 0), np.float32), np.zeros((0,), np.int32), np.zeros((0,), np.int32)
  order = np.argsort(np.concatenate(poss), kind='stable')
  return np.concatenate(outs)[order], np.concatenate(labs)[order], np.concatenate(poss)[order]


@functools.lru_cache(maxsize=8)
def _take_rows(placed: jax.sharding.Sharding) -> Callable:
  return jax.jit(lambda h, rows: h[rows], out_shardings=placed)


class Rows(NamedTuple):
  """A split's outputs kept where they were computed: `h` (R, ...) is a global array whose rows
  are split over the mesh (every device the rows of the batches it encoded), never gathered.
  What is small comes to every process, for the n readable examples in the split's global order:
  `labels`, `row` (which row of `h` holds each) and `position` (its index in the split, as
  `apply_in_batches` gives it). The other R - n rows are padding."""

  h: jax.Array
  labels: np.ndarray
  row: np.ndarray
  position: np.ndarray

  def gathered(self) -> np.ndarray:
    """(n, ...) the outputs in global order on every process (a collective over processes):
    for what still needs them whole in host memory."""
    return self.on_host(self.h)

  def on_host(self, values: jax.Array) -> np.ndarray:
    """(n, ...) of `values` (R, ...), one per row of h and split as h is (a probe's scores),
    in global order on every process (a collective over processes)."""
    if values.is_fully_addressable:
      return np.asarray(values)[self.row]
    return np.asarray(multihost_utils.process_allgather(values, tiled=True))[self.row]

  def row_mask(self, examples: np.ndarray | None = None) -> np.ndarray:
    """(R,) float32: 1 on the rows of `examples` (indices in global order; None: all), else 0."""
    mask = np.zeros(self.h.shape[0], np.float32)
    mask[self.row if examples is None else self.row[np.asarray(examples, np.int64)]] = 1.0
    return mask

  def select(self, examples: np.ndarray, bucket: int = 256) -> Rows:
    """The rows of `examples` (indices in global order) only, gathered into a smaller array
    that stays split over the same devices, its length padded (rows no example names) to a
    multiple of `bucket` and of the device count: a label budget's probe then iterates over
    its own rows, not the whole split's, and budgets of nearby sizes share one compilation."""
    examples = np.asarray(examples, np.int64)
    placed = self.h.sharding
    step = math.lcm(bucket, placed.num_devices)
    source = np.zeros(max(step, -(-len(examples) // step) * step), np.int32)
    source[: len(examples)] = self.row[examples]
    source = jax.device_put(source, sharding.replicated(placed.mesh))
    h = _take_rows(placed)(self.h, source)
    return Rows(h, self.labels[examples], np.arange(len(examples)), self.position[examples])

  def by_row(self, values: np.ndarray, fill=0) -> np.ndarray:
    """(R, ...) `values` (n, ...: one per example, in global order) placed on their rows."""
    out = np.full((self.h.shape[0], *np.shape(values)[1:]), fill, np.asarray(values).dtype)
    out[self.row] = values
    return out


def in_memory_rows(x: np.ndarray, labels: np.ndarray | None = None, bucket: int = 1) -> Rows:
  """Features in memory as `Rows` on one device (a mesh of one), padded with rows no example
  names to a multiple of `bucket`, so fits on slightly different sizes share one compilation."""
  x = np.asarray(x, np.float32)
  mesh = sharding.make_mesh(devices=jax.local_devices()[:1])
  padded = np.pad(x, ((0, -len(x) % bucket), *[(0, 0)] * (x.ndim - 1)))
  index = np.arange(len(x))
  labels = np.zeros(len(x), np.int32) if labels is None else np.asarray(labels)
  return Rows(jax.device_put(padded, sharding.data_sharding(mesh)), labels, index, index)


def _join_on_devices(pieces: list[jax.Array]) -> jax.Array:
  """The per-batch outputs (B, ...) as one (len(pieces) * B, ...) array, each device's rows of
  every batch joined on that device: no data moves between devices. Device k of the mesh (in
  the sharding's order) holds rows [k * R, (k + 1) * R) of the result, R = len(pieces) * B / K:
  its block of batch 0, then of batch 1, ..."""
  sharding_ = pieces[0].sharding
  shards = {}
  for piece in pieces:
    for shard in piece.addressable_shards:
      shards.setdefault(shard.device, []).append(shard.data)
  shape = (pieces[0].shape[0] * len(pieces), *pieces[0].shape[1:])
  arrays = [jnp.concatenate(parts) for parts in shards.values()]
  return jax.make_array_from_single_device_arrays(shape, sharding_, arrays)


@functools.lru_cache(maxsize=32)
def _jitted_rows(fn: Callable, mesh: jax.sharding.Mesh, out_dtype: str | None) -> Callable:
  """`_jitted`, with fn's output left split over the mesh (the rest replicated)."""
  replicated = sharding.replicated(mesh)

  @functools.partial(
    jax.jit, out_shardings=(sharding.data_sharding(mesh), replicated, replicated, replicated)
  )
  def run(args, x, y, position, valid):
    out = fn(args, x)
    return (out if out_dtype is None else out.astype(out_dtype)), y, position, valid

  return run


def encode_rows(
  fn: Callable,
  args,
  split: EvalSplit | tuple[np.ndarray, np.ndarray],
  mesh: jax.sharding.Mesh,
  batch_size: int,
  out_dtype: str | None = None,
) -> Rows:
  """fn(args, x) of every example of a split, read as `apply_in_batches` reads it, kept split
  over the mesh (`Rows`): a device holds only the outputs of the rows it encoded, and a process
  only its devices', so the memory of a split's features is divided by the device count."""
  if not isinstance(split, EvalSplit):
    split = EvalSplit.of_arrays(*split)
  run = _jitted_rows(fn, mesh, None if out_dtype is None else str(np.dtype(out_dtype)))
  pieces, positions, labels, valids = [], [], [], []
  for batch in _global_batches(split, mesh, batch_size):
    out, y, pos, valid = run(args, *batch)
    pieces.append(out)
    labels.append(np.asarray(y))
    positions.append(np.asarray(pos))
    valids.append(np.asarray(valid))
  if not pieces:
    none = np.zeros((0,), np.int64)
    return Rows(jnp.zeros((0, 0), jnp.float32), none.astype(np.int32), none, none)
  # Row j of batch i is on device j // per_device, which keeps its rows of batch 0, 1, ... in turn.
  batch = pieces[0].shape[0]
  per_device = batch // mesh.devices.size
  j = np.arange(batch)
  rows = np.stack(
    [
      (j // per_device) * per_device * len(pieces) + i * per_device + j % per_device
      for i in range(len(pieces))
    ]
  )
  valid = np.stack(valids)
  positions = np.stack(positions)[valid]
  order = np.argsort(positions, kind='stable')
  return Rows(
    _join_on_devices(pieces),
    np.stack(labels)[valid][order].astype(np.int32),
    rows[valid][order].astype(np.int64),
    positions[order].astype(np.int64),
  )

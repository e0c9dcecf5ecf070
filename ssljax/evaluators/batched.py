"""A per-example function of images run over an evaluation split on the mesh, in global batches."""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable

import jax
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


def apply_in_batches(
  fn: Callable,
  args,
  split: EvalSplit | tuple[np.ndarray, np.ndarray],
  mesh: jax.sharding.Mesh,
  batch_size: int,
  out_dtype: str | np.dtype | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(fn(args, x), label, global position) of every readable example of all processes, sorted by
  position: the split's global order.

  `split` is this process's share of an evaluation split (process p holds examples p, p + P, ...;
  see `ssljax.data.eval_split`), or its (images, labels) in memory. It is read a batch at a time:
  batches of `batch_size` (global) are sharded over 'data', and only the outputs (as
  `out_dtype`, default fn's) are kept, so a split far larger than memory can be encoded. The
  outputs come back on every process, so a label subset picked from them does not depend on the
  process count.
  """
  if not isinstance(split, EvalSplit):
    split = EvalSplit.of_arrays(*split)
  n_proc, proc = jax.process_count(), jax.process_index()
  local_bs = batch_size // n_proc
  sizes = multihost_utils.process_allgather(np.asarray(split.size)) if n_proc > 1 else [split.size]
  num_batches = max(math.ceil(int(np.max(sizes)) / local_bs), 0)
  run = _jitted(fn, mesh)
  outs, labs, poss = [], [], []
  # After this process's share ends, while another's goes on: empty (all invalid) batches.
  empty = (
    np.zeros((local_bs, *split.image_shape), np.float32),
    np.zeros(local_bs, np.int32),
    np.zeros(local_bs, bool),
  )
  with contextlib.closing(split.batches(local_bs)) as batches:
    for i in range(num_batches):
      x, y, valid = next(batches, empty)
      pos = (proc + n_proc * (i * local_bs + np.arange(local_bs))).astype(np.int32)
      out, y, pos, valid = run(args, *sharding.to_global((x, y, pos, valid), mesh))
      valid = np.asarray(valid)
      out = np.asarray(out)[valid]
      outs.append(out if out_dtype is None else out.astype(out_dtype))
      labs.append(np.asarray(y)[valid])
      poss.append(np.asarray(pos)[valid])
  if not outs:
    return np.zeros((0, 0), np.float32), np.zeros((0,), np.int32), np.zeros((0,), np.int32)
  order = np.argsort(np.concatenate(poss), kind='stable')
  return np.concatenate(outs)[order], np.concatenate(labs)[order], np.concatenate(poss)[order]

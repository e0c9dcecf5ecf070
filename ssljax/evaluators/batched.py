"""A per-example function of images run over an evaluation split on the mesh, in global batches."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import numpy as np
from jax.experimental import multihost_utils

from ssljax import sharding


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
  images: np.ndarray,
  labels: np.ndarray,
  mesh: jax.sharding.Mesh,
  batch_size: int,
) -> tuple[np.ndarray, np.ndarray]:
  """(fn(args, x) for every example, labels) of all processes, in the split's global order.

  `images`, `labels` are this process's share of an evaluation split (process p holds examples
  p, p + P, ...; see `ssljax.data.load_eval_split`). Batches of `batch_size` (global) are sharded
  over 'data'; the outputs come back on every process, sorted by global position, so a label
  subset picked from them does not depend on the process count.
  """
  n_proc, proc = jax.process_count(), jax.process_index()
  local_bs = batch_size // n_proc
  sizes = (
    multihost_utils.process_allgather(np.asarray(len(images))) if n_proc > 1 else [len(images)]
  )
  num_batches = max(math.ceil(int(np.max(sizes)) / local_bs), 0)
  positions = proc + n_proc * np.arange(len(images), dtype=np.int32)
  run = _jitted(fn, mesh)
  outs, labs, poss = [], [], []
  for i in range(num_batches):
    part = slice(i * local_bs, (i + 1) * local_bs)
    x, y, pos = images[part], labels[part], positions[part]
    pad = local_bs - len(x)
    valid = np.concatenate([np.ones(len(x), bool), np.zeros(pad, bool)])
    x = np.concatenate([x, np.zeros((pad,) + images.shape[1:], images.dtype)])
    y = np.concatenate([y, np.zeros(pad, labels.dtype)])
    pos = np.concatenate([pos, np.zeros(pad, np.int32)])
    out, y, pos, valid = run(args, *sharding.to_global((x, y, pos, valid), mesh))
    valid = np.asarray(valid)
    outs.append(np.asarray(out)[valid])
    labs.append(np.asarray(y)[valid])
    poss.append(np.asarray(pos)[valid])
  if not outs:
    return np.zeros((0, 0), np.float32), np.zeros((0,), np.int32)
  order = np.argsort(np.concatenate(poss), kind='stable')
  return np.concatenate(outs)[order], np.concatenate(labs)[order]

"""Which examples a step reads: a seeded permutation per epoch, split over processes.

The order depends only on (seed, step, batch size, dataset size), never on where a run started
or how many processes read it, so a resumed run sees exactly the batches an uninterrupted one
would. No TensorFlow: the tf.data pipeline and the synthetic source both follow it.
"""

from __future__ import annotations

import functools

import jax
import numpy as np


def local_elements(
  step: int, *, batch_size: int, process_index: int, process_count: int
) -> np.ndarray:
  """Global element numbers e of this process's share of `step` (a contiguous slice)."""
  if batch_size % process_count:
    raise ValueError(f'batch_size {batch_size} is not divisible by {process_count} processes')
  local = batch_size // process_count
  start = step * batch_size + process_index * local
  return np.arange(start, start + local, dtype=np.int64)


@functools.lru_cache(maxsize=4)
def _permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
  perm = np.random.default_rng((int(seed) % 2**63, int(epoch))).permutation(num_examples)
  perm.flags.writeable = False
  return perm


def global_indices(
  step: int,
  *,
  batch_size: int,
  num_examples: int,
  seed: int,
  process_index: int,
  process_count: int,
) -> np.ndarray:
  """Example indices of this process's share of `step`.

  Global element e is example perm_epoch[e % n] with epoch = e // n, a seeded permutation per
  epoch; step s is elements [s B, (s + 1) B) and process p takes the p-th contiguous slice. So a
  step's global batch depends neither on where the run started nor on the process count.
  """
  if num_examples <= 0:
    raise ValueError(f'num_examples must be positive, got {num_examples}')
  elements = local_elements(
    step, batch_size=batch_size, process_index=process_index, process_count=process_count
  )
  epochs = elements // num_examples
  out = np.empty_like(elements)
  for epoch in np.unique(epochs):
    mask = epochs == epoch
    out[mask] = _permutation(seed, int(epoch), num_examples)[elements[mask] % num_examples]
  return out


def process_share(n: int, max_examples: int = 0) -> np.ndarray:
  """Indices of this process's evaluation examples among the first max_examples (0: all) of n."""
  if max_examples > 0:
    n = min(n, max_examples)
  return np.arange(jax.process_index(), n, jax.process_count())

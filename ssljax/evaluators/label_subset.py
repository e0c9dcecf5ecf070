"""Class-balanced labelled subsets for few-shot evaluation (e.g. 1%-label or 5-per-class probes)."""

import numpy as np


def per_class_subset(labels: np.ndarray, per_class: int, *, seed: int) -> np.ndarray:
  """Sorted indices of `per_class` examples of each class present in `labels`.

  Every method must be scored on the same few labelled images, so the choice depends only on
  `labels` and `seed`: each position i gets a random key from the raw PCG64 stream of `seed` (raw
  bit-generator output is stable across NumPy versions, unlike `Generator.choice`), and each class
  keeps its `per_class` smallest-key examples. Consequences: a class's pick does not depend on the
  other classes, and a larger `per_class` gives a superset of a smaller one.

  Raises ValueError (naming the class) when a class has fewer than `per_class` examples.
  """
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f'labels must be 1-D, got shape {labels.shape}')
  if int(per_class) != per_class or per_class < 1:
    raise ValueError(f'per_class must be a positive integer, got {per_class!r}')
  per_class = int(per_class)
  keys = np.random.PCG64(seed).random_raw(labels.shape[0])
  classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
  too_small = counts < per_class
  if too_small.any():
    c = int(np.argmax(too_small))
    raise ValueError(
      f'class {classes[c].item()!r} has {counts[c]} examples, fewer than per_class={per_class}'
    )
  # Sort by (class, key); the first `per_class` of each class's run are its pick.
  order = np.lexsort((keys, inverse))
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  rank_in_class = np.arange(labels.shape[0]) - np.repeat(starts, counts)
  chosen = order[rank_in_class < per_class]
  return np.sort(chosen).astype(np.int64)

"""Class-balanced labelled subsets for few-shot evaluation (e.g. 1%-label or 5-per-class probes)."""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np

from ssljax.errors import ConfigError


def _ranks(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """(order, rank in class along order, classes, counts): examples sorted by (class, random key)."""
  keys = np.random.PCG64(seed).random_raw(labels.shape[0])
  classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
  order = np.lexsort((keys, inverse))
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  rank_in_class = np.arange(labels.shape[0]) - np.repeat(starts, counts)
  return order, rank_in_class, classes, counts


def _check_labels(labels) -> np.ndarray:
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f'labels must be 1-D, got shape {labels.shape}')
  return labels


def per_class_subset(labels: np.ndarray, per_class: int, *, seed: int) -> np.ndarray:
  """Sorted indices of `per_class` examples of each class present in `labels`.

  Every method must be scored on the same few labelled images, so the choice depends only on
  `labels` and `seed`: each position i gets a random key from the raw PCG64 stream of `seed` (raw
  bit-generator output is stable across NumPy versions, unlike `Generator.choice`), and each class
  keeps its `per_class` smallest-key examples. Consequences: a class's pick does not depend on the
  other classes, and a larger `per_class` gives a superset of a smaller one.

  Raises ValueError (naming the class) when a class has fewer than `per_class` examples.
  """
  labels = _check_labels(labels)
  if int(per_class) != per_class or per_class < 1:
    raise ValueError(f'per_class must be a positive integer, got {per_class!r}')
  per_class = int(per_class)
  order, rank_in_class, classes, counts = _ranks(labels, seed)
  too_small = counts < per_class
  if too_small.any():
    c = int(np.argmax(too_small))
    raise ValueError(
      f'class {classes[c].item()!r} has {counts[c]} examples, fewer than per_class={per_class}'
    )
  # Sorted by (class, key): the first `per_class` of each class's run are its pick.
  chosen = order[rank_in_class < per_class]
  return np.sort(chosen).astype(np.int64)


def fraction_subset(labels: np.ndarray, fraction: float, *, seed: int) -> np.ndarray:
  """Sorted indices of round(fraction * n_c) examples of each class c (n_c its count), at least 1.

  The same keys as `per_class_subset`, so the pick of a class is its smallest-key examples
  whatever the budget: fractions nest, and `k` per class is inside any fraction giving a class k
  or more. Rounding is half up. fraction=1 is every example.
  """
  labels = _check_labels(labels)
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f'fraction must be in (0, 1], got {fraction!r}')
  order, rank_in_class, _, counts = _ranks(labels, seed)
  keep = np.maximum(np.floor(fraction * counts + 0.5), 1).astype(np.int64)
  chosen = order[rank_in_class < np.repeat(keep, counts)]
  return np.sort(chosen).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class LabelBudget:
  """How many labelled train images a protocol may use: `per_class` or a `fraction` of each class.

  `key` is the canonical spelling, used in results keys (`linear@10_per_class`, `knn@1%`).
  """

  key: str
  per_class: int | None = None
  fraction: float | None = None

  def subset(self, labels: np.ndarray, *, seed: int) -> np.ndarray:
    """Sorted indices into `labels` of the budget's class-balanced pick (only labels and seed)."""
    if self.per_class is not None:
      try:
        return per_class_subset(labels, self.per_class, seed=seed)
      except ValueError as e:
        raise ConfigError(f'config.eval_config.label_budgets {self.key!r}: {e}') from e
    return fraction_subset(labels, self.fraction, seed=seed)


_PER_CLASS = re.compile(r'(\d+)_per_class')
_PERCENT = re.compile(r'(\d+(?:\.\d*)?|\.\d+)%')
_FIELD = 'config.eval_config.label_budgets'


def parse_label_budget(spec: str | float, field: str = _FIELD) -> LabelBudget:
  """'N_per_class' (N >= 1), 'P%' (0 < P <= 100) or a fraction 0 < f <= 1 -> LabelBudget.

  Raises ValueError naming `field` and the accepted spellings for anything else.
  """
  hint = (
    f"{field}: {spec!r} is not a label budget; write 'N_per_class' (N a positive integer, e.g. "
    "'10_per_class') or 'P%' (0 < P <= 100, e.g. '1%', '100%'), or give a fraction in (0, 1]"
  )
  if isinstance(spec, bool):
    raise ConfigError(hint)
  if isinstance(spec, int | float):
    fraction = float(spec)
    if not (math.isfinite(fraction) and 0.0 < fraction <= 1.0):
      raise ConfigError(hint)
    return LabelBudget(f'{100 * fraction:g}%', fraction=fraction)
  if not isinstance(spec, str):
    raise ConfigError(hint)
  text = spec.strip()
  if m := _PER_CLASS.fullmatch(text):
    n = int(m.group(1))
    if n < 1:
      raise ConfigError(hint)
    return LabelBudget(f'{n}_per_class', per_class=n)
  if m := _PERCENT.fullmatch(text):
    percent = float(m.group(1))
    if not 0.0 < percent <= 100.0:
      raise ConfigError(hint)
    return LabelBudget(f'{percent:g}%', fraction=percent / 100)
  raise ConfigError(hint)


def parse_label_budgets(specs, field: str = _FIELD) -> list[LabelBudget]:
  """Every entry parsed, in order; two spellings of one budget are refused."""
  if isinstance(specs, str | int | float):
    raise ConfigError(
      f"{field} must be a tuple of budgets, e.g. ('10_per_class', '1%'), got {specs!r}"
    )
  budgets = [parse_label_budget(s, field) for s in specs]
  keys = [b.key for b in budgets]
  repeated = sorted({k for k in keys if keys.count(k) > 1})
  if repeated:
    raise ConfigError(f'{field} lists the budgets {repeated} more than once')
  return budgets

"""Multi-label evaluation on frozen features: targets (N, L) of 1, 0 or IGNORED (-1, left out of
fitting and scoring), per-label AUROC and average precision, a logistic regression per label,
k-NN votes per label, label budgets counted in images or in positives per label, and the masked
binary cross-entropy fine-tuning trains with.

The metrics follow scikit-learn's definitions (`roc_auc_score`, `average_precision_score`) and
are computed in float64 on the host.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ssljax.errors import ConfigError
from ssljax.evaluators import knn
from ssljax.evaluators.batched import Rows, in_memory_rows
from ssljax.evaluators.label_subset import LabelBudget
from ssljax.evaluators.linear_probe import minimize_lbfgs, standardized, train_stats

IGNORED = -1
L2_GRID = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
_FALLBACK_L2 = 1e-3
_ROW_BUCKET = 256  # rows padded (masked out) to a multiple: budgets share one compiled fit

# ----------------------------------------------------------------------------- metrics


def auroc(y: np.ndarray, scores: np.ndarray) -> float:
  """Area under the ROC curve of `scores` for binary `y` (1 positive): the chance a random
  positive outscores a random negative, ties counting half (Mann-Whitney U from average ranks,
  equal to scikit-learn's trapezoids). NaN when `y` holds one class only."""
  y, scores = np.asarray(y).astype(bool), np.asarray(scores, np.float64)
  pos, neg = int(y.sum()), int((~y).sum())
  if pos == 0 or neg == 0:
    return float('nan')
  order = np.argsort(scores, kind='mergesort')
  sorted_scores = scores[order]
  ranks = np.empty(len(scores), np.float64)
  # Average rank (1-based) of every run of equal scores.
  starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
  ends = np.r_[starts[1:], len(scores)]
  ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
  return float((ranks[y].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def roc_curve(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(false positive rates, true positive rates) of `scores` for binary `y`, one point per
  distinct score as the threshold, from (0, 0) to (1, 1): the curve `auroc` is the area under
  (scikit-learn's `roc_curve` without dropping collinear points). Empty without both classes."""
  y, scores = np.asarray(y).astype(bool), np.asarray(scores, np.float64)
  if y.all() or not y.any():
    return np.zeros(0), np.zeros(0)
  order = np.argsort(-scores, kind='mergesort')
  y, scores = y[order], scores[order]
  last = np.r_[scores[1:] != scores[:-1], True]  # the last row of each run of equal scores
  tp, fp = np.cumsum(y)[last], np.cumsum(~y)[last]
  return np.r_[0.0, fp / fp[-1]], np.r_[0.0, tp / tp[-1]]


def average_precision(y: np.ndarray, scores: np.ndarray) -> float:
  """sum over thresholds of (R_n - R_n-1) P_n, each distinct score a threshold (scikit-learn's
  `average_precision_score`); NaN without positives."""
  y, scores = np.asarray(y).astype(bool), np.asarray(scores, np.float64)
  if not y.any():
    return float('nan')
  order = np.argsort(-scores, kind='mergesort')
  y, scores = y[order], scores[order]
  last = np.r_[scores[1:] != scores[:-1], True]  # the last row of each run of equal scores
  tp = np.cumsum(y)[last]
  predicted = np.flatnonzero(last) + 1
  recall_steps = np.diff(np.r_[0, tp]) / tp[-1]
  return float(np.sum(recall_steps * tp / predicted))


def scores_metrics(
  targets: np.ndarray, scores: np.ndarray, names: Sequence[str], threshold: float = 0.5
) -> dict[str, float]:
  """{'': accuracy, '/auroc/NAME', '/auroc_macro', '/ap/NAME', '/ap_macro'} of scores (N, L)
  against targets (N, L), each label on its known entries only. Accuracy: the fraction of known
  entries with (score > threshold) == target. A label whose known test entries are one class has
  no AUROC (left out of the keys and the macro mean)."""
  targets, scores = np.asarray(targets), np.asarray(scores, np.float64)
  known = targets != IGNORED
  out = {'': float(np.mean((scores > threshold)[known] == (targets[known] == 1)))}
  for metric, fn in (('auroc', auroc), ('ap', average_precision)):
    values = {}
    for j, name in enumerate(names):
      value = fn(targets[known[:, j], j] == 1, scores[known[:, j], j])
      if np.isfinite(value):
        values[name] = value
    out.update({f'/{metric}/{n}': v for n, v in values.items()})
    if values:
      out[f'/{metric}_macro'] = float(np.mean(list(values.values())))
  return out


# ----------------------------------------------------------------------------- label budgets


def budget_rows(budget: LabelBudget | None, targets: np.ndarray, *, seed: int) -> np.ndarray | None:
  """Sorted rows of the labelled train images a budget allows (None: all). 'N_per_class': the N
  positives of each label with the smallest keys (their union); 'P%': that fraction of the
  images by key (at least 1). The keys are `label_subset`'s (PCG64 raw stream of `seed`), so
  budgets nest and every method gets the same images."""
  if budget is None:
    return None
  keys = np.random.PCG64(seed).random_raw(len(targets))
  by_key = np.argsort(keys, kind='stable')
  if budget.per_class is None:
    keep = max(1, int(np.floor(budget.fraction * len(targets) + 0.5)))
    return np.sort(by_key[:keep]).astype(np.int64)
  chosen = []
  for j in range(targets.shape[1]):
    positives = by_key[targets[by_key, j] == 1]
    if len(positives) < budget.per_class:
      raise ConfigError(
        f'config.eval_config.label_budgets {budget.key!r}: label {j} has {len(positives)} '
        f'positive train images, fewer than {budget.per_class}; use a smaller budget or a '
        "percentage ('10%')"
      )
    chosen.append(positives[: budget.per_class])
  return np.unique(np.concatenate(chosen)).astype(np.int64)


# ----------------------------------------------------------------------------- linear probe


def masked_bce(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Per label, the mean sigmoid cross-entropy over its known targets (IGNORED left out), summed
  over labels: (N, L) logits and targets -> a scalar."""
  known = (targets != IGNORED).astype(logits.dtype)
  loss = optax.sigmoid_binary_cross_entropy(logits, (targets == 1).astype(logits.dtype))
  return jnp.sum(jnp.sum(loss * known, 0) / jnp.maximum(jnp.sum(known, 0), 1.0))


def _objective(params, x, targets, l2):
  logits = x @ params['w'] + params['b']
  penalty = 0.5 * jnp.sum(l2 * jnp.sum(jnp.square(params['w']), 0))
  return masked_bce(logits, targets) + penalty


@jax.jit
def _lbfgs(x, targets, l2, params, max_iters, tol):
  """`linear_probe.minimize_lbfgs` of every label's sigmoid objective: the labels' problems are
  separate, and one fit solves them together."""
  fun = functools.partial(_objective, x=x, targets=targets, l2=l2)
  return minimize_lbfgs(fun, params, max_iters, tol)[0]


def fit_logistic(
  x: np.ndarray | jax.Array,
  targets: np.ndarray | jax.Array,
  l2: np.ndarray,
  init: dict | None = None,
  max_iters: int = 500,
) -> dict:
  """{'w' (d, L), 'b' (L,)} minimizing, per label l, the mean cross-entropy over its known rows
  + l2[l] ||w_l||^2 / 2: scikit-learn's LogisticRegression on those rows with C = 1 / (l2 n_l).
  In-memory rows are padded to a bucket (one compilation for near sizes); rows on devices (split
  over a mesh, padding rows IGNORED) stay where they are."""
  if not isinstance(x, jax.Array):
    pad = -len(x) % _ROW_BUCKET
    x = jnp.asarray(np.pad(np.asarray(x, np.float32), ((0, pad), (0, 0))))
    targets = np.pad(targets, ((0, pad), (0, 0)), constant_values=IGNORED).astype(np.int32)
  labels = targets.shape[1]
  if init is None:
    init = {'w': jnp.zeros((x.shape[1], labels)), 'b': jnp.zeros((labels,))}
  l2 = jnp.asarray(l2, jnp.float32)
  params = _lbfgs(x, targets, l2, init, jnp.int32(max_iters), jnp.float32(1e-6))
  return {'w': params['w'], 'b': params['b']}


_sigmoid = jax.jit(jax.nn.sigmoid)


@jax.jit
def _logits(x: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
  return x @ w + b


@dataclasses.dataclass(frozen=True)
class Probe:
  """A fitted probe: the train mean / std that standardize h, W (d, L), b (L,), each label's L2."""

  mean: np.ndarray
  std: np.ndarray
  w: np.ndarray
  b: np.ndarray
  l2: np.ndarray

  def probabilities(self, h: np.ndarray | jax.Array) -> np.ndarray:
    """sigmoid(((h - mean) / std) W + b), float32 (N, L)."""
    return np.asarray(self._probabilities(h))

  def probabilities_rows(self, rows: Rows) -> np.ndarray:
    """`probabilities` of features split over the mesh: only the (N, L) scores leave them."""
    return rows.on_host(self._probabilities(rows.h))

  def _probabilities(self, h: jax.Array) -> jax.Array:
    x = standardized(jnp.asarray(h), jnp.asarray(self.mean), jnp.asarray(self.std))
    return _sigmoid(_logits(x, jnp.asarray(self.w), jnp.asarray(self.b)))


def _validation_rows(groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
  """A hold-out of whole groups (patients): `fraction` of them, seeded."""
  unique = np.unique(groups)
  rng = np.random.default_rng(seed)
  held = rng.permutation(unique)[: max(1, int(round(fraction * len(unique))))]
  return np.isin(groups, held)


def fit_probe(
  h: np.ndarray,
  targets: np.ndarray,
  groups: np.ndarray | None = None,
  *,
  l2_grid: Sequence[float] = L2_GRID,
  val_fraction: float = 0.2,
  seed: int = 0,
) -> Probe:
  """`fit_probe_rows` of features in memory (on one device)."""
  if len(targets) == 0 or len(targets) != len(h):
    raise ValueError(f'need matching, non-empty features and targets: {len(h)} / {len(targets)}')
  rows = in_memory_rows(np.asarray(h, np.float32), bucket=_ROW_BUCKET)
  return fit_probe_rows(
    rows, targets, groups, l2_grid=l2_grid, val_fraction=val_fraction, seed=seed
  )


def fit_probe_rows(
  rows: Rows,
  targets: np.ndarray,
  groups: np.ndarray | None = None,
  examples: np.ndarray | None = None,
  *,
  l2_grid: Sequence[float] = L2_GRID,
  val_fraction: float = 0.2,
  seed: int = 0,
) -> Probe:
  """One logistic regression per label on standardized h, fitted where the features are
  (`batched.Rows`: the loss and its gradient are sums over rows), on `examples` (indices in
  global order; None: all) whose `targets` and `groups` are given for every example. Each
  label's L2 is chosen from `l2_grid` by its AUROC on a hold-out of `val_fraction` of the groups
  (a patient's images stay on one side; `groups` None: each image its own), ties to the stronger
  penalty; a label whose hold-out lacks a positive or a negative takes 1e-3. Then all labels are
  refit on every row. Only the hold-out's scores leave the devices."""
  targets = np.asarray(targets, np.int8)
  groups = np.arange(len(targets)) if groups is None else np.asarray(groups)
  if examples is not None:  # a budget: its rows only, still split over the mesh
    rows, targets, groups = rows.select(examples, _ROW_BUCKET), targets[examples], groups[examples]
  if len(targets) == 0:
    raise ValueError('need non-empty features and targets')
  placed = rows.h.sharding
  on_rows = lambda t: jax.device_put(rows.by_row(t.astype(np.int32), IGNORED), placed)  # noqa: E731
  mean, std = train_stats(rows.h, jax.device_put(rows.row_mask(), placed))
  x = standardized(rows.h, mean, std)
  labels = targets.shape[1]
  is_val = _validation_rows(groups, val_fraction, seed)
  val_targets = targets[is_val]
  judged = [
    len(np.unique(val_targets[val_targets[:, j] != IGNORED, j])) == 2 for j in range(labels)
  ]
  chosen = np.full(labels, _FALLBACK_L2 if len(l2_grid) > 1 else l2_grid[0], np.float64)
  init = None
  grid = sorted(l2_grid, reverse=True)
  if any(judged) and len(grid) > 1:
    fitting = on_rows(np.where(is_val[:, None], IGNORED, targets))
    held = rows.select(np.flatnonzero(is_val), _ROW_BUCKET)
    x_held = standardized(held.h, mean, std)
    best = np.full(labels, -np.inf)
    w = np.zeros((x.shape[1], labels), np.float32)
    params = None
    for lam in grid:  # strongest first, each warm-started from the last
      params = fit_logistic(x, fitting, np.full(labels, lam), params)
      scores = held.on_host(_logits(x_held, params['w'], params['b']))
      for j in np.flatnonzero(judged):
        known = val_targets[:, j] != IGNORED
        value = auroc(val_targets[known, j] == 1, scores[known, j])
        if value > best[j]:  # ties keep the stronger penalty
          best[j], chosen[j], w[:, j] = value, lam, np.asarray(params['w'])[:, j]
    init = {'w': jnp.asarray(w), 'b': jnp.asarray(params['b'])}
  params = fit_logistic(x, on_rows(targets), chosen, init)
  return Probe(
    np.asarray(mean), np.asarray(std), np.asarray(params['w']), np.asarray(params['b']), chosen
  )


# ----------------------------------------------------------------------------- k-NN


def knn_scores(
  train_h: np.ndarray,
  train_targets: np.ndarray,
  test_h: np.ndarray,
  *,
  k: int = 20,
  temperature: float = 0.07,
  batch_size: int = 1024,
) -> np.ndarray:
  """`knn_scores_rows` of features in memory (on one device)."""
  train, test = (in_memory_rows(np.asarray(h, np.float32)) for h in (train_h, test_h))
  mesh = train.h.sharding.mesh
  return knn_scores_rows(
    train, test, mesh, train_targets, k=k, temperature=temperature, batch_size=batch_size
  )


def knn_scores_rows(
  train: Rows,
  test: Rows,
  mesh: jax.sharding.Mesh,
  train_targets: np.ndarray,
  *,
  k: int = 20,
  temperature: float = 0.07,
  batch_size: int = 1024,
  train_examples: np.ndarray | None = None,
) -> np.ndarray:
  """(N_test, L) scores in [0, 1] of features split over the mesh: DINO's temperature-weighted
  vote of the k most cosine-similar train images (`knn.neighbours_rows`: only k candidates per
  query leave the devices), per label: sum of exp(sim / T) over neighbours positive for it,
  divided by the sum over neighbours whose target is known (0.5 when none is).
  `train_targets` (n, L) are every train example's; `train_examples` those that vote."""
  weights, near = knn.neighbours_rows(
    train,
    test,
    mesh,
    k=k,
    temperature=temperature,
    batch_size=batch_size,
    train_examples=train_examples,
  )
  targets = np.asarray(train_targets)[np.maximum(near, 0)]
  weights = np.asarray(weights, np.float64)[..., None]
  positive = np.sum(weights * (targets == 1), 1)
  known = np.sum(weights * (targets != IGNORED), 1)
  return np.where(known > 0, positive / np.maximum(known, 1e-300), 0.5)

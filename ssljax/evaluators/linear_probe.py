"""Linear probing: L2-regularized multinomial logistic regression on frozen features."""

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu
from jax.experimental import multihost_utils

from ssljax.evaluators.batched import Rows, in_memory_rows

_STD_FLOOR = 1e-6
_FALLBACK_L2 = 1e-3
_MAX_FOLDS = 5
# Rows are zero-padded (with weight 0) to a multiple of this, so probes on subsets of slightly
# different sizes (few-shot splits, folds) share one compiled L-BFGS program.
_ROW_BUCKET = 256


@jax.jit
def train_stats(x: jax.Array, weights: jax.Array) -> tuple[jax.Array, jax.Array]:
  """float32 (mean, std) per feature over the rows of weight 1, std floored; two passes (the
  mean, then the spread about it), so a large mean costs no precision. On rows split over the
  mesh the sums are reductions over it."""
  x = x.astype(jnp.float32)
  n = jnp.sum(weights)
  mean = jnp.sum(weights[:, None] * x, axis=0) / n
  var = jnp.sum(weights[:, None] * jnp.square(x - mean), axis=0) / n
  return mean, jnp.maximum(jnp.sqrt(var), _STD_FLOOR)


@jax.jit
def standardized(x: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
  return (x.astype(jnp.float32) - mean) / std


@jax.custom_vjp
def _features_times(x: jax.Array, x_t: jax.Array, w: jax.Array) -> jax.Array:
  """x @ w whose gradient uses a row-major copy of x.T: XLA's CPU x.T @ g is ~3x slower."""
  return x @ w


def _features_times_fwd(x, x_t, w):
  return x @ w, x_t


def _features_times_bwd(x_t, g):
  return None, None, x_t @ g


_features_times.defvjp(_features_times_fwd, _features_times_bwd)


def _objective(params, x, x_t, y, weights, l2, num_classes):
  logits = _features_times(x, x_t, params['w']) + params['b']
  ce = optax.softmax_cross_entropy(logits, jax.nn.one_hot(y, num_classes))
  return jnp.sum(weights * ce) / jnp.sum(weights) + 0.5 * l2 * jnp.sum(jnp.square(params['w']))


def minimize_lbfgs(fun, params, max_iters, tol):
  """(params, iterations, value): full-batch L-BFGS of the convex `fun` from `params` until
  max_iters, ||grad|| < tol or a stalled step; to be called inside a jitted function.

  The objective is convex, so (grad(p + s) - grad(p)) . s >= 0 for any step s: the curvature
  condition that a zoom (Wolfe) line search exists to enforce holds anyway, and Armijo backtracking
  suffices. It takes as many iterations here and compiles in half the time (seconds on CPU), which
  dominates small probes. Stopping on a non-decreasing value ends fits at float32's resolution
  (checked: within 3e-8 relative of a float64 optimum) instead of idling to max_iters.
  """
  linesearch = optax.scale_by_backtracking_linesearch(max_backtracking_steps=20, store_grad=True)
  opt = optax.lbfgs(linesearch=linesearch)
  value_and_grad = optax.value_and_grad_from_state(fun)

  def step(carry):
    params, state, _ = carry
    prev = otu.tree_get(state, 'value')
    value, grad = value_and_grad(params, state=state)
    updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=fun)
    params = optax.apply_updates(params, updates)
    # In float32 the line search can stop making progress well before tol; stop then too.
    stalled = otu.tree_get(state, 'value') >= prev
    return params, state, stalled

  def keep_going(carry):
    _, state, stalled = carry
    count = otu.tree_get(state, 'count')
    grad_norm = otu.tree_norm(otu.tree_get(state, 'grad'))
    return (count == 0) | ((count < max_iters) & (grad_norm >= tol) & ~stalled)

  init = (params, opt.init(params), jnp.array(False))
  params, state, _ = jax.lax.while_loop(keep_going, step, init)
  return params, otu.tree_get(state, 'count'), otu.tree_get(state, 'value')


@functools.partial(jax.jit, static_argnames=('num_classes',))
def _lbfgs(x, y, weights, l2, params, max_iters, tol, *, num_classes):
  """The softmax probe's fit from `params` (`minimize_lbfgs`)."""
  x_t = x.T  # Materialized once per fit, reused by every gradient.
  fun = functools.partial(
    _objective, x=x, x_t=x_t, y=y, weights=weights, l2=l2, num_classes=num_classes
  )
  return minimize_lbfgs(fun, params, max_iters, tol)


@jax.jit
def _predict(params, x):
  return jnp.argmax(x @ params['w'] + params['b'], axis=-1)


def _predictions(params, x: jax.Array) -> np.ndarray:
  """`_predict` on every process: a row's class, wherever the row lives (a few bytes a row)."""
  pred = _predict(params, x)
  if pred.is_fully_addressable:
    return np.asarray(pred)
  return np.asarray(multihost_utils.process_allgather(pred, tiled=True))


def fit_logistic_regression(
  x: np.ndarray | jax.Array,
  y: np.ndarray | jax.Array,
  *,
  num_classes: int,
  l2: float,
  weights: np.ndarray | jax.Array | None = None,
  init: dict | None = None,
  max_iters: int = 500,
  tol: float = 1e-6,
) -> dict:
  """Minimize mean CE(softmax(xW + b), y) + l2 * ||W||^2 / 2 (bias unpenalized) by L-BFGS.

  Same objective as scikit-learn's multinomial LogisticRegression with C = 1 / (l2 * n).
  `weights` (0/1 per row) lets validation folds reuse one compiled program for the full array;
  `init` warm-starts from another solution. Returns {'w', 'b', 'iters', 'objective'}.
  """
  # In-memory rows are padded to a bucket (one compilation for near sizes); rows already on
  # devices (split over a mesh) stay where they are.
  pad = 0 if isinstance(x, jax.Array) else -np.shape(x)[0] % _ROW_BUCKET
  x = jnp.asarray(x, jnp.float32)
  y = jnp.asarray(y, jnp.int32)
  weights = jnp.ones(x.shape[0], jnp.float32) if weights is None else jnp.asarray(weights)
  if pad:
    x = jnp.pad(x, ((0, pad), (0, 0)))
    y = jnp.pad(y, (0, pad))
    weights = jnp.pad(weights, (0, pad))
  if init is None:
    init = {
      'w': jnp.zeros((x.shape[1], num_classes), jnp.float32),
      'b': jnp.zeros((num_classes,), jnp.float32),
    }
  params, iters, value = _lbfgs(
    x,
    y,
    weights.astype(jnp.float32),
    jnp.float32(l2),
    init,
    jnp.int32(max_iters),
    jnp.float32(tol),
    num_classes=num_classes,
  )
  return {'w': params['w'], 'b': params['b'], 'iters': int(iters), 'objective': float(value)}


def _stratified_folds(y: np.ndarray, n_folds: int, rng: np.random.Generator) -> np.ndarray:
  """Fold id per example: each class is shuffled and dealt round-robin over the folds."""
  fold = np.empty(y.shape[0], np.int64)
  for c in np.unique(y):
    idx = rng.permutation(np.flatnonzero(y == c))
    fold[idx] = (np.arange(idx.size) + rng.integers(n_folds)) % n_folds
  return fold


def _select_l2(x, y, weights, labels, row, grid, *, num_classes, val_fraction, seed, max_iters):
  """Chosen L2 strength and a warm start for the refit (a fit at that strength, or None).

  `x`, `y`, `weights` are the rows on device (weight 1: the labelled examples); `labels` and
  `row` are those examples' labels and rows, in the split's global order (the folds are drawn
  in that order, so they do not depend on where the rows live).
  """
  counts = np.unique(labels, return_counts=True)[1]
  rng = np.random.default_rng(seed)
  if len(grid) == 1:
    return grid[0], None
  if np.all(np.floor(counts * val_fraction) >= 2):
    # Class-stratified hold-out: the first floor(n_c * val_fraction) of each shuffled class.
    is_val = np.zeros(labels.shape[0], bool)
    for c in np.unique(labels):
      idx = rng.permutation(np.flatnonzero(labels == c))
      is_val[idx[: int(np.floor(idx.size * val_fraction))]] = True
    folds = [is_val]
  elif counts.min() >= 2:
    # Too few held-out examples per class for a stable choice: stratified k-fold so that every
    # labelled example is used for validation once.
    fold = _stratified_folds(labels, min(_MAX_FOLDS, int(counts.min())), rng)
    folds = [fold == f for f in range(fold.max() + 1)]
  else:
    return _FALLBACK_L2, None
  # Strongest penalty first, each fit warm-started from the previous one: a cheap path.
  order = sorted(grid, reverse=True)
  correct = {lam: 0 for lam in order}
  solutions = {}
  for is_val in folds:
    held_out = np.zeros(x.shape[0], np.float32)
    held_out[row[is_val]] = 1.0
    train_weights = weights * jnp.asarray(1.0 - held_out)
    params = None
    for lam in order:
      params = fit_logistic_regression(
        x,
        y,
        num_classes=num_classes,
        l2=lam,
        weights=train_weights,
        init=params,
        max_iters=max_iters,
      )
      params = {'w': params['w'], 'b': params['b']}
      solutions[lam] = params
      pred = _predictions(params, x)[row]
      correct[lam] += int(np.sum((pred == labels)[is_val]))
  # Ties go to the stronger penalty (first in `order`: max keeps the first maximum).
  best = max(order, key=lambda lam: correct[lam])
  return best, solutions[best]


class LinearProbe:
  """A fitted probe: the train mean/std that standardize features, W, b and the chosen L2."""

  def __init__(self, mean, std, params: dict, l2: float):
    self.mean, self.std, self.params, self.l2 = mean, std, params, l2

  def predict(self, x: np.ndarray | jax.Array) -> np.ndarray:
    return _predictions(self.params, standardized(jnp.asarray(x), self.mean, self.std))

  def predict_rows(self, rows: Rows) -> np.ndarray:
    """The predicted class of every example of `rows` (features split over the mesh), in the
    split's global order: only the predictions leave the devices."""
    return self.predict(rows.h)[rows.row]

  def accuracy(self, x: np.ndarray | jax.Array, y: np.ndarray | jax.Array) -> float:
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != np.shape(x)[0] or y.size == 0:
      raise ValueError('test_x and test_y must be non-empty with matching lengths')
    return float(np.mean(self.predict(x) == y))


def fit_linear_probe_rows(
  rows: Rows,
  examples: np.ndarray | None = None,
  *,
  num_classes: int,
  l2_grid: Sequence[float] = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1),
  val_fraction: float = 0.2,
  seed: int = 0,
  max_iters: int = 500,
) -> LinearProbe:
  """The probe of `linear_probe` on features split over the mesh (`batched.Rows`), fitted on
  `examples` (indices in the split's global order; None: all). The rows stay where they are:
  the standardization, the loss and its gradient are sums over examples, so each is a
  reduction over the mesh, and a label budget or a validation fold is a weight per row."""
  if examples is not None:  # a budget: its rows only, still split over the mesh
    rows = rows.select(examples, _ROW_BUCKET)
  chosen = np.arange(len(rows.labels))
  labels, row = rows.labels.astype(np.int32), rows.row
  if labels.size == 0:
    raise ValueError('train_x and train_y must be non-empty with matching lengths')
  if labels.min() < 0 or labels.max() >= num_classes:
    raise ValueError(
      f'train labels must lie in [0, {num_classes}), got {labels.min()}..{labels.max()}'
    )
  if not 0.0 < val_fraction < 1.0:
    raise ValueError(f'val_fraction must be in (0, 1), got {val_fraction}')
  if not l2_grid:
    raise ValueError('l2_grid is empty')
  placed = rows.h.sharding
  weights = jax.device_put(rows.row_mask(chosen), placed)
  y = jax.device_put(rows.by_row(rows.labels.astype(np.int32)), placed)
  mean, std = train_stats(rows.h, weights)
  x = standardized(rows.h, mean, std)
  lam, warm_start = _select_l2(
    x,
    y,
    weights,
    labels,
    row,
    [float(v) for v in l2_grid],
    num_classes=num_classes,
    val_fraction=val_fraction,
    seed=seed,
    max_iters=max_iters,
  )
  # The fit at `lam` on most of the train set is a close start; the optimum itself is unique.
  params = fit_logistic_regression(
    x, y, num_classes=num_classes, l2=lam, weights=weights, init=warm_start, max_iters=max_iters
  )
  return LinearProbe(mean, std, {'w': params['w'], 'b': params['b']}, lam)


def fit_linear_probe(
  train_x: np.ndarray | jax.Array,
  train_y: np.ndarray | jax.Array,
  *,
  num_classes: int,
  l2_grid: Sequence[float] = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1),
  val_fraction: float = 0.2,
  seed: int = 0,
  max_iters: int = 500,
) -> LinearProbe:
  """The probe of `linear_probe`, fitted once so it can score several test sets (in and out of
  distribution) without refitting. In-memory arrays, on one device: `fit_linear_probe_rows`
  is the same fit on features split over a mesh."""
  train_y = np.asarray(train_y).astype(np.int32)
  if train_y.ndim != 1 or train_y.shape[0] != np.shape(train_x)[0] or train_y.size == 0:
    raise ValueError('train_x and train_y must be non-empty with matching lengths')
  return fit_linear_probe_rows(
    in_memory_rows(train_x, train_y, _ROW_BUCKET),
    num_classes=num_classes,
    l2_grid=l2_grid,
    val_fraction=val_fraction,
    seed=seed,
    max_iters=max_iters,
  )


def linear_probe(
  train_x: np.ndarray | jax.Array,
  train_y: np.ndarray | jax.Array,
  test_x: np.ndarray | jax.Array,
  test_y: np.ndarray | jax.Array,
  *,
  num_classes: int,
  l2_grid: Sequence[float] = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1),
  val_fraction: float = 0.2,
  seed: int = 0,
  max_iters: int = 500,
) -> dict:
  """Test accuracy of a multinomial logistic regression on frozen features.

  Features are standardized with the train mean/std (std floor 1e-6). The objective is mean
  cross-entropy + lam * ||W||^2 / 2, minimized by full-batch L-BFGS (exact and hyperparameter-free,
  unlike SGD). lam is chosen from `l2_grid` by accuracy on a class-stratified hold-out of
  `val_fraction` of the train set; ties go to the larger lam. When that hold-out would have fewer
  than 2 examples of some class (e.g. 5 labels per class), one or two validation points per class
  make the choice mostly noise, so stratified k-fold cross-validation (min(5, smallest class
  count) folds) is used instead: every labelled example is validated once. With a class of a single
  example no fold scheme can validate it, so lam falls back to 1e-3. The model is then refit on the
  whole train set with the chosen lam. Standardization uses all train features, also for the
  validation fits (unlabelled statistics only, so no label leaks).

  Returns {'accuracy': test accuracy in [0, 1], 'l2': chosen lam}.
  """
  test_y = np.asarray(test_y).astype(np.int32)
  if test_y.ndim != 1 or test_y.shape[0] != np.shape(test_x)[0] or test_y.size == 0:
    raise ValueError('test_x and test_y must be non-empty with matching lengths')
  probe = fit_linear_probe(
    train_x,
    train_y,
    num_classes=num_classes,
    l2_grid=l2_grid,
    val_fraction=val_fraction,
    seed=seed,
    max_iters=max_iters,
  )
  return {'accuracy': probe.accuracy(test_x, test_y), 'l2': probe.l2}

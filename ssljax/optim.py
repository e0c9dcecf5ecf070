"""Optimizers and learning-rate schedules from the config (optax)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from ssljax.config.checks import Checks
from ssljax.errors import ConfigError

OPTIMIZERS = ('lars', 'adamw')
CLIPS = ('global_norm', 'parameter_norm')
LR_SCALINGS = ('linear', 'sqrt', 'none')


def check_config(checks: Checks) -> None:
  """Records every problem of the batch, schedule and optimizer fields."""
  checks.count('batch_size', 1)
  if checks.count('accum_steps', 1) and isinstance(checks.value('batch_size'), int):
    accum, batch = checks.value('accum_steps'), checks.value('batch_size')
    if batch % accum:
      divisors = [d for d in range(1, accum + 1) if batch % d == 0]
      checks.fail('accum_steps', f'a divisor of batch_size={batch}', max(divisors), value=accum)
  checks.nonnegative('epochs')
  checks.count('total_steps', 0)
  checks.nonnegative('warmup_epochs')
  checks.choice('optimizer', OPTIMIZERS)
  checks.positive('base_lr')
  checks.choice('lr_scaling', LR_SCALINGS)
  checks.nonnegative('weight_decay')
  checks.probability('momentum')
  checks.number('b2', 0, 1, high_open=True)
  checks.nonnegative('weight_decay_end', optional=True)
  if checks.value('optimizer') == 'lars' and checks.value('weight_decay_end') is not None:
    checks.fail('weight_decay_end', 'None with optimizer lars (a schedule needs adamw)', fix='None')
  checks.nonnegative('grad_clip')
  checks.choice('grad_clip_by', CLIPS)
  if checks.value('epochs') == 0 and checks.value('total_steps') == 0:
    checks.fail('epochs', 'a run of at least one step: epochs > 0 or total_steps > 0', fix=1)


def peak_learning_rate(config: ml_collections.ConfigDict) -> float:
  """base_lr scaled with the global batch: linear (x B/256, Goyal et al.) or sqrt (x sqrt(B))."""
  b = config.batch_size
  scaling = {'linear': b / 256, 'sqrt': math.sqrt(b), 'none': 1.0}
  if config.lr_scaling not in scaling:
    raise ConfigError(
      f'config.lr_scaling={config.lr_scaling!r}: one of {", ".join(LR_SCALINGS)}; '
      'e.g. --config.lr_scaling=linear'
    )
  return config.base_lr * scaling[config.lr_scaling]


def learning_rate_schedule(
  config: ml_collections.ConfigDict, total_steps: int, warmup_steps: int
) -> optax.Schedule:
  """Linear warm-up from 0 to the peak, then cosine decay to 0."""
  return optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=peak_learning_rate(config),
    warmup_steps=min(warmup_steps, max(total_steps - 1, 0)),
    decay_steps=max(total_steps, 1),
    end_value=0.0,
  )


def weight_decay_schedule(config: ml_collections.ConfigDict, total_steps: int):
  """config.weight_decay, or a cosine from it to config.weight_decay_end (DINO: 0.04 -> 0.4)."""
  start, end = config.weight_decay, config.get('weight_decay_end')
  if end is None:
    return start
  return lambda step: (
    end
    + (start - end)
    * 0.5
    * (1.0 + jnp.cos(jnp.pi * jnp.minimum(step, total_steps) / max(total_steps, 1)))
  )


def decay_mask(params):
  """True for weight matrices and kernels; biases and norm scales/offsets (1-D) are excluded.

  SimCLR/BYOL skip both weight decay and LARS adaptation for them.
  """
  return jax.tree.map(lambda p: p.ndim > 1, params)


def lars(learning_rate, weight_decay: float, mask, momentum: float) -> optax.GradientTransformation:
  """SimCLR's LARS (trust coefficient 1e-3): weight decay and the trust ratio only where `mask`
  (weights, not biases or norms); pretraining and fine-tuning use the same one."""
  return optax.lars(
    learning_rate,
    weight_decay=weight_decay,
    weight_decay_mask=mask,
    trust_coefficient=1e-3,
    trust_ratio_mask=mask,
    momentum=momentum,
  )


def clip_by_parameter_norm(max_norm: float) -> optax.GradientTransformation:
  """Scales each parameter's gradient to norm at most `max_norm`, every array on its own: DINO's
  clip_gradients (utils.py), coefficient max_norm / (norm + 1e-6) where it is below 1."""

  def clip(g):
    return g * jnp.minimum(1.0, max_norm / (jnp.linalg.norm(g.astype(jnp.float32)) + 1e-6))

  return optax.stateless(lambda updates, params: jax.tree.map(clip, updates))


class HoldState(NamedTuple):
  count: jax.Array
  inner: optax.OptState


def hold_until(inner: optax.GradientTransformation, steps: int) -> optax.GradientTransformation:
  """No update for the first `steps` steps and `inner`'s state left as initialised, so that its
  moments and step count start fresh when the parameters start moving: what PyTorch's AdamW
  does for a parameter whose gradient is None (DINO's frozen last layer)."""

  def init(params):
    return HoldState(jnp.zeros([], jnp.int32), inner.init(params))

  def update(updates, state, params=None):
    new_updates, new_inner = jax.lax.cond(
      state.count < steps,
      lambda: (jax.tree.map(jnp.zeros_like, updates), state.inner),
      lambda: inner.update(updates, state.inner, params),
    )
    return new_updates, HoldState(optax.safe_increment(state.count), new_inner)

  return optax.GradientTransformation(init, update)


def build_optimizer(
  config: ml_collections.ConfigDict,
  total_steps: int,
  warmup_steps: int,
  held: tuple[Callable[[Any], Any], int] | None = None,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """LARS (SimCLR/BYOL recipe) or AdamW, both with the warm-up + cosine schedule.

  config.grad_clip > 0 first clips the gradient: its global norm, or each parameter's norm
  (config.grad_clip_by='parameter_norm', DINO's official clipping).
  held=(mask_fn, steps): the parameters where mask_fn(params) is True do not move for `steps`
  steps, then get an optimizer of their own that starts there (`hold_until`), its schedules read
  at the global step (`Method.held_parameters`: DINO's frozen last layer).
  """
  schedule = learning_rate_schedule(config, total_steps, warmup_steps)
  weight_decay = weight_decay_schedule(config, total_steps)
  tx = _optimizer(config, schedule, weight_decay)
  if held is not None and held[1] > 0:
    mask_fn, steps = held
    late = _optimizer(config, _shifted(schedule, steps), _shifted(weight_decay, steps))
    tx = optax.multi_transform(
      {'train': tx, 'held': hold_until(late, steps)},
      lambda params: jax.tree.map(lambda h: 'held' if h else 'train', mask_fn(params)),
    )
  if config.get('grad_clip', 0.0) > 0:
    clip = config.get('grad_clip_by', 'global_norm')
    if clip == 'parameter_norm':
      tx = optax.chain(clip_by_parameter_norm(config.grad_clip), tx)
    else:
      tx = optax.chain(optax.clip_by_global_norm(config.grad_clip), tx)
  return tx, schedule


def _shifted(schedule, offset: int):
  """The schedule read `offset` steps later (a constant stays itself)."""
  return (lambda step: schedule(step + offset)) if callable(schedule) else schedule


def _optimizer(config, schedule, weight_decay) -> optax.GradientTransformation:
  """config.optimizer with these learning-rate and weight-decay schedules."""
  if config.optimizer == 'lars':
    if config.get('weight_decay_end') is not None:
      raise ConfigError(
        'config.weight_decay_end: a weight-decay schedule needs config.optimizer=adamw; '
        'e.g. --config.weight_decay_end=None'
      )
    return lars(schedule, weight_decay, decay_mask, config.momentum)
  if config.optimizer == 'adamw':
    return optax.adamw(
      schedule, b1=config.momentum, b2=config.b2, weight_decay=weight_decay, mask=decay_mask
    )
  raise ConfigError(
    f'config.optimizer={config.optimizer!r}: one of {", ".join(OPTIMIZERS)}; '
    'e.g. --config.optimizer=adamw'
  )

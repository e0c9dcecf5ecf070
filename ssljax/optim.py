"""Optimizers and learning-rate schedules from the config (optax)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import optax

from ssljax.config_checks import Checks
from ssljax.errors import ConfigError

OPTIMIZERS = ('lars', 'adamw')
LR_SCALINGS = ('linear', 'sqrt', 'none')


def check_config(checks: Checks) -> None:
  """Records every problem of the batch, schedule and optimizer fields."""
  checks.count('batch_size', 1)
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


def build_optimizer(
  config: ml_collections.ConfigDict, total_steps: int, warmup_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """LARS (SimCLR/BYOL recipe) or AdamW, both with the warm-up + cosine schedule.

  config.grad_clip > 0 first clips the gradient's global norm (DINO, MAE).
  """
  schedule = learning_rate_schedule(config, total_steps, warmup_steps)
  if config.optimizer == 'lars':
    if config.get('weight_decay_end') is not None:
      raise ConfigError(
        'config.weight_decay_end: a weight-decay schedule needs config.optimizer=adamw; '
        'e.g. --config.weight_decay_end=None'
      )
    tx = lars(schedule, config.weight_decay, decay_mask, config.momentum)
  elif config.optimizer == 'adamw':
    tx = optax.adamw(
      schedule,
      b1=config.momentum,
      b2=config.b2,
      weight_decay=weight_decay_schedule(config, total_steps),
      mask=decay_mask,
    )
  else:
    raise ConfigError(
      f'config.optimizer={config.optimizer!r}: one of {", ".join(OPTIMIZERS)}; '
      'e.g. --config.optimizer=adamw'
    )
  if config.get('grad_clip', 0.0) > 0:
    tx = optax.chain(optax.clip_by_global_norm(config.grad_clip), tx)
  return tx, schedule

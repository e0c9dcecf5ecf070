"""Optimizers and learning-rate schedules from the config (optax)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import optax


def peak_learning_rate(config: ml_collections.ConfigDict) -> float:
  """base_lr scaled with the global batch: linear (x B/256, Goyal et al.) or sqrt (x sqrt(B))."""
  b = config.batch_size
  scaling = {'linear': b / 256, 'sqrt': math.sqrt(b), 'none': 1.0}
  if config.lr_scaling not in scaling:
    raise ValueError(f'lr_scaling must be one of {sorted(scaling)}, got {config.lr_scaling!r}')
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
      raise ValueError('config.weight_decay_end (a weight-decay schedule) needs optimizer adamw')
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
    raise ValueError(f"config.optimizer must be 'lars' or 'adamw', got {config.optimizer!r}")
  if config.get('grad_clip', 0.0) > 0:
    tx = optax.chain(optax.clip_by_global_norm(config.grad_clip), tx)
  return tx, schedule

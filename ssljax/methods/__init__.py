"""Methods by name: `config.method` picks one."""

from __future__ import annotations

import jax
import ml_collections

from ssljax.methods.base import Method, TrainState
from ssljax.methods.byol import BYOL
from ssljax.methods.dino import DINO
from ssljax.methods.ijepa import IJEPA
from ssljax.methods.mae import MAE
from ssljax.methods.simclr import SimCLR

METHODS: dict[str, type[Method]] = {
  'simclr': SimCLR,
  'byol': BYOL,
  'dino': DINO,
  'mae': MAE,
  'ijepa': IJEPA,
}

__all__ = ['METHODS', 'Method', 'TrainState', 'build']


def build(
  config: ml_collections.ConfigDict,
  mesh: jax.sharding.Mesh,
  total_steps: int = 1,
  steps_per_epoch: int = 1,
) -> Method:
  if config.method not in METHODS:
    raise ValueError(f'config.method {config.method!r} is unknown; choose one of {sorted(METHODS)}')
  return METHODS[config.method](config, mesh, total_steps, steps_per_epoch)

"""Methods by name: `config.method` picks one. A method is one file in this folder (its default
config, the checks of its sections, its networks and loss) plus one line in METHODS."""

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

__all__ = [
  'BYOL',
  'DINO',
  'IJEPA',
  'MAE',
  'METHODS',
  'Method',
  'SimCLR',
  'TrainState',
  'build',
  'check_config',
  'method_class',
]


def method_class(config: ml_collections.ConfigDict) -> type[Method]:
  """The class config.method names; a ValueError naming the choices otherwise."""
  if config.method not in METHODS:
    raise ValueError(
      f'config.method={config.method!r} is unknown; choose one of {sorted(METHODS)}, e.g. '
      "--config.method=simclr (better: start from that method's configs/<method>_*.py)."
    )
  return METHODS[config.method]


def check_config(config: ml_collections.ConfigDict) -> None:
  """The method's checks of the config (views, eval_encoder, its own sections)."""
  method_class(config).check_config(config)


def build(
  config: ml_collections.ConfigDict,
  mesh: jax.sharding.Mesh,
  total_steps: int = 1,
  steps_per_epoch: int = 1,
) -> Method:
  cls = method_class(config)
  cls.check_config(config)
  return cls(config, mesh, total_steps, steps_per_epoch)

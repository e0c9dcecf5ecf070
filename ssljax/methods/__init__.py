"""Methods by name: `config.method` picks one. A method is one file in this folder (its default
config, the checks of its sections, its networks and loss) plus one line in METHODS."""

from __future__ import annotations

import jax
import ml_collections

from ssljax.config.checks import Checks
from ssljax.errors import ConfigError
from ssljax.methods.base import Method, TrainState
from ssljax.methods.byol import BYOL
from ssljax.methods.dino import DINO
from ssljax.methods.ijepa import IJEPA
from ssljax.methods.mae import MAE
from ssljax.methods.simclr import SimCLR
from ssljax.methods.triplet import Triplet

METHODS: dict[str, type[Method]] = {
  'simclr': SimCLR,
  'byol': BYOL,
  'dino': DINO,
  'mae': MAE,
  'ijepa': IJEPA,
  'triplet': Triplet,
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
  'Triplet',
  'build',
  'check_config',
  'method_class',
  'start_checks',
]


def method_class(config: ml_collections.ConfigDict) -> type[Method]:
  """The class config.method names; a ConfigError naming the choices otherwise."""
  if config.method not in METHODS:
    raise ConfigError(
      f'config.method={config.method!r}: one of {", ".join(METHODS)}; start from that '
      "method's configs/<method>_*.py (or --config.method=simclr)"
    )
  return METHODS[config.method]


def start_checks(config: ml_collections.ConfigDict) -> Checks:
  """A Checks for `config` whose example fixes come from its method's defaults; raises
  ConfigError at once for an unknown method or a missing section (nothing else is checkable)."""
  cls = method_class(config)
  cls.check_sections(config)
  size = config.augment.get('image_size')
  size = size if isinstance(size, int) and size > 0 else 224
  return Checks(config, defaults=cls.default_config(size))


def check_config(checks: Checks) -> None:
  """The method's checks (views, eval_encoder, its own sections), recorded in `checks`."""
  method_class(checks.config).check_config(checks)


def build(
  config: ml_collections.ConfigDict,
  mesh: jax.sharding.Mesh,
  total_steps: int = 1,
  steps_per_epoch: int = 1,
) -> Method:
  checks = start_checks(config)
  check_config(checks)
  checks.raise_if_any()
  return method_class(config)(config, mesh, total_steps, steps_per_epoch)

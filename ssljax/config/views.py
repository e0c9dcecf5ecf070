"""The views of a method: config.augment with each config.views entry applied. A config fact that
the models' and methods' checks read and the input pipeline builds from, so it lives below both."""

from __future__ import annotations

import copy

import ml_collections

from ssljax.errors import ConfigError


def view_specs(config: ml_collections.ConfigDict) -> list[ml_collections.ConfigDict]:
  """One augmentation spec per view: config.augment with each config.views entry applied.

  Entries are taken in sorted order of their names and repeated `count` times (multi-crop), so
  the view order is fixed by the config alone.
  """
  specs = []
  for name in sorted(config.views.keys()):
    spec = ml_collections.ConfigDict(config.augment.to_dict())
    overrides = config.views[name]
    if isinstance(overrides, ml_collections.ConfigDict):
      overrides = overrides.to_dict()
    spec.update(dict(overrides or {}))
    specs.extend(copy.deepcopy(spec) for _ in range(int(spec.count)))
  if not specs:
    raise ConfigError('config.views defines no view: every method needs one, e.g. dict(view1={})')
  return specs


def view_specs_if_valid(config: ml_collections.ConfigDict) -> list | None:
  """view_specs, or None for views that cannot be expanded (the data checks report why):
  for the checks of other fields that depend on the views."""
  try:
    return view_specs(config)
  except (ConfigError, TypeError, ValueError):
    return None

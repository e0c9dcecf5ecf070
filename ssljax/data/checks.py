"""Checks of config.data, config.augment and config.views: what the data modules own."""

from __future__ import annotations

import ml_collections

from ssljax.config.checks import MISSING, Checks
from ssljax.data import labels_csv, shifts
from ssljax.data.sources import SOURCES


def check_config(checks: Checks) -> None:
  """Records every problem of the data and augmentation fields in `checks`."""
  checks.choice('data.source', tuple(SOURCES))
  checks.count('data.image_size', 1)
  checks.probability('data.max_bad_fraction')
  window = checks.value('data.dicom_window')
  if window is not None:
    ok = (
      isinstance(window, tuple | list)
      and len(window) == 2
      and all(isinstance(v, int | float) and not isinstance(v, bool) for v in window)
      and window[1] > 0
    )
    checks.require(ok, 'data.dicom_window', '(center, width) with width > 0, or None', (40, 400))
  labels_csv.check_config(checks)
  name = checks.value('data.source')
  if isinstance(name, str) and name in SOURCES:
    SOURCES[name].check_config(checks)  # the fields of that kind of source
  data = checks.value('data')
  checks.absorb(shifts.check, data.get('shift', ''), data.get('shift_severity', 3))
  _check_augment(checks, 'augment', checks.value('augment'))
  checks.choice('augment.on', ('host', 'device'))
  views = checks.value('views')
  if not isinstance(views, ml_collections.ConfigDict) or not views.keys():
    checks.fail('views', 'at least one view, e.g. dict(view1={}, view2={})', value=views)
    return
  allowed = set(checks.value('augment').keys())
  for name in sorted(views.keys()):
    overrides = views[name] or {}
    unknown = sorted(set(overrides.keys()) - allowed)
    for key in unknown:
      checks.fail(
        f'views.{name}.{key}', f'not an augmentation setting; choose from {sorted(allowed)}'
      )
    if 'on' in overrides:
      checks.fail(f'views.{name}.on', 'set augment.on, once for every view', value=overrides['on'])
    _check_augment(checks, f'views.{name}', overrides, fallback='augment')


def _check_augment(checks: Checks, prefix: str, spec, fallback: str | None = None) -> None:
  """The augmentation settings present in `spec` (config.augment, or a view's overrides)."""

  def present(key: str) -> bool:
    return key in spec

  def fix(key: str):
    """A view without a default of its own takes config.augment's value as the example."""
    if fallback is None:
      return MISSING
    own = checks.lookup(checks.defaults, f'{prefix}.{key}')
    return MISSING if own is not MISSING else checks.lookup(checks.defaults, f'{fallback}.{key}')

  f = lambda key: f'{prefix}.{key}'  # noqa: E731
  if present('image_size'):
    checks.count(f('image_size'), 1, fix=fix('image_size'))
  if present('crop_scale'):
    checks.pair(f('crop_scale'), 0, 1, low_open=True, fix=fix('crop_scale'))
  if present('crop_ratio'):
    checks.pair(f('crop_ratio'), 0, low_open=True, fix=fix('crop_ratio'))
  if present('flip'):
    checks.boolean(f('flip'))
  if present('color_strength'):
    checks.nonnegative(f('color_strength'), fix=fix('color_strength'))
  if present('color_jitter'):
    jitter = spec['color_jitter']
    ok = (
      isinstance(jitter, tuple | list)
      and len(jitter) == 4
      and all(isinstance(x, int | float) and x >= 0 for x in jitter)
      and jitter[3] <= 0.5
    )
    checks.require(
      ok,
      f('color_jitter'),
      '(brightness, contrast, saturation, hue), each >= 0, hue <= 0.5',
      fix=(0.8, 0.8, 0.8, 0.2),
    )
  for key in ('color_prob', 'grayscale_prob', 'blur_prob', 'solarize_prob'):
    if present(key):
      checks.probability(f(key))
  if present('blur_kernel_frac'):
    checks.number(f('blur_kernel_frac'), 0, 1, low_open=True, fix=fix('blur_kernel_frac'))
  if present('blur_sigma'):
    checks.pair(f('blur_sigma'), 0, low_open=True, fix=fix('blur_sigma'))
  if present('count'):
    checks.count(f('count'), 1, fix=1)

"""When the label-free health metrics say a run is collapsing, and what to try instead.

The train loop logs `health/rankme_h` and `health/std_h` (`monitor.health`) at every log step;
the first step where either falls below its floor (config.health.min_rankme, min_std) gets one
warning naming the step, the metric and the remedies for the method, and the report shows it
(`first_collapse` reads the same rule back from metrics.jsonl). With
config.health.stop_on_collapse the run stops there instead, keeping its last checkpoint.

The floors come from runs at both ends on digits (experiments/collapse_health.py,
experiments/results/collapse_health.json): healthy runs of every method stay well above them
from their first log step, runs made to collapse fall below them. Plain Python: the report,
which imports no JAX, reads it too.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

MIN_RANKME = 1.75  # config.health.min_rankme's default
MIN_STD = 0.02  # config.health.min_std's default

REMEDIES = {
  'simclr': 'a lower loss.temperature (0.1-0.5 are usual), a larger batch_size (more negatives), '
  'a lower base_lr or a longer warmup_epochs',
  'byol': 'a target momentum ema.base closer to 1 (0.99-0.996), a wider predictor '
  '(model.pred_hidden), a lower base_lr or a longer warmup_epochs',
  'dino': 'centering on (dino.center_momentum below 1, 0.9 is usual), a lower dino.teacher_temp '
  '(0.04) reached by a warm-up (dino.warmup_teacher_temp, dino.warmup_teacher_temp_epochs), a '
  'teacher momentum ema.base closer to 1 and a longer dino.freeze_last_layer_epochs',
  'ijepa': 'a target momentum ema.base closer to 1 (0.996-0.999), a deeper or wider predictor '
  '(ijepa.pred_depth, ijepa.pred_width), a lower base_lr or a longer warmup_epochs',
  'mae': 'a lower base_lr or a longer warmup_epochs, and mae.norm_pix=True',
  'triplet': "triplet.normalize=True, a smaller triplet.margin, triplet.negatives='semi_hard' "
  "rather than 'hardest' (the hardest negatives collapse FaceNet's training early), a larger "
  'batch_size or a lower base_lr',
}


def field(config: Any, dotted: str, default: Any = None) -> Any:
  """config.a.b for a ConfigDict or a plain dict, `default` when any part is missing."""
  node = config
  for key in dotted.split('.'):
    try:
      node = node[key]
    except (KeyError, TypeError, IndexError, AttributeError):
      return default
  return node


def floor(name: str, config: Any) -> float | None:
  """The floor of a logged health metric: config.health.min_rankme for every `health/rankme_*`,
  min_std for every `health/std_*`; None for the others (the agreement has none)."""
  for prefix, key in (('health/rankme_', 'min_rankme'), ('health/std_', 'min_std')):
    if name.startswith(prefix):
      return field(config, f'health.{key}')
  return None


def below_floor(metrics: Mapping[str, float], config: Any) -> str | None:
  """'health/rankme_z 1.04 < 2' for the first RankMe (of h, or of the projector output z) or
  normalised std in `metrics` below its floor or not finite; None when all are above."""
  for name in sorted(metrics):
    low = floor(name, config)
    if low is None:
      continue
    value = float(metrics[name])
    if not math.isfinite(value) or value < low:
      return f'{name} {value:.3g} < {low:g}'
  return None


def warning(step: int, reason: str, config: Any) -> str:
  """The one message a collapsing run logs and its report shows."""
  method = field(config, 'method', '?')
  remedies = REMEDIES.get(method, 'a lower base_lr or a longer warmup_epochs')
  return (
    f'representation collapse at step {step}: {reason} (config.health.min_rankme / min_std). '
    'The encoder is mapping different images to (nearly) the same vector, and training on '
    f'rarely recovers from that. For {method}, try {remedies}.'
  )


def first_collapse(rows: Iterable[tuple[int, Mapping[str, float]]], config: Any) -> str | None:
  """The warning for the first (step, metrics) row, in step order, whose health metrics are
  below a floor; None when there is none."""
  for step, metrics in sorted(rows, key=lambda row: row[0]):
    reason = below_floor(metrics, config)
    if reason:
      return warning(int(step), reason, config)
  return None

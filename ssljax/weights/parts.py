"""The networks beside the encoder in an official checkpoint, mapped to ssljax's modules: MAE's
decoder (models_mae.py) to `methods.mae.MAEDecoder`, I-JEPA's predictor (vision_transformer.py's
VisionTransformerPredictor) to `methods.ijepa.Predictor`. Their position tables are fixed sin-cos
on both sides: checked equal to ssljax's, not stored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from ssljax.models import vit as vit_lib
from ssljax.weights import convert, names
from ssljax.weights.files import WeightsError


def _depth(arrays: Mapping[str, np.ndarray], prefix: str) -> int:
  found = {int(m[1]) for k in arrays if (m := re.match(rf'{prefix}\.(\d+)\.', k))}
  return max(found) + 1 if found else 0


def _check_sincos(table: np.ndarray, key: str, path: str, prefix: int) -> None:
  rows = table[0, prefix:]
  grid = int(round(rows.shape[0] ** 0.5))
  if not np.allclose(rows, vit_lib.sincos_2d(rows.shape[1], grid, grid), atol=1e-5):
    raise WeightsError(f'{path}: {key} is not the fixed 2-D sin-cos table ssljax computes.')


def _map(arrays: Mapping[str, np.ndarray], pairs: list, path: str) -> dict[str, np.ndarray]:
  shapes = {
    p.ours: names.to_ours(arrays[p.torch], p.kind).shape for p in pairs if p.torch in arrays
  }
  template = {p.ours: shapes.get(p.ours, ()) for p in pairs}
  fix = 'Give a checkpoint written by the official code.'
  flat, _ = convert.to_ours(arrays, pairs, template, where=path, fix=fix)
  return flat


def _part(
  arrays: Mapping[str, np.ndarray], path: str, what: str, prefix: str, cls_row: bool, pairs
) -> tuple[dict, str]:
  """(variables by path, a report line) of a `prefix`_* network; `what` names ssljax's."""
  arrays = dict(arrays)
  pos = f'{prefix}_pos_embed'
  _check_sincos(arrays.pop(pos), pos, path, prefix=int(cls_row))
  depth = _depth(arrays, f'{prefix}_blocks')
  flat = _map(arrays, pairs(depth), path)
  return flat, (
    f'{prefix}: {len(flat)} arrays -> ssljax {what} ({depth} blocks; {pos}: the fixed sin-cos '
    'table, equal)'
  )


def mae_decoder(arrays: Mapping[str, np.ndarray], path: str) -> tuple[dict, str]:
  """(MAEDecoder variables by path, a report line) of MAE's decoder arrays."""
  return _part(arrays, path, 'MAEDecoder', 'decoder', True, names.mae_decoder_pairs)


def ijepa_predictor(arrays: Mapping[str, np.ndarray], path: str) -> tuple[dict, str]:
  """(Predictor variables by path, a report line) of I-JEPA's predictor arrays."""
  return _part(arrays, path, 'I-JEPA Predictor', 'predictor', False, names.ijepa_predictor_pairs)

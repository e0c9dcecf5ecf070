"""A state dict (PyTorch's names and layouts) into ssljax variables of a given shape, and back.

Into ssljax, every variable the encoder has must come from the file, and every array of the
file's network must land somewhere: anything else is an error naming the keys. Two differences
are adapted, as timm adapts them when it loads weights into a model of another input:
- the first convolution's input channels (timm's `adapt_input_conv`: for one channel the three
  are summed; otherwise repeated to cover them and scaled by 3 / channels);
- a ViT's position table resampled to the model's grid, bicubic with antialiasing, as timm's
  `resample_abs_pos_embed` (jax.image.resize computes the same as torch's F.interpolate there).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import numpy as np

from ssljax.weights import names
from ssljax.weights.files import WeightsError
from ssljax.weights.names import Pair

FIRST_CONVS = ('patch_embed.proj.weight', 'conv1.weight')
_LISTED = 8  # keys named in one error, at most


def adapt_channels(weight: np.ndarray, channels: int) -> np.ndarray:
  """A first convolution's kernel (O, I, kh, kw) for `channels` inputs instead of I."""
  have = weight.shape[1]
  if channels == have:
    return weight
  w = weight.astype(np.float32)
  if channels == 1:
    return w.sum(axis=1, keepdims=True)
  repeats = -(-channels // have)
  return np.tile(w, (1, repeats, 1, 1))[:, :channels] * (have / channels)


def resample_pos(table: np.ndarray, rows: int, prefix: int) -> np.ndarray:
  """A (1, prefix + g*g, D) position table resampled to (1, rows, D): the patch part bicubic
  (antialiased) from its square grid to the square grid of rows - prefix, the prefix kept."""
  old, new = table.shape[1] - prefix, rows - prefix
  g_old, g_new = int(round(old**0.5)), int(round(new**0.5))
  if g_old**2 != old or g_new**2 != new:
    raise WeightsError(f'pos_embed: {old} -> {new} patch rows are not square grids')
  d = table.shape[-1]
  grid = table[:, prefix:].astype(np.float32).reshape(1, g_old, g_old, d)
  grid = jax.image.resize(grid, (1, g_new, g_new, d), 'bicubic', antialias=True)
  return np.concatenate([table[:, :prefix], np.asarray(grid).reshape(1, new, d)], axis=1)


def _listed(keys: Sequence[str]) -> str:
  keys = sorted(keys)
  more = f' and {len(keys) - _LISTED} more' if len(keys) > _LISTED else ''
  return ', '.join(keys[:_LISTED]) + more


def to_ours(
  state: Mapping[str, np.ndarray],
  pairs: Sequence[Pair],
  template: Mapping[str, tuple[int, ...]],
  *,
  where: str,
  fix: str,
) -> tuple[dict[str, np.ndarray], list[str]]:
  """(ssljax variables by path, notes): `state` mapped onto `template` (ssljax path -> shape,
  the encoder to fill). `where` names the source in errors, `fix` says what to change."""
  out: dict[str, np.ndarray] = {}
  notes: list[str] = []
  missing, shapes = [], []
  paired = {p.torch for p in pairs} | set(names.batch_counters(pairs))
  extra = [k for k in state if k not in paired]
  for pair in pairs:
    if pair.ours not in template:
      if pair.torch in state:
        extra.append(pair.torch)
      continue
    if pair.torch not in state:
      missing.append(pair.torch)
      continue
    value, want = state[pair.torch], names.torch_shape(template[pair.ours], pair.kind)
    if pair.torch in FIRST_CONVS and value.shape[1] != want[1]:
      notes.append(f'{pair.torch}: {value.shape[1]} input channels adapted to {want[1]}')
      value = adapt_channels(value, want[1])
    if pair.torch == 'pos_embed' and value.shape[1] != want[1]:
      prefix = int('params/cls_token' in template)
      notes.append(f'pos_embed: resampled from {value.shape[1]} rows to {want[1]} (bicubic)')
      value = resample_pos(value, want[1], prefix)
    if tuple(value.shape) != tuple(want):
      shapes.append(f'{pair.torch} {tuple(value.shape)} (the encoder needs {tuple(want)})')
      continue
    out[pair.ours] = np.asarray(names.to_ours(value, pair.kind), np.float32)
  problems = []
  if missing:
    problems.append(f'missing from the file: {_listed(missing)}')
  if extra:
    problems.append(f'in the file but not in the encoder: {_listed(extra)}')
  if shapes:
    problems.append(f'shapes that differ: {_listed(shapes)}')
  if problems:
    raise WeightsError(f'{where}: ' + '; '.join(problems) + f'. {fix}')
  return out, notes


def to_torch(
  variables: Mapping[str, np.ndarray], pairs: Sequence[Pair], *, counters: bool = True
) -> dict[str, np.ndarray]:
  """The state dict of ssljax `variables` (by path): every variable must have its pair; with
  `counters`, BatchNorm's num_batches_tracked written as 0 (timm loads strictly)."""
  known = {p.ours for p in pairs}
  unknown = sorted(set(variables) - known)
  if unknown:
    raise WeightsError(f'ssljax variables with no PyTorch name: {_listed(unknown)}')
  state = {
    p.torch: np.ascontiguousarray(names.to_torch(np.asarray(variables[p.ours]), p.kind))
    for p in pairs
    if p.ours in variables
  }
  if counters:
    state.update(
      {
        k: np.zeros((), np.int64)
        for k in names.batch_counters(pairs)
        if k.rsplit('.', 1)[0] + '.running_mean' in state
      }
    )
  return state

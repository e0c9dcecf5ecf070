"""Weight files read into, and written from, NumPy: `.safetensors` (no torch needed) and PyTorch's
`.pth` / `.pt` / `.bin` / `.tar` pickles (torch, the `torch` extra).

A pickle is read with `torch.load(..., weights_only=True)` only: a downloaded checkpoint never
runs code. argparse.Namespace, which the official DINO and MAE checkpoints store their
arguments in, is the one class allowed beyond torch's own (it holds values, runs nothing).
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Mapping
from typing import Any

import numpy as np

from ssljax import paths
from ssljax.errors import UserError

SAFETENSORS = ('.safetensors',)
PICKLES = ('.pth', '.pt', '.bin', '.tar', '.ckpt')
SUFFIXES = SAFETENSORS + PICKLES


class WeightsError(UserError, ValueError):
  """A weight file ssljax cannot use as given: the message names the file, the key or the
  extra to install, and the fix."""


def is_weight_file(source: str) -> bool:
  """Whether `source` names a weight file (by its suffix) rather than a run directory."""
  return str(source).endswith(SUFFIXES)


def _suffix(path: str) -> str:
  for suffix in SUFFIXES:
    if str(path).endswith(suffix):
      return suffix
  raise WeightsError(
    f'{path}: not a weight file ssljax reads; give a {", ".join(SUFFIXES)} file '
    '(a state dict in timm, torchvision, DINO, MAE or I-JEPA layout).'
  )


def read(path: str) -> tuple[dict[str, np.ndarray], list[str]]:
  """(arrays, others): every array in the file by its key, nested dicts' keys joined by '/'
  ('teacher/backbone.cls_token'), and the keys of entries that are not arrays (an epoch, the
  training arguments), which a caller names rather than skips silently."""
  suffix = _suffix(path)
  if not paths.path(path).exists():
    raise WeightsError(f'{path} not found: give the path of a {suffix} weight file.')
  if suffix in SAFETENSORS:
    return _read_safetensors(path), []
  return _flatten(_load_pickle(path))


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
  from safetensors.numpy import load

  try:
    return dict(load(paths.path(path).read_bytes()))
  except Exception as e:  # safetensors raises its own errors for a bad header
    raise WeightsError(f'{path}: not a readable safetensors file ({e}).') from e


def torch_module():
  """torch, or a one-line error naming the extra that installs it."""
  try:
    import torch
  except ImportError:
    raise WeightsError(
      "reading PyTorch .pth files needs torch: pip install 'ssljax[torch]' (or convert the "
      'file to .safetensors where torch is installed).'
    ) from None
  return torch


def _load_pickle(path: str) -> Any:
  torch = torch_module()
  source = io.BytesIO(paths.path(path).read_bytes()) if paths.is_remote(path) else path
  try:
    with torch.serialization.safe_globals([argparse.Namespace]):
      return torch.load(source, map_location='cpu', weights_only=True)
  except Exception as e:  # torch's UnpicklingError for anything but tensors and plain values
    raise WeightsError(
      f'{path}: refused to load ({type(e).__name__}: {str(e).splitlines()[0]}). ssljax reads '
      'pickles with torch.load(weights_only=True): tensors and plain values only, never code. '
      'Save the state dict alone (torch.save(model.state_dict(), ...)) or as .safetensors.'
    ) from e


def _to_numpy(value: Any) -> np.ndarray:
  if isinstance(value, np.ndarray):
    return value
  if value.dtype.is_floating_point and value.dtype.itemsize < 4:  # bfloat16 has no NumPy dtype
    value = value.float()
  return value.detach().cpu().numpy()


def _flatten(tree: Any, prefix: str = '') -> tuple[dict[str, np.ndarray], list[str]]:
  arrays: dict[str, np.ndarray] = {}
  others: list[str] = []
  items = tree.items() if isinstance(tree, Mapping) else [('', tree)]
  for key, value in items:
    name = f'{prefix}/{key}' if prefix and key != '' else (prefix or str(key))
    if isinstance(value, Mapping):
      a, o = _flatten(value, name)
      arrays.update(a)
      others += o
    elif isinstance(value, np.ndarray) or type(value).__name__ in ('Tensor', 'Parameter'):
      arrays[name] = _to_numpy(value)
    else:
      others.append(name)
  return arrays, others


def write_safetensors(path: str, arrays: Mapping[str, np.ndarray], metadata: dict | None = None):
  """Writes `arrays` (contiguous float32 and the like) as a safetensors file."""
  from safetensors.numpy import save

  data = save({k: np.ascontiguousarray(v) for k, v in arrays.items()}, metadata=metadata)
  paths.write_atomic(paths.path(path), data)

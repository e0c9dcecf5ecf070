"""Which checkpoint layout a file holds, and its parts under timm's names.

Layouts, told apart by their keys (each written from the official repository's model and
checkpoint code):
- timm / torchvision: a plain state dict (`patch_embed.proj.weight`, or `conv1.weight` and
  `layer1.0...`); DINO's published backbones (`dino_vits16_pretrain.pth`, its ResNet-50) are the
  same.
- dino: a training checkpoint, {'student': {'module.backbone.*', 'module.head.*'}, 'teacher':
  {'backbone.*', 'head.*'}, 'optimizer', 'epoch', 'args', 'dino_loss'}. The teacher is the
  encoder DINO evaluates (as ssljax's DINO); part='student' picks the other.
- mae: {'model': {...}}: the encoder's keys, and, in the full and visualization checkpoints,
  `mask_token` and `decoder_*` (the decoder).
- ijepa: {'encoder', 'predictor', 'target_encoder', 'opt', ...}, each a DistributedDataParallel
  state dict (`module.` prefixed). The target encoder is the one evaluated (as ssljax's I-JEPA);
  part='encoder' picks the context encoder.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from ssljax.weights.files import WeightsError

LAYOUTS = ('timm', 'dino', 'mae', 'ijepa')


class Parts(NamedTuple):
  layout: str  # one of LAYOUTS
  part: str  # which network of the file is the encoder ('teacher', 'target_encoder', ...)
  encoder: dict[str, np.ndarray]  # timm's names, prefixes removed
  decoder: dict[str, np.ndarray]  # MAE's decoder (its official names), or {}
  predictor: dict[str, np.ndarray]  # I-JEPA's predictor (its official names), or {}
  unused: list[str]  # 'key (why)': what no part takes: heads, optimizer state, other networks


def _strip(arrays: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
  """The arrays under `prefix` ('teacher/'), with it and any DDP `module.` removed."""
  out = {}
  for key, value in arrays.items():
    if key.startswith(prefix):
      name = key[len(prefix) :]
      out[name.removeprefix('module.')] = value
  return out


def _others(arrays: Mapping[str, np.ndarray], taken: tuple[str, ...], why: str) -> list[str]:
  return [f'{k} ({why})' for k in sorted(arrays) if not k.startswith(taken)]


def split(arrays: Mapping[str, np.ndarray], part: str = '', path: str = '') -> Parts:
  """The file's layout and its encoder (and decoder or predictor); `part` names the network to
  take as the encoder where a file holds two ('teacher' | 'student', 'target_encoder' |
  'encoder'); '' takes the one the method evaluates."""
  tops = {k.split('/', 1)[0] for k in arrays if '/' in k}
  if {'teacher', 'student'} & tops:
    return _dino(arrays, part or 'teacher', path)
  if {'target_encoder', 'encoder'} & tops and 'predictor' in tops:
    return _ijepa(arrays, part or 'target_encoder', path)
  if part:
    raise WeightsError(
      f'{path}: part={part!r} names a network, but the file holds one (its keys: '
      f'{sorted(arrays)[:3]}...); leave the part empty.'
    )
  container = next((t for t in ('model', 'state_dict', 'module') if t in tops), '')
  state = _strip(arrays, f'{container}/') if container else dict(arrays)
  if not container:
    state = {k.removeprefix('module.'): v for k, v in state.items()}
  unused = _others(arrays, (f'{container}/',), 'not a network') if container else []
  decoder = {k: v for k, v in state.items() if k.startswith('decoder_') or k == 'mask_token'}
  encoder, classifier = _without_classifier({k: v for k, v in state.items() if k not in decoder})
  layout = 'mae' if decoder or container == 'model' else 'timm'
  return Parts(layout, '', encoder, decoder, {}, unused + classifier)


def _without_classifier(state: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[str]]:
  """The encoder without the classifier on h (timm's ViT `head`, the ResNets' `fc`)."""
  head = sorted(k for k in state if k.startswith(('head.', 'fc.')))
  return {k: v for k, v in state.items() if k not in head}, [f'{k} (the classifier)' for k in head]


def _dino(arrays: Mapping[str, np.ndarray], part: str, path: str) -> Parts:
  if part not in ('teacher', 'student'):
    raise WeightsError(f"{path}: a DINO checkpoint's part is 'teacher' or 'student', not {part!r}")
  network = {k.removeprefix('backbone.'): v for k, v in _strip(arrays, f'{part}/').items()}
  encoder = {k: v for k, v in network.items() if not k.startswith('head.')}
  unused = [f'{part}/{k} (the DINO head)' for k in sorted(network) if k.startswith('head.')]
  unused += _others(arrays, (f'{part}/',), f'not the {part} backbone')
  return Parts('dino', part, encoder, {}, {}, unused)


def _ijepa(arrays: Mapping[str, np.ndarray], part: str, path: str) -> Parts:
  if part not in ('target_encoder', 'encoder'):
    raise WeightsError(
      f"{path}: an I-JEPA checkpoint's part is 'target_encoder' or 'encoder', not {part!r}"
    )
  encoder = _strip(arrays, f'{part}/')
  predictor = _strip(arrays, 'predictor/')
  unused = _others(arrays, (f'{part}/', 'predictor/'), f'not the {part} or the predictor')
  return Parts('ijepa', part, encoder, {}, predictor, unused)

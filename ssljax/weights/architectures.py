"""Which ssljax encoder a state dict is, from its keys and shapes and, where those do not say it
(a ViT's heads, its input statistics), from a timm model name.

Input statistics are each model's own: timm's ViTs trained by Google (augreg, orig_in21k, sam)
take (x - 0.5) / 0.5; DINO's, MAE's, I-JEPA's ViTs and every ResNet ImageNet's mean and std.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from ssljax.models import pixels
from ssljax.models import resnet as resnet_lib
from ssljax.models import vit as vit_lib
from ssljax.weights.files import WeightsError

HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
IMAGENET = (pixels.IMAGENET_MEAN, pixels.IMAGENET_STD)
# timm tags (the part of a name after the dot) by the input statistics their weights expect.
_HALF_TAGS = ('augreg', 'orig_in21k', 'sam')
_IMAGENET_TAGS = ('dino', 'mae', 'ijepa', 'in1k_ijepa', 'in22k_ijepa', 'lvd142m')
NAME = re.compile(
  r'^(?P<arch>vit_(?P<size>tiny|small|base|large|huge)_patch(?P<patch>\d+)(?P<rest>[a-z0-9_]*)'
  r'|resnet(?:18|34|50|101))(?:\.(?P<tag>\w+))?$'
)
NAMES_HELP = (
  'a timm name: vit_{tiny,small,base,large,huge}_patch{14,16}_224[.TAG] (TAG: augreg..., dino, '
  'mae), vit_huge_patch14_gap_224 (I-JEPA), resnet{18,34,50,101}[.TAG]'
)


class Arch(NamedTuple):
  """config.model fields that build the encoder of a state dict (models.build_encoder's)."""

  encoder: str  # 'vit_small', 'resnet50'
  channels: int  # input channels of the weights
  image_size: int  # ViTs: the side their position table is made for (0: ResNets)
  fields: dict  # the other config.model fields


def parse_name(name: str) -> re.Match:
  match = NAME.match(name or '')
  if not match:
    raise WeightsError(f'model={name!r} is not a model ssljax imports; give {NAMES_HELP}.')
  return match


def input_stats(
  name: str, layout: str, encoder: str
) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
  """(mean, std) the weights of `encoder` expect, per channel; None where neither the timm
  name nor the layout says it."""
  if layout in ('dino', 'mae', 'ijepa') or encoder.startswith('resnet'):
    return IMAGENET
  if not name:
    return None
  match = parse_name(name)
  if match['arch'].startswith('resnet'):
    return IMAGENET
  tag = match['tag'] or ''
  if tag.startswith(_IMAGENET_TAGS) or tag.endswith('ijepa') or 'gap' in (match['rest'] or ''):
    return IMAGENET
  if not tag or tag.startswith(_HALF_TAGS):  # timm's default tags for these names are Google's
    return HALF
  return None


def infer(
  state: Mapping[str, np.ndarray], name: str, path: str, kwargs: Mapping | None = None
) -> Arch:
  """The encoder `state` (timm's names) is; `name`, when given, must agree with it, unless
  timm `kwargs` (ssljax.export's config.json) set the ViT's patch, width and heads."""
  if 'patch_embed.proj.weight' in state:
    return _vit(state, name, path, kwargs or {})
  if 'conv1.weight' in state and 'layer1.0.conv1.weight' in state:
    return _resnet(state, name, path)
  raise WeightsError(
    f'{path}: neither a ViT (patch_embed.proj.weight) nor a ResNet (conv1.weight, layer1.0.*) '
    f'in timm / torchvision names; its first keys: {sorted(state)[:6]}.'
  )


def _count(state: Mapping[str, np.ndarray], pattern: str) -> int:
  found = {int(m[1]) for k in state if (m := re.match(pattern, k))}
  return max(found) + 1 if found else 0


def _vit(state: Mapping[str, np.ndarray], name: str, path: str, kwargs: Mapping) -> Arch:
  width, channels, patch, _ = state['patch_embed.proj.weight'].shape
  depth = _count(state, r'blocks\.(\d+)\.')
  cls = 'cls_token' in state
  if 'pos_embed' not in state:
    raise WeightsError(f'{path}: a ViT without pos_embed; ssljax imports absolute position tables.')
  rows = state['pos_embed'].shape[1] - int(cls)
  grid = int(round(rows**0.5))
  if grid * grid != rows:
    raise WeightsError(f'{path}: pos_embed has {rows} patch rows, not a square grid.')
  hidden = state['blocks.0.mlp.fc1.weight'].shape[0] if depth else 4 * width
  if hidden != 4 * width:
    raise WeightsError(f'{path}: MLP width {hidden} is not 4 x {width}; ssljax ViTs use 4.')
  sizes = {w: (n, h) for n, (w, _, h) in vit_lib.VIT_SIZES.items()}
  if name:
    match = parse_name(name)
    if not match['arch'].startswith('vit'):
      raise WeightsError(f'{path} holds a ViT, but model={name!r} is a ResNet.')
    encoder = f'vit_{match["size"]}'
    if int(match['patch']) != patch and 'patch_size' not in kwargs:
      raise WeightsError(f'{path}: patches are {patch} px, model={name!r} says {match["patch"]}.')
  elif width in sizes:
    encoder = sizes[width][0]
  else:
    raise WeightsError(
      f'{path}: a ViT {width} wide, no size ssljax names: give model=NAME ({NAMES_HELP}).'
    )
  named_width, named_depth, named_heads = vit_lib.VIT_SIZES[encoder]
  heads = kwargs.get('num_heads', named_heads)
  if width != named_width and 'embed_dim' not in kwargs:
    raise WeightsError(f'{path}: a ViT {width} wide, but model={name!r} is {named_width} wide.')
  fields = dict(
    patch_size=int(patch),
    pos_embed='learned',
    cls_token=cls,
    pool='cls' if cls and kwargs.get('global_pool', 'token') == 'token' else 'mean',
    vit_width=0 if width == named_width else int(width),
    vit_depth=0 if depth == named_depth else depth,
    vit_heads=0 if heads == named_heads else int(heads),
  )
  return Arch(encoder, int(channels), grid * int(patch), fields)


def _resnet(state: Mapping[str, np.ndarray], name: str, path: str) -> Arch:
  stages = tuple(_count(state, rf'layer{s}\.(\d+)\.') for s in range(1, 5))
  bottleneck = 'layer1.0.conv3.weight' in state
  found = [
    n
    for n, (s, b) in resnet_lib.ARCHS.items()
    if s == stages and (b is resnet_lib.Bottleneck) == bottleneck
  ]
  if not found:
    raise WeightsError(
      f'{path}: a ResNet with stages {stages}, not one of {sorted(resnet_lib.ARCHS)}.'
    )
  encoder = found[0]
  if name and parse_name(name)['arch'] != encoder:
    raise WeightsError(f'{path} holds a {encoder}, but model={name!r} says otherwise.')
  stem = int(state['conv1.weight'].shape[0])
  widths = tuple(int(state[f'layer{s}.0.conv1.weight'].shape[0]) for s in range(1, 5))
  default = resnet_lib.stage_channels(stages, stem)
  fields = dict(
    stem='imagenet', width=stem, stage_widths=() if widths == default else widths, padding='torch'
  )
  if state['conv1.weight'].shape[2:] != (7, 7):
    raise WeightsError(f'{path}: the stem is not a 7x7 convolution (a deep stem? timm resnet50d).')
  return Arch(encoder, int(state['conv1.weight'].shape[1]), 0, fields)

"""PyTorch's names and layouts beside ssljax's, for the ViT and the ResNet: one table of pairs
serves both directions, so an export is the exact inverse of an import.

A pair is (torch key, ssljax variable path 'collection/module/.../leaf', kind); the kind says how
the array is laid out on each side: 'copy' (the same), 'dense' (PyTorch's Linear (out, in),
Flax's Dense (in, out)), 'conv' (OIHW, HWIO) or 'token' (I-JEPA's mask token (1, 1, D), ssljax's
(1, 1, 1, D)). The torch names are timm's (`timm.models.vision_transformer`, `timm.models.resnet`),
which torchvision's ResNet, DINO's, MAE's and I-JEPA's ViTs share.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np


class Pair(NamedTuple):
  torch: str  # 'blocks.0.attn.qkv.weight'
  ours: str  # 'params/blocks_0/attn/qkv/kernel'
  kind: str  # copy | dense | conv | token


def to_ours(value: np.ndarray, kind: str) -> np.ndarray:
  """A PyTorch array in ssljax's layout."""
  if kind == 'dense':
    return value.T
  if kind == 'conv':
    return value.transpose(2, 3, 1, 0)
  if kind == 'token':
    return value.reshape(1, *value.shape)
  return value


def to_torch(value: np.ndarray, kind: str) -> np.ndarray:
  """The inverse of `to_ours`."""
  if kind == 'dense':
    return value.T
  if kind == 'conv':
    return value.transpose(3, 2, 0, 1)
  if kind == 'token':
    return value.reshape(value.shape[1:])
  return value


def torch_shape(shape: Sequence[int], kind: str) -> tuple[int, ...]:
  """The PyTorch shape of an ssljax array of `shape`."""
  return to_torch(np.empty(shape, np.bool_), kind).shape


# ----------------------------------------------------------------------------- ViT


def _linear(torch: str, ours: str) -> list[Pair]:
  return [
    Pair(f'{torch}.weight', f'{ours}/kernel', 'dense'),
    Pair(f'{torch}.bias', f'{ours}/bias', 'copy'),
  ]


def _norm(torch: str, ours: str) -> list[Pair]:
  return [
    Pair(f'{torch}.weight', f'{ours}/scale', 'copy'),
    Pair(f'{torch}.bias', f'{ours}/bias', 'copy'),
  ]


def block_pairs(torch: str, ours: str) -> list[Pair]:
  """One pre-norm transformer block (timm's Block, ssljax's vit.Block)."""
  pairs = _norm(f'{torch}.norm1', f'{ours}/norm1') + _norm(f'{torch}.norm2', f'{ours}/norm2')
  for name in ('attn.qkv', 'attn.proj', 'mlp.fc1', 'mlp.fc2'):
    pairs += _linear(f'{torch}.{name}', f'{ours}/{name.replace(".", "/")}')
  return pairs


def vit_pairs(depth: int, *, cls_token: bool = True, pos_embed: bool = True) -> list[Pair]:
  """timm's VisionTransformer (no classifier) and ssljax's unscanned ViT, parameters only."""
  pairs = [
    Pair('patch_embed.proj.weight', 'params/patch_embed/kernel', 'conv'),
    Pair('patch_embed.proj.bias', 'params/patch_embed/bias', 'copy'),
  ]
  if cls_token:
    pairs.append(Pair('cls_token', 'params/cls_token', 'copy'))
  if pos_embed:
    pairs.append(Pair('pos_embed', 'params/pos_embed', 'copy'))
  for i in range(depth):
    pairs += block_pairs(f'blocks.{i}', f'params/blocks_{i}')
  return pairs + _norm('norm', 'params/norm')


def mae_decoder_pairs(depth: int) -> list[Pair]:
  """The official MAE decoder (models_mae.py) beside ssljax's MAEDecoder (its auto names);
  decoder_pos_embed is fixed sin-cos on both sides, computed by ssljax, so it has no pair."""
  pairs = _linear('decoder_embed', 'params/Dense_0') + [
    Pair('mask_token', 'params/mask_token', 'copy')
  ]
  for i in range(depth):
    pairs += block_pairs(f'decoder_blocks.{i}', f'params/Block_{i}')
  return (
    pairs + _norm('decoder_norm', 'params/LayerNorm_0') + _linear('decoder_pred', 'params/Dense_1')
  )


def ijepa_predictor_pairs(depth: int) -> list[Pair]:
  """The official I-JEPA predictor (vision_transformer.py's VisionTransformerPredictor) beside
  ssljax's Predictor; predictor_pos_embed is fixed sin-cos on both sides, as above."""
  pairs = _linear('predictor_embed', 'params/embed') + [
    Pair('mask_token', 'params/mask_token', 'token')
  ]
  for i in range(depth):
    pairs += block_pairs(f'predictor_blocks.{i}', f'params/Block_{i}')
  return (
    pairs + _norm('predictor_norm', 'params/LayerNorm_0') + _linear('predictor_proj', 'params/proj')
  )


# ----------------------------------------------------------------------------- ResNet


def _conv_bn(torch_conv: str, torch_bn: str, ours_conv: str, ours_bn: str) -> list[Pair]:
  return [
    Pair(f'{torch_conv}.weight', f'params/{ours_conv}/kernel', 'conv'),
    Pair(f'{torch_bn}.weight', f'params/{ours_bn}/scale', 'copy'),
    Pair(f'{torch_bn}.bias', f'params/{ours_bn}/bias', 'copy'),
    Pair(f'{torch_bn}.running_mean', f'batch_stats/{ours_bn}/mean', 'copy'),
    Pair(f'{torch_bn}.running_var', f'batch_stats/{ours_bn}/var', 'copy'),
  ]


def resnet_pairs(stage_sizes: Sequence[int], bottleneck: bool) -> list[Pair]:
  """timm's and torchvision's ResNet (same names) and ssljax's with the ImageNet stem. ssljax
  numbers its blocks across stages (Bottleneck_0 .. _15) and their layers in call order."""
  block = 'Bottleneck' if bottleneck else 'BasicBlock'
  pairs = _conv_bn('conv1', 'bn1', 'stem_conv', 'stem_bn')
  k = 0
  for s, blocks in enumerate(stage_sizes):
    for j in range(blocks):
      torch, ours = f'layer{s + 1}.{j}', f'{block}_{k}'
      for c in range(3 if bottleneck else 2):
        pairs += _conv_bn(
          f'{torch}.conv{c + 1}', f'{torch}.bn{c + 1}', f'{ours}/Conv_{c}', f'{ours}/BatchNorm_{c}'
        )
      if j == 0 and (s > 0 or bottleneck):  # the first block of a stage changes shape
        pairs += _conv_bn(
          f'{torch}.downsample.0', f'{torch}.downsample.1', f'{ours}/proj_conv', f'{ours}/proj_bn'
        )
      k += 1
  return pairs


def batch_counters(pairs: Sequence[Pair]) -> list[str]:
  """PyTorch's BatchNorm step counters (`num_batches_tracked`) beside `pairs`' running means:
  they only matter with momentum=None, which neither ssljax nor timm uses, so an import drops
  them by name and an export writes them as 0."""
  suffix = '.running_mean'
  return [
    p.torch[: -len(suffix)] + '.num_batches_tracked' for p in pairs if p.torch.endswith(suffix)
  ]


# ----------------------------------------------------------------------------- trees


def flat(tree: Mapping, prefix: str = '') -> dict[str, np.ndarray]:
  """{'params/blocks_0/norm1/scale': leaf, ...} of a nested dict of variables."""
  out: dict[str, np.ndarray] = {}
  for key, value in tree.items():
    name = f'{prefix}/{key}' if prefix else str(key)
    if isinstance(value, Mapping):
      out.update(flat(value, name))
    else:
      out[name] = value
  return out


def nested(leaves: Mapping[str, np.ndarray]) -> dict:
  """The inverse of `flat`."""
  tree: dict = {}
  for name, leaf in leaves.items():
    *parents, last = name.split('/')
    node = tree
    for p in parents:
      node = node.setdefault(p, {})
    node[last] = leaf
  return tree

"""Weights in and out of ssljax: timm's, torchvision's and the official DINO, MAE and I-JEPA
checkpoints as an ssljax encoder (`import_encoder`, behind `ssljax.load_encoder(PATH)` and
`config.init_from=PATH`), and a run's encoder in timm's names (`ssljax.export`).

Modules: `files` reads and writes the files, `layouts` finds the networks in a checkpoint,
`architectures` says which encoder a state dict is, `names` pairs PyTorch's names with ssljax's,
`convert` maps the arrays between them.
"""

from __future__ import annotations

import json
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ssljax import models, paths
from ssljax.config import defaults
from ssljax.weights import architectures, convert, files, layouts, names
from ssljax.weights.files import WeightsError, is_weight_file

__all__ = [
  'Imported',
  'WeightsError',
  'encoder_config',
  'import_encoder',
  'is_weight_file',
  'pairs',
]


class Imported(NamedTuple):
  """An encoder read from a weight file, as ssljax builds and runs it."""

  config: ml_collections.ConfigDict  # model and augment.image_size: build_encoder(config)
  variables: dict  # {'params': ..., ['batch_stats': ...]} NumPy float32, blocks unscanned
  layout: str  # timm | dino | mae | ijepa
  report: list[str]  # what each part of the file became, and what was left and why


def pairs(config: ml_collections.ConfigDict) -> list[names.Pair]:
  """PyTorch's names beside those of the encoder config.model builds (ViT blocks unscanned)."""
  m = config.model
  if models.is_vit(config):
    from ssljax.models import vit as vit_lib

    depth = m.vit_depth or vit_lib.VIT_SIZES[m.encoder][1]
    return names.vit_pairs(depth, cls_token=m.cls_token, pos_embed=m.pos_embed == 'learned')
  from ssljax.models import resnet as resnet_lib

  if m.stem != 'imagenet':
    raise WeightsError(
      f"config.model.stem={m.stem!r}: PyTorch's ResNets (timm, torchvision) start with the 7x7/2 "
      "convolution and the max-pool of stem='imagenet'; the small stem has no PyTorch name."
    )
  stages, block = resnet_lib.ARCHS[m.encoder]
  return names.resnet_pairs(stages, block is resnet_lib.Bottleneck)


def encoder_config(
  arch: architectures.Arch,
  image_size: int,
  stats: tuple[tuple[float, ...], tuple[float, ...]],
) -> ml_collections.ConfigDict:
  """A config (model, augment.image_size) whose build_encoder is `arch`'s encoder."""
  config = ml_collections.ConfigDict()
  config.model = defaults.model_defaults()
  config.model.update(dict(encoder=arch.encoder, **arch.fields))
  config.model.pixel_mean, config.model.pixel_std = stats
  config.augment = ml_collections.ConfigDict(dict(image_size=image_size))
  return config


def template(config: ml_collections.ConfigDict, channels: int) -> dict[str, tuple[int, ...]]:
  """The shapes of the encoder's variables by path (nothing computed)."""
  encoder = models.build_encoder(config)
  side = config.augment.image_size or 64
  shapes = jax.eval_shape(
    lambda: encoder.init(jax.random.PRNGKey(0), jnp.zeros((1, side, side, channels)), train=False)
  )
  return {k: tuple(v.shape) for k, v in names.flat(shapes).items()}


def _sidecar(path: str) -> tuple[str, tuple | None]:
  """(model name, (mean, std)) from a config.json beside the file: ssljax.export's ({"timm":
  {"model": ...}, "pixel_mean", "pixel_std"}) or the Hugging Face hub's timm one
  ({"architecture", "pretrained_cfg": {"mean", "std"}})."""
  side = paths.path(path).parent / 'config.json'
  if not side.exists():
    return '', None
  meta = json.loads(side.read_text())
  if 'timm' in meta:
    return meta['timm']['model'], (tuple(meta['pixel_mean']), tuple(meta['pixel_std']))
  cfg = meta.get('pretrained_cfg', {})
  stats = (tuple(cfg['mean']), tuple(cfg['std'])) if 'mean' in cfg and 'std' in cfg else None
  return meta.get('architecture', ''), stats


def _channel_stats(values: tuple[float, ...], channels: int) -> tuple[float, ...]:
  """Statistics for `channels` inputs from the weights' (one channel: their mean)."""
  if len(values) in (1, channels):
    return tuple(values)
  return (float(np.mean(values)),) if channels == 1 else tuple(values[:1]) * channels


def import_encoder(
  path: str,
  model: str = '',
  *,
  image_size: int = 0,
  channels: int = 0,
  part: str = '',
  pixel_mean: tuple[float, ...] = (),
  pixel_std: tuple[float, ...] = (),
) -> Imported:
  """The encoder of the weight file at `path`, for images of `image_size` (ViTs: 0 keeps the
  size of the file's position table) and `channels` (0: the weights'). `model` is a timm name
  where the file does not say the architecture or its input statistics; `part` picks the
  network in a file with two (DINO: teacher | student, I-JEPA: target_encoder | encoder).
  pixel_mean / pixel_std override the input statistics the weights are known to expect."""
  arrays, others = files.read(path)
  found = layouts.split(arrays, part, path)
  side_model, side_stats = _sidecar(path)
  model = model or side_model
  arch = architectures.infer(found.encoder, model, path)
  stats = (pixel_mean, pixel_std) if pixel_mean and pixel_std else None
  stats = stats or side_stats or architectures.input_stats(model, found.layout, arch.encoder)
  if stats is None:
    raise WeightsError(
      f"{path}: the file does not say its input statistics (timm's Google ViTs take 0.5 / 0.5, "
      "DINO's and MAE's ImageNet's): give model='vit_..._224.TAG' "
      f'({architectures.NAMES_HELP}) or pixel_mean and pixel_std.'
    )
  channels = channels or arch.channels
  stats = tuple(_channel_stats(tuple(s), channels) for s in stats)
  config = encoder_config(arch, image_size or arch.image_size, stats)
  fix = (
    'Give the weight file of a plain ViT or ResNet encoder (timm / torchvision names) or of the '
    "official DINO, MAE or I-JEPA code, and model=NAME when the file's architecture is not the "
    'named one.'
  )
  flat, notes = convert.to_ours(
    found.encoder, pairs(config), template(config, channels), where=path, fix=fix
  )
  report = [
    f'{path}: {found.layout} layout, {found.part or "encoder"} -> ssljax {arch.encoder} '
    f'({len(flat)} arrays), inputs (x - {stats[0]}) / {stats[1]}',
    *notes,
    *[f'not used: {u}' for u in _grouped(found.unused)],
    *[f'not an array, not used: {o}' for o in others],
  ]
  for name, part_ in (('decoder', found.decoder), ('predictor', found.predictor)):
    if part_:
      report.append(f'{name}: {len(part_)} arrays (ssljax.weights.parts maps them)')
  return Imported(config, names.nested(flat), found.layout, report)


def _grouped(keys: list[str]) -> list[str]:
  """Unused keys, those of one top-level entry counted when there are many (optimizer state)."""
  groups: dict[str, list[str]] = {}
  for key in keys:
    groups.setdefault(key.split('/', 1)[0] if '/' in key else key, []).append(key)
  out = []
  for top, members in groups.items():
    out += members if len(members) <= 4 else [f'{top}/... ({len(members)} arrays)']
  return out

"""Weights in and out of ssljax: timm's, torchvision's and the official DINO, MAE and I-JEPA
checkpoints as an ssljax encoder (`import_encoder`, behind `ssljax.load_encoder(PATH)` and
`config.init_from=PATH`), and a run's encoder in timm's names (`ssljax.export`).

Modules: `files` reads and writes the files, `layouts` finds the networks in a checkpoint,
`architectures` says which encoder a state dict is, `names` pairs PyTorch's names with ssljax's,
`convert` maps the arrays between them.
"""

from __future__ import annotations

import copy
import json
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ssljax import models, paths
from ssljax.config import defaults
from ssljax.errors import ConfigError
from ssljax.models import vit as vit_lib
from ssljax.weights import architectures, convert, files, layouts, names, parts
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


def _sidecar(path: str) -> tuple[str, tuple | None, dict]:
  """(model name, (mean, std)) from a config.json beside the file: ssljax.export's ({"timm":
  {"model": ...}, "pixel_mean", "pixel_std"}) or the Hugging Face hub's timm one
  ({"architecture", "pretrained_cfg": {"mean", "std"}}); and the timm kwargs (ssljax's)."""
  side = paths.path(path).parent / 'config.json'
  if not side.exists():
    return '', None, {}
  meta = json.loads(side.read_text())
  if 'timm' in meta:
    stats = (tuple(meta['pixel_mean']), tuple(meta['pixel_std']))
    return meta['timm']['model'], stats, meta['timm'].get('kwargs', {})
  cfg = meta.get('pretrained_cfg', {})
  stats = (tuple(cfg['mean']), tuple(cfg['std'])) if 'mean' in cfg and 'std' in cfg else None
  return meta.get('architecture', ''), stats, {}


def _channel_stats(values: tuple[float, ...], channels: int) -> tuple[float, ...]:
  """Statistics for `channels` inputs from the weights' (one channel: their mean)."""
  if len(values) in (1, channels):
    return tuple(values)
  return (float(np.mean(values)),) if channels == 1 else tuple(values[:1]) * channels


class Source(NamedTuple):
  """A weight file read: its networks, which encoder it is, the inputs it expects."""

  path: str
  found: layouts.Parts
  others: list[str]  # entries that are not arrays
  arch: architectures.Arch
  stats: tuple[tuple[float, ...], tuple[float, ...]] | None  # None: the file does not say


def read_source(path: str, model: str = '', part: str = '') -> Source:
  """Reads `path` and says which encoder it holds (`model`, a timm name, where it cannot)."""
  arrays, others = files.read(path)
  found = layouts.split(arrays, part, path)
  side_model, side_stats, side_kwargs = _sidecar(path)
  arch = architectures.infer(found.encoder, model or side_model, path, {} if model else side_kwargs)
  model = model or side_model
  stats = side_stats or architectures.input_stats(model, found.layout, arch.encoder)
  return Source(path, found, others, arch, stats)


def _map(source: Source, config: ml_collections.ConfigDict, channels: int, fix: str) -> tuple:
  """(variables by path, report): the file's encoder onto the one `config` builds."""
  state = dict(source.found.encoder)
  notes = []
  if config.model.get('pos_embed') == 'sincos' and 'pos_embed' in state:
    # MAE's and I-JEPA's tables are fixed sin-cos, which ssljax computes rather than stores.
    table = state.pop('pos_embed')[0, int(bool(config.model.cls_token)) :]
    grid = int(round(table.shape[0] ** 0.5))
    expected = vit_lib.sincos_2d(table.shape[1], grid, grid)
    if table.shape != expected.shape or not np.allclose(table, expected, atol=1e-5):
      raise WeightsError(
        f'{source.path}: pos_embed is a learned table, not the fixed sin-cos one of '
        "config.model.pos_embed='sincos': set --config.model.pos_embed=learned."
      )
    notes.append('pos_embed: the fixed sin-cos table ssljax computes (equal; not stored)')
  flat, adapted = convert.to_ours(
    state, pairs(config), template(config, channels), where=source.path, fix=fix
  )
  f = source.found
  report = [
    f'{source.path}: {f.layout} layout, {f.part or "encoder"} -> ssljax {source.arch.encoder} '
    f'({len(flat)} arrays)',
    *notes,
    *adapted,
    *[f'not used: {u}' for u in _grouped(f.unused)],
    *[f'not an array, not used: {o}' for o in source.others],
  ]
  return flat, report + [line for _, line in _parts(source).values()]


def _parts(source: Source) -> dict[str, tuple[dict[str, np.ndarray], str]]:
  """{name: (variables by path, report line)} of the networks beside the encoder in an official
  checkpoint, by the name of the module they become in the method (MAE's 'decoder', I-JEPA's
  'predictor')."""
  f = source.found
  found = {}
  if f.decoder:
    found['decoder'] = parts.mae_decoder(f.decoder, source.path)
  if f.predictor:
    found['predictor'] = parts.ijepa_predictor(f.predictor, source.path)
  return found


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
  source = read_source(path, model, part)
  stats = (tuple(pixel_mean), tuple(pixel_std)) if pixel_mean and pixel_std else source.stats
  if stats is None:
    raise WeightsError(
      f"{path}: the file does not say its input statistics (timm's Google ViTs take 0.5 / 0.5, "
      "DINO's and MAE's ImageNet's): give model='vit_..._224.TAG' "
      f'({architectures.NAMES_HELP}) or pixel_mean and pixel_std.'
    )
  channels = channels or source.arch.channels
  stats = tuple(_channel_stats(tuple(s), channels) for s in stats)
  config = encoder_config(source.arch, image_size or source.arch.image_size, stats)
  fix = (
    'Give the weight file of a plain ViT or ResNet encoder (timm / torchvision names) or of the '
    "official DINO, MAE or I-JEPA code, and model=NAME when the file's architecture is not the "
    'named one.'
  )
  flat, report = _map(source, config, channels, fix)
  report.insert(1, f'inputs: (x - {stats[0]}) / {stats[1]}')
  return Imported(config, names.nested(flat), source.found.layout, report)


def import_for_run(
  config: ml_collections.ConfigDict, channels: int
) -> tuple[dict[str, np.ndarray], list[str], dict[str, dict[str, np.ndarray]]]:
  """(variables by path, report, other parts): config.init_from's file as the encoder
  config.model builds for `channels`-channel images (its blocks unscanned), and the networks
  beside it ({'decoder': variables by path} for MAE's, {'predictor': ...} for I-JEPA's). The
  run's config must build the file's architecture; its pixel statistics must be set (the
  weights' own, or the data's)."""
  path, model = config.init_from, config.get('init_from_model', '')
  source = read_source(path, model, config.get('init_from_part', ''))
  field = f'config.init_from={path!r}'
  arch, m = source.arch, config.model
  wanted = {'encoder': arch.encoder, **arch.fields}
  if arch.encoder.startswith('vit'):
    wanted.pop('pos_embed')  # learned or sincos: _map checks a sin-cos table
    wanted.pop('pool')  # what h is, the run's choice
  differ = {k: v for k, v in wanted.items() if m.get(k) != v}
  if differ:
    flags = ' '.join(f'--config.model.{k}={_flag(v)}' for k, v in differ.items())
    raise ConfigError(
      f'{field} holds a {arch.encoder} that config.model does not build: '
      + ', '.join(f'model.{k}={m.get(k)!r} (the file: {v!r})' for k, v in differ.items())
      + f'. Set {flags}'
      + ('' if model else ', or name it with --config.init_from_model=NAME')
      + '.'
    )
  if not (m.pixel_mean and m.pixel_std):
    stats = source.stats or 'not said by the file'
    raise ConfigError(
      f'{field}: config.model.pixel_mean and pixel_std are the encoder default; set the '
      f"statistics the weights were trained with ({stats}) or your data's "
      '(python -m ssljax.data.scan), e.g. --config.model.pixel_mean="(0.485, 0.456, 0.406)" '
      '--config.model.pixel_std="(0.229, 0.224, 0.225)".'
    )
  unscanned = copy.deepcopy(config)
  unscanned.model.scan = False
  fix = 'Make config.model build the same encoder, or leave config.init_from empty.'
  flat, report = _map(source, unscanned, channels, fix)
  if source.stats and tuple(map(tuple, source.stats)) != (tuple(m.pixel_mean), tuple(m.pixel_std)):
    report.insert(
      1,
      f'the weights were trained on inputs (x - {source.stats[0]}) / '
      f'{source.stats[1]}; this run uses ({m.pixel_mean}, {m.pixel_std})',
    )
  return flat, report, {name: part for name, (part, _) in _parts(source).items()}


def _flag(value) -> str:
  return f'"{tuple(value)!r}"' if isinstance(value, tuple | list) else str(value)


def _grouped(keys: list[str]) -> list[str]:
  """Unused keys, those of one top-level entry counted when there are many (optimizer state)."""
  groups: dict[str, list[str]] = {}
  for key in keys:
    groups.setdefault(key.split('/', 1)[0] if '/' in key else key, []).append(key)
  out = []
  for top, members in groups.items():
    out += members if len(members) <= 4 else [f'{top}/... ({len(members)} arrays)']
  return out

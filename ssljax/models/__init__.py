"""Encoders and heads, built from `config.model` by name; `check_config` checks that section."""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections

from ssljax.config.checks import MISSING, Checks
from ssljax.config.views import view_specs_if_valid
from ssljax.errors import ConfigError
from ssljax.models import kernels as kernels_lib
from ssljax.models import pixels
from ssljax.models import resnet as resnet_lib
from ssljax.models import vit as vit_lib
from ssljax.models.heads import DINOHead, MLPHead
from ssljax.models.kernels import XLA, Kernels

__all__ = [
  'DINOHead',
  'ENCODERS',
  'XLA',
  'Kernels',
  'MLPHead',
  'build_encoder',
  'check_channels',
  'check_config',
  'compute_dtype',
  'encoder_dim',
  'is_vit',
  'resolve_kernels',
  'pixel_stats',
]

ENCODERS = (*resnet_lib.ARCHS, *vit_lib.VIT_SIZES)
DTYPES = ('float32', 'bfloat16')


def compute_dtype(config: ml_collections.ConfigDict):
  """The dtype activations run in; parameters always stay float32."""
  name = config.model.compute_dtype
  if name not in DTYPES:
    raise ConfigError(
      f'config.model.compute_dtype={name!r}: one of {", ".join(DTYPES)}; '
      'e.g. --config.model.compute_dtype=float32'
    )
  return jnp.dtype(name)


def resolve_kernels(config: ml_collections.ConfigDict) -> kernels_lib.Kernels:
  """The kernels config.model.kernels names, resolved for this process's backend."""
  return kernels_lib.resolve(config.model.get('kernels', 'auto'))


def is_vit(config: ml_collections.ConfigDict) -> bool:
  return config.model.encoder.startswith('vit')


def pixel_stats(config: ml_collections.ConfigDict) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """(mean, std) the encoder standardizes pixels with; () picks the encoder's default: a ViT
  has no BatchNorm to rescale raw [0, 1] pixels (DINO collapsed without), a ResNet's stem has."""
  vit = is_vit(config)
  mean = _values(config.model.pixel_mean) or ((0.5,) if vit else (0.0,))
  std = _values(config.model.pixel_std) or ((0.25,) if vit else (1.0,))
  return mean, std


def _values(value) -> tuple:
  """A tuple of the field's numbers (a bare number, as configs before per-channel saved it)."""
  return (value,) if isinstance(value, int | float) else tuple(value)


def _check_pixel_stats(checks: Checks) -> None:
  lengths = []
  for field, example in (('pixel_mean', pixels.IMAGENET_MEAN), ('pixel_std', pixels.IMAGENET_STD)):
    value = checks.value(f'model.{field}')
    value = (value,) if isinstance(value, int | float) else value
    numbers = isinstance(value, tuple | list) and all(
      isinstance(v, int | float) and not isinstance(v, bool) for v in value
    )
    allowed = 'numbers: one for every channel or one per channel'
    if checks.require(numbers, f'model.{field}', allowed, example):
      lengths.append(len(value))
      if field == 'pixel_std' and not all(v > 0 for v in value):
        checks.fail('model.pixel_std', 'positive numbers', example)
  if len(lengths) == 2 and min(lengths) > 1 and lengths[0] != lengths[1]:
    checks.fail('model.pixel_std', f'as many values as model.pixel_mean ({lengths[0]})')


def check_channels(config: ml_collections.ConfigDict, channels: int) -> None:
  """The pixel statistics fit the data's channels (known once the data is described)."""
  for field, values in zip(('pixel_mean', 'pixel_std'), pixel_stats(config), strict=True):
    if len(values) not in (1, channels):
      raise ConfigError(
        f'config.model.{field} has {len(values)} values for {channels}-channel images: give '
        f'one for every channel or {channels}; e.g. --config.model.{field}="{values[:1]}"'
      )


def _check_init_from(checks: Checks) -> None:
  """init_from_model and init_from_part go with a weight file in config.init_from."""
  from ssljax.weights import architectures, files

  source, model = checks.value('init_from'), checks.value('init_from_model')
  part = checks.value('init_from_part')
  is_file = isinstance(source, str) and files.is_weight_file(source)
  for field, value in (('init_from_model', model), ('init_from_part', part)):
    if value not in ('', MISSING) and not is_file:
      checks.fail(field, 'only with a weight file in config.init_from (.safetensors, .pth)', '')
  if isinstance(model, str) and model and not architectures.NAME.match(model):
    checks.fail('init_from_model', architectures.NAMES_HELP, 'vit_small_patch16_224.dino')
  checks.choice('init_from_part', ('', 'teacher', 'student', 'target_encoder', 'encoder'))


def check_config(checks: Checks) -> None:
  """Records every problem of config.model: names, sizes, a ViT patch that tiles every view;
  and of the weight file config.init_from may name."""
  _check_init_from(checks)
  if not checks.choice('model.encoder', ENCODERS):
    return
  _check_pixel_stats(checks)
  checks.choice('model.compute_dtype', DTYPES)
  checks.choice('model.kernels', kernels_lib.CHOICES)
  checks.count('model.proj_hidden', 0)
  checks.count('model.proj_dim', 1)
  checks.count('model.proj_layers', 1)
  checks.count('model.pred_hidden', 0)
  if not is_vit(checks.config):
    checks.choice('model.stem', ('small', 'imagenet'))
    checks.choice('model.padding', resnet_lib.PADDINGS)
    checks.count('model.width', 1)
    stages = len(resnet_lib.ARCHS[checks.value('model.encoder')][0])
    widths = checks.value('model.stage_widths')
    checks.require(
      widths == ()
      or (isinstance(widths, tuple | list) and len(widths) == stages)
      and all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths),
      'model.stage_widths',
      f'() or {stages} positive channel counts, one per stage',
      fix=tuple(8 * 2**i for i in range(stages)),
    )
    return
  checks.choice('model.pos_embed', ('learned', 'sincos'))
  checks.choice('model.pool', ('cls', 'mean'))
  checks.boolean('model.scan')
  checks.choice('model.remat', vit_lib.REMAT_POLICIES)
  checks.boolean('model.cls_token')
  if checks.value('model.pool') == 'cls' and checks.value('model.cls_token') is False:
    checks.fail('model.pool', 'cls needs a CLS token (config.model.cls_token=True)', fix='mean')
  checks.number('model.drop_path', 0, 1, high_open=True)
  sizes_ok = all([checks.count(f'model.{k}', 0) for k in ('vit_width', 'vit_depth', 'vit_heads')])
  if sizes_ok:
    m = checks.config.model
    width, _, heads = vit_lib.VIT_SIZES[m.encoder]
    width, heads = m.vit_width or width, m.vit_heads or heads
    if width % heads:
      checks.fail(
        'model.vit_width', f'a multiple of the {heads} heads', heads * (width // heads + 1)
      )
    elif m.pos_embed == 'sincos' and width % 4:
      checks.fail('model.vit_width', 'a multiple of 4 (sincos position embedding)', value=width)
  _check_patch_size(checks)


def _check_patch_size(checks: Checks) -> None:
  """A ViT's patches must tile every view and the evaluation images exactly."""
  if not checks.count('model.patch_size', 1):
    return
  patch = checks.value('model.patch_size')
  sides = {checks.value('data.image_size')}
  sides |= {s.image_size for s in view_specs_if_valid(checks.config) or []}
  sides = sorted(s for s in sides if isinstance(s, int) and s > 0)
  if any(s % patch for s in sides):
    divisors = [p for p in range(1, min(sides) + 1) if all(s % p == 0 for s in sides)]
    checks.fail(
      'model.patch_size',
      f'a divisor of every image side ({", ".join(map(str, sides))}: the views, data.image_size)',
      min(divisors, key=lambda p: abs(p - patch)),
    )


def build_encoder(config: ml_collections.ConfigDict):
  """The encoder f named by config.model.encoder; its output is h."""
  m = config.model
  mean, std = pixel_stats(config)
  if is_vit(config):
    # The position embedding is made for the training views' side (config.augment.image_size);
    # other inputs (eval images, DINO's local crops) get it resized to their grid.
    return vit_lib.vit(
      m.encoder,
      patch_size=m.patch_size,
      image_size=config.augment.image_size,
      pos_embed=m.pos_embed,
      drop_path=m.drop_path,
      pool=m.pool,
      dtype=compute_dtype(config),
      pixel_mean=mean,
      pixel_std=std,
      width=m.vit_width,
      depth=m.vit_depth,
      num_heads=m.vit_heads,
      use_cls=m.cls_token,
      kernels=resolve_kernels(config),
      scan=m.get('scan', False),
      remat=m.get('remat', 'none'),
    )
  return resnet_lib.resnet(
    m.encoder,
    width=m.width,
    stem=m.stem,
    stage_widths=m.stage_widths,
    dtype=compute_dtype(config),
    pixel_mean=mean,
    pixel_std=std,
    kernels=resolve_kernels(config),
    padding=m.get('padding', 'same'),
  )


def encoder_dim(config: ml_collections.ConfigDict) -> int:
  if is_vit(config):
    return vit_lib.feature_dim(config.model.encoder, config.model.vit_width)
  m = config.model
  return resnet_lib.feature_dim(m.encoder, m.width, m.stage_widths)

"""An ssljax encoder in timm's form: the state dict `timm.create_model(NAME, pretrained=False,
**kwargs)` loads with strict=True, and the NAME, kwargs and input statistics that go with it.

What timm cannot express is refused with the reason: the small ResNet stem (timm's ResNets start
with a 7x7/2 convolution and a max-pool) and a ResNet padded as XLA's SAME (timm pads
symmetrically, so its h would differ).
"""

from __future__ import annotations

import ml_collections
import numpy as np

from ssljax import models
from ssljax.models import resnet as resnet_lib
from ssljax.models import vit as vit_lib
from ssljax.weights import convert, names
from ssljax.weights.files import WeightsError

# The timm model each ssljax ViT size is closest to; the kwargs fix every dimension anyway.
_VIT_NAMES = {
  'vit_tiny': 'vit_tiny_patch16_224',
  'vit_small': 'vit_small_patch16_224',
  'vit_base': 'vit_base_patch16_224',
  'vit_large': 'vit_large_patch16_224',
  'vit_huge': 'vit_huge_patch14_224',
}


def timm_form(
  config: ml_collections.ConfigDict, variables: dict, channels: int
) -> tuple[dict[str, np.ndarray], dict]:
  """(state dict, meta): `variables` (the encoder config.model builds, blocks unscanned) in
  timm's names and layouts, and {"timm": {"model", "kwargs"}, "pixel_mean", "pixel_std"}."""
  from ssljax import weights

  m = config.model
  flat = names.flat(variables)
  if models.is_vit(config):
    name, kwargs = _vit(config, channels)
  else:
    name, kwargs = _resnet(config, channels)
  state = convert.to_torch(flat, weights.pairs(config))
  if models.is_vit(config) and m.pos_embed == 'sincos':  # timm stores the table ssljax computes
    width = kwargs['embed_dim']
    grid = config.augment.image_size // m.patch_size
    table = vit_lib.sincos_2d(width, grid, grid)
    if m.cls_token:  # ssljax's CLS has a zero position embedding
      table = np.concatenate([np.zeros((1, width), np.float32), table])
    state['pos_embed'] = table[None]
  mean, std = models.pixel_stats(config)
  meta = {
    'timm': {'model': name, 'kwargs': kwargs},
    'pixel_mean': [float(v) for v in (mean * channels if len(mean) == 1 else mean)],
    'pixel_std': [float(v) for v in (std * channels if len(std) == 1 else std)],
  }
  return state, meta


def _vit(config: ml_collections.ConfigDict, channels: int) -> tuple[str, dict]:
  m = config.model
  width, depth, heads = (
    o or n
    for o, n in zip(
      (m.vit_width, m.vit_depth, m.vit_heads), vit_lib.VIT_SIZES[m.encoder], strict=True
    )
  )
  kwargs = dict(
    img_size=config.augment.image_size,
    patch_size=m.patch_size,
    embed_dim=width,
    depth=depth,
    num_heads=heads,
    in_chans=channels,
    num_classes=0,
    class_token=bool(m.cls_token),
    # h: the final-normed CLS token, or the mean of the final-normed patch tokens (no fc_norm)
    global_pool='token' if m.pool == 'cls' else 'avg',
    fc_norm=False,
  )
  return _VIT_NAMES[m.encoder], kwargs


def _resnet(config: ml_collections.ConfigDict, channels: int) -> tuple[str, dict]:
  m = config.model
  if m.stem == 'imagenet' and m.get('padding', 'same') != 'torch':
    raise WeightsError(
      "config.model.padding='same': the run pads its stride-2 convolutions and max-pool as "
      "XLA's SAME (2 before, 3 after on the stem), timm's ResNets symmetrically (3 and 3), so "
      'timm would compute another h. Export runs trained with --config.model.padding=torch.'
    )
  stages, _ = resnet_lib.ARCHS[m.encoder]
  kwargs = dict(
    num_classes=0,
    in_chans=channels,
    stem_width=m.width,
    channels=list(resnet_lib.stage_channels(stages, m.width, m.stage_widths)),
  )
  return m.encoder, kwargs

"""MAE (He et al. 2022): hide most patches, encode only the visible ones, reconstruct the pixels
of the hidden ones with a light decoder that is thrown away afterwards."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from ssljax import losses, masking, models
from ssljax.config import defaults
from ssljax.methods.base import Method, dropout_rngs, submodule_variables
from ssljax.models import vit


class MAEDecoder(nn.Module):
  """Encoded visible tokens + a shared mask token at every removed position -> p*p*C pixels.

  Its own width and depth; fixed 2-D sin-cos positions (the official code's), CLS kept.
  """

  width: int
  depth: int
  num_heads: int
  mlp_ratio: float = 4.0
  dtype: Any = jnp.float32
  kernels: models.Kernels = models.XLA

  @nn.compact
  def __call__(self, latent, ids_restore, grid: tuple[int, int], patch_dim: int, *, train: bool):
    x = nn.Dense(self.width, dtype=self.dtype, kernel_init=nn.initializers.xavier_uniform())(
      latent.astype(self.dtype)
    )
    batch, length = ids_restore.shape
    mask_token = self.param('mask_token', nn.initializers.normal(0.02), (1, 1, self.width))
    removed = length + 1 - x.shape[1]  # x holds CLS + the visible tokens
    fill = jnp.broadcast_to(mask_token.astype(x.dtype), (batch, removed, self.width))
    patches = jnp.concatenate([x[:, 1:], fill], axis=1)  # [visible; mask tokens], shuffled order
    patches = jnp.take_along_axis(patches, ids_restore[..., None], axis=1)  # original order
    pos = jnp.asarray(vit.sincos_2d(self.width, *grid), self.dtype)
    x = jnp.concatenate([x[:, :1], patches + pos[None]], axis=1)
    for _ in range(self.depth):
      x, _ = vit.Block(self.num_heads, self.mlp_ratio, 0.0, self.dtype, self.kernels)(
        x, train=train
      )
    x = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype)(x)
    pred = nn.Dense(patch_dim, dtype=self.dtype, kernel_init=nn.initializers.xavier_uniform())(x)
    return pred[:, 1:].astype(jnp.float32)


class MAENet(nn.Module):
  encoder: vit.ViT
  decoder: MAEDecoder
  mask_ratio: float

  def __call__(self, images, noise, *, train: bool):
    """(pred (B, L, p*p*C), mask (B, L), 1 = removed). The encoder sees only visible patches
    plus its CLS token, never mask tokens: that is where MAE's speed comes from."""
    tokens = self.encoder.embed(images)  # (B, L, D) with positions
    keep = masking.num_visible(tokens.shape[1], self.mask_ratio)
    ids_keep, mask, ids_restore = masking.random_masking(noise, keep)
    visible = jnp.take_along_axis(tokens, ids_keep[..., None], axis=1)
    latent = self.encoder.transform(visible, train=train)
    p = self.encoder.patch_size
    grid = vit.grid_shape(images.shape[1], images.shape[2], p)
    pred = self.decoder(latent, ids_restore, grid, p * p * images.shape[-1], train=train)
    return pred, mask


class MAE(Method):
  num_views = 1
  reconstructs = True

  @classmethod
  def default_config(cls, image_size: int = 224) -> ml_collections.ConfigDict:
    """MAE's defaults (He et al. 2022, official code): 75% masking, AdamW (0.9, 0.95), wd 0.05,
    lr 1.5e-4 x B/256; random resized crop (0.2-1) and flip only."""
    c = defaults.base_config('mae', image_size)
    c.augment.crop_scale = (0.2, 1.0)
    c.augment.color_strength = 0.0  # no colour jitter, grayscale, blur or solarize
    c.augment.grayscale_prob = 0.0
    c.augment.blur_prob = 0.0
    c.views = ml_collections.ConfigDict(dict(view1={}))
    c.model.encoder = 'vit_base'
    c.model.patch_size = 16
    c.model.pos_embed = 'sincos'  # MAE's encoder uses fixed 2-D sin-cos positions
    c.mae = ml_collections.ConfigDict(
      dict(
        mask_ratio=0.75,
        decoder_width=512,
        decoder_depth=8,
        decoder_heads=16,
        norm_pix=True,  # targets: each patch normalized by its own mean and variance
      )
    )
    c.optimizer = 'adamw'
    c.base_lr = 1.5e-4
    c.momentum = 0.9
    c.b2 = 0.95
    c.weight_decay = 0.05
    return c

  @classmethod
  def check_config(cls, checks):
    super().check_config(checks)
    if cls.require_vit(checks):
      checks.require(
        checks.value('model.cls_token') is True, 'model.cls_token', 'True for MAE', True
      )
    checks.number('mae.mask_ratio', 0, 1, low_open=True, high_open=True)
    sizes = [
      checks.count(f'mae.{k}', 1) for k in ('decoder_width', 'decoder_depth', 'decoder_heads')
    ]
    width, heads = checks.value('mae.decoder_width'), checks.value('mae.decoder_heads')
    if all(sizes) and width % heads:
      fix = max(d for d in range(1, heads + 1) if width % d == 0)
      checks.fail('mae.decoder_heads', f'a divisor of mae.decoder_width={width}', fix=fix)
    checks.boolean('mae.norm_pix')

  def __init__(self, config, mesh, total_steps=1, steps_per_epoch=1):
    super().__init__(config, mesh, total_steps, steps_per_epoch)
    c = config.mae
    self.encoder = models.build_encoder(config)
    self.net = MAENet(
      encoder=self.encoder,
      decoder=MAEDecoder(
        width=c.decoder_width,
        depth=c.decoder_depth,
        num_heads=c.decoder_heads,
        dtype=models.compute_dtype(config),
        kernels=models.resolve_kernels(config),
      ),
      mask_ratio=c.mask_ratio,
    )

  def _noise(self, rng, images):
    grid = vit.grid_shape(images.shape[1], images.shape[2], self.config.model.patch_size)
    return jax.random.uniform(rng, (images.shape[0], grid[0] * grid[1]))

  def init(self, rng, batch):
    images = batch['views'][0]
    variables = self.net.init(rng, images, self._noise(rng, images), train=False)
    return variables['params'], {}

  @classmethod
  def accumulation_refusal(cls, checks):
    if checks.value('model.drop_path'):
      return 'stochastic depth (model.drop_path > 0) draws its masks per batch'
    return None

  def batch_randomness(self, rng, batch):
    mask_rng, _ = jax.random.split(rng)  # as `loss` splits it
    return {'noise': self._noise(mask_rng, batch['views'][0])}

  def loss(self, params, model_state, batch, rng, step):
    del step
    images = batch['views'][0]
    mask_rng, drop_rng = jax.random.split(rng)
    noise = batch['noise'] if 'noise' in batch else self._noise(mask_rng, images)
    pred, mask = self.net.apply(
      {'params': params},
      images,
      noise,
      train=True,
      rngs=dropout_rngs(drop_rng),
    )
    target = vit.patchify(images, self.config.model.patch_size)
    loss = losses.mae(pred, target, mask, norm_pix=self.config.mae.norm_pix)
    return loss, (model_state, {'loss': loss, 'mask_fraction': jnp.mean(mask)})

  def encoder_variables(self, params, model_state):
    return submodule_variables({'params': params}, 'encoder')

  def reconstruct(self, params, model_state, images, rng) -> dict[str, jax.Array]:
    """The MAE picture: original, masked input, reconstruction, reconstruction with the visible
    patches pasted back; all (N, H, W, C). With norm_pix the predictions are un-normalized with
    each patch's mean and variance from the original image (as the official demo)."""
    del model_state
    pred, mask = self.net.apply({'params': params}, images, self._noise(rng, images), train=False)
    p = self.config.model.patch_size
    target = vit.patchify(images, p)
    if self.config.mae.norm_pix:
      mean, std = losses.patch_mean_std(target)
      pred = pred * std + mean
    grid = vit.grid_shape(images.shape[1], images.shape[2], p)
    back = lambda patches: vit.unpatchify(patches, p, grid, images.shape[-1])
    m = mask[..., None]
    return {
      'original': images,
      'masked': back(target * (1 - m)),
      'reconstruction': back(pred),
      'pasted': back(target * (1 - m) + pred * m),
    }

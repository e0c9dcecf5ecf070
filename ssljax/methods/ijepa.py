"""I-JEPA (Assran et al. 2023): from one context block of an image, predict the representations
that an EMA target encoder gives M other blocks of it. Like MAE it predicts what is hidden, like
BYOL it predicts in representation space, so it needs neither a pixel decoder nor hand-made
augmentations."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from ssljax import ema, losses, masking, models
from ssljax.config import defaults
from ssljax.methods.base import Method, dropout_rngs
from ssljax.models import vit
from ssljax.monitor import health

_dense_init = nn.initializers.xavier_uniform()


class Predictor(nn.Module):
  """The narrow ViT: encoded context tokens + one mask token per target position -> predictions.

  Each target block is predicted on its own (as the official code, which repeats the context per
  block): its sequence is the context, projected to the predictor's width, plus mask tokens
  carrying the target positions' fixed sin-cos embeddings; the outputs at the mask tokens are
  projected back to the encoder's width. Padding entries of both lists are masked out of
  attention, so they change nothing.
  """

  width: int
  depth: int
  num_heads: int
  out_dim: int
  mlp_ratio: float = 4.0
  dtype: Any = jnp.float32
  kernels: models.Kernels = models.XLA

  @nn.compact
  def __call__(
    self, context: jax.Array, masks: masking.BlockMasks, grid: tuple[int, int], *, train: bool
  ) -> jax.Array:
    """context (B, Nc, D_enc) -> predictions (B, M, Nt, D_enc) at masks.targets."""
    b, nc, _ = context.shape
    m, nt = masks.targets.shape[1:]
    pos = jnp.asarray(vit.sincos_2d(self.width, *grid), self.dtype)  # (L, width)
    x = nn.Dense(self.width, dtype=self.dtype, kernel_init=_dense_init, name='embed')(context)
    x = x.astype(self.dtype) + pos[masks.context]
    mask_token = self.param('mask_token', nn.initializers.normal(0.02), (1, 1, 1, self.width))
    queries = mask_token.astype(self.dtype) + pos[masks.targets]  # (B, M, Nt, width)
    x = jnp.broadcast_to(x[:, None], (b, m, nc, self.width))
    x = jnp.concatenate([x, queries], axis=2).reshape(b * m, nc + nt, self.width)
    ctx_valid = jnp.broadcast_to(masks.context_valid[:, None], (b, m, nc))
    valid = jnp.concatenate([ctx_valid, masks.targets_valid], axis=2).reshape(b * m, nc + nt)
    for _ in range(self.depth):
      block = vit.Block(self.num_heads, self.mlp_ratio, 0.0, self.dtype, self.kernels)
      x, _ = block(x, train=train, valid=valid)
    x = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype)(x[:, nc:])
    x = nn.Dense(self.out_dim, dtype=self.dtype, kernel_init=_dense_init, name='proj')(x)
    return x.reshape(b, m, nt, self.out_dim).astype(jnp.float32)


class IJEPANet(nn.Module):
  """The trained part: the context encoder (which sees only context patches) and the predictor."""

  encoder: vit.ViT
  predictor: Predictor

  def __call__(self, images: jax.Array, masks: masking.BlockMasks, *, train: bool) -> jax.Array:
    tokens = self.encoder.embed(images)  # (B, L, D), positions added before the patches go
    context = jnp.take_along_axis(tokens, masks.context[..., None], axis=1)
    context = self.encoder.transform(context, train=train, valid=masks.context_valid)
    context = context[:, int(self.encoder.use_cls) :]
    grid = vit.grid_shape(images.shape[1], images.shape[2], self.encoder.patch_size)
    return self.predictor(context, masks, grid, train=train)


def _mask_options(config: ml_collections.ConfigDict) -> dict:
  c = config.ijepa
  return dict(
    num_targets=c.num_targets,
    target_scale=tuple(c.target_scale),
    target_aspect=tuple(c.target_aspect),
    context_scale=tuple(c.context_scale),
    context_aspect=tuple(c.context_aspect),
    min_keep=c.min_keep,
    max_context=c.max_context,
    tries=c.tries,
    geometry=c.mask_geometry,
  )


class IJEPA(Method):
  num_views = 1
  eval_encoders = ('target', 'context', 'online')  # online: the context encoder

  @classmethod
  def accumulation_refusal(cls, checks):
    del checks
    return (
      'its loss averages over the target blocks the masking kept, a count that differs '
      'between micro-batches, and the block sizes are drawn per batch'
    )

  @classmethod
  def default_config(cls, image_size: int = 224) -> ml_collections.ConfigDict:
    """I-JEPA's defaults (Assran et al. 2023, official code): ViT-H/14 without CLS, 4 target
    blocks (scale 0.15-0.2, aspect 0.75-1.5) and a context block (0.85-1.0) per image, a
    384-wide 12-block predictor, target encoder momentum 0.996 -> 1 (linear), AdamW with weight
    decay 0.04 -> 0.4, random resized crop (0.3-1) as the only augmentation."""
    c = defaults.base_config('ijepa', image_size)
    c.augment.crop_scale = (0.3, 1.0)
    c.augment.flip = False
    c.augment.color_strength = 0.0  # no colour jitter, grayscale, blur or solarize
    c.augment.grayscale_prob = 0.0
    c.augment.blur_prob = 0.0
    c.views = ml_collections.ConfigDict(dict(view1={}))
    c.model.encoder = 'vit_huge'
    c.model.patch_size = 14
    c.model.pos_embed = 'sincos'
    c.model.cls_token = False  # patch tokens only; h = their mean
    c.model.pool = 'mean'
    c.ijepa = ml_collections.ConfigDict(
      dict(
        num_targets=4,
        target_scale=(0.15, 0.2),  # fraction of the patch grid per target block
        target_aspect=(0.75, 1.5),  # height / width
        context_scale=(0.85, 1.0),
        context_aspect=(1.0, 1.0),
        min_keep=10,  # context patches every image keeps
        max_context=0,  # > 0: at most this many context patches (a random subset); 0: no cap
        tries=8,  # redraws for an image whose context would keep fewer than min_keep
        # 'ssljax' (see masking.multi_block) | 'official' (masking.multi_block_official: the
        # official sampler's quirks, which the ImageNet numbers come from)
        mask_geometry='ssljax',
        pred_width=384,
        pred_depth=12,
        pred_heads=0,  # 0: the encoder's number of heads (as the official code)
        ema_end=1.0,  # the target momentum goes linearly from ema.base to this
      )
    )
    c.loss = ml_collections.ConfigDict(dict(kind='l2'))  # l2 (the lecture) | smooth_l1 (official)
    c.ema = ml_collections.ConfigDict(dict(base=0.996))
    c.eval_encoder = 'target'  # or 'context'
    c.optimizer = 'adamw'
    c.base_lr = 1.25e-4  # x B/256: 1e-3 at the official batch of 2048
    c.momentum = 0.9
    c.b2 = 0.999
    c.weight_decay = 0.04
    c.weight_decay_end = 0.4
    c.warmup_epochs = 40.0
    return c

  @classmethod
  def check_config(cls, checks):
    super().check_config(checks)
    checks.choice('loss.kind', ('l2', 'smooth_l1'))
    checks.probability('ema.base')
    checks.probability('ijepa.ema_end')
    blocks = [
      checks.count('ijepa.num_targets', 1),
      *[checks.pair(f'ijepa.{k}', 0, 1, low_open=True) for k in ('target_scale', 'context_scale')],
      *[checks.pair(f'ijepa.{k}', 0, low_open=True) for k in ('target_aspect', 'context_aspect')],
      checks.count('ijepa.min_keep', 1),
      checks.count('ijepa.max_context', 0),
      checks.choice('ijepa.mask_geometry', masking.GEOMETRIES),
    ]
    checks.count('ijepa.tries', 1)
    checks.count('ijepa.pred_width', 1)
    checks.count('ijepa.pred_depth', 1)
    checks.count('ijepa.pred_heads', 0)
    if cls.require_vit(checks) and all(blocks):
      # A grid too small for the blocks fails here, before anything compiles.
      config = checks.config
      size, patch = config.augment.image_size, config.model.patch_size
      if isinstance(patch, int) and patch > 0 and size % patch == 0:
        checked = {k: v for k, v in _mask_options(config).items() if k != 'tries'}
        checks.absorb(masking.check_multi_block, vit.grid_shape(size, size, patch), **checked)

  def __init__(self, config, mesh, total_steps=1, steps_per_epoch=1):
    super().__init__(config, mesh, total_steps, steps_per_epoch)
    c = config.ijepa
    self.mask_options = _mask_options(config)
    self.encoder = models.build_encoder(config)
    self.net = IJEPANet(
      encoder=self.encoder,
      predictor=Predictor(
        width=c.pred_width,
        depth=c.pred_depth,
        num_heads=c.pred_heads or self.encoder.num_heads,
        out_dim=self.encoder.width,
        dtype=models.compute_dtype(config),
        kernels=models.resolve_kernels(config),
      ),
    )

  def masks(self, rng: jax.Array, images: jax.Array) -> masking.BlockMasks:
    grid = vit.grid_shape(images.shape[1], images.shape[2], self.config.model.patch_size)
    return masking.multi_block(rng, images.shape[0], grid, **self.mask_options)

  def init(self, rng, batch):
    images = batch['views'][0]
    params = self.net.init(rng, images, self.masks(rng, images), train=False)['params']
    # The target encoder starts as a copy of the context encoder.
    return params, {'target': {'params': {'encoder': params['encoder']}}}

  def target_tokens(self, model_state, images: jax.Array) -> jax.Array:
    """(B, L, D): the target encoder's patch outputs for the whole image (no gradient)."""
    variables = {'params': model_state['target']['params']['encoder']}
    tokens = self.encoder.apply(variables, images, train=False, method=vit.ViT.tokens)
    return jax.lax.stop_gradient(tokens)

  def loss(self, params, model_state, batch, rng, step):
    del step
    images = batch['views'][0]
    mask_rng, drop_rng = jax.random.split(rng)
    masks = self.masks(mask_rng, images)
    tokens = self.target_tokens(model_state, images)
    target = jnp.take_along_axis(tokens[:, None], masks.targets[..., None], axis=2)
    pred = self.net.apply(
      {'params': params}, images, masks, train=True, rngs=dropout_rngs(drop_rng)
    )  # (B, M, Nt, D)
    nt, d = pred.shape[2:]
    loss = losses.ijepa(
      pred.reshape(-1, nt, d),
      target.reshape(-1, nt, d),
      kind=self.config.loss.kind,
      valid=masks.targets_valid.reshape(-1, nt),
    )
    metrics = {
      'loss': loss,
      'context_patches': jnp.mean(jnp.sum(masks.context_valid, axis=-1).astype(jnp.float32)),
      'target_patches': jnp.mean(jnp.sum(masks.targets_valid, axis=-1).astype(jnp.float32)),
      # Collapse shows as mean-pooled target features that no longer vary across images.
      'h_std': jnp.mean(jnp.std(jnp.mean(tokens, axis=1), axis=0)),
    }
    return loss, (model_state, metrics)

  def health(self, params, model_state, images):
    """h of the evaluated encoder, and the agreement: the cosine of the context encoder's and
    the target encoder's mean-pooled features of the same whole image."""

    def pooled(encoder_params):
      return self.encoder.apply({'params': encoder_params}, images, train=False)

    context, target = pooled(params['encoder']), pooled(model_state['target']['params']['encoder'])
    h = target if self.config.eval_encoder == 'target' else context
    return {
      **health.embedding_health('h', h),
      'health/agreement': health.cosine_agreement(context, target),
    }

  def momentum(self, step):
    return ema.linear_momentum(
      step, self.total_steps, self.config.ema.base, self.config.ijepa.ema_end
    )

  def after_step(self, params, model_state, step):
    """target <- tau_k target + (1 - tau_k) context encoder, tau linear from ema.base to ema_end."""
    target = model_state['target']['params']['encoder']
    new = ema.ema_update(target, params['encoder'], self.momentum(step))
    return {**model_state, 'target': {'params': {'encoder': new}}}

  def encoder_variables(self, params, model_state):
    if self.config.eval_encoder == 'target':
      return {'params': model_state['target']['params']['encoder']}
    return {'params': params['encoder']}

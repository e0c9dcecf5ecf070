"""I-JEPA (Assran et al. 2023): from one context block of an image, predict the representations
that an EMA target encoder gives M other blocks of it. Like MAE it predicts what is hidden, like
BYOL it predicts in representation space, so it needs neither a pixel decoder nor hand-made
augmentations."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssljax import ema, losses, masking, models
from ssljax.methods.base import Method, dropout_rngs
from ssljax.models import vit

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
      x, _ = vit.Block(self.num_heads, self.mlp_ratio, dtype=self.dtype)(
        x, train=train, valid=valid
      )
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


class IJEPA(Method):
  def __init__(self, config, mesh, total_steps=1, steps_per_epoch=1):
    super().__init__(config, mesh, total_steps, steps_per_epoch)
    if not models.is_vit(config):
      raise ValueError(f'I-JEPA needs a ViT: config.model.encoder is {config.model.encoder!r}')
    if config.eval_encoder not in ('target', 'context', 'online'):
      raise ValueError(
        f"config.eval_encoder must be 'target' or 'context', got {config.eval_encoder!r}"
      )
    if config.loss.kind not in ('l2', 'smooth_l1'):
      raise ValueError(f"config.loss.kind must be 'l2' or 'smooth_l1', got {config.loss.kind!r}")
    c = config.ijepa
    self.mask_options = dict(
      num_targets=c.num_targets,
      target_scale=tuple(c.target_scale),
      target_aspect=tuple(c.target_aspect),
      context_scale=tuple(c.context_scale),
      context_aspect=tuple(c.context_aspect),
      min_keep=c.min_keep,
      max_context=c.max_context,
      tries=c.tries,
    )
    # Checked now, so a grid too small for the blocks fails before anything compiles.
    size, patch = config.augment.image_size, config.model.patch_size
    checked = {k: v for k, v in self.mask_options.items() if k != 'tries'}
    masking.check_multi_block(vit.grid_shape(size, size, patch), **checked)
    self.encoder = models.build_encoder(config)
    self.net = IJEPANet(
      encoder=self.encoder,
      predictor=Predictor(
        width=c.pred_width,
        depth=c.pred_depth,
        num_heads=c.pred_heads or self.encoder.num_heads,
        out_dim=self.encoder.width,
        dtype=models.compute_dtype(config),
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
    views = batch['views']
    if len(views) != 1:
      raise ValueError(f'I-JEPA takes 1 view per example, config.views makes {len(views)}')
    images = views[0]
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

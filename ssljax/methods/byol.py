"""BYOL (Grill et al. 2020): no negatives. The online network (encoder -> projector -> predictor)
predicts the target network's projection of the other view; the target is an EMA of the online
encoder and projector, so it needs no large batch."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from ssljax import ema, losses, models
from ssljax.config import defaults
from ssljax.methods.base import Method, dropout_rngs, stack_views, submodule_variables
from ssljax.monitor import health

TARGET_PARTS = ('encoder', 'projector')  # the predictor exists only online


class BYOLNet(nn.Module):
  """Online: (h, z, p); the target uses `project` with its own parameters: (h, z)."""

  encoder: nn.Module
  projector: nn.Module
  predictor: nn.Module

  def __call__(self, x, *, train: bool):
    h, z = self.project(x, train=train)
    return h, z, self.predictor(z, train=train)

  def project(self, x, *, train: bool):
    h = self.encoder(x, train=train)
    return h, self.projector(h, train=train)


def _target_parts(tree: dict) -> dict:
  return {k: tree[k] for k in TARGET_PARTS if k in tree}  # a ViT encoder has no batch_stats


class BYOL(Method):
  num_views = 2
  eval_encoders = ('online', 'target')

  @classmethod
  def accumulation_refusal(cls, checks):
    del checks
    return (
      'BatchNorm in the projector and predictor (and a ResNet encoder) normalizes over '
      'the whole batch'
    )

  @classmethod
  def default_config(cls, image_size: int = 224) -> ml_collections.ConfigDict:
    """BYOL's defaults: 4096 -> 256 heads, LARS, asymmetric views, target momentum 0.996 -> 1
    (Grill et al. 2020, table 6)."""
    c = defaults.base_config('byol', image_size)
    c.augment.color_jitter = (0.4, 0.4, 0.2, 0.1)  # brightness, contrast, saturation, hue
    c.views = ml_collections.ConfigDict(
      dict(
        view1=dict(blur_prob=1.0, solarize_prob=0.0),
        view2=dict(blur_prob=0.1, solarize_prob=0.2),
      )
    )
    c.model.proj_hidden = 4096
    c.model.proj_dim = 256
    # The target network: tau goes from `base` to 1 with a cosine over the run.
    c.ema = ml_collections.ConfigDict(dict(base=0.996))
    c.weight_decay = 1.5e-6
    return c

  @classmethod
  def check_config(cls, checks):
    super().check_config(checks)
    checks.probability('ema.base')

  def __init__(self, config, mesh, total_steps=1, steps_per_epoch=1):
    super().__init__(config, mesh, total_steps, steps_per_epoch)
    m = config.model
    dtype = models.compute_dtype(config)
    head = dict(
      hidden_dim=m.proj_hidden or 4096,
      out_dim=m.proj_dim,
      num_layers=m.proj_layers,
      last_bn=False,
      dtype=dtype,
    )
    self.encoder = models.build_encoder(config)
    self.net = BYOLNet(
      encoder=self.encoder,
      projector=models.MLPHead(**head),
      predictor=models.MLPHead(**{**head, 'hidden_dim': m.pred_hidden or head['hidden_dim']}),
    )

  def init(self, rng, batch):
    variables = self.net.init(rng, stack_views(batch['views'][:2]), train=True)
    params, stats = variables['params'], variables['batch_stats']
    # The target starts as a copy of the online encoder and projector.
    target = {'params': _target_parts(params), 'batch_stats': _target_parts(stats)}
    return params, {'batch_stats': stats, 'target': target}

  def loss(self, params, model_state, batch, rng, step):
    del step
    x = stack_views(batch['views'])
    (h, _, p), online_stats = self.net.apply(
      {'params': params, 'batch_stats': model_state['batch_stats']},
      x,
      train=True,
      mutable=['batch_stats'],
      rngs=dropout_rngs(rng),
    )
    # The target's BatchNorm statistics come from its own forward pass.
    (_, z), target_stats = self.net.apply(
      model_state['target'],
      x,
      train=True,
      mutable=['batch_stats'],
      method=BYOLNet.project,
      rngs=dropout_rngs(None if rng is None else jax.random.fold_in(rng, 1)),
    )
    z = jax.lax.stop_gradient(z)
    p, z = (a.reshape(-1, 2, a.shape[-1]) for a in (p, z))
    # Symmetrized: view 1 predicts the target of view 2 and vice versa.
    loss = losses.byol(p[:, 0], z[:, 1]) + losses.byol(p[:, 1], z[:, 0])
    new_state = {
      'batch_stats': online_stats['batch_stats'],
      'target': {
        'params': model_state['target']['params'],
        'batch_stats': target_stats['batch_stats'],
      },
    }
    return loss, (new_state, {'loss': loss, 'h_std': jnp.mean(jnp.std(h, axis=0))})

  def health(self, params, model_state, images):
    """h of the evaluated encoder, z of the online projector, and the agreement: the cosine of
    the online prediction with the target's projection of the same image (the loss's target)."""
    h, z, p = self.net.apply(
      {'params': params, 'batch_stats': model_state['batch_stats']}, images, train=False
    )
    h_target, z_target = self.net.apply(
      model_state['target'], images, train=False, method=BYOLNet.project
    )
    evaluated = h_target if self.config.eval_encoder == 'target' else h  # features()' encoder
    return {
      **health.embedding_health('h', evaluated),
      **health.embedding_health('z', z),
      'health/agreement': health.cosine_agreement(p, z_target),
    }

  def momentum(self, step):
    return ema.cosine_momentum(step, self.total_steps, self.config.ema.base)

  def after_step(self, params, model_state, step):
    """target <- tau_k target + (1 - tau_k) online, with the new online parameters."""
    tau = self.momentum(step)
    target = model_state['target']
    new_params = ema.ema_update(target['params'], _target_parts(params), tau)
    return {**model_state, 'target': {**target, 'params': new_params}}

  def encoder_variables(self, params, model_state):
    if self.config.eval_encoder == 'target':
      variables = model_state['target']
    else:
      variables = {'params': params, 'batch_stats': model_state['batch_stats']}
    return submodule_variables(variables, 'encoder')

"""SimCLR (Chen et al. 2020): encoder f -> h, projection head g -> z, NT-Xent over the 2N views."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import PartitionSpec as P

from ssljax import losses, models, sharding
from ssljax.config import defaults
from ssljax.methods.base import (
  EncoderWithHead,
  Method,
  dropout_rngs,
  stack_views,
  submodule_variables,
)
from ssljax.monitor import health


class SimCLR(Method):
  num_views = 2

  @classmethod
  def accumulation_refusal(cls, checks):
    del checks
    return (
      "NT-Xent's negatives are the other views of the whole batch (a micro-batch sees "
      'fewer; GradCache would make it exact, not built), and BatchNorm (in the projector, and '
      'in a ResNet) normalizes over the batch'
    )

  @classmethod
  def default_config(cls, image_size: int = 32) -> ml_collections.ConfigDict:
    """SimCLR's defaults (Chen et al. 2020): the full augmentation, LARS, NT-Xent at
    temperature 0.5, a 2-layer projector to 128 dimensions."""
    c = defaults.base_config('simclr', image_size)
    c.loss = ml_collections.ConfigDict(dict(temperature=0.5))
    return c

  @classmethod
  def check_config(cls, checks):
    super().check_config(checks)
    checks.positive('loss.temperature')

  def __init__(self, config, mesh, total_steps=1, steps_per_epoch=1):
    super().__init__(config, mesh, total_steps, steps_per_epoch)
    m = config.model
    dtype = models.compute_dtype(config)
    self.encoder = models.build_encoder(config)
    self.model = EncoderWithHead(
      encoder=self.encoder,
      head=models.MLPHead(
        hidden_dim=m.proj_hidden or models.encoder_dim(config),
        out_dim=m.proj_dim,
        num_layers=m.proj_layers,
        last_bn=True,
        dtype=dtype,
      ),
    )
    self._pair_loss = self.make_pair_loss(config, mesh)

  def make_pair_loss(self, config, mesh) -> Callable[[jax.Array, jax.Array, jax.Array], jax.Array]:
    """(z1, z2, rng) -> the contrastive loss of the two views' projections (global arrays).
    NT-Xent runs per device: local rows against all-gathered columns (see losses.nt_xent)."""
    nt_xent = jax.shard_map(
      functools.partial(
        losses.nt_xent, temperature=config.loss.temperature, axis_name=sharding.AXES
      ),
      mesh=mesh,
      in_specs=(P(sharding.AXES), P(sharding.AXES)),
      out_specs=P(),
    )
    return lambda z1, z2, rng: nt_xent(z1, z2)

  def init(self, rng, batch):
    variables = self.model.init(rng, stack_views(batch['views'][:2]), train=True)
    return variables['params'], {'batch_stats': variables['batch_stats']}

  def loss(self, params, model_state, batch, rng, step):
    del step
    views = batch['views']
    (h, z), new_state = self.model.apply(
      {'params': params, **model_state},
      stack_views(views),
      train=True,
      mutable=['batch_stats'],
      rngs=dropout_rngs(rng),
    )
    z = z.reshape(-1, 2, z.shape[-1])
    loss = self._pair_loss(z[:, 0], z[:, 1], rng)
    metrics = {'loss': loss, 'h_std': jnp.mean(jnp.std(h, axis=0))}
    return loss, (dict(new_state), metrics)

  def health(self, params, model_state, images):
    h, z = self.model.apply({'params': params, **model_state}, images, train=False)
    return {**health.embedding_health('h', h), **health.embedding_health('z', z)}

  def encoder_variables(self, params, model_state):
    return submodule_variables({'params': params, **model_state}, 'encoder')

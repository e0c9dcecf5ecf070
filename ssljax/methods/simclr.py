"""SimCLR (Chen et al. 2020): encoder f -> h, projection head g -> z, NT-Xent over the 2N views."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from ssljax import losses, models
from ssljax.methods.base import Method, stack_views


class EncoderWithHead(nn.Module):
  """f followed by g: returns (h, z)."""

  encoder: nn.Module
  head: nn.Module

  def __call__(self, x, *, train: bool):
    h = self.encoder(x, train=train)
    return h, self.head(h, train=train)

  def encode(self, x):
    return self.encoder(x, train=False)


class SimCLR(Method):
  def __init__(self, config, mesh, total_steps=1):
    super().__init__(config, mesh, total_steps)
    m = config.model
    dtype = models.compute_dtype(config)
    self.model = EncoderWithHead(
      encoder=models.build_encoder(config),
      head=models.MLPHead(
        hidden_dim=m.proj_hidden or models.encoder_dim(config),
        out_dim=m.proj_dim,
        num_layers=m.proj_layers,
        last_bn=True,
        dtype=dtype,
      ),
    )
    # NT-Xent runs per device: local rows against all-gathered columns (see losses.nt_xent).
    self._nt_xent = jax.shard_map(
      functools.partial(losses.nt_xent, temperature=config.loss.temperature, axis_name='data'),
      mesh=mesh,
      in_specs=(P('data'), P('data')),
      out_specs=P(),
    )

  def init(self, rng, batch):
    variables = self.model.init(rng, stack_views(batch['views'][:2]), train=True)
    return variables['params'], {'batch_stats': variables['batch_stats']}

  def loss(self, params, model_state, batch, rng, step):
    del rng, step  # SimCLR's randomness is all in the data pipeline.
    views = batch['views']
    if len(views) != 2:
      raise ValueError(f'SimCLR takes 2 views per example, config.views makes {len(views)}')
    (h, z), new_state = self.model.apply(
      {'params': params, **model_state},
      stack_views(views),
      train=True,
      mutable=['batch_stats'],
    )
    z = z.reshape(-1, 2, z.shape[-1])
    loss = self._nt_xent(z[:, 0], z[:, 1])
    metrics = {'loss': loss, 'h_std': jnp.mean(jnp.std(h, axis=0))}
    return loss, (dict(new_state), metrics)

  def features(self, params, model_state, images):
    return self.model.apply(
      {'params': params, **model_state}, images, method=EncoderWithHead.encode
    )

"""Triplet training (the lecture's other contrastive objective): SimCLR's encoder, projector and
two views, with max(0, |z - z+|^2 - |z - z-|^2 + margin) in place of NT-Xent."""

from __future__ import annotations

import jax
import ml_collections
from jax.sharding import PartitionSpec as P

from ssljax import losses, sharding
from ssljax.methods.simclr import SimCLR


class Triplet(SimCLR):
  @classmethod
  def accumulation_refusal(cls, checks):
    del checks
    return (
      'its negatives are mined among the views of the whole batch, and BatchNorm (in the '
      'projector, and in a ResNet) normalizes over the batch'
    )

  @classmethod
  def default_config(cls, image_size: int = 32) -> ml_collections.ConfigDict:
    """SimCLR's setup with the triplet loss: the lecture's random negatives, L2-normalized
    projections (FaceNet's unit hypersphere: squared distances in [0, 4], so the margin means
    the same at every scale) and a margin of 0.5."""
    c = SimCLR.default_config(image_size)
    c.method = 'triplet'
    del c.loss
    c.triplet = ml_collections.ConfigDict(
      dict(
        negatives='random',  # random (the lecture) | hardest | semi_hard (FaceNet's mining)
        margin=0.5,  # eps: on normalized embeddings squared distances lie in [0, 4]
        normalize=True,
      )
    )
    return c

  @classmethod
  def check_config(cls, checks):
    super(SimCLR, cls).check_config(checks)  # Method's checks: SimCLR's are of its config.loss
    checks.choice('triplet.negatives', losses.NEGATIVE_RULES)
    checks.positive('triplet.margin')
    checks.boolean('triplet.normalize')
    checks.count('batch_size', 2)  # a negative is another image of the batch

  def make_pair_loss(self, config, mesh):
    """The candidates are the global batch: each device mines among all-gathered embeddings;
    the random negatives get their own key, so the dropout keys stay those of SimCLR."""
    t = config.triplet

    def loss(z1, z2, rng):
      return losses.batch_triplet(
        z1,
        z2,
        margin=t.margin,
        negatives=t.negatives,
        normalize=t.normalize,
        rng=jax.random.fold_in(rng, 1),
        axis_name=sharding.AXES,
      )

    return jax.shard_map(
      loss, mesh=mesh, in_specs=(P(sharding.AXES), P(sharding.AXES), P()), out_specs=P()
    )

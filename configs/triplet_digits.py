"""Triplet training on scikit-learn's 8x8 digits: simclr_digits.py's encoder, views and schedule
with the triplet loss in place of NT-Xent, a few CPU minutes.

python -m ssljax.main --config=configs/triplet_digits.py --workdir=runs/triplet_digits
--config.triplet.negatives=random | hardest | semi_hard picks each anchor's negative.

Expected (2-core x86-64 VM, 1 December 2026; linear / 5 per class / k-NN, random encoder
70.2 / 47.1 / 57.3): semi-hard 94.9 / 86.2 / 91.8 in 2.2 minutes, random 94.9 / 84.7 / 92.2,
hardest 93.1 / 81.6 / 91.3 (experiments/results/triplet_negatives_digits.json; docs/results.md).
"""

from ssljax.config import blocks
from ssljax.methods import Triplet


def get_config(arg=None):
  del arg
  c = Triplet.default_config()
  blocks.digits(c)
  c.augment.crop_scale = (0.3, 1.0)  # as simclr_digits.py
  c.augment.flip = False
  c.augment.blur_prob = 0.0
  c.model.encoder = 'resnet18'
  c.model.width = 8
  c.model.proj_dim = 64
  c.triplet.negatives = 'semi_hard'
  c.triplet.margin = 0.5
  c.batch_size = 256
  c.epochs = 30
  c.warmup_epochs = 2.0
  c.optimizer = 'lars'
  c.base_lr = 1.0
  c.weight_decay = 1e-4
  c.log_every = 20
  c.checkpoint_every = 200
  return c

"""SimCLR on CIFAR-10, the paper's CIFAR recipe (appendix B.9): ResNet-18 with the 3x3 stem and no
max-pool, batch 512, temperature 0.5, LARS lr 1.0 x B/256, weight decay 1e-4, colour strength 0.5,
no blur. Needs the tfds dataset prepared once: `tfds build cifar10` (with network).

Expected: not run here. The reference the recipe aims at: a ResNet-18 after 1000 epochs, linear
90.7 (docs/results.md); this config trains 1000 epochs too.
"""

from ssljax.methods import SimCLR


def get_config(arg=None):
  del arg
  c = SimCLR.default_config()
  c.data.source = 'tfds'
  c.data.name = 'cifar10'
  c.data.image_size = 32
  c.augment.image_size = 32
  c.augment.color_strength = 0.5
  c.augment.blur_prob = 0.0
  c.model.encoder = 'resnet18'
  c.model.stem = 'small'
  c.model.width = 64
  c.loss.temperature = 0.5
  c.batch_size = 512
  c.epochs = 1000
  c.warmup_epochs = 10.0
  c.optimizer = 'lars'
  c.base_lr = 1.0
  c.lr_scaling = 'linear'
  c.weight_decay = 1e-4
  c.log_every = 50
  c.checkpoint_every = 2000
  c.eval_every = 20000
  return c

"""SimCLR on ImageNet, the paper's recipe (Chen et al. 2020): ResNet-50, batch 4096, temperature
0.1, LARS lr 0.3 x B/256, weight decay 1e-6, 100 epochs with 10 warm-up, global BatchNorm, the
full augmentation at 224 px, bfloat16 compute.

ImageNet must be prepared for tfds first (manual download): see docs/data.md.

Expected: not run here (accelerators). The paper's number: ResNet-50 linear 69.3 top-1 after
1000 epochs (Chen et al. 2020); this config trains 100, which the paper reports lower.
"""

from ssljax.config import blocks
from ssljax.methods import SimCLR


def get_config(arg=None):
  del arg
  c = SimCLR.default_config()
  blocks.imagenet(c)
  c.model.pixel_mean = c.model.pixel_std = ()  # none: the official inputs are [0, 1] pixels
  c.model.encoder = 'resnet50'
  c.model.stem = 'imagenet'
  c.model.width = 64
  c.model.proj_dim = 128
  c.model.proj_layers = 2
  c.model.compute_dtype = 'bfloat16'
  c.loss.temperature = 0.1
  c.batch_size = 4096
  c.epochs = 100
  c.warmup_epochs = 10.0
  c.optimizer = 'lars'
  c.base_lr = 0.3
  c.lr_scaling = 'linear'
  c.weight_decay = 1e-6
  c.eval_every = 0
  return c

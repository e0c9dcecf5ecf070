"""BYOL on ImageNet, the published presets (Grill et al. 2020): ResNet-50, batch 4096, LARS,
10 warm-up epochs, 4096 -> 256 projector and predictor, bfloat16 compute.

`--config=configs/byol_imagenet.py:EPOCHS` picks a preset, EPOCHS in 40, 100, 300, 1000:
(base lr x B/256, weight decay, tau_base) = 40: (0.45, 1e-6, 0.97), 100: (0.45, 1e-6, 0.99),
300: (0.3, 1e-6, 0.99), 1000: (0.2, 1.5e-6, 0.996). Default 300.

Expected: not run here (accelerators). The paper's number: ResNet-50 linear 74.3 top-1 after
1000 epochs (Grill et al. 2020); the shorter presets reach less.
"""

from ssljax.config import blocks
from ssljax.methods import BYOL

PRESETS = {
  40: (0.45, 1e-6, 0.97),
  100: (0.45, 1e-6, 0.99),
  300: (0.3, 1e-6, 0.99),
  1000: (0.2, 1.5e-6, 0.996),
}


def get_config(arg=None):
  epochs = blocks.parse_arg(arg, epochs=300).epochs
  if epochs not in PRESETS:
    raise ValueError(f'byol_imagenet.py:EPOCHS must be one of {sorted(PRESETS)}, got {epochs}')
  lr, wd, tau = PRESETS[epochs]
  c = BYOL.default_config(image_size=224)
  blocks.imagenet(c)
  c.model.encoder = 'resnet50'
  c.model.stem = 'imagenet'
  c.model.compute_dtype = 'bfloat16'
  c.batch_size = 4096
  c.epochs = epochs
  c.warmup_epochs = 10.0
  c.base_lr = lr
  c.lr_scaling = 'linear'
  c.weight_decay = wd
  c.ema.base = tau
  return c

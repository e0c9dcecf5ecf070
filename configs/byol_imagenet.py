"""BYOL on ImageNet, the published presets (Grill et al. 2020): ResNet-50, batch 4096, LARS,
10 warm-up epochs, 4096 -> 256 projector and predictor, bfloat16 compute.

`--config=configs/byol_imagenet.py:EPOCHS` picks a preset, EPOCHS in 40, 100, 300, 1000:
(base lr x B/256, weight decay, tau_base) = 40: (0.45, 1e-6, 0.97), 100: (0.45, 1e-6, 0.99),
300: (0.3, 1e-6, 0.99), 1000: (0.2, 1.5e-6, 0.996). Default 300.
"""

from ssljax.defaults import byol_config

PRESETS = {
  40: (0.45, 1e-6, 0.97),
  100: (0.45, 1e-6, 0.99),
  300: (0.3, 1e-6, 0.99),
  1000: (0.2, 1.5e-6, 0.996),
}


def get_config(arg=None):
  epochs = int(arg or 300)
  if epochs not in PRESETS:
    raise ValueError(f'byol_imagenet.py:EPOCHS must be one of {sorted(PRESETS)}, got {epochs}')
  lr, wd, tau = PRESETS[epochs]
  c = byol_config(image_size=224)
  c.data.source = 'tfds'
  c.data.name = 'imagenet2012'
  c.data.test_split = 'validation'
  c.data.image_size = 224
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
  c.log_every = 100
  c.checkpoint_every = 2500
  c.eval_config.batch_size = 1024
  c.eval_config.max_examples = 20_000  # see configs/simclr_imagenet.py
  return c

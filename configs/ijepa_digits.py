"""I-JEPA on scikit-learn's digits: a small ViT in a few CPU minutes.

python -m ssljax.main --config=configs/ijepa_digits.py

The 8x8 digits are upsampled to 16 px and cut into 2-px patches (an 8x8 grid, one patch per
original pixel): 4 target blocks of 9-12 patches and a 7x7 or 8x8 context block per image.
"""

from ssljax.defaults import ijepa_config


def get_config(arg=None):
  del arg
  c = ijepa_config(image_size=16)
  c.data.source = 'digits'
  c.data.image_size = 16
  c.model.encoder = 'vit_tiny'
  c.model.patch_size = 2
  c.model.vit_width, c.model.vit_depth, c.model.vit_heads = 64, 4, 4
  c.ijepa.pred_width, c.ijepa.pred_depth = 32, 2
  c.ema.base = 0.99  # short run: a faster-moving target
  c.batch_size = 128
  c.epochs = 30
  c.warmup_epochs = 3.0
  c.base_lr = 1e-3
  c.checkpoint_every = 500
  c.log_every = 20
  c.visualize.num_points = 500
  return c

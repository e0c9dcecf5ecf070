"""MAE on ImageNet, the official recipe (He et al. 2022): ViT-B/16, 75% masking, decoder
512 x 8 blocks x 16 heads, normalized-pixel targets, batch 4096, AdamW (0.9, 0.95) lr 1.5e-4 x
B/256, weight decay 0.05, 800 epochs with 40 warm-up, random resized crop (0.2-1) + flip only.

`--config=configs/mae_imagenet.py:EPOCHS` (default 800; the paper also reports 1600).
"""

from ssljax import config_blocks
from ssljax.methods import MAE


def get_config(arg=None):
  c = MAE.default_config(image_size=224)
  config_blocks.imagenet(c)
  c.model.encoder = 'vit_base'
  c.model.patch_size = 16
  c.model.compute_dtype = 'bfloat16'
  c.batch_size = 4096
  c.epochs = config_blocks.parse_arg(arg, epochs=800).epochs
  c.warmup_epochs = 40.0
  return c

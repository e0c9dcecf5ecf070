"""MAE on ImageNet, the official recipe (He et al. 2022): ViT-B/16, 75% masking, decoder
512 x 8 blocks x 16 heads, normalized-pixel targets, batch 4096, AdamW (0.9, 0.95) lr 1.5e-4 x
B/256, weight decay 0.05, 800 epochs with 40 warm-up, random resized crop (0.2-1) + flip only.

`--config=configs/mae_imagenet.py:EPOCHS` (default 800; the paper also reports 1600).
"""

from ssljax.defaults import mae_config


def get_config(arg=None):
  c = mae_config(image_size=224)
  c.data.source = 'tfds'
  c.data.name = 'imagenet2012'
  c.data.test_split = 'validation'
  c.data.image_size = 224
  c.model.encoder = 'vit_base'
  c.model.patch_size = 16
  c.model.compute_dtype = 'bfloat16'
  c.batch_size = 4096
  c.epochs = int(arg or 800)
  c.warmup_epochs = 40.0
  c.log_every = 100
  c.checkpoint_every = 2500
  c.eval_config.batch_size = 1024
  c.eval_config.max_examples = 20_000  # see configs/simclr_imagenet.py
  return c

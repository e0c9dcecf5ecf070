"""DINO on ImageNet, the official recipe (Caron et al. 2021): ViT-S/16, batch 1024, 2 global
224-px crops + 8 local 96-px crops, AdamW lr 5e-4 x B/256 with 10 warm-up epochs, weight decay
0.04 -> 0.4, teacher momentum 0.996 -> 1, K = 65536 prototypes, bfloat16 compute.

`--config=configs/dino_imagenet.py:EPOCHS` (default 100). From 300 epochs on, the "boosted"
recipe: the teacher temperature warms from 0.04 to 0.07 over the first 30 epochs.
"""

from ssljax.defaults import dino_config


def get_config(arg=None):
  epochs = int(arg or 100)
  c = dino_config(image_size=224, local_size=96, num_local=8)
  c.data.source = 'tfds'
  c.data.name = 'imagenet2012'
  c.data.test_split = 'validation'
  c.data.image_size = 224
  c.model.encoder = 'vit_small'
  c.model.patch_size = 16
  c.model.drop_path = 0.1
  c.model.compute_dtype = 'bfloat16'
  if epochs >= 300:
    c.dino.warmup_teacher_temp = 0.04
    c.dino.teacher_temp = 0.07
    c.dino.warmup_teacher_temp_epochs = 30.0
  c.batch_size = 1024
  c.epochs = epochs
  c.warmup_epochs = 10.0
  c.log_every = 100
  c.checkpoint_every = 2500
  c.eval_config.batch_size = 1024
  c.eval_config.max_examples = 20_000  # see configs/simclr_imagenet.py
  return c

"""DINO on Fashion-MNIST (Debian's dataset-fashion-mnist), sized for ~30 CPU-minutes.

python -m ssljax.main --config=configs/dino_fashion_mnist.py

A small ViT with patch 4: 2 global 28-px crops (a 7x7 patch grid) and 2 local 12-px crops (3x3
patches); attention maps and the embedding frames land under WORKDIR/pictures at every eval.

Expected (2-core x86-64 VM, 1 December 2026): linear / 5 per class / k-NN 71.5 / 48.5 / 70.9
against the random ViT's 64.1 / 34.9 / 61.8, in 24.8 minutes, evaluation included
(experiments/results/fashion_mnist_presets.json; docs/results.md).
"""

from ssljax.config import blocks
from ssljax.methods import DINO


def get_config(arg=None):
  del arg
  c = DINO.default_config(image_size=28, local_size=12, num_local=2)
  blocks.fashion_mnist(c)
  c.augment.crop_scale = (0.4, 1.0)
  c.views.global1.blur_prob = 0.0  # 28 px: a blur only smears the texture away
  c.views.global2.blur_prob = 0.0
  c.views.local.blur_prob = 0.0
  c.views.local.crop_scale = (0.1, 0.4)
  c.model.encoder = 'vit_tiny'
  c.model.patch_size = 4
  c.model.vit_width, c.model.vit_depth, c.model.vit_heads = 64, 4, 4
  c.model.drop_path = 0.0
  c.dino.use_bn = True  # BatchNorm in the head: no uniform collapse in a short run
  c.dino.out_dim = 1024
  c.dino.hidden_dim = 256
  c.dino.bottleneck_dim = 64
  # 0.04 throughout (the official default): warming it to 0.06 collapsed this small run to the
  # uniform distribution right after the warm-up ended (step ~470).
  c.dino.teacher_temp = 0.04
  c.ema.base = 0.99
  c.batch_size = 128
  c.epochs = 2  # ~103 images/s here: 20 minutes of training, 4 of evaluation
  c.warmup_epochs = 0.5
  c.base_lr = 1e-3
  c.checkpoint_every = 200
  return c

"""I-JEPA on Fashion-MNIST (Debian's dataset-fashion-mnist): 350 steps (1.5 epochs) in 31 minutes
on 2 CPU cores, the evaluations included (experiments/results/ijepa_fashion_mnist/30min).

I-JEPA runs three ViTs per step (the target encoder on all 49 patches, the context encoder on
up to 49, the predictor on 4 x (context + target) tokens): about 63 images/s in training.

python -m ssljax.main --config=configs/ijepa_fashion_mnist.py

A small ViT with patch 4 (a 7x7 grid, no CLS token): per image 4 target blocks of 6-12
patches and a context block of 36 or 49 patches with the targets cut out; h is the mean of the
target encoder's patch tokens.
"""

from ssljax import config_blocks
from ssljax.methods import IJEPA


def get_config(arg=None):
  del arg
  c = IJEPA.default_config(image_size=28)
  config_blocks.fashion_mnist(c)
  c.model.encoder = 'vit_tiny'
  c.model.patch_size = 4
  c.model.vit_width, c.model.vit_depth, c.model.vit_heads = 96, 4, 4
  c.ijepa.pred_width, c.ijepa.pred_depth = 48, 2
  c.batch_size = 256
  c.total_steps = 350  # 1.5 epochs: 25 minutes of training, 5 of evaluation
  c.warmup_epochs = 0.15
  c.base_lr = 1e-3
  c.checkpoint_every = 500
  return c

"""BYOL on Fashion-MNIST (Debian's dataset-fashion-mnist), sized like simclr_fashion_mnist.py for
a ~30 CPU-minute budget.

Expected (2-core x86-64 VM, 1 December 2026): linear / 5 per class / k-NN 77.9 / 55.3 / 78.5
against the random encoder's 52.5 / 28.6 / 48.7, in 17.8 minutes, evaluation included
(experiments/results/fashion_mnist_presets.json; docs/results.md).
"""

from ssljax.config import blocks
from ssljax.methods import BYOL


def get_config(arg=None):
  del arg
  c = BYOL.default_config(image_size=28)
  blocks.fashion_mnist(c)
  c.augment.crop_scale = (0.2, 1.0)
  c.views.view1.blur_prob = 0.0  # 28 px: blur only removes the texture
  c.views.view2.blur_prob = 0.0
  c.model.encoder = 'resnet18'
  c.model.width = 8
  c.model.proj_hidden = 512
  c.model.proj_dim = 128
  c.ema.base = 0.99
  c.batch_size = 256
  c.epochs = 4
  # A BYOL step costs ~1.5x a SimCLR step (the target's forward pass and the predictor): 600
  # steps (2.6 epochs) take 18 minutes here, the evaluations included.
  c.total_steps = 600
  c.warmup_epochs = 0.5
  c.base_lr = 1.0
  c.weight_decay = 1e-4
  return c

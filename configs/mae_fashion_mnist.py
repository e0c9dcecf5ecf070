"""MAE on Fashion-MNIST (Debian's dataset-fashion-mnist), about 15 minutes on 2 CPU cores.

python -m ssljax.main --config=configs/mae_fashion_mnist.py

A small ViT with patch 4 (a 7x7 grid): the encoder sees 12 of the 49 patches; the
reconstruction grid lands under WORKDIR/pictures/reconstructions at every eval.

Expected (2-core x86-64 VM, 1 December 2026): linear / 5 per class / k-NN 79.4 / 50.3 / 77.8
against the random ViT's 77.0 / 38.9 / 67.5, in 14.5 minutes, evaluation included
(experiments/results/fashion_mnist_presets.json; docs/results.md).
"""

from ssljax.config import blocks
from ssljax.methods import MAE


def get_config(arg=None):
  del arg
  c = MAE.default_config(image_size=28)
  blocks.fashion_mnist(c)
  c.model.encoder = 'vit_tiny'
  c.model.patch_size = 4
  c.model.vit_width, c.model.vit_depth, c.model.vit_heads = 96, 4, 4
  c.mae.decoder_width, c.mae.decoder_depth, c.mae.decoder_heads = 64, 2, 4
  c.batch_size = 256
  c.epochs = 5
  c.warmup_epochs = 0.5
  c.base_lr = 1.5e-3
  c.checkpoint_every = 500
  c.eval_every = 0  # a mid-run evaluation costs minutes here; the final one is enough
  return c

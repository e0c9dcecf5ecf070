"""I-JEPA on Fashion-MNIST (Debian's dataset-fashion-mnist): 1000 steps of 128 (2.1 epochs) in
19 minutes on 2 CPU cores, the evaluations included
(experiments/results/fashion_mnist_presets.json).

I-JEPA runs three ViTs per step (the target encoder on all 49 patches, the context encoder on
at most 32, the predictor on 4 x (context + target) tokens). Batches of 128 train at ~150
images/s here, batches of 256 at ~100 (measured, not explained; cache effects are the likely
cause): the same 2.1 epochs take 15 minutes instead of 21, in twice the steps, and the target
encoder gains 8.1 points of k-NN and 11.5 of 5-per-class accuracy over its random
initialisation, where 500 steps of 256 gained 3.0 and 4.7
(experiments/results/ijepa_fashion_mnist_sweep.json).

python -m ssljax.main --config=configs/ijepa_fashion_mnist.py

A small ViT with patch 4 (a 7x7 grid, no CLS token): per image 4 target blocks of 6-12
patches and a context block of 36 or 49 patches with the targets cut out; h is the mean of the
target encoder's patch tokens.

Expected (2-core x86-64 VM, 1 December 2026): linear / 5 per class / k-NN 78.3 / 48.6 / 74.7
(target encoder) against the random ViT's 77.1 / 37.1 / 66.6, in 19.3 minutes, evaluation
included (experiments/results/fashion_mnist_presets.json; docs/results.md).
"""

from ssljax.config import blocks
from ssljax.methods import IJEPA


def get_config(arg=None):
  del arg
  c = IJEPA.default_config(image_size=28)
  blocks.fashion_mnist(c)
  c.model.encoder = 'vit_tiny'
  c.model.patch_size = 4
  c.model.vit_width, c.model.vit_depth, c.model.vit_heads = 96, 4, 4
  c.ijepa.pred_width, c.ijepa.pred_depth = 48, 2
  c.batch_size = 128  # base_lr below is per 256: 5e-4 at this batch
  # At most 32 context patches (their mean count is ~25; the cap drops the padding to 49): 1.56x
  # faster. 1000 steps (2.1 epochs): ~15 minutes of training, 4 of evaluation.
  c.ijepa.max_context = 32
  c.total_steps = 1000
  # h comes from the target encoder: at 0.996 -> 1 over 1000 steps it would still hold
  # exp(-1000 * 0.002) = 14% of its random initialisation; at 0.99 -> 1, under 1%.
  c.ema.base = 0.99
  c.warmup_epochs = 0.15
  c.base_lr = 1e-3
  c.checkpoint_every = 500
  return c

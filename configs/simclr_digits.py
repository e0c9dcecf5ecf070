"""SimCLR on scikit-learn's 8x8 digits, upsampled: the quickstart, a few CPU minutes.

python -m ssljax.main --config=configs/simclr_digits.py --workdir=runs/simclr_digits

Expected (2-core x86-64 VM, 30 November 2026): linear / 5 per class / k-NN 94.2 / 81.6 /
92.4 against the random encoder's 70.2 / 47.1 / 57.3, in about 2 minutes (629 images/s);
measured again in December 2026 at seeds 0 and 1: 97.3 / 85.6 / 94.9 and 97.3 / 83.8 / 93.6
(docs/results.md).
"""

from ssljax.config import blocks
from ssljax.methods import SimCLR


def get_config(arg=None):
  del arg
  c = SimCLR.default_config()
  blocks.digits(c)
  c.augment.crop_scale = (0.3, 1.0)  # an 8x8 digit survives little more cropping than this
  c.augment.flip = False  # a mirrored 2 or 5 is another shape
  c.augment.blur_prob = 0.0  # nothing left to blur at this size
  c.model.encoder = 'resnet18'
  c.model.width = 8  # CPU-sized: ~500 img/s on 2 cores (width 16: ~125)
  c.model.proj_dim = 64
  c.loss.temperature = 0.2
  c.batch_size = 256
  c.epochs = 30
  c.warmup_epochs = 2.0
  c.optimizer = 'lars'
  c.base_lr = 1.0
  c.weight_decay = 1e-4
  c.log_every = 20
  c.checkpoint_every = 200
  return c

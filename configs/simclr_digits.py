"""SimCLR on scikit-learn's 8x8 digits, upsampled: the quickstart, a few CPU minutes.

python -m ssljax.main --config=configs/simclr_digits.py --workdir=runs/simclr_digits

Expected (2-core AMD EPYC VM, 6 December 2026, 5 seeds, experiments/kernels_quickstart.py):
linear / 5 per class / k-NN 95.9 +- 1.4 / 84.6 +- 1.6 / 93.9 +- 0.8 against the random encoder's
70.2 / 47.1 / 57.3 (seed 0), in about 40 s (2,200 images/s); with --config.model.kernels=xla
(the accelerators' kernels, run on the CPU) 96.3 +- 0.5 / 86.6 +- 1.6 / 93.6 +- 1.6 at 1,900
images/s. On 30 November the same machine type took about 2 minutes (629 images/s).
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

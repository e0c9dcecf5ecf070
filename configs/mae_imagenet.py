"""MAE on ImageNet, the official recipe (He et al. 2022): ViT-B/16, 75% masking, decoder
512 x 8 blocks x 16 heads, normalized-pixel targets, batch 4096, AdamW (0.9, 0.95) lr 1.5e-4 x
B/256, weight decay 0.05, 800 epochs with 40 warm-up, random resized crop (0.2-1) + flip only.

`--config=configs/mae_imagenet.py:EPOCHS` (default 800; the paper also reports 1600).

Expected: not run here (accelerators). The paper's number: ViT-B/16 fine-tuned 83.6, linear 68.0
top-1 (He et al. 2022).
"""

from ssljax.config import blocks
from ssljax.methods import MAE


def get_config(arg=None):
  c = MAE.default_config(image_size=224)
  blocks.imagenet(c)
  c.model.encoder = 'vit_base'
  c.model.patch_size = 16
  c.model.compute_dtype = 'bfloat16'
  c.batch_size = 4096
  c.epochs = blocks.parse_arg(arg, epochs=800).epochs
  c.warmup_epochs = 40.0
  # The headline number is fine-tuning (FINETUNE.md, main_finetune.py), then the linear probe.
  c.eval = ('finetune', 'linear_sgd', 'knn')
  ft = c.eval_config.finetune
  ft.epochs, ft.warmup_epochs, ft.batch_size = 100.0, 5.0, 1024
  ft.optimizer, ft.base_lr, ft.weight_decay = 'adamw', 5e-4, 0.05
  ft.layer_decay, ft.drop_path, ft.label_smoothing = 0.65, 0.1, 0.1
  ft.mixup, ft.cutmix, ft.random_erasing = 0.8, 1.0, 0.25
  ft.randaugment = 'rand-m9-mstd0.5-inc1'
  ft.crop_scale, ft.flip = (0.08, 1.0), True
  return c

"""The published settings each paper config reproduces, and the official file each comes from.

One table for two readers: `tests/test_recipes.py` pins every config to it (ssljax's value where a
row says why it differs, else the official one), so an edit cannot drift silently; `python
tests/recipes.py` prints it as the tables in configs/README.md, which a test keeps equal to it.
Only settings that change a reproduced number are listed; the rest are the methods' defaults.
"""

from __future__ import annotations

from typing import Any, NamedTuple

SIMCLR = 'google-research/simclr'
BYOL = 'deepmind-research/byol'
DINO = 'facebookresearch/dino'
MAE = 'facebookresearch/mae'
IJEPA = 'facebookresearch/ijepa'
SAME = object()


class Setting(NamedTuple):
  field: str  # the dotted config field
  official: Any  # in ssljax's units (a learning rate per 256 images, a batch over all devices)
  source: str  # the official file (and flag) the value comes from
  ours: Any = SAME  # ssljax's value, where it differs
  why: str = ''  # why it differs


def _linear(repo: str, source: str) -> Setting:
  """The paper's linear protocol: eval_config.linear_sgd's preset for the method (and k-NN)."""
  return Setting('eval', ('linear_sgd', 'knn'), f'{repo} {source}: its linear protocol')


def _full_splits(repo: str) -> Setting:
  return Setting('eval_config.max_examples', 0, f'{repo}: every label of the train split')


def _imagenet_pixels(repo: str, source: str) -> list[Setting]:
  return [
    Setting('model.pixel_mean', (0.485, 0.456, 0.406), f'{repo} {source}'),
    Setting('model.pixel_std', (0.229, 0.224, 0.225), f'{repo} {source}'),
  ]


_BYOL_COMMON = [
  Setting('batch_size', 4096, f'{BYOL} README.md'),
  Setting('warmup_epochs', 10.0, f'{BYOL} configs/byol.py'),
  Setting('optimizer', 'lars', f'{BYOL} configs/byol.py optimizer_config (LARS, eta 1e-3)'),
  Setting('model.proj_hidden', 4096, f'{BYOL} configs/byol.py projector_hidden_size'),
  Setting('model.proj_dim', 256, f'{BYOL} configs/byol.py projector_output_size'),
  Setting('views.view1.blur_prob', 1.0, f'{BYOL} utils/augmentations.py'),
  Setting('views.view2.blur_prob', 0.1, f'{BYOL} utils/augmentations.py'),
  Setting('views.view2.solarize_prob', 0.2, f'{BYOL} utils/augmentations.py'),
  Setting('augment.color_jitter', (0.4, 0.4, 0.2, 0.1), f'{BYOL} utils/augmentations.py'),
  _linear(BYOL, 'configs/eval.py'),
  _full_splits(BYOL),
  *_imagenet_pixels(BYOL, 'utils/dataset.py'),
]


def _byol(epochs: int, lr: float, wd: float, tau: float) -> list[Setting]:
  preset = f'{BYOL} configs/byol.py, the {epochs}-epoch preset'
  return [
    Setting('epochs', epochs, preset),
    Setting('base_lr', lr, preset),
    Setting('weight_decay', wd, preset),
    Setting('ema.base', tau, preset),
    *_BYOL_COMMON,
  ]


_DINO_COMMON = [
  Setting('batch_size', 1024, f'{DINO} README.md (64 per GPU on 16 GPUs)'),
  Setting('base_lr', 5e-4, f'{DINO} main_dino.py --lr'),
  Setting('warmup_epochs', 10.0, f'{DINO} main_dino.py --warmup_epochs'),
  Setting('weight_decay', 0.04, f'{DINO} main_dino.py --weight_decay'),
  Setting('weight_decay_end', 0.4, f'{DINO} main_dino.py --weight_decay_end'),
  Setting('grad_clip', 3.0, f'{DINO} main_dino.py --clip_grad'),
  Setting('grad_clip_by', 'parameter_norm', f'{DINO} utils.py clip_gradients'),
  Setting('ema.base', 0.996, f'{DINO} main_dino.py --momentum_teacher'),
  Setting('dino.out_dim', 65536, f'{DINO} main_dino.py --out_dim'),
  Setting('dino.student_temp', 0.1, f'{DINO} main_dino.py DINOLoss'),
  Setting('dino.warmup_teacher_temp', 0.04, f'{DINO} main_dino.py --warmup_teacher_temp'),
  Setting('dino.center_momentum', 0.9, f'{DINO} main_dino.py DINOLoss'),
  Setting('dino.freeze_last_layer_epochs', 1.0, f'{DINO} main_dino.py --freeze_last_layer'),
  Setting('model.drop_path', 0.1, f'{DINO} main_dino.py --drop_path_rate'),
  Setting('augment.crop_scale', (0.4, 1.0), f'{DINO} main_dino.py --global_crops_scale'),
  Setting('views.local.count', 8, f'{DINO} main_dino.py --local_crops_number'),
  Setting('views.local.crop_scale', (0.05, 0.4), f'{DINO} main_dino.py --local_crops_scale'),
  Setting('views.local.image_size', 96, f'{DINO} main_dino.py DataAugmentationDINO'),
  _linear(DINO, 'eval_linear.py'),
  _full_splits(DINO),
  *_imagenet_pixels(DINO, 'main_dino.py DataAugmentationDINO'),
]

_IJEPA_YAML = f'{IJEPA} configs/in1k_vith14_ep300.yaml'

RECIPES: dict[str, list[Setting]] = {
  'simclr_imagenet.py': [
    Setting('batch_size', 4096, f'{SIMCLR} README.md (v1 pretrain command)'),
    Setting('epochs', 100, f'{SIMCLR} README.md (v1 pretrain command)'),
    Setting('base_lr', 0.3, f'{SIMCLR} README.md (v1 pretrain command)'),
    Setting('lr_scaling', 'linear', f'{SIMCLR} run.py --learning_rate (per 256 images)'),
    Setting('weight_decay', 1e-6, f'{SIMCLR} README.md (v1 pretrain command)'),
    Setting('loss.temperature', 0.1, f'{SIMCLR} README.md (v1 pretrain command)'),
    Setting('optimizer', 'lars', f'{SIMCLR} run.py --optimizer'),
    Setting('warmup_epochs', 10.0, f'{SIMCLR} run.py --warmup_epochs'),
    Setting('model.proj_dim', 128, f'{SIMCLR} run.py --head_proj_dim'),
    Setting('model.proj_layers', 2, f'{SIMCLR} run.py --num_nlh_layers 1 (+ the output layer)'),
    Setting('augment.crop_scale', (0.08, 1.0), f'{SIMCLR} data_util.py area_range'),
    Setting('augment.color_strength', 1.0, f'{SIMCLR} run.py --color_jitter_strength'),
    Setting('augment.blur_prob', 0.5, f'{SIMCLR} data_util.py random_blur'),
    Setting('model.pixel_mean', (), f'{SIMCLR} data_util.py: [0, 1] pixels, none'),
    Setting('model.pixel_std', (), f'{SIMCLR} data_util.py: [0, 1] pixels, none'),
    _linear(SIMCLR, 'README.md (v1 linear eval)'),
    _full_splits(SIMCLR),
  ],
  'byol_imagenet.py:300': _byol(300, 0.3, 1e-6, 0.99),
  'byol_imagenet.py:1000': _byol(1000, 0.2, 1.5e-6, 0.996),
  'dino_imagenet.py:100': [
    Setting('epochs', 100, f'{DINO} main_dino.py --epochs'),
    Setting('dino.teacher_temp', 0.04, f'{DINO} main_dino.py --teacher_temp'),
    Setting('dino.norm_last_layer', True, f'{DINO} main_dino.py --norm_last_layer'),
    *_DINO_COMMON,
  ],
  'dino_imagenet.py:300': [
    Setting('epochs', 300, f'{DINO} README.md (ViT-S/16, 76.0 linear)'),
    Setting('dino.teacher_temp', 0.07, f'{DINO} README.md --teacher_temp'),
    Setting('dino.warmup_teacher_temp_epochs', 30.0, f'{DINO} README.md'),
    Setting('dino.norm_last_layer', False, f'{DINO} README.md --norm_last_layer false'),
    *_DINO_COMMON,
  ],
  'mae_imagenet.py': [
    Setting('batch_size', 4096, f'{MAE} PRETRAIN.md (effective batch)'),
    Setting('epochs', 800, f'{MAE} PRETRAIN.md'),
    Setting('base_lr', 1.5e-4, f'{MAE} PRETRAIN.md --blr'),
    Setting('warmup_epochs', 40.0, f'{MAE} PRETRAIN.md'),
    Setting('weight_decay', 0.05, f'{MAE} PRETRAIN.md'),
    Setting('b2', 0.95, f'{MAE} main_pretrain.py AdamW betas'),
    Setting('grad_clip', 0.0, f'{MAE} main_pretrain.py (no clipping)'),
    Setting('mae.mask_ratio', 0.75, f'{MAE} PRETRAIN.md --mask_ratio'),
    Setting('mae.norm_pix', True, f'{MAE} PRETRAIN.md --norm_pix_loss'),
    Setting('mae.decoder_width', 512, f'{MAE} models_mae.py mae_vit_base_patch16'),
    Setting('mae.decoder_depth', 8, f'{MAE} models_mae.py mae_vit_base_patch16'),
    Setting('mae.decoder_heads', 16, f'{MAE} models_mae.py mae_vit_base_patch16'),
    Setting('augment.crop_scale', (0.2, 1.0), f'{MAE} main_pretrain.py transform_train'),
    Setting('augment.color_strength', 0.0, f'{MAE} main_pretrain.py transform_train'),
    Setting(
      'eval',
      ('finetune', 'linear_sgd', 'knn'),
      f'{MAE} FINETUNE.md, main_linprobe.py: fine-tuning (the headline) and its linear protocol',
    ),
    *[
      Setting(f'eval_config.finetune.{field}', value, f'{MAE} {source}')
      for field, value, source in (
        ('epochs', 100.0, 'FINETUNE.md'),
        ('warmup_epochs', 5.0, 'main_finetune.py --warmup_epochs'),
        ('batch_size', 1024, 'FINETUNE.md (effective batch)'),
        ('optimizer', 'adamw', 'main_finetune.py'),
        ('base_lr', 5e-4, 'FINETUNE.md --blr'),
        ('weight_decay', 0.05, 'FINETUNE.md'),
        ('layer_decay', 0.65, 'FINETUNE.md (ViT-B)'),
        ('drop_path', 0.1, 'FINETUNE.md'),
        ('label_smoothing', 0.1, 'main_finetune.py --smoothing'),
        ('mixup', 0.8, 'FINETUNE.md'),
        ('cutmix', 1.0, 'FINETUNE.md'),
        ('random_erasing', 0.25, 'FINETUNE.md --reprob'),
        ('randaugment', 'rand-m9-mstd0.5-inc1', 'main_finetune.py --aa'),
        ('crop_scale', (0.08, 1.0), 'util/datasets.py create_transform'),
      )
    ],
    _full_splits(MAE),
    *_imagenet_pixels(MAE, 'main_pretrain.py transform_train'),
  ],
  'ijepa_imagenet.py': [
    Setting('batch_size', 2048, f'{_IJEPA_YAML} (128 per GPU on 16 GPUs)'),
    Setting('epochs', 300, _IJEPA_YAML),
    Setting('base_lr', 1.25e-4, f'{_IJEPA_YAML}: lr 1e-3 at batch 2048'),
    Setting('warmup_epochs', 40.0, _IJEPA_YAML),
    Setting('weight_decay', 0.04, _IJEPA_YAML),
    Setting('weight_decay_end', 0.4, _IJEPA_YAML),
    Setting('ema.base', 0.996, _IJEPA_YAML),
    Setting('ijepa.ema_end', 1.0, _IJEPA_YAML),
    Setting('model.patch_size', 14, _IJEPA_YAML),
    Setting('ijepa.pred_width', 384, f'{_IJEPA_YAML} pred_emb_dim'),
    Setting('ijepa.pred_depth', 12, _IJEPA_YAML),
    Setting('ijepa.num_targets', 4, f'{_IJEPA_YAML} num_pred_masks'),
    Setting('ijepa.target_scale', (0.15, 0.2), f'{_IJEPA_YAML} pred_mask_scale'),
    Setting('ijepa.target_aspect', (0.75, 1.5), f'{_IJEPA_YAML} aspect_ratio'),
    Setting('ijepa.context_scale', (0.85, 1.0), f'{_IJEPA_YAML} enc_mask_scale'),
    Setting('ijepa.min_keep', 10, _IJEPA_YAML),
    Setting('ijepa.mask_geometry', 'official', f'{IJEPA} src/masks/multiblock.py'),
    Setting('ijepa.tries', 20, f'{IJEPA} src/masks/multiblock.py (og_timeout)'),
    Setting('loss.kind', 'smooth_l1', f'{IJEPA} src/train.py'),
    Setting('augment.crop_scale', (0.3, 1.0), _IJEPA_YAML),
    Setting('augment.flip', False, f'{_IJEPA_YAML} use_horizontal_flip'),
    Setting('augment.color_strength', 0.0, f'{_IJEPA_YAML} use_color_distortion'),
    _full_splits(IJEPA),
    *_imagenet_pixels(IJEPA, 'src/transforms.py'),
  ],
}


def expected(setting: Setting) -> Any:
  """The value the config must hold."""
  return setting.official if setting.ours is SAME else setting.ours


def _cell(value: Any) -> str:
  return value if isinstance(value, str) and ' ' in value else f'`{value}`'  # prose stays prose


def markdown() -> str:
  """configs/README.md's tables: one per paper config."""
  lines = []
  for name, settings in RECIPES.items():
    config, _, arg = name.partition(':')
    command = f'--config=configs/{config}' + (f':{arg}' if arg else '')
    lines += [
      '',
      f'### `{command}`',
      '',
      '| setting | official | from | ssljax |',
      '|---|---|---|---|',
    ]
    for s in settings:
      ours = '=' if s.ours is SAME else f'{_cell(s.ours)}: {s.why}'
      lines.append(f'| `{s.field}` | {_cell(s.official)} | {s.source} | {ours} |')
  return '\n'.join(lines[1:]) + '\n'


if __name__ == '__main__':
  print(markdown(), end='')

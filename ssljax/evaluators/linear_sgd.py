"""The papers' linear protocol: a linear head trained by SGD or LARS on augmented crops, the encoder
frozen (inference mode, no gradient), top-1 on the test split. It runs on the mesh through the
fine-tuning loop (`finetune.finetune(..., frozen=True)`); L-BFGS on standardized features
(`linear`) stays the fast default for small data.

`eval_config.linear_sgd.preset` picks a paper's protocol; any field set beside it overrides it:
- simclr: google-research/simclr README.md (v1 linear eval): Nesterov SGD, lr 0.1 x B/256, no
  weight decay, 90 epochs, batch 4096, no warm-up, the head zero-initialised;
- byol: deepmind-research/byol configs/eval.py: Nesterov SGD, lr 0.2 x B/256, 80 epochs, no warm-up
  (batch 1024 in the paper);
- dino: facebookresearch/dino eval_linear.py: SGD (momentum 0.9), lr 1e-3 x B/256, no weight
  decay, 100 epochs, batch 1024, cosine without warm-up, the head N(0, 0.01), on the CLS tokens
  of the last 4 blocks (ViT-S);
- mae: facebookresearch/mae main_linprobe.py: LARS, lr 0.1 x B/256, no weight decay, 90 epochs
  with 10 warm-up, batch 16384, BatchNorm without affine (eps 1e-6) before the head, the head
  N(0, 0.01) truncated.
Every preset trains on random resized crops (area 0.08-1) and flips, as the official code does;
eval_config.linear_sgd.crop_scale / flip change that (small data: the pretraining's).
The presets' learning rates are for their batches and their 80-100 epochs of ImageNet: at a
CPU-sized batch the x B/256 scaling shrinks the step (LARS's, whose trust ratio moves a weight by
about lr / 1000 of its norm a step, most), so small data wants base_lr set beside the preset
(experiments/eval_protocols.py measures it).
"""

from __future__ import annotations

import ml_collections

from ssljax.config.checks import Checks
from ssljax.evaluators import finetune as finetune_lib

PRESETS: dict[str, dict] = {
  'simclr': dict(
    optimizer='sgd', base_lr=0.1, weight_decay=0.0, epochs=90.0, warmup_epochs=0.0,
    batch_size=4096, head_init_std=0.0, head_norm=False, last_blocks=1,
  ),
  'byol': dict(
    optimizer='sgd', base_lr=0.2, weight_decay=0.0, epochs=80.0, warmup_epochs=0.0,
    batch_size=1024, head_init_std=0.01, head_norm=False, last_blocks=1,
  ),
  'dino': dict(
    optimizer='momentum', base_lr=1e-3, weight_decay=0.0, epochs=100.0, warmup_epochs=0.0,
    batch_size=1024, head_init_std=0.01, head_norm=False, last_blocks=4,
  ),
  'mae': dict(
    optimizer='lars', base_lr=0.1, weight_decay=0.0, epochs=90.0, warmup_epochs=10.0,
    batch_size=16384, head_init_std=0.01, head_norm=True, last_blocks=1,
  ),
}  # fmt: skip
# The preset 'auto' picks by config.method; I-JEPA's code publishes no linear protocol: MAE's.
METHOD_PRESETS = {'simclr': 'simclr', 'triplet': 'simclr', 'byol': 'byol', 'dino': 'dino'}
FIELDS = tuple(PRESETS['mae'])


def preset_name(config: ml_collections.ConfigDict) -> str:
  return preset_name_for(config.method, config.eval_config.linear_sgd.preset)


def preset_name_for(method: str, preset: str) -> str:
  """The preset `preset` names for `method` ('auto': the method's own)."""
  return METHOD_PRESETS.get(method, 'mae') if preset == 'auto' else preset


def settings(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """eval_config.linear_sgd resolved: its preset's values under the fields it leaves None, the
  crop scale and flip it leaves None taken from config.augment, and the fine-tuning fields the
  loop reads set to what a frozen encoder needs (no layer decay, drop path or smoothing)."""
  ls = config.eval_config.linear_sgd
  out = dict(PRESETS[preset_name(config)])
  out.update({k: ls[k] for k in FIELDS if ls.get(k) is not None})
  out.update(
    min_steps=int(ls.min_steps),
    momentum=0.9,
    layer_decay=1.0,
    label_smoothing=0.0,
    drop_path=0.0,
    mixup=0.0,
    cutmix=0.0,
    mix_switch_prob=0.5,
    random_erasing=0.0,
    randaugment='',
    seed=int(ls.seed),
    crop_scale=tuple(config.augment.crop_scale if ls.crop_scale is None else ls.crop_scale),
    flip=bool(config.augment.flip if ls.flip is None else ls.flip),
  )
  return ml_collections.ConfigDict(out)


def check_config(checks: Checks) -> None:
  """Records every problem of config.eval_config.linear_sgd: no model or data needed."""
  if not checks.choice('eval_config.linear_sgd.preset', ('auto', *PRESETS)):
    return
  checks.count('eval_config.linear_sgd.min_steps', 0)
  checks.count('eval_config.linear_sgd.seed', 0)
  resolved = settings(checks.config)
  sub = Checks(ml_collections.ConfigDict({'linear_sgd': resolved}))
  finetune_lib.check_config(sub, 'linear_sgd')
  sub.count('linear_sgd.last_blocks', 1)
  sub.nonnegative('linear_sgd.head_init_std')
  sub.boolean('linear_sgd.head_norm')
  checks.problems.extend(
    p.replace('config.linear_sgd.', 'config.eval_config.linear_sgd.') for p in sub.problems
  )
  config = checks.config
  if resolved.last_blocks > 1 and not (
    config.model.encoder.startswith('vit') and config.model.cls_token
  ):
    checks.fail(
      'eval_config.linear_sgd.last_blocks',
      f'1 for an encoder without a ViT CLS token (preset {preset_name(config)!r} sets '
      f'{resolved.last_blocks})',
      1,
      value=resolved.last_blocks,
    )

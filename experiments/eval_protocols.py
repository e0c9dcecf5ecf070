"""Every evaluation protocol on one finished run, with the wall time each took (issue 19): the
L-BFGS probe (`linear`), the papers' linear protocol (`linear_sgd`, its presets), fine-tuning
as before and with MAE's recipe (RandAugment m9, erasing 0.25, mixup 0.8, cutmix 1.0, layer
decay 0.65).

python experiments/eval_protocols.py --workdir=RUN [--budget=100_per_class]

CPU-sized: every protocol sees the same labelled subset (--budget) of the train split and the
whole test split; the SGD protocols use batch --batch (lr x B/256) and --epochs passes, since the
papers' (batch 1024-16384, 80-100 epochs on 1.28M images) are for accelerators. Writes
experiments/results/eval_protocols_<run name>.json; the run's files are only read.
"""

from __future__ import annotations

import json
import os
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app, flags  # noqa: E402

from ssljax import build, data, restore, sharding  # noqa: E402
from ssljax.evaluators import linear_sgd, protocols  # noqa: E402

_WORKDIR = flags.DEFINE_string('workdir', None, 'a finished run', required=True)
_BUDGET = flags.DEFINE_string('budget', '100_per_class', 'labelled train images for every protocol')
_BATCH = flags.DEFINE_integer('batch', 64, 'batch of the SGD protocols')
_EPOCHS = flags.DEFINE_float('epochs', 30.0, 'passes over the labelled subset (SGD protocols)')
_PRESETS = flags.DEFINE_list('presets', ['mae', 'dino', 'simclr'], 'linear_sgd presets to run')
_LINEAR_LR = flags.DEFINE_float(
  'linear_base_lr', None, "linear_sgd's base lr (x B/256) instead of the presets'"
)
_ONLY = flags.DEFINE_list('only', [], 'rows to run (names as printed; default all)')


def _rows(config) -> dict[str, tuple[str, dict]]:
  """name -> (protocol, eval_config overrides)."""
  rows = {'linear (L-BFGS)': ('linear', {})}
  has_cls = config.model.encoder.startswith('vit') and config.model.cls_token
  for preset in _PRESETS.value:
    name = linear_sgd.preset_name_for(config.method, preset)
    overrides = {'preset': preset, 'batch_size': _BATCH.value, 'epochs': _EPOCHS.value}
    if name == 'dino':
      overrides['last_blocks'] = 4 if has_cls else 1  # the CLS of the last 4 blocks (ViT-S)
    if _LINEAR_LR.value is not None:
      overrides['base_lr'] = _LINEAR_LR.value
      name = f'{name} at base lr {_LINEAR_LR.value:g}'
    rows[f'linear_sgd ({name})'] = ('linear_sgd', {'linear_sgd': overrides})
  rows['finetune'] = ('finetune', {'finetune': {'epochs': _EPOCHS.value}})
  mae = dict(
    epochs=_EPOCHS.value, mixup=0.8, cutmix=1.0, random_erasing=0.25, layer_decay=0.65,
    label_smoothing=0.1, drop_path=0.1, crop_scale=(0.08, 1.0), randaugment='rand-m9-mstd0.5-inc1',
  )  # fmt: skip
  rows['finetune (MAE recipe)'] = ('finetune', {'finetune': mae})
  return {k: v for k, v in rows.items() if not _ONLY.value or k in _ONLY.value}


def main(argv):
  del argv
  run = _WORKDIR.value
  base = restore.load_config(run)
  mesh = sharding.make_mesh()
  method, _, _, init, _ = build.build_run(base, mesh, data.dataset_info(base))
  state = restore.latest_state(base, run, init, mesh)
  splits = {s: data.eval_split(base, s) for s in ('train', 'test')}
  out = {'run': run, 'step': int(state.step), 'budget': _BUDGET.value, 'rows': {}}
  for name, (protocol, overrides) in _rows(base).items():
    config = base.copy_and_resolve_references()
    with config.unlocked():
      config.eval = (protocol,)
      config.eval_config.label_budgets = (_BUDGET.value,)
      for section, values in overrides.items():
        config.eval_config[section].update(values)
    start = time.perf_counter()
    results = protocols.evaluate(config, method, state.params, state.model_state, splits, mesh)
    (accuracy,) = results.values()
    out['rows'][name] = {'accuracy': accuracy, 'wall_s': round(time.perf_counter() - start, 1)}
    print(f'{name:32s} {100 * accuracy:6.2f}  {out["rows"][name]["wall_s"]:7.1f} s', flush=True)
  path = f'experiments/results/eval_protocols_{os.path.basename(os.path.normpath(run))}.json'
  if os.path.exists(path):  # rows of an earlier invocation stay (--only adds rows)
    with open(path) as f:
      out['rows'] = {**json.load(f)['rows'], **out['rows']}
  os.makedirs('experiments/results', exist_ok=True)
  with open(path, 'w') as f:
    json.dump(out, f, indent=1)


if __name__ == '__main__':
  app.run(main)

"""Accuracy against the number of labels: what pretraining without labels buys (issue 7).

python experiments/label_efficiency.py --config=configs/simclr_fashion_mnist.py \
    --runs=simclr=runs/simclr_fashion_mnist,byol=runs/byol_fashion_mnist \
    [--budgets=10_per_class,100_per_class,100%] [--protocols=linear,knn,finetune] \
    [--finetune_runs=simclr] [--baselines=experiments/results/label_efficiency_fashion_mnist.csv]
    [--max_finetune_images=120000] [--out=experiments/results/label_efficiency_fashion_mnist]

Rows, every one on the same class-balanced labelled subsets (eval_config.subset_seed):
- raw pixels: the linear probe and k-NN on the flattened images;
- random encoder: the probes on the randomly initialised encoder of --config's architecture;
- supervised: that architecture trained from scratch on the subset (the fine-tuning recipe from a
  random init), the row a pretrained encoder has to beat when labels are few;
- each --runs entry: its latest checkpoint, linear / k-NN / fine-tuned (fine-tuned only for the
  --finetune_runs names when that flag is given: a ViT fine-tune at 100% is hours on a CPU).
--baselines=CSV takes the raw-pixel, random-encoder and supervised rows from an earlier output
instead of recomputing them: they depend only on --config's data, architecture and eval_config,
not on the runs (the supervised row is most of the time); with --keep_runs its rows of the runs
not named in --runs stay too, so one new method's rows join an earlier table.
--config's eval_config (k-NN k, fine-tuning recipe, seeds) applies to every row. Fine-tuning on a
budget of n images runs min(finetune.epochs, max_finetune_images / n) epochs, so the 100% budget
fits a CPU. Writes OUT.csv, OUT.png and OUT.md (the table, also printed).
"""

from __future__ import annotations

import csv
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import ml_collections  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from ssljax import build, data, restore, sharding  # noqa: E402
from ssljax.evaluators import protocols  # noqa: E402
from ssljax.evaluators.label_subset import parse_label_budgets  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Data, baseline model, eval_config.')
_RUNS = flags.DEFINE_list('runs', [], 'NAME=RUN_DIR pretrained runs to compare.')
_BUDGETS = flags.DEFINE_list('budgets', ['10_per_class', '100_per_class', '100%'], 'Label budgets.')
_PROTOCOLS = flags.DEFINE_list('protocols', ['linear', 'knn', 'finetune'], 'Per pretrained run.')
_FINETUNE_RUNS = flags.DEFINE_list('finetune_runs', None, 'Runs to fine-tune (default: all).')
_BASELINES = flags.DEFINE_string('baselines', '', 'CSV to take the baseline rows from.')
_KEEP_RUNS = flags.DEFINE_bool(
  'keep_runs', False, 'With --baselines: keep its rows of runs not in --runs too (add a method).'
)
_MAX_FT = flags.DEFINE_integer(
  'max_finetune_images', 120_000, 'Cap on images seen per fine-tuning run.'
)
_OUT = flags.DEFINE_string('out', '', 'Output prefix (default experiments/results/label_...).')

FEATURE_PROTOCOLS = ('linear', 'knn')
BASELINES = ('raw pixels', 'random encoder', 'supervised')
LABELS = {'linear': 'linear probe', 'knn': 'k-NN', 'finetune': 'fine-tune / supervised'}


def _with_eval(config, eval_config, names, budgets, epochs=None):
  """config with the shared eval_config, these protocols and budgets (and fine-tune epochs)."""
  c = ml_collections.ConfigDict(config.to_dict())
  with c.unlocked():
    c.eval_config = ml_collections.ConfigDict(eval_config.to_dict())
    c.eval = tuple(names)
    c.eval_config.label_budgets = tuple(budgets)
    c.eval_config.random_init = False
    if epochs is not None:
      c.eval_config.finetune.epochs = float(epochs)
  return c


def _evaluate(config, method, params, model_state, splits, mesh, budgets, names, counts):
  """{(protocol, budget key): accuracy}: feature protocols in one pass, training ones per budget
  with their capped epoch count."""
  out = {}
  features = [p for p in names if p in FEATURE_PROTOCOLS]
  if features:
    c = _with_eval(config, config.eval_config, features, [b.key for b in budgets])
    res = protocols.evaluate(c, method, params, model_state, splits, mesh)
    out.update({(p, b.key): res[f'{p}@{b.key}'] for p in features for b in budgets})
  for p in (p for p in names if p not in FEATURE_PROTOCOLS):
    for b in budgets:
      epochs = min(config.eval_config.finetune.epochs, _MAX_FT.value / counts[b.key])
      c = _with_eval(config, config.eval_config, [p], [b.key], epochs)
      t0 = time.perf_counter()
      out[(p, b.key)] = protocols.evaluate(c, method, params, model_state, splits, mesh)[
        f'{p}@{b.key}'
      ]
      print(f'  {p}@{b.key}: {epochs:.1f} epochs, {time.perf_counter() - t0:.0f} s', flush=True)
  return out


def _plot(rows, budgets, counts, path):
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  shown = [p for p in LABELS if any(r['protocol'] == p for r in rows)]
  fig = Figure(figsize=(4.2 * len(shown), 3.6))
  FigureCanvasAgg(fig)
  xs = [counts[b.key] for b in budgets]
  encoders = list(dict.fromkeys(r['encoder'] for r in rows))
  colors = {e: f'C{i}' for i, e in enumerate(encoders)}  # one colour per encoder in every panel
  for i, p in enumerate(shown):
    ax = fig.add_subplot(1, len(shown), i + 1)
    for encoder in dict.fromkeys(r['encoder'] for r in rows if r['protocol'] == p):
      acc = {
        r['budget']: r['accuracy'] for r in rows if (r['protocol'], r['encoder']) == (p, encoder)
      }
      ys = [100 * acc[b.key] for b in budgets]
      style = '--' if encoder in BASELINES else '-'
      ax.plot(xs, ys, style, marker='o', color=colors[encoder], label=encoder)
    ax.set_xscale('log')
    ax.set_xticks(xs, [f'{b.key}\n({n})' for b, n in zip(budgets, xs, strict=True)], fontsize=7)
    ax.set_title(LABELS[p])
    ax.set_ylabel('test accuracy (%)')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def baselines(config, splits, budgets, counts, mesh, add) -> None:
  """The rows every run is compared with: raw pixels, the random encoder of --config's
  architecture and that architecture trained from scratch on each subset."""
  seed = config.eval_config.subset_seed
  # Raw pixels: the probes on flattened images, same subsets.
  pixels = {s: (x.reshape(len(x), -1), y) for s, (x, y) in splits.items()}
  res = {}
  for p in FEATURE_PROTOCOLS:
    key, fn = protocols.PROTOCOLS[p]
    for b in budgets:
      idx = b.subset(pixels['train'][1], seed=seed)
      train_xy = (pixels['train'][0][idx], pixels['train'][1][idx])
      num_classes = int(pixels['train'][1].max()) + 1
      res[(p, b.key)] = fn(train_xy, pixels['test'], num_classes, config.eval_config)
  add('raw pixels', res)

  # The random encoder (probes) and the same architecture trained from scratch.
  method, _, _, init, _ = build.build_run(config, mesh, data.dataset_info(config))
  fresh = jax.jit(init)(jax.random.PRNGKey(config.seed))
  add(
    'random encoder',
    _evaluate(
      config,
      method,
      fresh.params,
      fresh.model_state,
      splits,
      mesh,
      budgets,
      FEATURE_PROTOCOLS,
      counts,
    ),
  )
  sup = _evaluate(
    config, method, fresh.params, fresh.model_state, splits, mesh, budgets, ['supervised'], counts
  )
  add('supervised', {('finetune', b): acc for (_, b), acc in sup.items()})


def main(argv) -> None:
  del argv
  config = _CONFIG.value
  budgets = parse_label_budgets(_BUDGETS.value, '--budgets')
  name = os.path.splitext(os.path.basename(config_flags.get_config_filename(flags.FLAGS['config'])))
  dataset = name[0].split('_', 1)[-1]
  out = _OUT.value or f'experiments/results/label_efficiency_{dataset}'
  os.makedirs(os.path.dirname(out) or '.', exist_ok=True)
  mesh = sharding.make_mesh()
  cache = {}

  def splits_for(c):
    """The eval splits as `c` preprocesses them (a run may use another image size); the labels,
    hence the label subsets, are the same for every run of the dataset."""
    key = c.data.to_json(sort_keys=True)
    if key not in cache:
      cache[key] = {s: data.load_eval_split(c, s) for s in ('train', 'test')}
    return cache[key]

  splits = splits_for(config)
  seed = config.eval_config.subset_seed
  counts = {b.key: len(b.subset(splits['train'][1], seed=seed)) for b in budgets}
  rows = []

  def add(encoder, results):
    for (protocol, budget), acc in results.items():
      rows.append(
        dict(encoder=encoder, protocol=protocol, budget=budget, labels=counts[budget], accuracy=acc)
      )
      print(f'{encoder:>16} {protocol:>9} {budget:>14}: {100 * acc:6.2f}', flush=True)

  if _BASELINES.value:
    names = {item.partition('=')[0] for item in _RUNS.value}
    with open(_BASELINES.value) as f:
      kept = [
        r
        for r in csv.DictReader(f)
        if r['encoder'] in BASELINES or (_KEEP_RUNS.value and r['encoder'] not in names)
      ]
    if {r['budget'] for r in kept} != set(counts) or any(
      int(r['labels']) != counts[r['budget']] for r in kept
    ):
      raise app.UsageError(f'--baselines={_BASELINES.value}: other label budgets than --budgets')
    rows += [dict(r, labels=int(r['labels']), accuracy=float(r['accuracy'])) for r in kept]
  else:
    baselines(config, splits, budgets, counts, mesh, add)

  for item in _RUNS.value:
    run_name, _, run_dir = item.partition('=')
    run_config = restore.load_config(run_dir)
    with run_config.unlocked():
      run_config.eval_config = config.eval_config
    run_method, state = restore.restore_latest(run_config, run_dir)
    tune = _FINETUNE_RUNS.value is None or run_name in _FINETUNE_RUNS.value
    add(
      run_name,
      _evaluate(
        run_config,
        run_method,
        state.params,
        state.model_state,
        splits_for(run_config),
        mesh,
        budgets,
        [p for p in _PROTOCOLS.value if tune or p != 'finetune'],
        counts,
      ),
    )

  with open(out + '.csv', 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=['encoder', 'protocol', 'budget', 'labels', 'accuracy'])
    writer.writeheader()
    writer.writerows(rows)
  _plot(rows, budgets, counts, out + '.png')
  header = '| encoder | protocol | ' + ' | '.join(f'{b.key} ({counts[b.key]})' for b in budgets)
  lines = [header + ' |', '|---|---|' + '---|' * len(budgets)]
  for encoder, protocol in dict.fromkeys((r['encoder'], r['protocol']) for r in rows):
    acc = {
      r['budget']: r['accuracy']
      for r in rows
      if (r['encoder'], r['protocol']) == (encoder, protocol)
    }
    cells = ' | '.join(f'{100 * acc[b.key]:.2f}' if b.key in acc else '-' for b in budgets)
    lines.append(f'| {encoder} | {protocol} | {cells} |')
  table = '\n'.join(lines)
  with open(out + '.md', 'w') as f:
    f.write(table + '\n')
  print(table)
  print(f'wrote {out}.csv, {out}.png, {out}.md')


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main)

"""One Markdown page per run, readable without TensorBoard: WORKDIR/report.md.

It collects what a run leaves in its workdir: a summary, the results table (pretrained against
random init), training and evaluation curves drawn to WORKDIR/report/{loss,eval}.png from
metrics.jsonl, the latest pictures under WORKDIR/pictures, and the config. Every link is relative,
so the workdir can be copied or attached as it is. Training rewrites the page after each
evaluation and at the end (process 0, `config.report`); for any run, at any time:

  python -m ssljax.monitor.report --workdir=DIR

Reading files and plotting only, so no JAX import; figures are built as in `ssljax.monitor.pictures`
(a `Figure` on the Agg canvas, never pyplot). Half-written or non-finite input must not break
the page: a NaN loss is the very thing a reader needs to see.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
import urllib.parse
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ssljax import errors, paths
from ssljax.monitor import collapse, pictures

REPORT = 'report.md'
PLOTS = 'report'  # WORKDIR/report/: loss.png, eval.png
_NOT_PLOTTED = (
  'images_per_sec',  # a speed, summarised in the text; it swings at compile time
  'data/skipped_files',  # a count, shown in the text with the files
  'state_bytes_per_device',  # logged once at the start, shown in the text
)
_DPI = 100
SKIPPED_FILES = 'skipped_files.txt'  # unreadable image files the data source left out
_STEP_FRAME = re.compile(r'^step_(\d+)\.png$')
_KIND_TITLES = {
  'embeddings': 'Embeddings (2-D projection of test h, coloured by label)',
  'attention': 'Attention (last block, CLS to patches, every head)',
  'reconstructions': 'Reconstructions',
}

Series = dict[str, tuple[np.ndarray, np.ndarray]]  # name -> (steps, values), sorted by step


def write_report(workdir: str, config: Any = None, *, total_steps: int | None = None) -> str:
  """Writes WORKDIR/report.md (and report/*.png) from what the run has written so far.

  `config` is a ConfigDict or a dict; None reads WORKDIR/config.json. `total_steps`, when the
  caller knows it, shows progress (the config alone may give only epochs). Returns the path.
  """
  if config is None:
    config = _read_json(os.path.join(workdir, 'config.json')) or {}
  series, bad_lines = _read_metrics(os.path.join(workdir, 'metrics.jsonl'))
  results = _read_json(os.path.join(workdir, 'results.json'))
  if total_steps is None and (_field(config, 'total_steps') or 0) > 0:
    total_steps = int(_field(config, 'total_steps'))

  plots_dir = os.path.join(workdir, PLOTS)
  health_names = [k for k in series if k.startswith('health/')]
  train_names = [
    k for k in series if not k.startswith(('eval/', 'health/')) and k not in _NOT_PLOTTED
  ]
  eval_names = [  # multi-label runs: the macro AUROC, not every label's metrics
    k
    for k in series
    if k.startswith('eval/') and (not _is_label_metric(k) or k.endswith('/auroc_macro'))
  ]
  loss_png = eval_png = None
  if train_names:
    loss_png = os.path.join(plots_dir, 'loss.png')
    _plot_training(series, train_names, loss_png)
  health_png = None
  if health_names:
    health_png = os.path.join(plots_dir, 'health.png')
    _plot_health(series, health_names, config, health_png)
  collapsed = _collapse_warning(series, config)
  if eval_names:
    eval_png = os.path.join(plots_dir, 'eval.png')
    random_init = (results or {}).get('random_init') or {}
    _plot_eval(series, eval_names, random_init, eval_png)

  title = (
    _field(config, 'name')
    or _field(config, 'method')
    or os.path.basename(os.path.normpath(workdir))
  )
  lines = [f'# {title}', '']
  lines += _summary(config, series, results, total_steps, bad_lines)
  lines += _skipped_files(workdir)
  if collapsed:
    lines += ['', f'**Warning: {collapsed}**']
  lines += ['', '## Results', '']
  lines += _results_table(results, series)
  roc_png = _plot_roc(workdir, os.path.join(plots_dir, 'roc.png'))
  if roc_png:
    lines += ['', f'![ROC curve of every label on the test split]({_link(workdir, roc_png)})']
  lines += ['', '## Training', '']
  if loss_png:
    lines.append(f'![training loss and other logged scalars]({_link(workdir, loss_png)})')
  else:
    lines.append('No training metrics logged yet.')
  lines += ['', '## Health', '']
  if health_png:
    lines += [
      f'![label-free health metrics against step]({_link(workdir, health_png)})',
      '',
      'Label-free, on fixed un-augmented training images in inference mode: RankMe (effective '
      'rank) and sqrt(D) x std of the normalised h (`_h`) and projector output (`_z`), and the '
      'teacher/student agreement. Dashed: the collapse floors (config.health).',
    ]
    lines += ['', f'**{collapsed}**' if collapsed else 'No collapse: every value above its floor.']
  else:
    lines.append('No health metrics logged (config.health.images = 0).')
  lines += ['', '## Evaluation', '']
  if eval_png:
    lines.append(f'![every evaluation metric against step]({_link(workdir, eval_png)})')
    if (results or {}).get('random_init'):
      lines += ['', 'Dashed: the randomly initialised encoder, the baseline to beat.']
  else:
    lines.append('No evaluation yet.')
  lines += ['', '## Pictures', '']
  lines += _pictures(workdir)
  lines += ['', '## Config', '', '<details><summary>config</summary>', '', '```json']
  lines += [_config_json(config), '```', '', '</details>', '']

  path = os.path.join(workdir, REPORT)
  paths.write_atomic(path, '\n'.join(lines))
  return path


# ----------------------------------------------------------------------------- reading


def _read_json(path: str) -> dict | None:
  """The file's object, or None when it is missing or unreadable (a run still writing it)."""
  try:
    data = json.loads(paths.path(path).read_text())
  except (OSError, ValueError):
    return None
  return data if isinstance(data, dict) else None


def _read_metrics(path: str) -> tuple[Series, int]:
  """metrics.jsonl as {name: (steps, values)} and the count of lines that could not be read.

  A resumed run logs again the steps after its last checkpoint: the later line wins. NaN and
  Infinity (which json writes for non-finite floats) are kept; non-numbers are skipped.
  """
  by_name: dict[str, dict[int, float]] = {}
  bad = 0
  try:
    raw = paths.path(path).read_text().splitlines()
  except OSError:
    return {}, 0
  for line in raw:
    if not line.strip():
      continue
    try:
      record = json.loads(line)
      step = int(record['step'])
    except (ValueError, KeyError, TypeError):
      bad += 1  # e.g. the last line half-written while we read
      continue
    for name, value in record.items():
      if name == 'step' or isinstance(value, bool) or not isinstance(value, (int, float)):
        continue
      by_name.setdefault(name, {})[step] = float(value)
  series = {}
  for name, points in by_name.items():
    steps = np.array(sorted(points), dtype=np.int64)
    series[name] = (steps, np.array([points[s] for s in steps], dtype=np.float64))
  return series, bad


_field = collapse.field  # config.a.b for a ConfigDict or a plain dict


def _config_json(config: Any) -> str:
  if hasattr(config, 'to_json_best_effort'):
    return config.to_json_best_effort(indent=2, sort_keys=True)
  return json.dumps(config, indent=2, sort_keys=True, default=str)


# ----------------------------------------------------------------------------- text


def _summary(config, series: Series, results, total_steps, bad_lines: int) -> list[str]:
  done = max((int(steps[-1]) for steps, _ in series.values()), default=None)
  if results and isinstance(results.get('step'), int):
    done = results['step']
  if done is None:
    state = 'nothing logged yet'
  elif results is not None:
    state = f'finished at step {done}'
  else:
    state = f'in progress, step {done}'
  dataset = _field(config, 'data.source', '?')
  detail = _field(config, 'data.name') or _field(config, 'data.path')
  if detail:
    dataset = f'{dataset} ({detail})'
  steps = '0' if done is None else str(done)
  if total_steps:
    steps += f' / {total_steps}'
  elif _field(config, 'epochs') is not None:
    steps += f' (of {_field(config, "epochs")} epochs)'
  lines = [
    f'Report written {time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}; run {state}.',
    '',
    f'- method: {_field(config, "method", "?")}',
    f'- encoder: {_field(config, "model.encoder", "?")}',
    f'- dataset: {dataset}',
    f'- batch size: {_field(config, "batch_size", "?")}',
    f'- steps: {steps}',
  ]
  if 'images_per_sec' in series:
    speed = series['images_per_sec'][1]
    speed = speed[np.isfinite(speed)]
    if speed.size:
      lines.append(f'- images/s: {np.median(speed):,.0f} (median of {speed.size} logs)')
  if 'state_bytes_per_device' in series:
    held = series['state_bytes_per_device'][1][-1] / 2**30
    lines.append(f'- training state held by each device: {held:.3f} GiB')
  if 'loss' in series:
    steps_, loss = series['loss']
    lines.append(f'- loss: {_num(loss[-1])} at step {steps_[-1]} (first logged: {_num(loss[0])})')
  if done is None:
    lines += ['', 'No metrics logged yet: metrics.jsonl is missing or empty.']
  for name, (steps_, values) in series.items():
    bad = ~np.isfinite(values)
    if bad.any():
      lines += [
        '',
        f'**Warning: `{name}` is not finite** at {int(bad.sum())} of {values.size} logged '
        f'steps (first at step {steps_[bad][0]}: {values[bad][0]}).',
      ]
  if bad_lines:
    lines += ['', f'{bad_lines} unreadable line(s) of metrics.jsonl were skipped.']
  return lines


def _skipped_files(workdir: str) -> list[str]:
  """The unreadable image files the run left out, from WORKDIR/skipped_files.txt."""
  path = paths.path(workdir) / SKIPPED_FILES
  if not path.exists():
    return []
  files = [line for line in path.read_text().splitlines() if line.strip()]
  shown = [f'  - `{line}`' for line in files[:10]]
  more = [f'  - ... ({len(files) - 10} more in {SKIPPED_FILES})'] if len(files) > 10 else []
  return ['', f'**{len(files)} unreadable image file(s) were skipped:**', '', *shown, *more]


def _num(x: float) -> str:
  return f'{x:.4g}' if math.isfinite(x) else str(x)


def _pct(x: Any) -> str:
  """An accuracy (fraction) in %, as the table prints it."""
  if not isinstance(x, (int, float)) or isinstance(x, bool):
    return '-'
  return f'{100 * x:.2f}' if math.isfinite(x) else str(float(x))


def _results_table(results: dict | None, series: Series) -> list[str]:
  """protocol | pretrained | random init | difference, from results.json; before it exists,
  the latest logged evaluation (no baseline yet)."""
  lines = []
  if results is not None:
    pretrained = results.get('pretrained') or {}
    random_init = results.get('random_init') or {}
    if not pretrained and not random_init:
      return ['results.json has no accuracies (no labelled test split, or `config.eval` empty).']
    lines.append(f'Linear / k-NN accuracy (%) on the test split at step {results.get("step")}:')
  else:
    latest = {}
    for name, (steps, values) in series.items():
      if name.startswith('eval/'):
        latest[name[len('eval/') :]] = (int(steps[-1]), float(values[-1]))
    if not latest:
      return ['No results yet (results.json is written at the end of the run).']
    step = max(s for s, _ in latest.values())
    pretrained = {k: v for k, (_, v) in latest.items()}
    random_init = {}
    lines.append(
      f'No results.json yet: the latest evaluation (step {step}), accuracy (%); the random-init '
      'baseline is measured at the end.'
    )
  per_label = _per_label(pretrained)
  pretrained = {k: v for k, v in pretrained.items() if not _is_label_metric(k)}
  random_init = {k: v for k, v in random_init.items() if not _is_label_metric(k)}
  lines += ['', '| protocol | pretrained | random init | difference |', '|---|---:|---:|---:|']
  for protocol in [*pretrained, *(k for k in random_init if k not in pretrained)]:
    p, r = pretrained.get(protocol), random_init.get(protocol)
    both = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (p, r))
    diff = '-'
    if both:
      d = 100 * (p - r)
      diff = f'{d:+.2f}' if math.isfinite(d) else str(d)
    lines.append(f'| {protocol} | {_pct(p)} | {_pct(r)} | {diff} |')
  return lines + per_label


_LABEL_METRIC = re.compile(r'(?P<key>.+?)/(?P<metric>auroc|ap)(?:/(?P<label>[^/]+)|_macro)$')


def _is_label_metric(key: str) -> bool:
  return bool(_LABEL_METRIC.match(key))


def _per_label(results: dict) -> list[str]:
  """Multi-label runs (CSV labels): the pretrained encoder's AUROC per label and macro, and
  macro average precision, one row per protocol."""
  table: dict[str, dict[str, float]] = {}
  for key, value in results.items():
    if m := _LABEL_METRIC.match(key):
      column = m['label'] if m['metric'] == 'auroc' and m['label'] else None
      if m['label'] is None:
        column = f'{m["metric"].upper()} macro'
      if column:
        table.setdefault(m['key'], {})[column] = value
  if not table:
    return []
  columns = list(dict.fromkeys(c for row in table.values() for c in row if 'macro' not in c))
  columns += ['AUROC macro', 'AP macro']
  lines = ['', 'AUROC per label (pretrained encoder), macro AUROC and AP:', '']
  lines += ['| protocol | ' + ' | '.join(columns) + ' |', '|---|' + '---:|' * len(columns)]
  for key, row in table.items():
    cells = [f'{row[c]:.3f}' if c in row else '-' for c in columns]
    lines.append(f'| {key} | ' + ' | '.join(cells) + ' |')
  return lines


def _pictures(workdir: str) -> list[str]:
  """The latest picture of each kind under WORKDIR/pictures; for embeddings, also the first."""
  root = os.path.join(workdir, 'pictures')
  if not paths.path(root).is_dir():
    return ['No pictures yet.']
  entries = {p.name: p.is_dir() for p in paths.path(root).iterdir()}  # name -> is a directory
  lines = []
  order = list(_KIND_TITLES)  # the known kinds first, in this order; then any other, by name
  kinds = sorted(
    (d for d, is_dir in entries.items() if is_dir),
    key=lambda d: (order.index(d) if d in order else len(order), d),
  )
  for kind in kinds:
    frames = _frames(os.path.join(root, kind))
    if not frames:
      continue
    lines += [f'### {_KIND_TITLES.get(kind, kind)}', '']
    (last_step, last), (first_step, first) = frames[-1], frames[0]
    if kind == 'embeddings' and len(frames) > 1:
      lines += [
        f'| step {first_step} | step {last_step} |',
        '|:---:|:---:|',
        f'| ![step {first_step}]({_link(workdir, first)}) '
        f'| ![step {last_step}]({_link(workdir, last)}) |',
      ]
    else:
      lines.append(f'Step {last_step}:')
      lines += ['', f'![{kind}, step {last_step}]({_link(workdir, last)})']
    if kind == 'embeddings':
      grid = os.path.join(root, 'embeddings_grid.png')
      gif = os.path.join(root, 'embeddings.gif')
      if entries.get('embeddings_grid.png') is False:
        lines += ['', f'Every evaluation: ![every frame]({_link(workdir, grid)})']
      if entries.get('embeddings.gif') is False:
        lines += ['', f'[Animation]({_link(workdir, gif)})']
    lines.append('')
  known = {'embeddings_grid.png', 'embeddings.gif'}
  for name, is_dir in sorted(entries.items()):
    path = os.path.join(root, name)
    if name in known or is_dir or not name.endswith(('.png', '.gif')):
      continue
    lines += [f'### {name}', '', f'![{name}]({_link(workdir, path)})', '']
  while lines and not lines[-1]:
    lines.pop()
  return lines or ['No pictures yet.']


def _frames(directory: str) -> list[tuple[int, str]]:
  """(step, path) of the step_N.png files, sorted by step."""
  found = []
  for name in paths.names(directory):
    match = _STEP_FRAME.match(name)
    if match:
      found.append((int(match.group(1)), os.path.join(directory, name)))
  return sorted(found)


def _link(workdir: str, path: str) -> str:
  """`path` relative to the report, as a Markdown link target (POSIX, URL-quoted)."""
  rel = os.path.relpath(path, workdir).replace(os.sep, '/')
  return urllib.parse.quote(rel)


# ----------------------------------------------------------------------------- plots


def _plot_training(series: Series, names: list[str], path: str) -> None:
  """The loss large on top; every other training scalar in a small panel below."""
  small = [n for n in names if n != 'loss']
  cols = min(3, max(len(small), 1))
  rows = math.ceil(len(small) / cols)
  fig = Figure(figsize=(10.0, 3.6 + 2.2 * rows), dpi=_DPI)
  grid = fig.add_gridspec(1 + rows, cols, height_ratios=[1.7] + [1.0] * rows)
  ax = fig.add_subplot(grid[0, :])
  if 'loss' in series:
    _curve(ax, *series['loss'], 'loss')
  else:
    ax.text(0.5, 0.5, 'no loss logged', ha='center', va='center', transform=ax.transAxes)
  ax.set_title('training loss')
  ax.set_xlabel('step')
  for i, name in enumerate(small):
    ax = fig.add_subplot(grid[1 + i // cols, i % cols])
    _curve(ax, *series[name], name)
    ax.set_title(name, fontsize='small')
    ax.tick_params(labelsize='x-small')
  _save(fig, path)


def _panels(count: int, height: float) -> tuple[Figure, list]:
  """A figure of `count` panels, three to a row, each 4 wide and `height` tall; the unused
  cells of the last row hidden. Returns (figure, the panels in order)."""
  cols = min(3, count)
  rows = math.ceil(count / cols)
  fig = Figure(figsize=(4.0 * cols, height * rows), dpi=_DPI)
  axes = list(fig.subplots(rows, cols, squeeze=False).flat)
  for ax in axes[count:]:
    ax.set_axis_off()
  return fig, axes[:count]


def _collapse_warning(series: Series, config: Any) -> str | None:
  """The run's collapse warning (`monitor.collapse`) read back from its logged health metrics."""
  rows: dict[int, dict[str, float]] = {}
  for name in (n for n in series if collapse.floor(n, config) is not None):
    for step, value in zip(*series[name], strict=True):
      rows.setdefault(int(step), {})[name] = float(value)
  return collapse.first_collapse(rows.items(), config)


def _plot_health(series: Series, names: list[str], config: Any, path: str) -> None:
  """One panel per health metric; the collapse floors dashed."""
  fig, axes = _panels(len(names), height=3.0)
  for ax, name in zip(axes, names, strict=False):
    _curve(ax, *series[name], name)
    low = collapse.floor(name, config)
    if isinstance(low, (int, float)):
      ax.axhline(low, linestyle='--', color='red', label='collapse floor')
      ax.legend(fontsize='x-small')
    ax.set_title(name[len('health/') :])
    ax.set_xlabel('step')
  _save(fig, path)


def _plot_eval(series: Series, names: list[str], random_init: dict, path: str) -> None:
  """One panel per eval/ metric, in %; the random-init accuracy as a dashed line."""
  fig, axes = _panels(len(names), height=3.2)
  for ax, name in zip(axes, names, strict=False):
    steps, values = series[name]
    _curve(ax, steps, 100 * values, 'pretrained', marker='o')
    baseline = random_init.get(name[len('eval/') :])
    if isinstance(baseline, (int, float)) and math.isfinite(baseline):
      ax.axhline(100 * baseline, linestyle='--', color='gray', label='random init')
    ax.set_title(name[len('eval/') :])
    ax.set_xlabel('step')
    ax.set_ylabel('accuracy (%)')
    ax.legend(fontsize='small')
  _save(fig, path)


def _plot_roc(workdir: str, path: str) -> str | None:
  """Multi-label runs: the ROC curve of every label on the test split, one panel per kept
  classifier (WORKDIR/classifier/KIND_roc.json, written by the evaluation); None if none."""
  found = []
  for kind in ('linear', 'linear_sgd', 'finetune'):
    curves = _read_json(os.path.join(workdir, 'classifier', f'{kind}_roc.json'))
    if curves:
      found.append((kind, curves))
  if not found:
    return None
  fig, axes = _panels(len(found), height=3.6)
  for ax, (kind, curves) in zip(axes, found, strict=False):
    for name, c in curves.items():
      auroc = c.get('auroc')
      label = f'{name} ({auroc:.3f})' if isinstance(auroc, float) and math.isfinite(auroc) else name
      ax.plot(c['fpr'], c['tpr'], label=label)
    ax.plot([0, 1], [0, 1], linestyle='--', color='gray', linewidth=0.8)
    ax.set_title(f'{kind}: ROC on the test split (AUROC)')
    ax.set_xlabel('false positive rate')
    ax.set_ylabel('true positive rate')
    ax.legend(fontsize='x-small')
    ax.grid(alpha=0.3)
  _save(fig, path)
  return path


def _curve(ax, steps: np.ndarray, values: np.ndarray, label: str, marker: str | None = None):
  """A line with gaps where values are not finite, and those steps marked by red crosses at the
  bottom of the panel, so a NaN shows instead of silently vanishing."""
  finite = np.isfinite(values)
  ax.plot(
    steps,
    np.where(finite, values, np.nan),
    marker=marker if marker else ('.' if len(steps) <= 50 else None),
    label=label,
  )
  if not finite.all():
    ax.scatter(
      steps[~finite],
      np.full(int((~finite).sum()), 0.03),
      transform=ax.get_xaxis_transform(),  # x in steps, y in axes fraction
      marker='x',
      color='red',
      label='not finite',
      zorder=3,
    )
    ax.legend(fontsize='x-small')
  ax.ticklabel_format(axis='y', useOffset=False)  # a constant 0.7551 reads as itself
  lo, hi = float(steps.min()), float(steps.max())
  pad = max(0.03 * (hi - lo), 1.0)
  ax.set_xlim(lo - pad, hi + pad)
  ax.grid(alpha=0.3)


def _save(fig: Figure, path: str) -> None:
  """Laid out by matplotlib's constrained layout, then saved as the pictures are."""
  fig.set_layout_engine('constrained')
  pictures.save_png(fig, path)


def main(argv: list[str]) -> None:
  workdir = next((a.split('=', 1)[1] for a in argv[1:] if a.startswith('--workdir=')), None)
  if not workdir or len(argv) != 2:
    print('usage: python -m ssljax.monitor.report --workdir=DIR', file=sys.stderr)
    sys.exit(2)
  if not paths.path(workdir).is_dir():
    print(f'error: {workdir} is not a directory', file=sys.stderr)
    sys.exit(2)
  print(f'wrote {errors.run_command(write_report, workdir)}')


if __name__ == '__main__':
  main(sys.argv)

"""Labels from a CSV beside a folder source (`config.data.labels`): several findings per image, as
CheXpert and ChestX-ray14 label chest X-rays, and patients with many images.

The CSV has a path column (relative to data.path), one column per label (1, 0, and -1 or blank
for uncertain or unlabelled: data.uncertain maps those to 1, 0, or leaves them out of training
and scoring), an optional group column (a patient id) and an optional split column (train /
test). Without a split column the groups are dealt to the splits with data.split_seed, so no
patient has images on both sides; the assignment is written to WORKDIR/splits.csv.

A row that names a missing file, holds a value that is not a label, or repeats a path is skipped,
counted and named (`LabelTable.bad_rows`); past data.max_bad_rows of the rows the run stops.
NumPy and the csv module: no TensorFlow.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import threading

import jax
import ml_collections
import numpy as np
from absl import logging

from ssljax import paths
from ssljax.config.checks import Checks
from ssljax.data import folder
from ssljax.errors import ConfigError, DataError, DatasetNotFoundError

SPLITS = ('train', 'test')
POLICIES = ('ignore', 'ones', 'zeros')  # CheXpert's U-Ignore, U-Ones, U-Zeros
IGNORED = -1  # a target left out of training and scoring
_VALUES = {'1': 1, '1.0': 1, '0': 0, '0.0': 0, '-1': -1, '-1.0': -1, '': -1}
_SHOWN = 20  # rows named in a log line or an error


def is_multilabel(config: ml_collections.ConfigDict) -> bool:
  """True when the run's labels come from a CSV (`config.data.labels`)."""
  return bool(config.data.get('labels', ''))


def check_config(checks: Checks) -> None:
  """Records the problems of the CSV label fields (no file read: that is `table`'s job)."""
  labels = checks.value('data.labels')
  if not isinstance(labels, str):
    checks.fail('data.labels', "a CSV file's path, or '' (labels from subfolders)", '')
    return
  for field in ('path_column', 'group_column', 'split_column'):
    if not isinstance(checks.value(f'data.{field}'), str):
      checks.fail(
        f'data.{field}', 'a column name (a string)', 'path' if field == 'path_column' else ''
      )
  columns = checks.value('data.label_columns')
  if not isinstance(columns, tuple | list) or not all(isinstance(c, str) for c in columns):
    checks.fail('data.label_columns', 'a tuple of column names; () for every other column', ())
  checks.choice('data.uncertain', POLICIES)
  checks.number('data.test_fraction', 0, 1, low_open=True, high_open=True, fix=0.2)
  checks.count('data.split_seed', 0)
  checks.probability('data.max_bad_rows')
  if labels and checks.value('data.source') != 'folder':
    checks.fail('data.labels', 'a CSV of labels goes with data.source=folder', '')
  for field in ('mixup', 'cutmix'):  # they mix two images' labels: not multi-label targets
    if labels and checks.value(f'eval_config.finetune.{field}') not in (0, 0.0):
      checks.fail(f'eval_config.finetune.{field}', '0 with CSV labels (multi-label targets)', 0.0)


@dataclasses.dataclass(frozen=True)
class LabelTable:
  """The CSV's rows that are usable, by split, and what was wrong with the others."""

  root: str  # data.path, absolute
  names: tuple[str, ...]  # the label columns
  files: dict[str, folder.Paths]  # split -> paths relative to root, in the CSV's order
  targets: dict[str, np.ndarray]  # split -> int8 (N, L): 1, 0, or IGNORED
  groups: dict[str, np.ndarray]  # split -> int32 (N,) index into group_names
  group_names: tuple[str, ...]
  channels: int  # of the first readable train image: the others are converted to it
  bad_rows: tuple[str, ...]  # 'FILE row R: why'

  def index(self) -> folder.FolderIndex:
    """The folder index the streamed reader decodes: labels are row numbers of the split, so
    `targets[split][labels]` are an evaluation batch's targets."""
    split = lambda s: folder.Split(  # noqa: E731
      self.files[s], np.arange(len(self.files[s]), dtype=np.int32)
    )
    return folder.FolderIndex(
      root=self.root,
      train=split('train'),
      test=split('test'),
      classes=self.names,
      channels=self.channels,
      directories=folder.Paths.of([]),
      mtimes=np.zeros(0, np.int64),
    )


def _read_rows(file: str) -> tuple[list[str], list[list[str]]]:
  path = paths.path(file)
  if not path.exists():
    raise DatasetNotFoundError(
      f"config.data.labels='{file}' not found: give the CSV of labels (a path column and one "
      'column per label), or --config.data.labels= to take labels from subfolders'
    )
  reader = csv.reader(io.StringIO(path.read_text(encoding='utf-8-sig')))
  header = [h.strip() for h in next(reader, [])]
  return header, [row for row in reader if any(cell.strip() for cell in row)]


def _columns(data: ml_collections.ConfigDict, header: list[str]) -> tuple[list[str], int, int, int]:
  """(label names, path, group, split column numbers; -1: absent), or a ConfigError naming the
  columns the CSV has."""
  file, problems = data.labels, []
  have = f'its columns are {", ".join(header)}'
  if data.path_column not in header:
    problems.append(
      f'config.data.path_column={data.path_column!r} is not a column of {file}: {have}'
    )
  if data.group_column and data.group_column not in header:
    problems.append(
      f"config.data.group_column={data.group_column!r} is not a column of {file}: {have} (or '')"
    )
  special = {data.path_column, data.group_column, data.split_column}
  names = list(data.label_columns) or [h for h in header if h not in special]
  unknown = [n for n in names if n not in header]
  if unknown:
    problems.append(f'config.data.label_columns names {unknown}, not columns of {file}: {have}')
  if not names:
    problems.append(f'{file} has no label column: {have}; add one column per label')
  repeated = sorted({h for h in header if header.count(h) > 1})
  if repeated:
    problems.append(f'{file} repeats the columns {repeated}: give each label one column')
  if problems:
    raise ConfigError(problems)
  column = lambda name: header.index(name) if name and name in header else -1  # noqa: E731
  return names, column(data.path_column), column(data.group_column), column(data.split_column)


def _normalized(path: str) -> str:
  return os.path.normpath(path.strip().replace('/', os.sep)).lstrip(os.sep)


def grouped_splits(groups: list[str], test_fraction: float, seed: int) -> dict[str, str]:
  """group -> 'train' | 'test': the sorted groups shuffled with `seed`, the first
  round(test_fraction x count) (at least 1 when there are 2 or more) to test. Depends only on the
  set of groups and the seed, so every process and every rerun makes the same split."""
  unique = sorted(set(groups))
  order = np.random.default_rng(int(seed)).permutation(len(unique))
  n_test = int(np.floor(test_fraction * len(unique) + 0.5))
  n_test = min(max(n_test, 1 if len(unique) > 1 else 0), len(unique) - 1)
  test = {unique[i] for i in order[:n_test].tolist()}
  return {g: 'test' if g in test else 'train' for g in unique}


def _build(data: ml_collections.ConfigDict) -> LabelTable:
  root = paths.absolute(data.path)
  header, rows = _read_rows(data.labels)
  names, path_col, group_col, split_col = _columns(data, header)
  label_cols = [header.index(n) for n in names]
  existing = set(folder._walk(root)[0]) if folder._isdir(root) else set()
  if not existing:
    raise DatasetNotFoundError(f"folder source: no images under data.path='{data.path}'")
  policy = {-1: {'ignore': IGNORED, 'ones': 1, 'zeros': 0}[data.uncertain], 0: 0, 1: 1}
  file = os.path.basename(data.labels)
  bad, seen = [], set()
  kept = []  # (path, targets, group, split or '')
  for r, row in enumerate(rows, start=2):  # row 1 is the header
    where = f'{file} row {r}'
    row = row + [''] * (len(header) - len(row))
    path = _normalized(row[path_col])
    values = [row[c].strip() for c in label_cols]
    wrong = [(n, v) for n, v in zip(names, values, strict=True) if v not in _VALUES]
    split = row[split_col].strip().lower() if split_col >= 0 else ''
    if not row[path_col].strip():
      bad.append(f'{where}: no path')
    elif path not in existing:
      bad.append(f'{where}: {path}: no such image file under {root}')
    elif path in seen:
      bad.append(f'{where}: {path} is listed again (an earlier row has it)')
    elif wrong:
      n, v = wrong[0]
      bad.append(f'{where}: {n}={v!r} is not a label (1, 0, -1 or blank)')
    elif split_col >= 0 and split not in SPLITS:
      bad.append(f'{where}: {header[split_col]}={row[split_col]!r} is not train or test')
    else:
      seen.add(path)
      group = row[group_col].strip() if group_col >= 0 else path
      kept.append((path, [policy[_VALUES[v]] for v in values], group, split))
  _check_bad(bad, len(rows), data)
  if split_col < 0:
    assignment = grouped_splits([k[2] for k in kept], data.test_fraction, data.split_seed)
    kept = [(p, t, g, assignment[g]) for p, t, g, _ in kept]
  elif group_col >= 0:
    _check_leaks(kept, file, header[group_col], header[split_col])
  group_names = tuple(sorted({k[2] for k in kept}))
  group_id = {g: i for i, g in enumerate(group_names)}
  by = {s: [k for k in kept if k[3] == s] for s in SPLITS}
  if not by['train']:
    raise DataError(f'{data.labels}: no usable train row; {len(bad)} bad rows')
  channels = folder._first_channels(root, [k[0] for k in by['train']])
  if channels is None:
    raise DatasetNotFoundError(f'{data.labels}: no train row names a readable image')
  return LabelTable(
    root=root,
    names=tuple(names),
    files={s: folder.Paths.of([k[0] for k in by[s]]) for s in SPLITS},
    targets={s: np.array([k[1] for k in by[s]], np.int8).reshape(-1, len(names)) for s in SPLITS},
    groups={s: np.array([group_id[k[2]] for k in by[s]], np.int32) for s in SPLITS},
    group_names=group_names,
    channels=channels,
    bad_rows=tuple(bad),
  )


def _check_bad(bad: list[str], total: int, data: ml_collections.ConfigDict) -> None:
  listing = '\n  '.join(bad[:_SHOWN]) + ('\n  ...' if len(bad) > _SHOWN else '')
  if len(bad) > float(data.max_bad_rows) * total:
    raise DataError(
      f'{data.labels}: {len(bad)} of {total} rows cannot be used, more than '
      f'config.data.max_bad_rows={float(data.max_bad_rows):g} allows. Fix or remove them, or '
      f'raise the limit:\n  {listing}'
    )
  if bad:
    logging.warning('%s: skipped %d of %d rows:\n  %s', data.labels, len(bad), total, listing)


def _check_leaks(kept: list, file: str, group_column: str, split_column: str) -> None:
  """A patient on both sides of the split column: the test set would score images of patients
  the classifier was trained on."""
  splits: dict[str, set[str]] = {}
  for _, _, group, split in kept:
    splits.setdefault(group, set()).add(split)
  leaks = sorted(g for g, s in splits.items() if len(s) > 1)
  if leaks:
    shown = ', '.join(leaks[:_SHOWN]) + (', ...' if len(leaks) > _SHOWN else '')
    raise DataError(
      f'{file}: {len(leaks)} {group_column} values have rows in both {split_column} values '
      f'(train and test): {shown}. Give each {group_column} one {split_column} value, or drop '
      f'the {split_column} column so the groups are split by config.data.split_seed.'
    )


_TABLES: dict[tuple, LabelTable] = {}
_LOCK = threading.Lock()
_FIELDS = (
  'labels',
  'path',
  'path_column',
  'label_columns',
  'group_column',
  'split_column',
  'uncertain',
  'test_fraction',
  'split_seed',
  'max_bad_rows',
)


def table(config: ml_collections.ConfigDict) -> LabelTable:
  """The CSV's LabelTable for config.data, read once per process (again when the file changes)."""
  data = config.data
  try:
    mtime = os.stat(data.labels).st_mtime_ns if not paths.is_remote(data.labels) else 0
  except OSError:
    mtime = None
  key = (mtime, *(repr(data.get(f)) for f in _FIELDS))
  with _LOCK:
    if key not in _TABLES:
      _TABLES[key] = _build(data)
    return _TABLES[key]


def write_splits(config: ml_collections.ConfigDict, workdir: str) -> str | None:
  """WORKDIR/splits.csv (path, group, split) on process 0: the split a run used, to reuse or
  audit; its name on process 0, else None."""
  if jax.process_index() != 0:
    return None
  t = table(config)
  out = io.StringIO()
  writer = csv.writer(out, lineterminator='\n')
  writer.writerow(['path', 'group', 'split'])
  for s in SPLITS:
    for i in range(len(t.files[s])):
      writer.writerow([t.files[s][i].replace(os.sep, '/'), t.group_names[t.groups[s][i]], s])
  file = str(paths.path(workdir) / 'splits.csv')
  paths.write_atomic(paths.path(file), out.getvalue())
  return file

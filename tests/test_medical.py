"""Labels from a CSV (multi-hot, uncertain entries, patients), multi-label metrics and probes
against scikit-learn, and the outputs a run keeps: embeddings to a file, a classifier to predict
with. The fast tier checks the pieces; `-m slow` runs the whole chain on Fashion-MNIST PNGs and on
pydicom's DICOM test files."""

import csv
import json
import os
import sys
import tracemalloc

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from ssljax.config import checks as config_checks
from ssljax.data import labels_csv
from ssljax.errors import ConfigError, DataError
from ssljax.evaluators import multilabel
from ssljax.evaluators.label_subset import LabelBudget
from ssljax.methods import SimCLR

sys.path.insert(0, os.path.dirname(__file__))
import fashion_csv  # noqa: E402

needs_fashion = pytest.mark.skipif(
  not os.path.isdir(fashion_csv.FASHION_MNIST), reason='dataset-fashion-mnist not installed'
)


def _config(root, csv_file, **data):
  c = SimCLR.default_config(16)
  c.data.source, c.data.path, c.data.labels = 'folder', str(root), csv_file
  c.data.image_size = c.augment.image_size = 16
  c.data.update(data)
  return c


# ----------------------------------------------------------------------------- metrics


def test_auroc_and_ap_equal_scikit_learn_with_ties():
  rng = np.random.default_rng(0)
  for trial in range(100):
    n = int(rng.integers(2, 50))
    y = rng.integers(0, 2, n)
    y[0], y[1] = 0, 1
    scores = rng.integers(0, 4, n).astype(float) if trial % 2 else rng.normal(size=n)
    assert multilabel.auroc(y, scores) == pytest.approx(roc_auc_score(y, scores), abs=1e-12)
    ap = average_precision_score(y, scores)
    assert multilabel.average_precision(y, scores) == pytest.approx(ap, abs=1e-12)
    fpr, tpr = multilabel.roc_curve(y, scores)
    want_fpr, want_tpr, _ = roc_curve(y, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, want_fpr, atol=1e-12)
    np.testing.assert_allclose(tpr, want_tpr, atol=1e-12)
    assert np.trapezoid(tpr, fpr) == pytest.approx(multilabel.auroc(y, scores), abs=1e-12)
  # By hand: positives score 0.8 and 0.4, negatives 0.6 and 0.4; pairs won 1 + 0.5 + 1 + 0 of 4.
  assert multilabel.auroc([1, 1, 0, 0], [0.8, 0.4, 0.6, 0.4]) == 0.625
  assert np.isnan(multilabel.auroc([1, 1], [0.2, 0.3]))


def test_scores_metrics_leave_ignored_targets_out():
  targets = np.array([[1, 0], [0, -1], [1, 1], [0, 0], [-1, 1]], np.int8)
  scores = np.array([[0.9, 0.1], [0.2, 0.9], [0.4, 0.8], [0.6, 0.3], [0.0, 0.7]])
  m = multilabel.scores_metrics(targets, scores, ('a', 'b'))
  assert m['/auroc/a'] == roc_auc_score([1, 0, 1, 0], [0.9, 0.2, 0.4, 0.6]) == 0.75
  assert m['/auroc/b'] == 1.0 and m['/auroc_macro'] == 0.875
  assert m['/ap/b'] == average_precision_score([0, 1, 0, 1], [0.1, 0.8, 0.3, 0.7])
  assert m[''] == 6 / 8  # known entries right at 0.5: a: 3 of 4, b: 3 of 4


# ----------------------------------------------------------------------------- probe and k-NN


def test_probe_auroc_matches_scikit_learn_one_vs_rest():
  rng = np.random.default_rng(1)
  n, d = 300, 12
  x = rng.normal(size=(n, d)).astype(np.float32)
  logits = x @ rng.normal(size=(d, 3))
  targets = (logits + rng.normal(size=logits.shape) > 0).astype(np.int8)
  targets[rng.random(targets.shape) < 0.1] = multilabel.IGNORED
  train, test = slice(0, 200), slice(200, None)
  groups = np.arange(200) // 4
  probe = multilabel.fit_probe(x[train], targets[train], groups)
  ours = probe.probabilities(x[test])
  mean, std = probe.mean, probe.std
  for j in range(3):
    known = targets[train, j] != multilabel.IGNORED
    c = 1.0 / (float(probe.l2[j]) * known.sum())
    sk = LogisticRegression(C=c, tol=1e-10, max_iter=10_000)
    sk.fit(((x[train] - mean) / std)[known], targets[train, j][known])
    theirs = sk.predict_proba((x[test] - mean) / std)[:, 1]
    known_test = targets[test, j] != multilabel.IGNORED
    y = targets[test, j][known_test]
    a, b = roc_auc_score(y, ours[known_test, j]), roc_auc_score(y, theirs[known_test])
    assert abs(a - b) <= 0.005, (j, a, b)
    np.testing.assert_allclose(ours[:, j], theirs, atol=2e-3)


def test_knn_votes_per_label_by_hand():
  train = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]], np.float32)
  targets = np.array([[1, 0], [0, 1], [1, -1]], np.int8)
  scores = multilabel.knn_scores(train, targets, np.array([[1.0, 0.0]]), k=2, temperature=1.0)
  # Neighbours: rows 0 (sim 1) and 2 (sim cos(0.0997)); both positive for a; b known only for 0.
  np.testing.assert_allclose(scores[0], [1.0, 0.0])
  scores = multilabel.knn_scores(train, targets, np.array([[1.0, 1.0]]), k=3, temperature=1.0)
  w = np.exp(np.array([1, 1, 1.1 / np.hypot(1, 0.1)]) / np.sqrt(2))
  np.testing.assert_allclose(scores[0], [(w[0] + w[2]) / w.sum(), w[1] / (w[0] + w[1])], rtol=1e-6)


def test_budgets_count_positives_per_label_and_nest():
  rng = np.random.default_rng(0)
  targets = (rng.random((200, 3)) < 0.2).astype(np.int8)
  two = multilabel.budget_rows(LabelBudget('2_per_class', per_class=2), targets, seed=0)
  five = multilabel.budget_rows(LabelBudget('5_per_class', per_class=5), targets, seed=0)
  assert set(two) <= set(five)
  assert all((targets[five, j] == 1).sum() >= 5 for j in range(3))
  part = multilabel.budget_rows(LabelBudget('10%', fraction=0.1), targets, seed=0)
  assert len(part) == 20 and set(part) <= set(
    multilabel.budget_rows(LabelBudget('50%', fraction=0.5), targets, seed=0)
  )
  with pytest.raises(ConfigError, match='fewer than 100'):
    multilabel.budget_rows(LabelBudget('100_per_class', per_class=100), targets, seed=0)


# ----------------------------------------------------------------------------- the CSV


@pytest.fixture(scope='module')
def fashion_folder(tmp_path_factory):
  if not os.path.isdir(fashion_csv.FASHION_MNIST):
    pytest.skip('dataset-fashion-mnist not installed')
  root = tmp_path_factory.mktemp('fashion_csv')
  return root, fashion_csv.write(root, n=160)


@needs_fashion
def test_csv_splits_by_patient_counts_bad_rows_and_applies_the_policy(fashion_folder, tmp_path):
  root, file = fashion_folder
  config = _config(root / 'images', file, group_column='patient', max_bad_rows=0.05)
  t = labels_csv.table(config)
  assert t.names == ('top', 'long_sleeves', 'footwear')
  assert len(t.files['train']) + len(t.files['test']) == 160
  patients = {s: {t.group_names[g] for g in t.groups[s]} for s in ('train', 'test')}
  assert not patients['train'] & patients['test'] and len(patients['test']) == 8  # 20% of 40
  assert len(t.bad_rows) == fashion_csv.BAD_ROWS
  assert 'row 162: p9999/missing.png: no such image file' in t.bad_rows[0]
  assert "row 163: top='maybe' is not a label" in t.bad_rows[1]
  with open(file) as f:
    rows = {r['path']: r for r in csv.DictReader(f)}
  uncertain = sum(
    rows[t.files['train'][i]]['top'] in ('', '-1') for i in range(len(t.targets['train']))
  )
  assert (t.targets['train'][:, 0] == -1).sum() == uncertain > 0
  ones = labels_csv.table(
    _config(root / 'images', file, group_column='patient', max_bad_rows=0.05, uncertain='ones')
  )
  assert (ones.targets['train'] == -1).sum() == 0
  assert (ones.targets['train'][:, 0] == 1).sum() == (t.targets['train'][:, 0] != 0).sum()
  # The same seed, the same split; written to the workdir.
  assert labels_csv.write_splits(config, str(tmp_path)) == str(tmp_path / 'splits.csv')
  with open(tmp_path / 'splits.csv') as f:
    written = list(csv.DictReader(f))
  assert {r['group'] for r in written if r['split'] == 'test'} == patients['test']
  with pytest.raises(DataError, match='max_bad_rows=0.001'):
    labels_csv.table(_config(root / 'images', file, group_column='patient'))


def test_csv_refuses_unknown_columns_leaks_and_stray_values(tmp_path):
  from PIL import Image

  (tmp_path / 'img').mkdir()
  for name in ('a', 'b', 'c'):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / 'img' / f'{name}.png')
  file = tmp_path / 'labels.csv'
  file.write_text('path,x,patient,split\na.png,1,p1,train\nb.png,0,p1,test\nc.png,1,p2,train\n')
  config = _config(tmp_path / 'img', str(file), group_column='patient', label_columns=('y',))
  with pytest.raises(
    ConfigError,
    match=r"label_columns names \['y'\], not columns of .*labels.csv: its columns are path, x",
  ):
    labels_csv.table(config)
  config.data.label_columns = ()
  with pytest.raises(DataError, match='1 patient values have rows in both split values.*p1'):
    labels_csv.table(config)
  checks = config_checks.Checks(config)
  config.data.source, config.data.uncertain = 'digits', 'maybe'
  labels_csv.check_config(checks)
  assert any('data.uncertain' in p for p in checks.problems)
  assert any('goes with data.source=folder' in p for p in checks.problems)


# ----------------------------------------------------------------------------- end to end


def _tiny_labelled_run(root, file, workdir, **data):
  from conftest import shrink_config

  from ssljax import train

  config = shrink_config(SimCLR.default_config(16), source='folder')
  config.data.update(dict(path=str(root), labels=file, **data))
  config.eval = ('linear', 'knn', 'finetune')
  config.eval_config.random_init = False
  config.eval_config.finetune.update(dict(epochs=1.0, min_steps=4, batch_size=16))
  return train.train_and_evaluate(config, str(workdir))


def _read_probabilities(file):
  with open(file) as f:
    rows = list(csv.reader(f))
  return rows[0], {r[0]: np.array(r[1:], np.float32) for r in rows[1:]}


@pytest.mark.slow
@needs_fashion
def test_fashion_csv_run_embed_and_predict(fashion_folder, tmp_path):
  import jax

  import ssljax
  from ssljax import embed, predict
  from ssljax.data import folder, random_access

  root, file = fashion_folder
  results = _tiny_labelled_run(
    root / 'images', file, tmp_path / 'run', group_column='patient', max_bad_rows=0.05
  )['pretrained']
  for key in ('linear', 'knn', 'finetune'):
    labels = fashion_csv.LABELS
    assert set(labels) == {k.split('/')[-1] for k in results if k.startswith(f'{key}/auroc/')}
    assert 0.5 < results[f'{key}/auroc_macro'] <= 1.0 and f'{key}/ap_macro' in results
  # The report draws each kept classifier's ROC curves, whose areas are the results' AUROCs.
  curves = json.loads((tmp_path / 'run' / 'classifier' / 'linear_roc.json').read_text())
  for label, curve in curves.items():
    assert curve['auroc'] == pytest.approx(results[f'linear/auroc/{label}'], abs=1e-12)
    assert curve['fpr'][0] == curve['tpr'][0] == 0 and curve['fpr'][-1] == curve['tpr'][-1] == 1
  assert (tmp_path / 'run' / 'report' / 'roc.png').exists()
  assert 'report/roc.png' in (tmp_path / 'run' / 'report.md').read_text()
  # Embeddings: the encoder's h of every file, bitwise.
  out = tmp_path / 'h.npz'
  assert embed.embed(str(tmp_path / 'run'), str(root / 'images'), str(out), batch_size=32) == 161
  saved = np.load(out)
  apply_fn, params = ssljax.load_encoder(str(tmp_path / 'run'))
  files = [p.replace('/', os.sep) for p in saved['paths']]
  index = folder.FolderIndex(
    str(root / 'images'),
    folder.Split(folder.Paths.of(files), np.arange(len(files), dtype=np.int32)),
    folder.Split(folder.Paths.of([]), np.zeros(0, np.int32)),
    (),
    1,
    folder.Paths.of([]),
    np.zeros(0, np.int64),
  )
  reader = folder.reader(index, random_access.eval_side(16))
  every = np.arange(len(files))
  images = np.concatenate(
    [x[v] for x, _, v in random_access.eval_batches(reader, every, 'train', every, 64, 16)]
  )
  # apply_fn on the batches each device encoded (32 / 8 rows; XLA may sum in another order for
  # another batch shape: 3e-8 apart on the whole array at once).
  rows = 32 // jax.device_count()
  images = np.concatenate([images, np.zeros((-len(images) % rows, *images.shape[1:]), np.float32)])
  h = [np.asarray(apply_fn(params, images[i : i + rows])) for i in range(0, len(images), rows)]
  np.testing.assert_array_equal(saved['h'], np.concatenate(h)[: len(files)])
  # The kept classifiers predict what the evaluation scored on the test split.
  for kind in ('linear', 'finetune'):
    predict.predict(
      str(tmp_path / 'run'), str(root / 'images'), str(tmp_path / f'{kind}.csv'), classifier=kind
    )
    header, kept = _read_probabilities(tmp_path / 'run' / 'classifier' / f'{kind}_test.csv')
    again, predicted = _read_probabilities(tmp_path / f'{kind}.csv')
    assert header == again == ['path', *fashion_csv.LABELS]
    assert len(kept) == 32
    np.testing.assert_array_equal(
      np.stack(list(kept.values())), np.stack([predicted[p] for p in kept])
    )


@pytest.mark.slow
@needs_fashion
def test_embed_memory_is_flat_in_the_number_of_files(tmp_path, simclr_digits_run):
  from PIL import Image

  from ssljax import embed

  workdir = simclr_digits_run[0]
  images, _ = fashion_csv.fashion(1600)
  peaks = {}
  for n in (200, 1600):
    directory = tmp_path / f'd{n}'
    directory.mkdir()
    for i in range(n):
      Image.fromarray(images[i]).save(directory / f'{i:05d}.png')
    tracemalloc.start()
    embed.embed(workdir, str(directory), str(tmp_path / f'{n}.npz'), batch_size=64)
    peaks[n] = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
  # h alone is 8x larger for 1600 files; the peak grows by the file list only.
  assert peaks[1600] < peaks[200] + 0.5 * 1600 * np.load(tmp_path / '1600.npz')['h'][0].nbytes


@pytest.mark.slow
def test_dicom_folder_with_a_csv_runs_end_to_end(tmp_path):
  pydicom = pytest.importorskip('pydicom')
  from pydicom.data import get_testdata_files

  from ssljax.data import images

  root = tmp_path / 'dicom'
  rows = []
  for i, src in enumerate(sorted(get_testdata_files('*.dcm'))):
    try:
      pixels = images.read_image(src)
    except Exception:
      continue
    if pixels.ndim != 3 or min(pixels.shape[:2]) < 8:
      continue
    dst = root / f'patient{i % 7}' / f'{i:03d}.dcm'
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(open(src, 'rb').read())
    rows.append(f'patient{i % 7}/{i:03d}.dcm,{i % 2},{(i // 2) % 2},patient{i % 7}')
  assert len(rows) >= 16, pydicom.__version__
  file = tmp_path / 'labels.csv'
  file.write_text('path,finding_a,finding_b,patient\n' + '\n'.join(rows) + '\n')
  results = _tiny_labelled_run(root, str(file), tmp_path / 'run', group_column='patient')
  assert 'linear/auroc_macro' in results['pretrained'] or 'linear' in results['pretrained']
  assert (tmp_path / 'run' / 'classifier' / 'linear.npz').exists()

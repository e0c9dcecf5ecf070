"""ssljax.monitor.report: the page holds the run's numbers, every link resolves, and a run that
logged nothing, or logged NaNs, still gets a readable page. Synthetic workdirs, no training."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import urllib.parse

import numpy as np
import pytest
from matplotlib import _pylab_helpers
from PIL import Image

from ssljax.methods import SimCLR
from ssljax.monitor import report

PRETRAINED = {'linear': 0.8123, 'linear_2_per_class': 0.4517, 'knn': 0.7731}
RANDOM_INIT = {'linear': 0.6057, 'linear_2_per_class': 0.3342, 'knn': 0.5009}
EVAL_KEYS = ['eval/linear', 'eval/linear_2_per_class', 'eval/knn']


def _config(name: str = 'simclr_test'):
  config = SimCLR.default_config()
  config.name = name
  config.batch_size = 32
  config.total_steps = 100
  return config


def _png(path, color=(200, 30, 30), size=(40, 30)) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.new('RGB', size, color).save(path)


def _write_metrics(workdir, lines) -> None:
  with open(os.path.join(workdir, 'metrics.jsonl'), 'w') as f:
    for line in lines:
      f.write(json.dumps(line) + '\n')  # json writes NaN / Infinity as MetricWriter does


def _training_lines(steps=range(10, 101, 10)):
  return [
    {
      'step': s,
      'loss': 5.0 / s,
      'lr': 1e-3 * s,
      'grad_norm': 1.0 + 0.01 * s,
      'h_std': 0.5,
      'images_per_sec': 100.0 + s,
    }
    for s in steps
  ]


def _eval_lines():
  return [
    {'step': 50, **{f'eval/{k}': v - 0.05 for k, v in PRETRAINED.items()}},
    {'step': 100, **{f'eval/{k}': v for k, v in PRETRAINED.items()}},
  ]


def _full_run(workdir, *, random_init=RANDOM_INIT) -> None:
  """A finished run's workdir: metrics, results.json and pictures of every kind."""
  _write_metrics(workdir, _training_lines() + _eval_lines())
  results = {'pretrained': PRETRAINED, 'random_init': random_init, 'step': 100, 'config': 'x'}
  with open(os.path.join(workdir, 'results.json'), 'w') as f:
    json.dump(results, f)
  pictures = os.path.join(workdir, 'pictures')
  for step in (0, 50, 100):
    _png(os.path.join(pictures, 'embeddings', f'step_{step:07d}.png'))
  for step in (50, 100):
    _png(os.path.join(pictures, 'attention', f'step_{step:07d}.png'))
  _png(os.path.join(pictures, 'reconstructions', 'step_0000100.png'))
  _png(os.path.join(pictures, 'embeddings_grid.png'))
  frames = [Image.new('RGB', (20, 20), c) for c in ('red', 'blue')]
  frames[0].save(os.path.join(pictures, 'embeddings.gif'), save_all=True, append_images=frames[1:])


def _links(text: str) -> list[str]:
  return [urllib.parse.unquote(t) for t in re.findall(r'\]\(([^)\s]+)\)', text)]


def _read(path) -> str:
  with open(path) as f:
    return f.read()


def _assert_valid_png(path) -> None:
  with Image.open(path) as im:
    im.verify()
  with Image.open(path) as im:
    assert im.format == 'PNG' and im.width >= 300 and im.height >= 200
    colors = im.convert('RGB').getcolors(maxcolors=1_000_000)
    assert colors is None or len(colors) > 10  # something was drawn, not a blank canvas


@pytest.fixture(autouse=True)
def _no_leaked_figures():
  yield
  assert _pylab_helpers.Gcf.get_num_fig_managers() == 0


@pytest.fixture
def figures(monkeypatch):
  """The figures the report saves, by file name: (panel title, artist labels) per axes."""
  seen = {}
  save = report._save

  def recording_save(fig, path):
    seen[os.path.basename(path)] = [
      (
        ax.get_title(),
        [line.get_label() for line in ax.get_lines()],
        [c.get_label() for c in ax.collections],
        [(np.array(ln.get_xdata()), np.array(ln.get_ydata())) for ln in ax.get_lines()],
      )
      for ax in fig.axes
      if ax.axison
    ]
    save(fig, path)  # clears the figure, hence the copies above

  monkeypatch.setattr(report, '_save', recording_save)
  return seen


def test_results_table_has_the_numbers_of_results_json(tmp_path):
  _full_run(tmp_path, random_init={k: v for k, v in RANDOM_INIT.items() if k != 'knn'})
  path = report.write_report(str(tmp_path), _config())
  assert path == os.path.join(str(tmp_path), 'report.md')
  text = _read(path)
  assert text.startswith('# simclr_test\n')
  rows = {
    cells[0]: cells[1:]
    for line in text.splitlines()
    if line.startswith('| ') and (cells := [c.strip() for c in line.strip('|').split('|')])
  }
  assert rows['protocol'] == ['pretrained', 'random init', 'difference']
  for name in ('linear', 'linear_2_per_class'):
    p, r = PRETRAINED[name], RANDOM_INIT[name]
    diff = round((p - r) * 100, 2)
    assert rows[name] == [f'{p * 100:.2f}', f'{r * 100:.2f}', f'+{diff:.2f}']
  assert rows['linear'] == ['81.23', '60.57', '+20.66']
  # No baseline for a protocol: shown as missing, not as 0 or a crash.
  assert rows['knn'] == ['77.31', '-', '-']
  assert 'finished at step 100' in text


def test_summary_describes_the_run(tmp_path):
  _full_run(tmp_path)
  text = _read(report.write_report(str(tmp_path), _config()))
  assert '- method: simclr' in text
  assert '- encoder: resnet18' in text
  assert '- dataset: digits' in text
  assert '- batch size: 32' in text
  assert '- steps: 100 / 100' in text
  median = np.median([100.0 + s for s in range(10, 101, 10)])
  assert f'- images/s: {median:,.0f} (median of 10 logs)' in text
  # The config, whole, in a collapsed block.
  block = text.split('```json\n', 1)[1].split('\n```', 1)[0]
  assert json.loads(block)['name'] == 'simclr_test'
  assert '<details>' in text and '</details>' in text


def test_every_link_resolves_and_is_relative(tmp_path):
  run = tmp_path / 'run'
  run.mkdir()
  _full_run(run)
  text = _read(report.write_report(str(run), _config()))
  links = _links(text)
  for link in links:
    assert not os.path.isabs(link) and '..' not in link.split('/'), link
    assert os.path.isfile(run / link), link
  assert str(tmp_path) not in text.split('```json', 1)[0]
  expected = {
    'report/loss.png',
    'report/eval.png',
    'pictures/embeddings/step_0000000.png',  # the first frame next to the latest
    'pictures/embeddings/step_0000100.png',
    'pictures/embeddings_grid.png',
    'pictures/embeddings.gif',
    'pictures/attention/step_0000100.png',  # the latest only
    'pictures/reconstructions/step_0000100.png',
  }
  assert set(links) == expected
  # Copied elsewhere, the folder still resolves every link.
  copy = tmp_path / 'copy'
  shutil.copytree(run, copy)
  assert all(os.path.isfile(copy / link) for link in links)


def test_plots_are_valid_pngs_with_every_metric(tmp_path, figures):
  _full_run(tmp_path)
  report.write_report(str(tmp_path), _config())
  _assert_valid_png(tmp_path / 'report' / 'loss.png')
  _assert_valid_png(tmp_path / 'report' / 'eval.png')
  assert not list((tmp_path / 'report').glob('*.tmp'))

  loss_titles = [title for title, *_ in figures['loss.png']]
  assert loss_titles[0] == 'training loss'
  assert sorted(loss_titles[1:]) == ['grad_norm', 'h_std', 'lr']  # not images_per_sec

  panels = {title: rest for title, *rest in figures['eval.png']}
  assert set(panels) == {k[len('eval/') :] for k in EVAL_KEYS}
  for name, (labels, _, data) in panels.items():
    assert labels == ['pretrained', 'random init']
    (steps, values), (_, baseline) = data
    np.testing.assert_array_equal(steps, [50, 100])
    np.testing.assert_allclose(values, [100 * (PRETRAINED[name] - 0.05), 100 * PRETRAINED[name]])
    assert all(y == pytest.approx(100 * RANDOM_INIT[name]) for y in baseline)
  assert 'Dashed: the randomly initialised encoder' in _read(tmp_path / 'report.md')


def test_nan_loss_is_reported_not_fatal(tmp_path, figures):
  lines = _training_lines()
  lines[3]['loss'] = math.nan  # step 40
  lines[7]['loss'] = math.inf  # step 80
  lines[-1]['grad_norm'] = math.nan
  _write_metrics(tmp_path, lines + _eval_lines()[:1] + [{'step': 100, 'eval/linear': math.nan}])
  with open(tmp_path / 'metrics.jsonl') as f:
    assert 'NaN' in f.read()  # what MetricWriter's json.dumps writes
  text = _read(report.write_report(str(tmp_path), _config()))
  assert '**Warning: `loss` is not finite** at 2 of 10 logged steps (first at step 40: nan)' in text
  assert '`grad_norm` is not finite' in text
  assert '`eval/linear` is not finite' in text
  assert '| linear | nan | - | - |' in text  # the latest evaluation, as it is
  _assert_valid_png(tmp_path / 'report' / 'loss.png')
  _assert_valid_png(tmp_path / 'report' / 'eval.png')
  loss_panel = figures['loss.png'][0]
  assert 'not finite' in loss_panel[2]  # the crosses that mark NaN / inf steps


def test_a_run_that_logged_nothing_gets_a_report_saying_so(tmp_path):
  for metrics in (None, ''):  # no metrics.jsonl yet, then an empty one
    if metrics is not None:
      (tmp_path / 'metrics.jsonl').write_text(metrics)
    text = _read(report.write_report(str(tmp_path), _config('empty_run')))
    assert text.startswith('# empty_run\n')
    assert 'run nothing logged yet' in text
    assert 'No metrics logged yet' in text
    assert 'No training metrics logged yet.' in text
    assert 'No evaluation yet.' in text
    assert 'No results yet' in text
    assert 'No pictures yet.' in text
    assert _links(text) == []
    assert not (tmp_path / 'report').exists()


def test_in_progress_run_half_written_line_and_resumed_steps(tmp_path):
  """No results.json yet: the latest evaluation fills the table; a resumed run's repeated step
  keeps its later value; a half-written last line is skipped and counted."""
  lines = _training_lines(range(10, 61, 10)) + _eval_lines()[:1]
  lines.append({'step': 30, 'loss': 123.0})  # logged again after resuming from step 20
  _write_metrics(tmp_path, lines)
  with open(tmp_path / 'metrics.jsonl', 'a') as f:
    f.write('{"step": 70, "loss": 0.0')
  text = _read(report.write_report(str(tmp_path), _config(), total_steps=500))
  assert 'in progress, step 60' in text
  assert '- steps: 60 / 500' in text
  assert 'latest evaluation (step 50)' in text
  assert f'| knn | {100 * (PRETRAINED["knn"] - 0.05):.2f} | - | - |' in text
  assert '1 unreadable line(s) of metrics.jsonl were skipped.' in text
  series, bad = report._read_metrics(str(tmp_path / 'metrics.jsonl'))
  assert bad == 1
  assert list(series['loss'][0]) == list(range(10, 61, 10)) and series['loss'][1][2] == 123.0


def test_config_from_workdir_and_command_line(tmp_path, capsys):
  _full_run(tmp_path)
  config = _config('from_json')
  (tmp_path / 'config.json').write_text(config.to_json_best_effort())
  report.main(['ssljax.monitor.report', f'--workdir={tmp_path}'])
  assert 'wrote' in capsys.readouterr().out
  text = _read(tmp_path / 'report.md')
  assert text.startswith('# from_json\n') and '- steps: 100 / 100' in text
  with pytest.raises(SystemExit):
    report.main(['ssljax.monitor.report'])


def test_train_hook_logs_a_failure_and_honours_the_switch(tmp_path, monkeypatch):
  from absl import logging as absl_logging

  from ssljax import train

  calls, warnings = [], []

  def broken(workdir, config, total_steps=None):
    calls.append(total_steps)
    raise RuntimeError('disk full')

  monkeypatch.setattr(report, 'write_report', broken)
  monkeypatch.setattr(absl_logging, 'warning', lambda *a, **k: warnings.append(a))
  config = _config()
  train._write_report(config, str(tmp_path), 100)  # must not raise
  assert calls == [100] and warnings and 'report' in warnings[0][0]
  config.report = False
  train._write_report(config, str(tmp_path), 100)
  assert calls == [100]
  assert SimCLR.default_config().report is True

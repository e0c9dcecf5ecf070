"""MetricWriter: the JSONL lines and the TensorBoard events hold the same scalars, readable by
TensorBoard's own loader (no TensorFlow); the progress bar stays off where nobody watches."""

import io
import json

import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator

from ssljax.monitor.metrics import MetricWriter, progress_bar


def test_jsonl_and_tensorboard_hold_the_same_scalars(tmp_path):
  writer = MetricWriter(str(tmp_path))
  writer.write(10, {'loss': 2.5, 'lr': np.float32(0.1)})
  writer.write(20, {'loss': 1.25, 'eval/knn': 0.5})
  writer.close()
  lines = [json.loads(x) for x in open(tmp_path / 'metrics.jsonl')]
  assert lines == [
    {'step': 10, 'loss': 2.5, 'lr': float(np.float32(0.1))},
    {'step': 20, 'loss': 1.25, 'eval/knn': 0.5},
  ]
  events = event_accumulator.EventAccumulator(str(tmp_path / 'tensorboard'))
  events.Reload()
  read = {
    tag: [(e.step, float(np.asarray(e.tensor_proto.float_val[0]))) for e in events.Tensors(tag)]
    for tag in events.Tags()['tensors']
  }
  assert read == {
    'loss': [(10, 2.5), (20, 1.25)],
    'lr': [(10, float(np.float32(0.1)))],
    'eval/knn': [(20, 0.5)],
  }
  # A resumed run appends to the same files.
  MetricWriter(str(tmp_path)).write(30, {'loss': 1.0})
  assert len(open(tmp_path / 'metrics.jsonl').readlines()) == 3


def test_progress_bar_is_off_without_a_terminal():
  stream = io.StringIO()
  bar = progress_bar(100, 40, stream=stream)
  assert bar.disable and bar.n == 40
  bar.update(10)
  bar.close()
  assert stream.getvalue() == ''


class _Terminal(io.StringIO):
  def isatty(self):
    return True


def test_progress_bar_shows_steps_and_the_postfix_on_a_terminal():
  stream = _Terminal()
  bar = progress_bar(100, 40, stream=stream)
  bar.set_postfix(loss='1.2345')
  bar.update(10)
  bar.close()
  assert '50/100' in stream.getvalue() and 'loss=1.2345' in stream.getvalue()


def test_the_tensorboard_writer_leaves_tensorflows_notices_out_of_the_log(tmp_path):
  """TensorBoard's Writer loads TensorFlow where it is installed; a run whose data never did
  (synthetic images, views made on the device) must not get TensorFlow's oneDNN and
  CPU-instructions notices in its log because of it."""
  import subprocess
  import sys

  pytest.importorskip('tensorflow')
  code = (
    'import sys; from ssljax.monitor import metrics; '
    "assert 'tensorflow' not in sys.modules; "
    f'metrics.MetricWriter({str(tmp_path)!r}).write(1, {{"loss": 1.0}}); '
    "assert 'tensorflow' in sys.modules"
  )
  done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-2000:]
  assert 'oneDNN' not in done.stderr and 'CPU instructions' not in done.stderr, done.stderr

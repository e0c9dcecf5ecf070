"""Metrics to JSONL and TensorBoard, and a progress bar; all written by process 0 only.

TensorBoard events come from `tensorboard.summary.Writer` (the `tensorboard` package; it loads
TensorFlow for its file layer where TensorFlow is installed, so that goes through ssljax's quiet
import first), the progress bar from tqdm: both were hand-written here before.

A bucket object cannot be appended to, and the Writer writes through tf.io.gfile, which ssljax
keeps to the data. So with a gs:// workdir both files are written in a local temporary directory
and copied whole to the workdir through `ssljax.paths` at every write (they hold scalars only:
small); metrics.jsonl is first copied down, so a resumed run appends to the earlier attempts'.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from typing import Any

import jax
import tqdm
from tensorboard.summary import Writer

from ssljax import paths


def _writer(directory: str) -> Writer:
  """TensorBoard's Writer, TensorFlow (when installed) loaded first through
  `ssljax.data.tf_import`: the Writer would load it itself, and TensorFlow's libraries would
  print their oneDNN and CPU-instructions notices into the run's log."""
  try:
    import ssljax.data.tf_import  # noqa: F401
  except ImportError:  # no TensorFlow: the Writer writes through its own file layer
    pass
  return Writer(directory)


class MetricWriter:
  """Appends {'step': s, name: value, ...} lines to WORKDIR/metrics.jsonl and the same scalars
  to TensorBoard event files under WORKDIR/tensorboard."""

  def __init__(self, workdir: str):
    self.active = jax.process_index() == 0
    if not self.active:
      return
    self._workdir = paths.path(workdir)
    self._workdir.mkdir(parents=True, exist_ok=True)
    self._local = tempfile.mkdtemp(prefix='ssljax_metrics_') if paths.is_remote(workdir) else None
    local = self._local or workdir
    if self._local and (self._workdir / 'metrics.jsonl').exists():
      with open(os.path.join(local, 'metrics.jsonl'), 'wb') as f:
        f.write((self._workdir / 'metrics.jsonl').read_bytes())
    self._jsonl = open(os.path.join(local, 'metrics.jsonl'), 'a')
    self._tb = _writer(os.path.join(local, 'tensorboard'))

  def write(self, step: int, scalars: dict[str, Any]) -> None:
    if not self.active:
      return
    scalars = {k: float(v) for k, v in scalars.items()}
    self._jsonl.write(json.dumps({'step': int(step), **scalars}) + '\n')
    self._jsonl.flush()
    for name, value in scalars.items():
      self._tb.add_scalar(name, value, int(step))
    self._tb.flush()
    self._upload()

  def _upload(self) -> None:
    """With a gs:// workdir: the local files copied whole to it."""
    if not self._local:
      return
    for root, _, files in os.walk(self._local):
      for name in files:
        rel = os.path.relpath(os.path.join(root, name), self._local)
        target = self._workdir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(os.path.join(root, name), 'rb') as f:
          target.write_bytes(f.read())

  def close(self) -> None:
    if self.active:
      self._jsonl.close()
      self._tb.close()
      self._upload()
      if self._local:
        shutil.rmtree(self._local, ignore_errors=True)


def progress_bar(total_steps: int, start_step: int, *, stream=None) -> tqdm.tqdm:
  """One self-rewriting line (steps, rate, ETA, then loss and images/s as postfix) on process 0
  when `stream` (stderr) is a terminal; disabled otherwise: logs and CI get the periodic log
  lines instead."""
  stream = stream or sys.stderr
  return tqdm.tqdm(
    total=total_steps,
    initial=start_step,
    unit='step',
    file=stream,
    dynamic_ncols=True,
    disable=jax.process_index() != 0 or not stream.isatty(),
  )

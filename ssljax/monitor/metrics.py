"""Metrics to JSONL and TensorBoard, and a progress bar; all written by process 0 only.

TensorBoard events come from `tensorboard.summary.Writer` (the `tensorboard` package, no
TensorFlow), the progress bar from tqdm: both were hand-written here before.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import jax
import tqdm
from tensorboard.summary import Writer


class MetricWriter:
  """Appends {'step': s, name: value, ...} lines to WORKDIR/metrics.jsonl and the same scalars
  to TensorBoard event files under WORKDIR/tensorboard."""

  def __init__(self, workdir: str):
    self.active = jax.process_index() == 0
    if not self.active:
      return
    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a')
    self._tb = Writer(os.path.join(workdir, 'tensorboard'))

  def write(self, step: int, scalars: dict[str, Any]) -> None:
    if not self.active:
      return
    scalars = {k: float(v) for k, v in scalars.items()}
    self._jsonl.write(json.dumps({'step': int(step), **scalars}) + '\n')
    self._jsonl.flush()
    for name, value in scalars.items():
      self._tb.add_scalar(name, value, int(step))
    self._tb.flush()

  def close(self) -> None:
    if self.active:
      self._jsonl.close()
      self._tb.close()


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

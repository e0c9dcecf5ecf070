"""Metrics to JSONL and TensorBoard, and a progress bar; all written by process 0 only."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import jax


class MetricWriter:
  """Appends {'step': s, name: value, ...} lines to WORKDIR/metrics.jsonl and TensorBoard events.

  TensorBoard needs only the `tensorboard` package (no TensorFlow); without it, JSONL alone.
  """

  def __init__(self, workdir: str):
    self.active = jax.process_index() == 0
    self._tb = None
    if not self.active:
      return
    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a')
    try:
      from tensorboard.summary.writer.event_file_writer import EventFileWriter

      self._tb = EventFileWriter(os.path.join(workdir, 'tensorboard'))
    except ImportError:
      pass

  def write(self, step: int, scalars: dict[str, Any]) -> None:
    if not self.active:
      return
    scalars = {k: float(v) for k, v in scalars.items()}
    self._jsonl.write(json.dumps({'step': int(step), **scalars}) + '\n')
    self._jsonl.flush()
    if self._tb is not None:
      from tensorboard.compat.proto import event_pb2, summary_pb2

      summary = summary_pb2.Summary(
        value=[summary_pb2.Summary.Value(tag=k, simple_value=v) for k, v in scalars.items()]
      )
      self._tb.add_event(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))
      self._tb.flush()

  def close(self) -> None:
    if self.active:
      self._jsonl.close()
      if self._tb is not None:
        self._tb.close()


class ProgressBar:
  """One self-rewriting line: step, loss, images/s and ETA. Silent when stderr is not a terminal
  (logs and CI get the periodic log lines instead)."""

  def __init__(self, total_steps: int, *, stream=None):
    self.total = total_steps
    self.stream = stream or sys.stderr
    self.enabled = jax.process_index() == 0 and self.stream.isatty()

  def update(self, step: int, *, loss: float, images_per_sec: float, eta_s: float) -> None:
    if not self.enabled:
      return
    width = 30
    done = int(width * step / max(self.total, 1))
    eta = time.strftime('%H:%M:%S', time.gmtime(max(eta_s, 0)))
    self.stream.write(
      f'\r[{"#" * done}{"." * (width - done)}] {step}/{self.total} loss {loss:.4f} '
      f'{images_per_sec:,.0f} img/s ETA {eta}'
    )
    self.stream.flush()

  def close(self) -> None:
    if self.enabled:
      self.stream.write('\n')
      self.stream.flush()

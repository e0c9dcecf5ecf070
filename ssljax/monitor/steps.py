"""What the train loop reports as it goes, in one object: the metrics of the steps since the last
log line (their means, the images per second), the label-free health of the encoder, the
collapse warning, the unreadable files the input met, and the progress bar. The loop hands it
each fetch of step metrics and asks it to log at every log step; it keeps no counters itself."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from ssljax import paths
from ssljax.monitor import collapse, report
from ssljax.monitor.metrics import MetricWriter, progress_bar


class SkippedFiles:
  """The unreadable files the input met, as they are met: their count in metrics.jsonl
  (data/skipped_files) and their names in WORKDIR/skipped_files.txt, which keeps those an
  earlier attempt of the run met. The report shows both."""

  def __init__(self, workdir: str, writer: MetricWriter, found: Callable[[], Iterable[str]]):
    self.writer, self.found = writer, found
    self.file = paths.path(workdir) / report.SKIPPED_FILES
    self.known: set[str] = set()
    if self.file.exists():
      self.known = {line for line in self.file.read_text().splitlines() if line.strip()}

  def record(self, step: int) -> None:
    found = self.known | set(self.found())
    if found == self.known:
      return
    self.known = found
    self.writer.write(step, {'data/skipped_files': float(len(found))})
    if jax.process_index() == 0:
      paths.write_atomic(self.file, '\n'.join(sorted(found)) + '\n')


class StepLogger:
  """metrics.jsonl, TensorBoard, the progress bar and the log lines of a run's training steps.

  `health` (state -> {'health/...': value}, None: off) measures the encoder at each log step;
  `skipped_files` lists the unreadable files the input has met so far.
  """

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    workdir: str,
    total_steps: int,
    start_step: int,
    health: Callable[[Any], Mapping[str, Any]] | None,
    skipped_files: Callable[[], Iterable[str]],
  ):
    self.config, self.total_steps, self.health = config, total_steps, health
    self.writer = MetricWriter(workdir)
    self.skipped = SkippedFiles(workdir, self.writer, skipped_files)
    self.bar = progress_bar(total_steps, start_step)
    self.collapse_warned = False
    # The fetched metrics of the steps since the last log line, and when that line was written.
    self.window: list[dict] = []
    self.window_start, self.window_step = time.perf_counter(), start_step

  def add(self, fetched: list[dict]) -> None:
    """Metrics of steps fetched from the devices (already checked finite), in step order."""
    self.window += fetched

  def log(self, done: int, state: Any) -> str | None:
    """Writes the means of the window at step `done`, with the health of `state`, and starts a
    new window. Returns the collapse warning when config.health.stop_on_collapse must stop the
    run here (nothing else is logged then); None otherwise."""
    means = {
      k: float(np.mean([m[k] for m in self.window])) for k in self.window[0] if k != 'finite'
    }
    elapsed = time.perf_counter() - self.window_start
    means['images_per_sec'] = (done - self.window_step) * self.config.batch_size / elapsed
    if self.health is not None:  # label-free: is the representation collapsing?
      means.update(jax.device_get(self.health(state)))
    self.writer.write(done, means)
    reason = collapse.below_floor(means, self.config)
    if reason and self.config.health.stop_on_collapse:
      return collapse.warning(done, reason, self.config)
    if reason and not self.collapse_warned:
      logging.warning('%s', collapse.warning(done, reason, self.config))
      self.collapse_warned = True
    self.skipped.record(done)
    rate = means['images_per_sec']
    rate = f'{rate:,.0f}' if rate >= 10 else f'{rate:.2g}'  # a large model on a CPU: 0.4, not 0
    self.bar.set_postfix(loss=f'{means["loss"]:.4f}', img_s=rate)
    self.bar.update(done - self.bar.n)
    if self.bar.disable:
      logging.info(
        'step %d/%d loss %.4f %s img/s',
        done,
        self.total_steps,
        means['loss'],
        rate,
      )
    self.window, self.window_start, self.window_step = [], time.perf_counter(), done
    return None

  def write_eval(self, step: int, results: Mapping[str, float]) -> None:
    """An evaluation's results (protocol -> value) as eval/<protocol> at `step`."""
    self.writer.write(step, {f'eval/{k}': v for k, v in results.items()})

  def record_skipped(self, step: int) -> None:
    """The files skipped since the last log line (evaluation reads files too)."""
    self.skipped.record(step)

  def stop_progress(self) -> None:
    self.bar.close()

  def close(self) -> None:
    self.writer.close()

"""The one training loop, the same for every method: mesh, input, model and optimizer, sharding,
checkpoint restore, train loop, evaluation. Methods differ only in `ssljax.methods`."""

from __future__ import annotations

import json
import os
import signal
import time

import jax
import ml_collections
import numpy as np
from absl import logging

from ssljax import build, data, methods, report, restore, sharding, visualize
from ssljax.checkpoint import Checkpointer
from ssljax.evaluators import protocols
from ssljax.methods import TrainState
from ssljax.metrics import MetricWriter, progress_bar


def validate(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> None:
  """Every check that can fail on the config, before any data is read or anything compiles:
  the batch layout, the method's own checks (views, eval_encoder, its sections), evaluation,
  and whether the data is on this machine."""
  sharding.check_batch_size(config.batch_size, mesh)
  methods.check_config(config)
  protocols.check_eval_config(config)
  data.check_available(config)


class _Preemption:
  """Turns SIGTERM into a flag the loop checks between steps, so it can save and exit cleanly."""

  def __init__(self):
    self.requested = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    logging.warning('SIGTERM received: saving a checkpoint before exiting.')
    self.requested = True

  def restore(self):
    signal.signal(signal.SIGTERM, self._previous)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Pretrains config.method, evaluates the encoder, writes WORKDIR/results.json; returns it."""
  # ---------------------------------------------------------------- Mesh
  mesh = sharding.make_mesh()
  validate(config, mesh)
  info = data.dataset_info(config)
  logging.info('Mesh %s over %d processes; data %s', mesh.shape, jax.process_count(), info)

  # ---------------------------------------------------------------- Model and optimizer
  method, tx, schedule, init, total_steps = build.build_run(config, mesh, info)

  # ---------------------------------------------------------------- Sharding and init
  abstract_state = jax.eval_shape(init, jax.random.PRNGKey(0))
  state_sharding = jax.tree.map(lambda _: sharding.replicated(mesh), abstract_state)
  # config.init_from: another run's encoder, read and checked before anything compiles.
  warm = restore.prepare_warm_start(config, method, abstract_state, workdir)
  init = jax.jit(init, out_shardings=state_sharding)
  state = init(jax.random.PRNGKey(config.seed))
  n_params = sum(x.size for x in jax.tree.leaves(state.params))
  logging.info('%s with %s parameters; %d steps', config.method, f'{n_params:,}', total_steps)

  # ---------------------------------------------------------------- Checkpoint restore
  ckpt = Checkpointer(workdir, max_to_keep=config.keep_checkpoints)
  latest = ckpt.latest_step()
  if latest is not None:
    state = TrainState(**ckpt.restore(latest, state._asdict()))
    logging.info('Resumed from checkpoint at step %d in %s', latest, ckpt.directory)
    print(f'Resumed from step {latest} ({ckpt.directory})', flush=True)
  elif warm is not None:
    state = restore.warm_start(method, state, warm)
  start_step = int(state.step)

  # ---------------------------------------------------------------- Pictures
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2))  # what `ssljax.visualize` rebuilds from
  drawer = visualize.Pictures(config, method, workdir)
  if start_step == 0:
    drawer.draw(state, 0)  # the first frame: the encoder before any training

  # ---------------------------------------------------------------- Train loop
  train_step = jax.jit(
    build.make_train_step(method, tx, schedule),
    in_shardings=(state_sharding, sharding.data_sharding(mesh)),
    out_shardings=(state_sharding, sharding.replicated(mesh)),
    donate_argnums=0,
  )
  writer = MetricWriter(workdir)
  bar = progress_bar(total_steps, start_step)
  batches = sharding.prefetch_to_mesh(
    data.build_train_iterator(config, start_step=start_step), mesh
  )
  supervised_cache = protocols.SupervisedCache()  # the baseline ignores the weights: once a run
  preemption = _Preemption()
  last_saved = latest
  pending, t_log, step_log = [], time.perf_counter(), start_step
  try:
    for step in range(start_step, total_steps):
      state, metrics = train_step(state, next(batches))
      pending.append(metrics)  # device arrays: fetched only when logging
      if len(pending) > 1:
        # At most one step queued behind the running one. Unbounded async dispatch let Python run
        # up to log_every steps ahead, blocked in C++ where a SIGTERM handler cannot run: a
        # preempted run went on for 23 more 4-second steps before it saw the signal.
        jax.block_until_ready(pending[-2])
      done = step + 1
      if done % config.log_every == 0 or done == total_steps:
        means = {k: float(np.mean([m[k] for m in jax.device_get(pending)])) for k in pending[0]}
        elapsed = time.perf_counter() - t_log
        means['images_per_sec'] = (done - step_log) * config.batch_size / elapsed
        writer.write(done, means)
        bar.set_postfix(loss=f'{means["loss"]:.4f}', img_s=f'{means["images_per_sec"]:,.0f}')
        bar.update(done - bar.n)
        if bar.disable:
          logging.info(
            'step %d/%d loss %.4f %.0f img/s',
            done,
            total_steps,
            means['loss'],
            means['images_per_sec'],
          )
        pending, t_log, step_log = [], time.perf_counter(), done
      if done % config.checkpoint_every == 0:
        ckpt.save(done, state._asdict())
        last_saved = done
      if preemption.requested:
        if last_saved != done:
          ckpt.save(done, state._asdict(), force=True)
        ckpt.wait()
        logging.warning('Saved step %d after SIGTERM; exiting.', done)
        raise SystemExit(143)
      if config.eval_every and done % config.eval_every == 0 and done < total_steps:
        results = protocols.evaluate_state(config, method, state, None, mesh, supervised_cache)
        writer.write(done, {f'eval/{k}': v for k, v in results['pretrained'].items()})
        drawer.draw(state, done)
        _write_report(config, workdir, total_steps)
    if last_saved != total_steps:
      ckpt.save(total_steps, state._asdict(), force=True)
  finally:
    bar.close()
    preemption.restore()
    ckpt.wait()

  # ---------------------------------------------------------------- Evaluation
  drawer.draw(state, total_steps)
  drawer.finish()
  baseline = init if config.eval_config.random_init else None
  results = protocols.evaluate_state(config, method, state, baseline, mesh, supervised_cache)
  results['step'] = int(state.step)
  results['config'] = config.name
  if results['pretrained']:
    writer.write(total_steps, {f'eval/{k}': v for k, v in results['pretrained'].items()})
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'results.json'), 'w') as f:
      json.dump(results, f, indent=2)
  _write_report(config, workdir, total_steps)
  writer.close()
  ckpt.close()
  return results


def _write_report(config: ml_collections.ConfigDict, workdir: str, total_steps: int) -> None:
  """Rewrites WORKDIR/report.md on process 0; a report that fails to draw never stops training."""
  if jax.process_index() != 0 or not config.get('report', True):
    return
  try:
    report.write_report(workdir, config, total_steps=total_steps)
  except Exception:
    logging.warning('Could not write the report in %s', workdir, exc_info=True)

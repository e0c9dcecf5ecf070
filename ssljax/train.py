"""The one training loop, the same for every method: mesh, input, model and optimizer, sharding,
checkpoint restore, train loop, evaluation. Methods differ only in `ssljax.methods`."""

from __future__ import annotations

import json
import os
import signal
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from ssljax import data, evaluation, methods, optim, report, restore, sharding, visualize
from ssljax.checkpoint import Checkpointer
from ssljax.methods import TrainState
from ssljax.metrics import MetricWriter, ProgressBar


def validate(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> None:
  """Every check that can fail on the config, before any data is read or anything compiles."""
  sharding.check_batch_size(config.batch_size, mesh)
  if config.method not in methods.METHODS:
    raise ValueError(
      f'config.method {config.method!r} is unknown; choose one of {sorted(methods.METHODS)}'
    )
  evaluation.check_eval_config(config)
  data.check_available(config)


def steps_per_epoch(config: ml_collections.ConfigDict, num_train: int) -> int:
  return max(num_train // config.batch_size, 1)


def schedule_lengths(config: ml_collections.ConfigDict, num_train: int) -> tuple[int, int]:
  """(total steps, warm-up steps) from epochs, or config.total_steps when set."""
  per_epoch = steps_per_epoch(config, num_train)
  total = config.total_steps or int(config.epochs * per_epoch)
  return total, int(config.warmup_epochs * per_epoch)


def build_method(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, info) -> tuple:
  """(method, tx, schedule, init, total_steps) for `config` on `mesh`: what a run trains and what
  `ssljax.visualize` restores into. `init` is rng -> TrainState, not yet jitted."""
  total_steps, warmup_steps = schedule_lengths(config, info.num_train)
  method = methods.build(config, mesh, total_steps, steps_per_epoch(config, info.num_train))
  tx, schedule = optim.build_optimizer(config, total_steps, warmup_steps)
  views_shape = [
    (s.image_size, s.image_size, info.image_shape[-1]) for s in data.view_specs(config)
  ]
  return method, tx, schedule, init_state(method, tx, config, views_shape), total_steps


def init_state(method, tx, config, views_shape) -> callable:
  """A function rng -> TrainState; jitted or eval_shape'd by the caller (big_vision style)."""

  def init(rng):
    init_rng, train_rng = jax.random.split(rng)
    # Two examples are enough: parameter shapes do not depend on the batch size.
    batch = {'views': [jnp.zeros((2,) + s, jnp.float32) for s in views_shape]}
    # Parameters are replicated, so the partitionable threefry buys nothing here, and XLA:CPU
    # compiles the classic one about 8x faster (40 s -> 5 s for a ResNet-18).
    with jax.threefry_partitionable(False):
      params, model_state = method.init(init_rng, batch)
    return TrainState(jnp.zeros((), jnp.int32), params, model_state, tx.init(params), train_rng)

  return init


def make_train_step(method, tx, schedule):
  def train_step(state: TrainState, batch):
    rng, step_rng = jax.random.split(state.rng)
    grad_fn = jax.value_and_grad(method.loss, has_aux=True)
    (_, (model_state, metrics)), grads = grad_fn(
      state.params, state.model_state, batch, step_rng, state.step
    )
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    model_state = method.after_step(params, model_state, state.step)
    metrics = {**metrics, 'lr': schedule(state.step), 'grad_norm': optax.tree.norm(grads)}
    return TrainState(state.step + 1, params, model_state, opt_state, rng), metrics

  return train_step


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
  method, tx, schedule, init, total_steps = build_method(config, mesh, info)

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
    make_train_step(method, tx, schedule),
    in_shardings=(state_sharding, sharding.data_sharding(mesh)),
    out_shardings=(state_sharding, sharding.replicated(mesh)),
    donate_argnums=0,
  )
  writer = MetricWriter(workdir)
  bar = ProgressBar(total_steps)
  batches = sharding.prefetch_to_mesh(
    data.build_train_iterator(config, start_step=start_step), mesh
  )
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
        eta = (total_steps - done) * elapsed / (done - step_log)
        bar.update(done, loss=means['loss'], images_per_sec=means['images_per_sec'], eta_s=eta)
        if not bar.enabled:
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
        results = _evaluate(config, method, state, init, mesh, random_init=False)
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
  results = _evaluate(config, method, state, init, mesh, random_init=config.eval_config.random_init)
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


def _evaluate(config, method, state, init, mesh, *, random_init: bool) -> dict:
  """Evaluates the trained encoder and, for the baseline SSL must beat, the same one at init."""
  splits = {s: data.load_eval_split(config, s) for s in ('train', 'test')}
  if not config.eval or len(splits['test'][1]) == 0 or np.min(splits['test'][1]) < 0:
    logging.warning('No labelled test split: skipping evaluation.')
    return {'pretrained': {}, 'random_init': {}}
  results = {
    'pretrained': evaluation.evaluate(config, method, state.params, state.model_state, splits, mesh)
  }
  if random_init:
    fresh = init(jax.random.PRNGKey(config.seed))
    results['random_init'] = evaluation.evaluate(
      config, method, fresh.params, fresh.model_state, splits, mesh
    )
  return results

"""The one training loop, the same for every method, in the sections of a run: setup (the mesh,
the checks), data, model and state, restore, the loop, evaluation, the end. Methods differ only
in `ssljax.methods`; what the loop reports as it goes is `ssljax.monitor.steps`."""

from __future__ import annotations

import json
import os
import signal
import threading

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from ssljax import build, data, methods, models, optim, paths, restore, sharding
from ssljax.checkpoint import Checkpointer
from ssljax.config.checks import Checks
from ssljax.errors import TrainingCollapsed, TrainingDiverged
from ssljax.evaluators import protocols
from ssljax.methods import TrainState
from ssljax.monitor import report, visualize
from ssljax.monitor.steps import StepLogger


def _health_images(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
  """The first training images (un-augmented, at data.image_size) on the mesh, a multiple of
  the device count; None when the split has fewer than one per device."""
  split = data.eval_split(config, 'train')
  per_process = mesh.devices.size // jax.process_count()
  local = min(int(config.health.images) // jax.process_count(), split.size)
  local = local // per_process * per_process
  if local == 0:
    return None
  images, _ = split.take(np.arange(local))
  if len(images) == 0:
    return None
  # Unreadable files are left out of the split: cycle the readable ones back to `local` rows, so
  # every process contributes the same number.
  return sharding.to_global(np.resize(images, (local, *images.shape[1:])), mesh)


def _health(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, method):
  """state -> the label-free health metrics of the encoder on the first training images
  (`Method.health`), jitted; None when config.health.images is 0 or the split is too small."""
  images = _health_images(config, mesh) if config.health.images else None
  if images is None:
    return None
  health_of = jax.jit(
    lambda state, images: method.health(state.params, state.model_state, images),
    out_shardings=sharding.replicated(mesh),
  )
  return lambda state: health_of(state, images)


def check_loop_config(checks: Checks) -> None:
  """Records every problem of the fields this loop owns."""
  checks.count('seed', 0)
  for name in ('log_every', 'checkpoint_every', 'keep_checkpoints'):
    checks.count(name, 1)
  checks.count('eval_every', 0)
  checks.count('health.images', 0)
  checks.nonnegative('health.min_rankme')
  checks.nonnegative('health.min_std')
  checks.boolean('health.stop_on_collapse')
  checks.boolean('report')


def validate(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> None:
  """Every check that can fail on the config, before any data is read or anything compiles.

  Each module checks the fields it owns; one ConfigError lists every problem. An unknown
  method or a missing section stops at once; the data's presence is checked last.
  """
  checks = methods.start_checks(config)
  for check in (
    check_loop_config,
    optim.check_config,
    models.check_config,
    data.check_config,
    methods.check_config,
    protocols.check_eval_config,
    visualize.check_config,
  ):
    check(checks)
  if checks.ok:  # the batch sizes are integers: can the devices split them?
    checks.absorb(sharding.check_batch_size, config.batch_size, mesh)
    protocols.check_eval_batch_sizes(checks, mesh)
  checks.raise_if_any()
  data.check_available(config)


class _Interrupts:
  """While training, SIGTERM (preemption) and Ctrl-C become a flag the loop checks after every
  step, so it saves and exits within a step; a second signal exits at once. Evaluations start
  from a saved state and run with the previous handlers: a signal ends them at once. Over
  several processes the flag stays set through evaluations instead: a process that left alone
  would leave the others waiting in a collective (`_Agreement` turns the flags into one step)."""

  _SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.received: int | None = None
    self._when = 'this step' if jax.process_count() == 1 else 'the step every process agrees on'
    self._previous = {s: signal.getsignal(s) for s in self._SIGNALS}
    self.install()

  def install(self):
    for s in self._SIGNALS:
      signal.signal(s, self._handle)

  def _handle(self, signum, frame):
    if self.received is not None:
      os._exit(128 + signum)  # asked twice: no more waiting
    self.received = signum
    logging.warning(
      '%s received: saving a checkpoint after %s, then exiting (again: exit now).',
      signal.Signals(signum).name,
      self._when,
    )

  def restore(self):
    for s, handler in self._previous.items():
      # None: the previous handler was not set from Python; the default is the closest.
      signal.signal(s, signal.SIG_DFL if handler is None else handler)


class _Agreement:
  """Several processes: a signal reaches some of them (a pod's maintenance event, one host's
  SIGTERM), yet the checkpoint save is a collective every process must join. After each step
  every process posts the signal it received (0: none) to a tiny max all-reduce over the mesh,
  queued behind that step; the loop reads it one step later, when the step has finished anyway,
  so the steps keep their one-step lead. Every process reads the same maximum at the same step,
  so all save that step and exit with the same code."""

  def __init__(self, mesh: jax.sharding.Mesh):
    self._mesh = mesh
    self._local = len(mesh.local_devices)
    self._max = jax.jit(jnp.max, out_shardings=sharding.replicated(mesh))
    self._posted: list[jax.Array] = []

  def post(self, signum: int | None) -> None:
    flags = np.full((self._local,), signum or 0, np.int32)
    self._posted.append(self._max(sharding.to_global(flags, self._mesh)))

  def agreed(self, *, last: bool) -> int:
    """The largest signal number any process received by the step before the newest (by the
    newest when `last`); 0 if none."""
    ready, self._posted = (self._posted, []) if last else (self._posted[:-1], self._posted[-1:])
    return max((int(x) for x in ready), default=0)


_CLOSE_SECONDS = 5


def _close_within(iterator, seconds: float) -> bool:
  """Closes a generator (the input pipeline: its tf.data iterators and their threads), waiting
  at most `seconds`; False if it is still closing then (it goes on in the background)."""
  closer = threading.Thread(target=iterator.close, name='close-input', daemon=True)
  closer.start()
  closer.join(seconds)
  return not closer.is_alive()


def _check_finite(
  fetched: list[dict], first_step: int, last_saved: int | None, ckpt: Checkpointer, config
) -> None:
  """Raises TrainingDiverged at the first step whose loss or gradient norm is not finite."""
  for i, m in enumerate(fetched):
    if m['finite']:
      continue
    where = (
      f'the last good checkpoint is step {last_saved} in {ckpt.directory}: rerunning with a fix '
      'resumes from there'
      if last_saved is not None
      else 'no checkpoint had been written yet'
    )
    raise TrainingDiverged(
      f'training diverged at step {first_step + i}: loss {float(m["loss"]):.4g}, gradient norm '
      f'{float(m["grad_norm"]):.4g}. Stopped without saving it; {where}. Try a lower '
      f'--config.base_lr (now {config.base_lr:g}), gradient clipping --config.grad_clip=1.0 '
      f'(now {config.grad_clip:g}), or --config.model.compute_dtype=float32 '
      f'(now {config.model.compute_dtype}).'
    )


def _stop_collapsed(message: str, last_saved: int | None, ckpt: Checkpointer) -> None:
  """config.health.stop_on_collapse: raises TrainingCollapsed without saving this state."""
  kept = (
    f'the last checkpoint before it is step {last_saved} in {ckpt.directory}'
    if last_saved is not None
    else 'no checkpoint had been written yet'
  )
  raise TrainingCollapsed(
    f'{message} Stopped (config.health.stop_on_collapse) without saving this state; {kept}.'
  )


def _save_on_signal(
  signum: int, done: int, state: TrainState, last_saved: int | None, ckpt: Checkpointer
) -> int:
  """Saves step `done` (unless just saved) once a signal arrived; returns the exit code."""
  if last_saved != done:
    ckpt.save(done, state._asdict(), force=True)
  ckpt.wait()
  name = signal.Signals(signum).name
  logging.warning('Saved step %d after %s; exiting.', done, name)
  print(f'{name}: saved step {done} in {ckpt.directory}; rerun to resume.', flush=True)
  return 128 + signum


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Pretrains config.method, evaluates the encoder, writes WORKDIR/results.json; returns it."""
  # ---------------------------------------------------------------- Setup
  mesh = sharding.make_mesh(config.mesh)
  validate(config, mesh)
  paths.require(
    workdir, config.get('init_from'), config.data.get('data_dir'), config.data.get('path')
  )

  # ---------------------------------------------------------------- Data
  info = data.dataset_info(config, workdir)
  logging.info('Mesh %s over %d processes; data %s', dict(mesh.shape), jax.process_count(), info)

  # ---------------------------------------------------------------- Model and state
  method, tx, schedule, init, total_steps = build.build_run(config, mesh, info)
  abstract_state, state_sharding = build.state_layout(config, mesh, init)
  # config.init_from: another run's encoder, read and checked before anything compiles.
  warm = restore.prepare_warm_start(config, method, abstract_state, workdir)
  init = jax.jit(init, out_shardings=state_sharding)
  state = init(jax.random.PRNGKey(config.seed))
  n_params = sum(x.size for x in jax.tree.leaves(state.params))
  state_bytes = sharding.bytes_per_device(state)  # parameters, optimizer state, EMA copies
  logging.info(
    '%s with %s parameters; %d steps; state %.3f GiB per device',
    config.method,
    f'{n_params:,}',
    total_steps,
    state_bytes / 2**30,
  )

  # ---------------------------------------------------------------- Restore
  ckpt = Checkpointer(workdir, max_to_keep=config.keep_checkpoints)
  latest = ckpt.latest_step()
  if latest is not None:
    state = TrainState(**ckpt.restore(latest, state._asdict()))
    logging.info('Resumed from checkpoint at step %d in %s', latest, ckpt.directory)
    print(f'Resumed from step {latest} ({ckpt.directory})', flush=True)
  elif warm is not None:
    state = restore.warm_start(method, state, warm)
  start_step = int(state.step)
  if jax.process_index() == 0:  # what `ssljax.monitor.visualize` rebuilds from
    paths.write_atomic(paths.path(workdir) / 'config.json', config.to_json_best_effort(indent=2))
  drawer = visualize.Pictures(config, method, workdir)
  if start_step == 0:
    drawer.draw(state, 0)  # the first frame: the encoder before any training

  # ---------------------------------------------------------------- The loop
  train_step = build.jit_train_step(config, mesh, method, tx, schedule, state_sharding)
  steps = StepLogger(
    config,
    workdir,
    total_steps,
    start_step,
    health=_health(config, mesh, method),
    skipped_files=lambda: data.skipped_files(config),
  )
  steps.writer.write(start_step, {'state_bytes_per_device': state_bytes})
  batches = sharding.prefetch_to_mesh(
    data.build_train_iterator(config, start_step=start_step), mesh
  )
  supervised_cache = protocols.SupervisedCache()  # the baseline ignores the weights: once a run
  interrupts = _Interrupts()
  # One process acts on its own signal after the step; several act on the agreed one.
  agreement = _Agreement(mesh) if jax.process_count() > 1 else None
  last_saved = latest
  # Device metrics not yet fetched. Every fetch checks that each step was finite, and nothing is
  # saved or evaluated before its steps are fetched: a non-finite state never reaches a
  # checkpoint, at no cost beyond the fetches logging makes.
  pending = []
  signal_exit = 0  # the exit code once a signal's checkpoint is saved
  try:
    for step in range(start_step, total_steps):
      state, metrics = train_step(state, next(batches))
      pending.append(metrics)
      done = step + 1
      if agreement:
        agreement.post(interrupts.received)
      if len(pending) > 1:
        # At most one step queued behind the running one. Unbounded async dispatch let Python run
        # up to log_every steps ahead, blocked in C++ where a signal handler cannot run: a
        # preempted run went on for 23 more 4-second steps before it saw the signal.
        jax.block_until_ready(pending[-2])
      stop = agreement.agreed(last=done == total_steps) if agreement else interrupts.received
      log_now = done % config.log_every == 0 or done == total_steps
      eval_now = bool(config.eval_every) and done % config.eval_every == 0 and done < total_steps
      save_now = done % config.checkpoint_every == 0 or eval_now  # evaluations start saved
      if log_now or save_now or stop:
        fetched = jax.device_get(pending)
        _check_finite(fetched, done - len(fetched) + 1, last_saved, ckpt, config)
        steps.add(fetched)
        pending = []
      if log_now and (collapsed := steps.log(done, state)):
        _write_report(config, workdir, total_steps)  # it shows the warning
        _stop_collapsed(collapsed, last_saved, ckpt)
      if save_now:
        ckpt.save(done, state._asdict(), force=eval_now)
        last_saved = done
      if stop:
        signal_exit = _save_on_signal(stop, done, state, last_saved, ckpt)
        steps.close()
        raise SystemExit(signal_exit)
      if eval_now:
        # Saved above, so a signal during the (long) evaluation may end one process at once;
        # over several, it waits for the step after it (_Interrupts).
        if not agreement:
          interrupts.restore()
        results = protocols.evaluate_state(config, method, state, None, mesh, supervised_cache)
        steps.write_eval(done, results['pretrained'])
        drawer.draw(state, done)
        _write_report(config, workdir, total_steps)
        interrupts.install()
    if last_saved != total_steps:
      ckpt.save(total_steps, state._asdict(), force=True)
  finally:
    input_closed = _close_within(batches, _CLOSE_SECONDS)  # its threads stop now, not at exit
    steps.stop_progress()
    interrupts.restore()
    ckpt.wait()
    if signal_exit and not input_closed:
      # Everything is saved; tf.data's teardown has been seen to block for 20 s or more.
      logging.warning('The input pipeline did not stop within %d s: exiting.', _CLOSE_SECONDS)
      logging.flush()
      if agreement:
        jax.distributed.shutdown()  # else the others wait for this process at their exit
      os._exit(signal_exit)

  # ---------------------------------------------------------------- Evaluation
  drawer.draw(state, total_steps)
  drawer.finish()
  baseline = init if config.eval_config.random_init else None
  results = protocols.evaluate_state(
    config, method, state, baseline, mesh, supervised_cache, keep_in=workdir
  )
  steps.record_skipped(total_steps)
  results['step'] = int(state.step)
  results['config'] = config.name
  if results['pretrained']:
    steps.write_eval(total_steps, results['pretrained'])

  # ---------------------------------------------------------------- The end
  if jax.process_index() == 0:
    paths.write_atomic(paths.path(workdir) / 'results.json', json.dumps(results, indent=2))
  _write_report(config, workdir, total_steps)
  steps.close()
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

"""What a run is made of, built from its config: the method, the optimizer and its schedule, the
init function and the train step. The training loop, `ssljax.restore`, `ssljax.evaluate` and the
experiments all build a run here, so a checkpoint is read back into exactly what trained it.

A leaf: it imports no module that drives a run (train, restore, evaluation, pictures).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from ssljax import data, methods, models, optim, sharding
from ssljax.data import augment_device
from ssljax.methods import Method, TrainState


class Run(NamedTuple):
  """The parts of a run. `init` is rng -> TrainState, not yet jitted (big_vision style: the
  caller jits it with shardings, or `jax.eval_shape`s it to get shapes without compiling)."""

  method: Method
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  init: Callable[[jax.Array], TrainState]
  total_steps: int


def steps_per_epoch(config: ml_collections.ConfigDict, num_train: int) -> int:
  return max(num_train // config.batch_size, 1)


def schedule_lengths(config: ml_collections.ConfigDict, num_train: int) -> tuple[int, int]:
  """(total steps, warm-up steps) from epochs, or config.total_steps when set."""
  per_epoch = steps_per_epoch(config, num_train)
  total = config.total_steps or int(config.epochs * per_epoch)
  return total, int(config.warmup_epochs * per_epoch)


def build_run(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, info) -> Run:
  """The run `config` describes on `mesh`, for a dataset described by `info`
  (`data.DatasetInfo`): what the loop trains and what a checkpoint is restored into."""
  models.check_channels(config, info.image_shape[-1])
  total_steps, warmup_steps = schedule_lengths(config, info.num_train)
  method = methods.build(config, mesh, total_steps, steps_per_epoch(config, info.num_train))
  tx, schedule = optim.build_optimizer(config, total_steps, warmup_steps, method.held_parameters())
  views_shape = [
    (s.image_size, s.image_size, info.image_shape[-1]) for s in data.view_specs(config)
  ]
  return Run(method, tx, schedule, init_state(method, tx, views_shape), total_steps)


def state_layout(
  config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, init: Callable
) -> tuple[TrainState, TrainState]:
  """(shapes, shardings) of the state `init` makes: the shapes from `jax.eval_shape` (nothing
  runs), the shardings by config.mesh's rule (`sharding.state_sharding`). `jax.jit(init,
  out_shardings=shardings)` then creates every tensor already split, never whole on one device."""
  abstract = jax.eval_shape(init, jax.random.PRNGKey(0))
  min_size = config.get('mesh', {}).get('fsdp_min_size', sharding.FSDP_MIN_SIZE)
  return abstract, sharding.state_sharding(abstract, mesh, min_size)


def init_state(
  method: Method, tx: optax.GradientTransformation, views_shape: list[tuple[int, int, int]]
) -> Callable[[jax.Array], TrainState]:
  """A function rng -> TrainState for views of `views_shape` (H, W, C) each."""

  def init(rng: jax.Array) -> TrainState:
    init_rng, train_rng = jax.random.split(rng)
    # Two examples are enough: parameter shapes do not depend on the batch size.
    batch = {'views': [jnp.zeros((2,) + s, jnp.float32) for s in views_shape]}
    with sharding.init_numbers(method.mesh):
      params, model_state = method.init(init_rng, batch)
    return TrainState(jnp.zeros((), jnp.int32), params, model_state, tx.init(params), train_rng)

  return init


def device_views(config: ml_collections.ConfigDict) -> Callable[[dict], dict] | None:
  """With config.augment.on='device': the function turning a batch of base images and their
  elements into the batch of views, run inside the train step; None on the host path."""
  if config.augment.get('on', 'host') != 'device':
    return None
  specs = data.view_specs(config)
  seed, size = int(config.seed), int(config.data.image_size)

  def views(batch: dict) -> dict:
    made = augment_device.make_views(
      batch['images'], batch['elements'], specs, seed=seed, image_size=size
    )
    return {'views': made}

  return views


def make_train_step(
  method: Method,
  tx: optax.GradientTransformation,
  schedule: optax.Schedule,
  views: Callable[[dict], dict] | None = None,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """(state, batch) -> (state, metrics): one optimizer step of `method`, to be jitted. With
  `views` (`device_views`), the batch holds base images and the step makes their views first.

  metrics['finite'] says whether the loss and the gradient norm were finite (a NaN anywhere in
  the gradient makes its norm NaN)."""

  grad_fn = jax.value_and_grad(method.loss, has_aux=True)
  accum = int(method.config.get('accum_steps', 1))

  def gradients(state: TrainState, batch: dict, rng: jax.Array):
    """((loss, (model_state, metrics)), grads) of the batch, or with accum_steps = k > 1 the
    mean over k micro-batches (rows i, i + k, ... of the batch: every device keeps its share),
    equal to the whole batch's for the methods that allow it (Method.accumulation_refusal)."""
    if accum == 1:
      return grad_fn(state.params, state.model_state, batch, rng, state.step)
    batch = {**batch, **method.batch_randomness(rng, batch)}
    micro = jax.tree.map(
      lambda x: jnp.moveaxis(x.reshape(x.shape[0] // accum, accum, *x.shape[1:]), 1, 0), batch
    )

    def part(batch: dict):  # loss, metrics and gradients of one micro-batch
      (loss, (_, metrics)), grads = grad_fn(state.params, state.model_state, batch, rng, state.step)
      return loss, metrics, grads

    def add(total, batch):
      return jax.tree.map(jnp.add, total, part(batch)), None

    first = part(jax.tree.map(lambda x: x[0], micro))
    total, _ = jax.lax.scan(add, first, jax.tree.map(lambda x: x[1:], micro))
    loss, metrics, grads = jax.tree.map(lambda x: x / accum, total)
    return (loss, (state.model_state, metrics)), grads  # these methods leave model_state as is

  def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    if views is not None:
      batch = views(batch)
    rng, step_rng = jax.random.split(state.rng)
    (loss, (model_state, metrics)), grads = gradients(state, batch, step_rng)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    model_state = method.after_step(params, model_state, state.step)
    grad_norm = optax.tree.norm(grads)
    metrics = {
      **metrics,
      'lr': schedule(state.step),
      'grad_norm': grad_norm,
      # Two scalar tests: the loop refuses to save a state after a step where this is False.
      'finite': jnp.isfinite(loss) & jnp.isfinite(grad_norm),
    }
    return TrainState(state.step + 1, params, model_state, opt_state, rng), metrics

  return train_step


def jit_train_step(
  config: ml_collections.ConfigDict,
  mesh: jax.sharding.Mesh,
  method: Method,
  tx: optax.GradientTransformation,
  schedule: optax.Schedule,
  state_sharding,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """`make_train_step` jitted on `mesh`: the batch split over the devices, the state laid out
  by `state_sharding` (`state_layout`) and donated (updated in place), the metrics replicated.
  The loop and the benchmarks time the same step."""
  return jax.jit(
    make_train_step(method, tx, schedule, device_views(config)),
    in_shardings=(state_sharding, sharding.data_sharding(mesh)),
    out_shardings=(state_sharding, sharding.replicated(mesh)),
    donate_argnums=0,
  )


def synthetic_step(config: ml_collections.ConfigDict):
  """(jitted train step, initial state, mesh, the synthetic copy of config) for `config`: the
  step the benchmarks time, on synthetic images of the shapes config's data would have."""
  mesh = sharding.make_mesh(config.get('mesh'))
  sharding.check_batch_size(config.batch_size, mesh)
  method = methods.build(config, mesh, total_steps=1000)
  tx, schedule = optim.build_optimizer(config, 1000, 10, method.held_parameters())
  channels = config.data.channels if config.data.source == 'synthetic' else None
  synthetic = config.copy_and_resolve_references()
  with synthetic.unlocked():
    synthetic.data.source = 'synthetic'
    if channels is None:
      synthetic.data.channels = 3 if config.data.source == 'tfds' else 1
  info = data.dataset_info(synthetic)
  shapes = [(s.image_size, s.image_size, info.image_shape[-1]) for s in data.view_specs(synthetic)]
  init = init_state(method, tx, shapes)
  _, state_sharding = state_layout(config, mesh, init)
  state = jax.jit(init, out_shardings=state_sharding)(jax.random.PRNGKey(0))
  step = jit_train_step(config, mesh, method, tx, schedule, state_sharding)
  return step, state, mesh, synthetic

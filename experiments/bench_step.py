"""The jitted train step of a config on synthetic data, as the benchmarks time it."""

from __future__ import annotations

import jax

from ssljax import build, data, methods, optim, sharding


def build_step(config):
  """(jitted train step, initial state, mesh, the synthetic copy of config) for `config`."""
  mesh = sharding.make_mesh()
  sharding.check_batch_size(config.batch_size, mesh)
  method = methods.build(config, mesh, total_steps=1000)
  tx, schedule = optim.build_optimizer(config, total_steps=1000, warmup_steps=10)
  channels = config.data.channels if config.data.source == 'synthetic' else None
  synthetic = config.copy_and_resolve_references()
  with synthetic.unlocked():
    synthetic.data.source = 'synthetic'
    if channels is None:
      synthetic.data.channels = 3 if config.data.source == 'tfds' else 1
  info = data.dataset_info(synthetic)
  shapes = [(s.image_size, s.image_size, info.image_shape[-1]) for s in data.view_specs(synthetic)]
  init = build.init_state(method, tx, shapes)
  state_sharding = jax.tree.map(
    lambda _: sharding.replicated(mesh), jax.eval_shape(init, jax.random.PRNGKey(0))
  )
  state = jax.jit(init, out_shardings=state_sharding)(jax.random.PRNGKey(0))
  step = jax.jit(
    build.make_train_step(method, tx, schedule),
    in_shardings=(state_sharding, sharding.data_sharding(mesh)),
    out_shardings=(state_sharding, sharding.replicated(mesh)),
    donate_argnums=0,
  )
  return step, state, mesh, synthetic

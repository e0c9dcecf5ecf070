"""config.accum_steps: k micro-batches give the whole batch's update where the loss allows it
(MAE: a mean of per-example terms whose masks are drawn for the whole batch), and every other
method refuses the setting before anything compiles, saying why."""

import jax
import numpy as np
import pytest
from conftest import load_config_file, shrink_config

from ssljax import build, data, sharding, train
from ssljax.errors import ConfigError


def _mae(accum: int):
  config = shrink_config(load_config_file('mae_digits.py'), source='synthetic')
  config.batch_size, config.accum_steps = 32, accum
  # LARS moves each layer along its gradient (scaled by a layer norm ratio), so comparing the
  # updated parameters compares the gradients; Adam's first step is about their signs.
  config.optimizer = 'lars'
  return config


def _train(config, steps: int):
  mesh = sharding.make_mesh()
  train.validate(config, mesh)
  run = build.build_run(config, mesh, data.dataset_info(config))
  abstract = jax.eval_shape(run.init, jax.random.PRNGKey(0))
  state_sharding = jax.tree.map(lambda _: sharding.replicated(mesh), abstract)
  state = jax.jit(run.init, out_shardings=state_sharding)(jax.random.PRNGKey(0))
  step = build.jit_train_step(config, mesh, run.method, run.tx, run.schedule, state_sharding)
  batches = data.build_train_iterator(config)
  start = jax.tree.map(np.asarray, state.params)
  losses = []
  for _ in range(steps):
    state, metrics = step(state, jax.device_put(next(batches), sharding.data_sharding(mesh)))
    losses.append(float(metrics['loss']))
  return start, jax.tree.map(np.asarray, state.params), losses


def test_four_micro_batches_give_the_whole_batchs_update():
  start, whole, whole_losses = _train(_mae(1), 3)
  _, parts, parts_losses = _train(_mae(4), 3)
  np.testing.assert_allclose(parts_losses, whole_losses, rtol=1e-5)
  assert whole_losses[0] != whole_losses[1]
  updates = [jax.tree.map(np.subtract, p, start) for p in (whole, parts)]
  for a, b in zip(jax.tree.leaves(updates[0]), jax.tree.leaves(updates[1]), strict=True):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * np.max(np.abs(a)) + 1e-12)


@pytest.mark.parametrize(
  'name, why',
  [
    ('simclr_digits', "NT-Xent's negatives"),
    ('triplet_digits', 'negatives are mined'),
    ('byol_digits', 'BatchNorm in the projector'),
    ('dino_digits', 'centred with the mean'),
    ('ijepa_digits', 'target blocks the masking kept'),
  ],
)
def test_methods_whose_loss_couples_the_batch_refuse_it(name, why):
  config = shrink_config(load_config_file(f'{name}.py'))
  config.accum_steps = 2
  with pytest.raises(ConfigError, match=r'accum_steps') as error:
    train.validate(config, sharding.make_mesh())
  assert why in str(error.value)


def test_mae_refuses_it_with_stochastic_depth_and_a_batch_it_does_not_divide():
  config = _mae(2)
  config.model.drop_path = 0.1
  with pytest.raises(ConfigError, match=r'accum_steps.*stochastic depth'):
    train.validate(config, sharding.make_mesh())
  config = _mae(3)
  with pytest.raises(ConfigError, match=r'accum_steps.*a divisor of batch_size=32'):
    train.validate(config, sharding.make_mesh())

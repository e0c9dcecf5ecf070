"""config.mesh: the devices as data x fsdp, the train state split over fsdp by one rule. The same
run on 8 devices as data-only and as fsdp=8 (every tensor split: fsdp_min_size=0) computes the
same gradients and losses with 1/8 of the state on each device, for every method; a checkpoint
written under one mesh restores bit for bit under another and trains on."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import load_config_file, shrink_config
from jax.sharding import PartitionSpec as P

from ssljax import build, data, sharding, train
from ssljax.checkpoint import Checkpointer
from ssljax.errors import ConfigError
from ssljax.evaluators import finetune as finetune_lib
from ssljax.evaluators import protocols
from ssljax.methods import TrainState


def _mesh_config(data_size, fsdp, min_size=sharding.FSDP_MIN_SIZE):
  return ml_collections.ConfigDict(dict(data=data_size, fsdp=fsdp, fsdp_min_size=min_size))


@pytest.mark.parametrize(
  'data_size, fsdp, shape',
  [(-1, 1, (8, 1)), (-1, 8, (1, 8)), (2, -1, (2, 4)), (4, 2, (4, 2)), (1, 8, (1, 8))],
)
def test_the_mesh_takes_its_shape_from_the_config(data_size, fsdp, shape):
  mesh = sharding.make_mesh(_mesh_config(data_size, fsdp))
  assert mesh.axis_names == ('data', 'fsdp')
  assert tuple(mesh.devices.shape) == shape
  assert sorted(d.id for d in mesh.devices.flat) == list(range(8))


@pytest.mark.parametrize(
  'data_size, fsdp, min_size, message',
  [
    (3, -1, 0, r'data=3 x fsdp=-1 does not arrange the 8 devices'),
    (2, 2, 0, r'data=2 x fsdp=2 does not arrange the 8 devices'),
    (-1, -1, 0, r'leave one of them -1'),
    (0, 8, 0, r'config.mesh.data=0: a positive number'),
    (1, 'eight', 0, r'config.mesh.fsdp=.eight.: a positive number'),
    (1, 8, -1, r'config.mesh.fsdp_min_size=-1: a number of elements >= 0'),
  ],
)
def test_a_mesh_the_devices_cannot_form_is_refused_naming_the_field(
  data_size, fsdp, min_size, message
):
  with pytest.raises(ConfigError, match=message):
    sharding.make_mesh(_mesh_config(data_size, fsdp, min_size))


def test_the_rule_splits_the_largest_dimension_the_axis_divides():
  assert sharding.fsdp_spec((3, 3, 64, 128), 8, 0) == P(None, None, None, 'fsdp')
  assert sharding.fsdp_spec((768, 3072), 8, 0) == P(None, 'fsdp')
  assert sharding.fsdp_spec((12, 384, 1536), 8, 0) == P(None, None, 'fsdp')
  assert sharding.fsdp_spec((1000, 12), 8, 0) == P('fsdp')  # 1000 = 8 x 125
  assert sharding.fsdp_spec((1001, 12), 4, 0) == P(None, 'fsdp')  # 4 divides only 12
  assert sharding.fsdp_spec((5, 7), 8, 0) == P()  # nothing divides: whole on every device
  assert sharding.fsdp_spec((64, 64), 8, 64 * 64 + 1) == P()  # below the threshold
  assert sharding.fsdp_spec((64, 64), 8, 64 * 64) == P('fsdp')  # at it; the first of equals
  assert sharding.fsdp_spec((), 8, 0) == P()
  assert sharding.fsdp_spec((64, 64), 1, 0) == P()  # no fsdp axis


def test_only_floating_tensors_are_split():
  mesh = sharding.make_mesh(_mesh_config(1, 8))
  tree = {
    'w': jax.ShapeDtypeStruct((16, 8), np.float32),
    'step': jax.ShapeDtypeStruct((), np.int32),
    'rng': jax.ShapeDtypeStruct((8,), np.uint32),
  }
  specs = jax.tree.map(lambda s: s.spec, sharding.state_sharding(tree, mesh, 0))
  assert specs == {'w': P('fsdp'), 'step': P(), 'rng': P()}


# ----------------------------------------------------------------------------- a run on each mesh


def _config(name: str, fsdp: int):
  config = shrink_config(load_config_file(f'{name}.py'))
  config.mesh.data, config.mesh.fsdp, config.mesh.fsdp_min_size = -1, fsdp, 0
  return config


class _OnMesh:
  """A run of `config` on its mesh: its state's layout, gradients and train step."""

  def __init__(self, config):
    self.config = config
    self.mesh = sharding.make_mesh(config.mesh)
    train.validate(config, self.mesh)
    self.run = build.build_run(config, self.mesh, data.dataset_info(config))
    _, self.shardings = build.state_layout(config, self.mesh, self.run.init)
    self.step = build.jit_train_step(
      config, self.mesh, self.run.method, self.run.tx, self.run.schedule, self.shardings
    )
    loss = self.run.method.loss
    self.grad = jax.jit(
      lambda s, b: jax.grad(lambda p: loss(p, s.model_state, b, s.rng, s.step)[0])(s.params)
    )

  def init(self) -> TrainState:
    return jax.jit(self.run.init, out_shardings=self.shardings)(jax.random.PRNGKey(0))

  def place(self, state) -> TrainState:
    return jax.device_put(state, self.shardings)

  def batches(self):
    for batch in data.build_train_iterator(self.config):
      yield jax.device_put(batch, sharding.data_sharding(self.mesh))

  def losses(self, state: TrainState, steps: int) -> list[float]:
    out, batches = [], self.batches()
    for _ in range(steps):
      state, metrics = self.step(state, next(batches))
      out.append(float(metrics['loss']))
    return out


def _relative(a, b) -> float:
  """||a - b|| / ||a|| over every leaf of two trees."""
  diff = sum(float(np.sum((np.asarray(x) - np.asarray(y)) ** 2)) for x, y in zip(a, b, strict=True))
  return (diff / sum(float(np.sum(np.asarray(x) ** 2)) for x in a)) ** 0.5


def _compare(name: str, steps: int) -> dict:
  whole, split = _OnMesh(_config(name, 1)), _OnMesh(_config(name, 8))
  start = jax.device_get(whole.init())  # one start: fsdp draws its init from other numbers
  a, b = whole.place(start), split.place(start)
  grads = [
    jax.tree.leaves(jax.device_get(on.grad(s, next(on.batches()))))
    for on, s in ((whole, a), (split, b))
  ]
  bytes_whole, bytes_split = sharding.bytes_per_device(a), sharding.bytes_per_device(b)
  losses = np.array([whole.losses(a, steps), split.losses(b, steps)])
  drift = np.abs(losses[1] - losses[0]) / np.abs(losses[0])
  shown = [i for i in (0, 1, 4, 9, 19) if i < steps]
  print(
    f'{name}: gradients {_relative(*grads):.1e} relative; loss drift at steps '
    f'{"/".join(str(i + 1) for i in shown)} {" ".join(f"{d:.0e}" for d in drift[shown])}; state '
    f'{bytes_whole} / {bytes_split} bytes per device = {bytes_whole / bytes_split:.2f}'
  )
  return dict(grads=_relative(*grads), drift=drift, ratio=bytes_whole / bytes_split)


def _check(result: dict) -> None:
  assert result['grads'] <= 1e-5
  assert np.all(result['drift'][:3] <= 1e-5)
  assert np.all(result['drift'] <= 1e-3)
  # Tensors the axis cannot divide (a width-4 ResNet's BatchNorm vectors) stay whole.
  assert 7.0 <= result['ratio'] <= 8.0


def test_mae_under_fsdp_takes_the_same_steps_with_an_eighth_of_the_state():
  _check(_compare('mae_digits', 5))


@pytest.mark.slow
@pytest.mark.parametrize(
  'name', ['simclr_digits', 'triplet_digits', 'byol_digits', 'dino_digits', 'ijepa_digits']
)
def test_every_method_under_fsdp_takes_the_same_steps_with_an_eighth_of_the_state(name):
  _check(_compare(name, 20))


def test_a_checkpoint_restores_onto_another_mesh_bit_for_bit_and_trains_on(tmp_path):
  """Saved split 8 ways, restored split 2 ways and whole, as `train` resumes (into the new
  mesh's initial state), then a step on each."""
  saved_on = _OnMesh(_config('dino_digits', 8))
  state = saved_on.init()
  state, _ = saved_on.step(state, next(saved_on.batches()))
  saved = jax.device_get(state)
  ckpt = Checkpointer(str(tmp_path), max_to_keep=1)
  ckpt.save(1, state._asdict(), force=True)
  ckpt.wait()
  after = []
  for fsdp in (2, 1):
    on = _OnMesh(_config('dino_digits', fsdp))
    restored = TrainState(**ckpt.restore(1, on.init()._asdict()))
    for leaf, want, got in zip(
      jax.tree.leaves(restored), jax.tree.leaves(saved), jax.tree.leaves(on.shardings), strict=True
    ):
      np.testing.assert_array_equal(np.asarray(leaf), want)
      assert leaf.sharding == got
    after.append(on.losses(restored, 2))
  ckpt.close()
  np.testing.assert_allclose(after[0], after[1], rtol=1e-5)
  assert np.all(np.isfinite(after))


class _Encoder(nn.Module):
  """A conv + BatchNorm encoder whose kernel (3x3x1x16) and head the fsdp axis divides."""

  @nn.compact
  def __call__(self, x, *, train: bool):
    x = nn.Conv(16, (3, 3), use_bias=False)(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
    return jnp.mean(x, axis=(1, 2))


def test_fine_tuning_keeps_the_state_split_and_takes_the_same_steps():
  config = shrink_config(load_config_file('simclr_digits.py'))
  ft = protocols.finetune_config(config)
  ft.epochs, ft.min_steps, ft.batch_size = 0.0, 4, 16
  rng = np.random.default_rng(0)
  images = rng.uniform(size=(64, 8, 8, 1)).astype(np.float32)
  labels = rng.integers(0, 8, 64)
  results = []
  for fsdp in (1, 8):
    mesh = sharding.make_mesh(_mesh_config(-1, fsdp, 0))
    start = finetune_lib.random_encoder_variables(_Encoder(), (8, 8, 1), 0, mesh, 0)
    if fsdp == 8:  # the data-parallel run's start, split: the partitionable init differs
      start = jax.device_put(
        jax.device_get(results[0][1]), jax.tree.map(lambda a: a.sharding, start)
      )
    result = finetune_lib.finetune(
      _Encoder(),
      start,
      (images, labels),
      {'': (images, labels)},
      num_classes=8,
      num_train=64,
      mesh=mesh,
      ft=ft,
      eval_batch_size=16,
      fsdp_min_size=0,
    )
    results.append((result, jax.device_get(start)))
  (whole, _), (split, _) = results
  kernel = split.variables['params']['encoder']['Conv_0']['kernel']
  assert kernel.sharding.spec == P(None, None, None, 'fsdp')
  assert split.accuracy == whole.accuracy
  np.testing.assert_allclose(split.train_loss, whole.train_loss, rtol=1e-5)
  for a, b in zip(
    jax.tree.leaves(jax.device_get(whole.variables)),
    jax.tree.leaves(jax.device_get(split.variables)),
    strict=True,
  ):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)

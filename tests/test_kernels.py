"""config.model.kernels on CPU: XLA's kernels (the path every GPU and TPU runs) against ssljax's CPU
kernels, on a tiny ResNet (SimCLR: convolutions, BatchNorm) and a tiny ViT (DINO: attention layout,
GELU in the blocks and the head). Same parameter tree, same outputs and gradients to float
rounding, checkpoints that move between the two, and a whole run on the XLA path."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config_file, shrink_config

from ssljax import build, checkpoint, data, models, sharding, train
from ssljax.cpu import batch_norm as cpu_batch_norm
from ssljax.cpu import conv as cpu_conv
from ssljax.cpu import gelu as cpu_gelu
from ssljax.errors import ConfigError
from ssljax.models import kernels

CASES = ('simclr_digits', 'dino_digits')  # a ResNet and a ViT


def _config(name: str, choice: str):
  config = shrink_config(load_config_file(f'{name}.py'), source='synthetic')
  config.model.kernels = choice
  return config


def test_auto_is_the_cpu_kernels_on_cpu_and_xla_elsewhere():
  assert kernels.resolve('auto', 'cpu') is kernels.CPU
  for backend in ('gpu', 'tpu', 'cuda', 'rocm'):
    assert kernels.resolve('auto', backend) is kernels.XLA
  assert kernels.resolve('xla', 'cpu') is kernels.XLA
  assert kernels.resolve('cpu', 'gpu') is kernels.CPU
  assert jax.default_backend() == 'cpu'
  assert models.resolve_kernels(_config('simclr_digits', 'auto')) is kernels.CPU


def test_a_bad_choice_is_refused_naming_the_field():
  config = _config('simclr_digits', 'gpu')
  with pytest.raises(ConfigError, match=r'model\.kernels.*one of auto, xla, cpu'):
    train.validate(config, sharding.make_mesh())


@pytest.mark.parametrize('choice', ['xla', 'cpu'])
def test_the_resnet_runs_the_kernels_it_was_given(choice):
  """Which convolution and BatchNorm a built encoder calls, read off the modules it runs."""
  encoder = models.build_encoder(_config('simclr_digits', choice))
  x = jnp.zeros((2, 8, 8, 1))
  variables = encoder.init(jax.random.key(0), x, train=False)
  convs, norms = set(), set()

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.Conv):
      convs.add(context.module.conv_general_dilated)
    if 'BatchNorm' in type(context.module).__name__:
      norms.add(type(context.module))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    encoder.apply(variables, x, train=True, mutable=['batch_stats'])
  cpu = choice == 'cpu'
  assert convs == {cpu_conv.conv_general_dilated if cpu else None}
  assert norms == {cpu_batch_norm.BatchNorm if cpu else nn.BatchNorm}


def test_the_vit_takes_its_gelu_and_attention_layout_from_the_kernels():
  for choice, gelu, heads_first in (
    ('xla', kernels.exact_gelu, False),
    ('cpu', cpu_gelu.gelu, True),
  ):
    encoder = models.build_encoder(_config('dino_digits', choice))
    assert encoder.kernels.gelu is gelu and encoder.kernels.heads_first is heads_first


def _setup(name: str, choice: str):
  config = _config(name, choice)
  mesh = sharding.make_mesh()
  run = build.build_run(config, mesh, data.dataset_info(config))
  state_sharding = jax.tree.map(
    lambda _: sharding.replicated(mesh), jax.eval_shape(run.init, jax.random.PRNGKey(0))
  )
  state = jax.jit(run.init, out_shardings=state_sharding)(jax.random.PRNGKey(0))
  step = jax.jit(
    build.make_train_step(run.method, run.tx, run.schedule, build.device_views(config)),
    in_shardings=(state_sharding, sharding.data_sharding(mesh)),
    out_shardings=(state_sharding, sharding.replicated(mesh)),
  )
  batch = next(data.build_train_iterator(config))
  return run.method, state, step, jax.device_put(batch, sharding.data_sharding(mesh))


def _assert_trees_close(a, b, rtol, scale=0.0):
  """Leaf by leaf within rtol, and within `scale` times the largest magnitude in `b` anywhere:
  a gradient that sums to nearly zero keeps only the rounding of its terms."""
  assert jax.tree.structure(a) == jax.tree.structure(b)
  atol = scale * max((float(jnp.max(jnp.abs(y))) for y in jax.tree.leaves(b)), default=0.0)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


@pytest.mark.parametrize('name', CASES)
def test_both_kernels_build_the_same_model_and_train_it_the_same(name, tmp_path):
  (m_xla, s_xla, step_xla, batch), (m_cpu, s_cpu, step_cpu, _) = (
    _setup(name, 'xla'),
    _setup(name, 'cpu'),
  )
  # The same variables, names and initial values: the kernels change no parameter.
  _assert_trees_close(s_xla, s_cpu, rtol=0)

  # Outputs in inference mode (what evaluation reads) and the loss's gradients, step by step.
  images = batch['views'][0]
  h = [
    jax.jit(m.features)(s.params, s.model_state, images)
    for m, s in ((m_xla, s_xla), (m_cpu, s_cpu))
  ]
  np.testing.assert_allclose(h[0], h[1], rtol=1e-5, atol=1e-5)
  grads = [
    jax.jit(jax.grad(lambda p, s=s, m=m: m.loss(p, s.model_state, batch, s.rng, s.step)[0]))(
      s.params
    )
    for m, s in ((m_xla, s_xla), (m_cpu, s_cpu))
  ]
  _assert_trees_close(grads[0], grads[1], rtol=1e-4, scale=1e-4)
  (s_xla, metrics_xla), (s_cpu, metrics_cpu) = step_xla(s_xla, batch), step_cpu(s_cpu, batch)
  np.testing.assert_allclose(metrics_xla['loss'], metrics_cpu['loss'], rtol=1e-5)
  _assert_trees_close(s_xla.params, s_cpu.params, rtol=1e-4, scale=1e-5)
  _assert_trees_close(s_xla.model_state, s_cpu.model_state, rtol=1e-4, scale=1e-5)

  # A checkpoint written on one path restores on the other, bit for bit, and trains on.
  saver = checkpoint.Checkpointer(str(tmp_path), max_to_keep=1)
  saver.save(1, s_xla)
  saver.wait()
  restored = saver.restore(1, like=s_cpu)
  saver.close()
  _assert_trees_close(restored, s_xla, rtol=0)
  _, metrics = step_cpu(restored, batch)
  assert np.isfinite(metrics['loss'])


@pytest.mark.slow  # the fast tier trains both paths a step above; this is the whole run
def test_a_run_on_the_xla_kernels_trains_and_evaluates(tmp_path):
  config = _config('simclr_digits', 'xla')
  config.data.source = 'digits'
  config.name = 'simclr_digits_xla'
  results = train.train_and_evaluate(config, str(tmp_path))
  assert results['step'] == 3
  assert set(results['pretrained']) == {'linear', 'linear_2_per_class', 'knn'}
  assert all(0.0 <= v <= 1.0 for v in results['pretrained'].values())
  assert checkpoint.latest_saved_step(str(tmp_path)) == 3

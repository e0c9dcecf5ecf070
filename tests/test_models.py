"""Encoders and heads: shapes, parameter counts from the layer arithmetic, global BatchNorm."""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import parameterized

from ssljax import sharding
from ssljax.models import MLPHead, resnet


def n_params(tree):
  return sum(x.size for x in jax.tree.leaves(tree))


def resnet_param_count(stages, bottleneck, width, in_ch, stem, widths=None):
  """Parameters of a ResNet trunk (no classifier) from layer shapes: conv k*k*cin*cout, BN 2c."""
  total = (49 if stem == 'imagenet' else 9) * in_ch * width + 2 * width
  cin = width
  for i, blocks in enumerate(stages):
    f = widths[i] if widths else width * 2**i
    for j in range(blocks):
      if bottleneck:
        cout = 4 * f
        total += cin * f + 2 * f + 9 * f * f + 2 * f + f * cout + 2 * cout
      else:
        cout = f
        total += 9 * cin * f + 2 * f + 9 * f * f + 2 * f
      if cin != cout or (i > 0 and j == 0):
        total += cin * cout + 2 * cout
      cin = cout
  return total


class ResNetTest(parameterized.TestCase):
  @parameterized.parameters(
    ('resnet18', (2, 2, 2, 2), False, 11_176_512),
    ('resnet50', (3, 4, 6, 3), True, 23_508_032),
  )
  def test_parameter_count_matches_standard_architecture(self, name, stages, bottleneck, known):
    model = resnet.resnet(name, stem='imagenet')
    shapes = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)), train=False)
    )
    count = n_params(shapes['params'])
    assert count == resnet_param_count(stages, bottleneck, 64, 3, 'imagenet')
    assert count == known  # torchvision's count minus the 1000-way classifier

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(('small', 16, 16), ('imagenet', 64, 64))
  def test_output_is_h_of_last_stage_width(self, stem, size, _):
    model = resnet.resnet('resnet18', width=8, stem=stem)
    x = jnp.ones((3, size, size, 1))
    variables = jax.jit(functools.partial(model.init, train=False))(jax.random.PRNGKey(0), x)
    h = self.variant(functools.partial(model.apply, train=False))(variables, x)
    chex.assert_shape(h, (3, resnet.feature_dim('resnet18', 8)))
    chex.assert_tree_all_finite(h)
    assert resnet.feature_dim('resnet50', 64) == 2048

  @parameterized.parameters(((8, 16, 32, 128),), ((12, 12, 24, 48),))
  def test_stage_widths_set_each_stage_and_h(self, widths):
    model = resnet.resnet('resnet18', width=8, stem='small', stage_widths=widths)
    x = jnp.ones((2, 16, 16, 1))
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))
    count = n_params(variables['params'])
    assert count == resnet_param_count((2, 2, 2, 2), False, 8, 1, 'small', widths)
    h = jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
    assert h.shape == (2, widths[-1]) == (2, resnet.feature_dim('resnet18', 8, widths))
    default = resnet.resnet('resnet18', width=8, stem='small', stage_widths=(8, 16, 32, 64))
    same = jax.eval_shape(lambda: default.init(jax.random.PRNGKey(0), x, train=False))
    plain = resnet.resnet('resnet18', width=8, stem='small')
    assert jax.tree.map(lambda a: a.shape, same) == jax.tree.map(
      lambda a: a.shape, jax.eval_shape(lambda: plain.init(jax.random.PRNGKey(0), x, train=False))
    )

  def test_bfloat16_compute_keeps_float32_params(self):
    # Shapes and dtypes only (eval_shape): bfloat16 convolutions are slow on CPU.
    model = resnet.resnet('resnet18', width=8, stem='small', dtype=jnp.bfloat16)
    x = jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), x)
    assert {v.dtype for v in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    jaxpr = str(jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(variables, x))
    assert 'bf16[2,16,16,8]' in jaxpr  # activations run in bfloat16
    assert jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x).dtype == (
      jnp.float32
    )

  def test_bad_name_is_a_clear_error(self):
    with self.assertRaisesRegex(ValueError, 'model.encoder'):
      resnet.resnet('resnet7')


class HeadTest(parameterized.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(1, 2, 3)
  def test_shapes_and_layers(self, layers):
    head = MLPHead(hidden_dim=32, out_dim=8, num_layers=layers)
    x = jnp.ones((4, 16))
    variables = head.init(jax.random.PRNGKey(0), x, train=False)
    z = self.variant(functools.partial(head.apply, train=False))(variables, x)
    chex.assert_shape(z, (4, 8))
    dense = [k for k in variables['params'] if k.startswith('Dense')]
    assert len(dense) == layers
    # SimCLR: the last layer has no bias (its BN does not centre either).
    assert 'bias' not in variables['params'][f'Dense_{layers - 1}']

  @parameterized.parameters((1, True), (3, True), (2, False))
  def test_matches_numpy_reference_in_train_mode(self, layers, last_bn):
    """Linear -> BN (batch statistics) -> ReLU per hidden layer, a last Linear (a bias only
    without the last BN, which scales but does not centre), from random parameters."""
    head = MLPHead(hidden_dim=6, out_dim=3, num_layers=layers, last_bn=last_bn)
    rng = np.random.default_rng(layers)
    x = rng.normal(size=(10, 5)).astype(np.float32)
    variables = head.init(jax.random.PRNGKey(0), x, train=False)
    params = jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), variables)
    z, _ = head.apply(params, x, train=True, mutable=['batch_stats'])

    def bn(y, name, centre=True):
      p = params['params'][name]
      y = (y - y.mean(0)) / np.sqrt(y.var(0) + 1e-5) * p['scale']
      return y + p['bias'] if centre else y

    y = x.astype(np.float64)
    for i in range(layers - 1):
      y = np.maximum(bn(y @ params['params'][f'Dense_{i}']['kernel'], f'BatchNorm_{i}'), 0)
    last = params['params'][f'Dense_{layers - 1}']
    y = y @ last['kernel']
    y = bn(y, f'BatchNorm_{layers - 1}', centre=False) if last_bn else y + last['bias']
    np.testing.assert_allclose(z, y, rtol=2e-4, atol=2e-4)


class GlobalBatchNormTest(parameterized.TestCase):
  def test_statistics_over_the_global_batch_on_8_devices(self):
    """Under jit on a sharded batch, BN normalizes with the mean/var of all 8 devices' rows."""
    mesh = sharding.make_mesh()
    bn = nn.BatchNorm(use_running_average=False, momentum=0.0, use_scale=False, use_bias=False)
    rng = np.random.default_rng(0)
    # each device's rows have a different offset: per-device statistics would erase it.
    x = (rng.normal(size=(32, 3)) + np.repeat(np.arange(8), 4)[:, None]).astype(np.float32)
    variables = bn.init(jax.random.PRNGKey(0), x)
    xs = jax.device_put(x, sharding.data_sharding(mesh))
    y, state = jax.jit(lambda v, x: bn.apply(v, x, mutable=['batch_stats']))(variables, xs)
    expected = (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(state['batch_stats']['mean'], x.mean(0), rtol=1e-5)

"""ssljax.cpu.cases.conv_layers, the table of experiments/bench_conv_layers.py: the convolutions
the case's ResNet really runs."""

import collections

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from ssljax.cpu.cases import case_config, conv_layers
from ssljax.models import resnet


@pytest.mark.parametrize('case', ['resnet18_w8', 'resnet18_w64'])
def test_layers_are_the_convolutions_the_network_runs(case):
  config = case_config(case)
  size, channels = config.data.image_size, config.data.channels
  model = resnet.resnet(
    config.model.encoder, width=config.model.width, stem=config.model.stem, stage_widths=()
  )
  ran = collections.Counter()

  def record(next_fun, args, kwargs, context):
    module = context.module
    if isinstance(module, nn.Conv) and context.method_name == '__call__':
      _, h, w, cin = args[0].shape
      assert h == w
      stride = module.strides or 1  # an int or a tuple of equal ints here
      stride = stride if isinstance(stride, int) else stride[0]
      ran[(h, cin, module.features, module.kernel_size[0], stride)] += 1
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    jax.eval_shape(
      lambda x: model.init(jax.random.key(0), x, train=False), jnp.zeros((2, size, size, channels))
    )
  listed = collections.Counter()
  for layer in conv_layers(config):
    assert layer['views'] == 2 * config.batch_size
    key = (layer['size'], layer['cin'], layer['cout'], layer['kernel'], layer['stride'])
    listed[key] += layer['count']
  assert listed == ran
  assert sum(ran.values()) == 20  # ResNet-18: stem, 16 3x3 in blocks, 3 projections

"""The benchmark cases of experiments/ (bench_vs_pytorch, profile_step, bench_conv_layers): the
ssljax config each case trains, which its PyTorch peer is built from too, and the convolutions of
the ResNet cases. Here rather than in experiments/ so the tests can check them by importing the
package. The cases start from the configs of a checkout (configs/ beside this package)."""

from __future__ import annotations

import importlib.util
import math
import os

import ml_collections

from ssljax.models import resnet

CASES = ('resnet18_w8', 'resnet18_w64', 'vit', 'resnet50_224')
CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), 'configs')


def case_config(name: str) -> ml_collections.ConfigDict:
  """The ssljax config of a case: synthetic data, views made on the host (the step alone)."""
  if name not in CASES:
    raise SystemExit(f'unknown case {name!r}: {", ".join(CASES)}')
  name_file = 'simclr_imagenet.py' if name == 'resnet50_224' else 'simclr_fashion_mnist.py'
  spec = importlib.util.spec_from_file_location('cfg', os.path.join(CONFIGS, name_file))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
  c.data.source, c.data.channels = 'synthetic', 1
  # The step alone, on views already made, as the PyTorch peer times it (the Fashion-MNIST config
  # makes its views inside the step since cc3f780; bench_train_step times that path too).
  c.augment.on = 'host'
  c.model.stage_widths = ()  # every case is the standard ResNet (width doubling per stage)
  if name == 'resnet50_224':  # configs/simclr_imagenet.py (bf16) at a batch one GPU holds
    c.data.channels, c.batch_size, c.data.num_examples = 3, 256, 512
  elif name == 'resnet18_w64':
    c.model.width, c.batch_size, c.data.channels = 64, 64, 3
    c.data.image_size = c.augment.image_size = 32
  elif name == 'vit':
    c.model.encoder, c.model.patch_size = 'vit_tiny', 4
    c.model.vit_width, c.model.vit_depth, c.model.vit_heads = 96, 4, 3
    c.optimizer, c.base_lr, c.weight_decay = 'adamw', 1e-3, 0.05
  return c


def conv_layers(config: ml_collections.ConfigDict) -> list[dict]:
  """The distinct convolutions of a case's ResNet (BasicBlock, small stem) over the step's 2N
  views: shapes and how many times the network runs each (bench_conv_layers times them)."""
  stages, block = resnet.ARCHS[config.model.encoder]
  if block is not resnet.BasicBlock or config.model.stem != 'small':
    raise ValueError(
      f'{config.model.encoder} with stem {config.model.stem!r}: only BasicBlock '
      'ResNets with the small stem are tabled here'
    )
  widths = resnet.stage_channels(stages, config.model.width, config.model.stage_widths)
  views, size = 2 * config.batch_size, config.data.image_size

  def conv(name, count, size, cin, cout, kernel=3, stride=1, input_grad=True):
    return dict(
      name=name,
      count=count,
      views=views,
      size=size,
      cin=cin,
      cout=cout,
      kernel=kernel,
      stride=stride,
      input_grad=input_grad,
    )

  # No step takes the gradient of its input images: the stem's "both grads" is its kernel's.
  found = [conv('stem', 1, size, config.data.channels, widths[0], input_grad=False)]
  found.append(conv('stage 1 3x3', 2 * stages[0], size, widths[0], widths[0]))
  for i in range(1, len(stages)):
    cin, cout = widths[i - 1], widths[i]
    found.append(conv(f'stage {i + 1} 3x3 stride 2', 1, size, cin, cout, stride=2))
    found.append(conv(f'stage {i + 1} 1x1 stride 2', 1, size, cin, cout, kernel=1, stride=2))
    size = math.ceil(size / 2)
    found.append(conv(f'stage {i + 1} 3x3', 2 * stages[i] - 1, size, cout, cout))
  return found

"""The jitted train step of a config on synthetic data, as the benchmarks time it, the configs of
the CPU cases that bench_vs_pytorch and profile_step share, and the convolutions of the ResNet
cases that bench_conv_layers times."""

from __future__ import annotations

import importlib.util
import math
import os

import jax

from ssljax import build, data, methods, optim, sharding
from ssljax.models import resnet


def build_step(config):
  """(jitted train step, initial state, mesh, the synthetic copy of config) for `config`."""
  mesh = sharding.make_mesh()
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
  init = build.init_state(method, tx, shapes)
  state_sharding = jax.tree.map(
    lambda _: sharding.replicated(mesh), jax.eval_shape(init, jax.random.PRNGKey(0))
  )
  state = jax.jit(init, out_shardings=state_sharding)(jax.random.PRNGKey(0))
  step = jax.jit(
    build.make_train_step(method, tx, schedule, build.device_views(config)),
    in_shardings=(state_sharding, sharding.data_sharding(mesh)),
    out_shardings=(state_sharding, sharding.replicated(mesh)),
    donate_argnums=0,
  )
  return step, state, mesh, synthetic


def case_config(name: str):
  """The ssljax config of a case (what the PyTorch peer is built from too)."""
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs')
  name_file = 'simclr_imagenet.py' if name == 'resnet50_224' else 'simclr_fashion_mnist.py'
  spec = importlib.util.spec_from_file_location('cfg', os.path.join(path, name_file))
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
  elif name != 'resnet18_w8':
    raise SystemExit(f'unknown case {name!r}: resnet18_w8, resnet18_w64, vit or resnet50_224')
  return c


def conv_layers(config) -> list[dict]:
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

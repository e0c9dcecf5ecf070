"""Images/s of the jitted train step alone, and of the full input pipeline feeding it.

python experiments/bench_train_step.py --config=configs/simclr_digits.py [--steps=20]
    [--config.batch_size=512 ...] [--out=experiments/results/bench_train_step.json]

The step-alone number uses the synthetic source (no TensorFlow needed: it runs on a machine
with only JAX, such as a lent GPU) and host-made views already on the devices. With
--config.augment.on=device a second row times the step that makes its views from uint8 base
images already on the devices: their ratio is what device augmentation costs. The pipeline row
uses the config's own source (tf.data views, or base images with augment.on=device), prefetched
to the devices as in training: its ratio to the step shows what the input costs.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

if __name__ == '__main__':  # before JAX starts: XLA's options and the allocator are fixed then
  from ssljax.cpu import process

  process.prepare()

import jax  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from ssljax import build, data, models, sharding  # noqa: E402
from ssljax.cpu import allocator

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
_STEPS = flags.DEFINE_integer('steps', 20, 'Timed steps (after 2 warm-up steps).')
_OUT = flags.DEFINE_string('out', 'experiments/results/bench_train_step.json', 'Results file.')
_PIPELINE = flags.DEFINE_bool('pipeline', True, "Also time the config's tf.data pipeline.")
_PEAK = flags.DEFINE_float(
  'peak_tflops',
  0.0,
  'Peak TFLOP/s of one device (e.g. 989 for an H100/H200 in bf16): prints '
  "the step's model FLOPs utilisation from XLA's cost analysis when > 0.",
)


def _step_flops(step_fn, state, batch) -> float:
  """FLOPs of one compiled step, as XLA counts them (all devices)."""
  cost = step_fn.lower(state, batch).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list | tuple) else cost
  return float(cost.get('flops', 0.0)) if cost else 0.0


def _time_steps(step_fn, state, batches, n: int) -> tuple[float, object]:
  for _ in range(2):  # compile + one warm step
    state, metrics = step_fn(state, next(batches))
  jax.block_until_ready(metrics)
  t0 = time.perf_counter()
  for _ in range(n):
    state, metrics = step_fn(state, next(batches))
  jax.block_until_ready(metrics)
  return time.perf_counter() - t0, state


def _repeat(batch):
  while True:
    yield batch


def main(argv) -> None:
  del argv
  config = _CONFIG.value
  device_views = config.augment.on == 'device'
  host_views = config
  if device_views:
    host_views = config.copy_and_resolve_references()
    with host_views.unlocked():
      host_views.augment.on = 'host'
  n = _STEPS.value
  step, state, mesh, synthetic = build.synthetic_step(host_views)
  shapes = [
    (s.image_size, s.image_size, synthetic.data.channels) for s in data.view_specs(synthetic)
  ]
  on_device = sharding.to_global(next(data.build_train_iterator(synthetic)), mesh)
  seconds, state = _time_steps(step, state, _repeat(on_device), n)
  rows = [('train step alone (views on device)', n * config.batch_size / seconds)]
  mfu = None
  if _PEAK.value > 0:
    flops = _step_flops(step, state, on_device)
    mfu = flops * n / seconds / (_PEAK.value * 1e12 * jax.device_count())
  if device_views:
    step, state, mesh, synthetic = build.synthetic_step(config)
    on_device = sharding.to_global(next(data.build_train_iterator(synthetic)), mesh)
    seconds, state = _time_steps(step, state, _repeat(on_device), n)
    rows.append(('step + device augment (uint8 on device)', n * config.batch_size / seconds))
  if _PIPELINE.value and config.data.source != 'synthetic':
    batches = sharding.prefetch_to_mesh(data.build_train_iterator(config), mesh)
    seconds, state = _time_steps(step, state, batches, n)
    path = 'base images, device views' if device_views else 'tf.data views'
    rows.append((f'full pipeline ({config.data.source}, {path})', n * config.batch_size / seconds))

  device = jax.devices()[0]
  header = (
    f'{config.method} {config.model.encoder} (h: {models.encoder_dim(config)}-d), '
    f'{shapes[0][0]} px, batch {config.batch_size}, {config.model.compute_dtype}, '
    f'{jax.device_count()} x {device.device_kind} ({platform.processor() or platform.machine()})'
  )
  print(header)
  print(f'{"what":<50} {"images/s":>10}')
  for what, ips in rows:
    print(f'{what:<50} {ips:>10,.0f}')
  if mfu is not None:
    print(f'model FLOPs utilisation of the step alone: {mfu:.1%} of {_PEAK.value:g} TFLOP/s')
  result = {
    'config': header,
    'steps': n,
    'images_per_sec': {what: ips for what, ips in rows},
    'mfu': mfu,
    'jax': jax.__version__,
    'allocator': allocator.active(),
  }
  os.makedirs(os.path.dirname(_OUT.value) or '.', exist_ok=True)
  with open(_OUT.value, 'w') as f:
    json.dump(result, f, indent=2)


if __name__ == '__main__':
  app.run(main)

"""How much of one accelerator a config's training step takes, and the largest per-device batch
that fits, from XLA's memory analysis of the step compiled (never run) on fake CPU devices.
Issue 44.

python experiments/memory_plan.py --config=configs/ijepa_imagenet.py[:ARG] [--devices=8]
    [--fsdp=1,8] [--set=model.scan=True ...] [--hbm_gib=16,32,80]
    [--out=experiments/results/memory_plan.json]

The step is compiled on `--devices` XLA:CPU devices with the run's own mesh, once per --fsdp
size (config.mesh.fsdp: the state split that many ways, the rest of the devices data parallel;
1 is data parallel, the whole state on every device), at 1 and 2 images per device, then at the
batches that
secant steps on its per-device bytes (arguments, i.e. the state and the batch, plus temporaries)
point to, until the largest batch per device whose step fits each memory size is found; every
reported batch was compiled and fits. XLA:CPU's buffer assignment is not an accelerator's, so read
the figures to about 10%.
Results merge into --out by config, overrides, devices and fsdp size.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import math
import os
import time

import jax
from absl import app, flags

from ssljax import build, data, sharding

_CONFIG = flags.DEFINE_string('config', None, 'configs/X.py[:arg]', required=True)
_DEVICES = flags.DEFINE_integer('devices', 8, 'fake CPU devices (one mesh)')
_FSDP = flags.DEFINE_list('fsdp', ['1'], 'config.mesh.fsdp sizes, one plan each')
_SET = flags.DEFINE_multi_string('set', [], 'FIELD=VALUE config overrides (Python literals)')
_HBM = flags.DEFINE_list('hbm_gib', ['16', '32', '80'], 'device memory sizes, GiB')
_OUT = flags.DEFINE_string('out', 'experiments/results/memory_plan.json', 'results file')
GIB = 2**30


def load_config(spec: str, overrides: list[str]):
  """configs/X.py[:arg] as its get_config(arg) builds it, with FIELD=VALUE overrides."""
  path, _, arg = spec.partition(':')
  module_spec = importlib.util.spec_from_file_location('config', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(arg or None)
  for item in overrides:
    field, _, value = item.partition('=')
    *parents, last = field.split('.')
    node = config
    for name in parents:
      node = node[name]
    try:
      node[last] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      node[last] = value  # a bare string
  return config


def step_bytes(config, per_device: int, fsdp: int) -> dict:
  """Per-device bytes of `config`'s train step at `per_device` images a device, on a mesh with
  `fsdp` devices on the fsdp axis."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.batch_size = per_device * _DEVICES.value
    # Synthetic images of the shapes the run's data has (the ImageNet configs' are RGB).
    config.data.channels = 3 if config.data.source == 'tfds' else config.data.get('channels', 1)
    config.data.source, config.data.num_examples = 'synthetic', config.batch_size
    config.mesh.data, config.mesh.fsdp = -1, fsdp
  mesh = sharding.make_mesh(config.mesh)
  run = build.build_run(config, mesh, data.dataset_info(config))
  abstract, state_sharding = build.state_layout(config, mesh, run.init)
  # The batch's structure from one small real batch, its leading axis scaled to the run's.
  small = config.copy_and_resolve_references()
  with small.unlocked():
    small.batch_size = small.data.num_examples = _DEVICES.value
  batch = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(
      (config.batch_size, *x.shape[1:]), x.dtype, sharding=sharding.data_sharding(mesh)
    ),
    next(data.build_train_iterator(small)),
  )
  state = jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, state_sharding
  )
  step = build.jit_train_step(config, mesh, run.method, run.tx, run.schedule, state_sharding)
  start = time.perf_counter()
  memory = step.lower(state, batch).compile().memory_analysis()
  state_bytes = sum(  # one device's shard of each tensor
    math.prod(s.shard_shape(x.shape)) * x.dtype.itemsize
    for x, s in zip(jax.tree.leaves(abstract), jax.tree.leaves(state_sharding), strict=True)
  )
  return {
    'per_device': per_device,
    'state_gib': state_bytes / GIB,
    'argument_gib': memory.argument_size_in_bytes / GIB,
    'temp_gib': memory.temp_size_in_bytes / GIB,
    'total_gib': (memory.argument_size_in_bytes + memory.temp_size_in_bytes) / GIB,
    'compile_s': time.perf_counter() - start,
  }


def largest_fitting(total, hbm: float, known: dict[int, float], tries: int = 3) -> int:
  """The largest batch per device whose compiled step takes at most `hbm` GiB, by secant steps
  on the (nearly linear) bytes per batch: `total(b)` compiles, `known` caches b -> GiB."""
  for _ in range(tries):
    below = [b for b, t in known.items() if t <= hbm]
    above = [b for b, t in known.items() if t > hbm]
    lo, hi = max(below, default=0), min(above, default=None)
    if lo == 0 or (hi is not None and hi - lo <= max(1, lo // 20)):
      break
    other = hi if hi is not None else max(b for b in below if b != lo)
    slope = (known[other] - known[lo]) / (other - lo)
    guess = lo + int((hbm - known[lo]) // slope) if slope > 0 else lo
    guess = min(guess, hi - 1) if hi is not None else guess
    if guess <= lo:
      break
    known[guess] = total(guess)
  return max((b for b, t in known.items() if t <= hbm), default=0)


def plan(config, fsdp: int) -> dict:
  """The plan of `config` on a mesh with fsdp = `fsdp`: bytes at 1 image per device and the
  largest batch per device that fits each memory size."""
  compiled = {}

  def total(per_device: int) -> float:
    compiled[per_device] = step_bytes(config, per_device, fsdp)
    print(f'  fsdp={fsdp}, {per_device} per device: {compiled[per_device]["total_gib"]:.2f} GiB')
    return compiled[per_device]['total_gib']

  known = {b: total(b) for b in (1, 2)}
  fits = {f'{h:g}': largest_fitting(total, h, known) for h in sorted(map(float, _HBM.value))}
  one = compiled[1]
  data_axis = _DEVICES.value // fsdp
  row = {
    'config': _CONFIG.value,
    'overrides': list(_SET.value),
    'devices': _DEVICES.value,
    'mesh': {'data': data_axis, 'fsdp': fsdp},
    'state_gib_per_device': round(one['state_gib'], 3),
    'gib_at_1_per_device': round(one['total_gib'], 3),
    'largest_batch_per_device': fits,
    'compiled': [
      {k: round(v, 3) if isinstance(v, float) else v for k, v in compiled[b].items()}
      for b in sorted(compiled)
    ],
  }
  print(
    f'{_CONFIG.value} {" ".join(_SET.value)} on data={data_axis} x fsdp={fsdp}: state '
    f'{row["state_gib_per_device"]:.2f} GiB per device, {one["total_gib"]:.2f} GiB at 1 image '
    'per device; largest batch per device: '
    + ', '.join(f'{n} at {h} GiB' for h, n in fits.items()),
    flush=True,
  )
  return row


def main(argv):
  del argv
  jax.config.update('jax_num_cpu_devices', _DEVICES.value)
  config = load_config(_CONFIG.value, _SET.value)
  out = json.load(open(_OUT.value)) if os.path.exists(_OUT.value) else {}
  for fsdp in map(int, _FSDP.value):
    key = ' '.join([_CONFIG.value, *_SET.value, f'devices={_DEVICES.value}', f'fsdp={fsdp}'])
    out[key] = plan(config, fsdp)
    with open(_OUT.value, 'w') as f:
      json.dump(out, f, indent=2)


if __name__ == '__main__':
  app.run(main)

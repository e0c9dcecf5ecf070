"""MAE's speed claim: the encoder's cost scales with the visible fraction of the patches.

python experiments/bench_mae_encoder.py [--encoder=vit_base --image_size=224 --batch=64]
    [--mask_ratio=0.75 --dtype=bfloat16 --steps=10 --out=experiments/results/bench_mae_encoder.json]

Times the encoder's forward + backward (the gradient of a scalar of its output tokens with
respect to its parameters) on all L patches + CLS and on the visible int(L (1 - ratio)) + CLS,
with the same parameters, batch and device, in one run. Target: visible / all <= 0.35 at 0.75.
Needs no TensorFlow and no data (random images).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from absl import app, flags  # noqa: E402

from ssljax import masking  # noqa: E402
from ssljax.models import vit  # noqa: E402

_ENCODER = flags.DEFINE_string('encoder', 'vit_base', 'vit_tiny | vit_small | vit_base')
_PATCH = flags.DEFINE_integer('patch_size', 16, 'Patch side.')
_SIZE = flags.DEFINE_integer('image_size', 224, 'Image side.')
_BATCH = flags.DEFINE_integer('batch', 64, 'Batch size.')
_RATIO = flags.DEFINE_float('mask_ratio', 0.75, 'Fraction of patches removed.')
_DTYPE = flags.DEFINE_enum('dtype', 'bfloat16', ['float32', 'bfloat16'], 'Compute dtype.')
_STEPS = flags.DEFINE_integer('steps', 10, 'Timed repetitions (after 2 warm-up calls).')
_OUT = flags.DEFINE_string('out', 'experiments/results/bench_mae_encoder.json', 'Results file.')


def _median_seconds(fn, *args, steps: int) -> float:
  for _ in range(2):  # compile + one warm call
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def main(argv) -> None:
  del argv
  model = vit.vit(
    _ENCODER.value,
    patch_size=_PATCH.value,
    image_size=_SIZE.value,
    pos_embed='sincos',
    dtype=jnp.dtype(_DTYPE.value),
  )
  images = jax.random.uniform(jax.random.PRNGKey(0), (_BATCH.value, _SIZE.value, _SIZE.value, 3))
  params = jax.jit(model.init, static_argnames='train')(jax.random.PRNGKey(1), images, train=False)
  tokens = jax.jit(lambda p, x: model.apply(p, x, method=vit.ViT.embed))(params, images)
  length = tokens.shape[1]
  keep = masking.num_visible(length, _RATIO.value)
  noise = jax.random.uniform(jax.random.PRNGKey(2), (_BATCH.value, length))
  ids_keep, _, _ = masking.random_masking(noise, keep)
  visible = jnp.take_along_axis(tokens, ids_keep[..., None], axis=1)

  @jax.jit
  def forward_backward(p, t):
    def loss(p):
      out = model.apply(p, t, train=True, method=vit.ViT.transform)
      return jnp.mean(jnp.square(out.astype(jnp.float32)))

    return jax.grad(loss)(p)

  t_all = _median_seconds(forward_backward, params, tokens, steps=_STEPS.value)
  t_visible = _median_seconds(forward_backward, params, visible, steps=_STEPS.value)
  device = jax.devices()[0]
  results = {
    'encoder': f'{_ENCODER.value}/{_PATCH.value} at {_SIZE.value} px, {_DTYPE.value}',
    'batch': _BATCH.value,
    'patches': length,
    'visible': keep,
    'seconds_all': t_all,
    'seconds_visible': t_visible,
    'ratio': t_visible / t_all,
    'device': f'{device.platform}: {getattr(device, "device_kind", "")}',
    'host': platform.node(),
  }
  print(f'{"tokens":>16} {"ms / fwd+bwd":>14}')
  print(f'{"all " + str(length) + " + CLS":>16} {1000 * t_all:14.1f}')
  print(f'{"visible " + str(keep) + " + CLS":>16} {1000 * t_visible:14.1f}')
  print(f'ratio visible / all = {results["ratio"]:.3f} (target <= 0.35) on {results["device"]}')
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  with open(_OUT.value, 'w') as f:
    json.dump(results, f, indent=2)


if __name__ == '__main__':
  app.run(main)

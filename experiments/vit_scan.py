"""Compile time and temporaries of a ViT's gradient with its blocks unrolled or scanned
(config.model.scan), and with each rematerialization policy (config.model.remat). Issue 44.

python experiments/vit_scan.py [--encoders=vit_small:16,vit_huge:14] [--image_size=224]
    [--batch=8] [--out=experiments/results/vit_scan.json]

Compiles, on the CPU backend and without running or allocating any parameter (the inputs are
abstract), the gradient of sum(h) with respect to the encoder's parameters, for `--batch`
images per device; prints the compile time and XLA's memory analysis (temporaries, arguments) of
each variant.
"""

from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
from absl import app, flags

from ssljax.models import vit

_ENCODERS = flags.DEFINE_list('encoders', ['vit_small:16', 'vit_huge:14'], 'name:patch')
_IMAGE = flags.DEFINE_integer('image_size', 224, 'image side')
_BATCH = flags.DEFINE_integer('batch', 8, 'images')
_OUT = flags.DEFINE_string('out', 'experiments/results/vit_scan.json', 'results file')
VARIANTS = (
  (False, 'none'),
  (True, 'none'),
  (True, 'nothing_saveable'),
  (True, 'dots_with_no_batch_dims_saveable'),
)


def compile_gradient(name: str, patch: int, scan: bool, remat: str) -> dict:
  model = vit.vit(name, patch_size=patch, image_size=_IMAGE.value, scan=scan, remat=remat)
  images = jax.ShapeDtypeStruct((_BATCH.value, _IMAGE.value, _IMAGE.value, 3), jnp.float32)
  params = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)

  def loss(variables, x):
    return jnp.sum(model.apply(variables, x, train=True))

  start = time.perf_counter()
  lowered = jax.jit(jax.grad(loss)).lower(params, images)
  compiled = lowered.compile()
  seconds = time.perf_counter() - start
  memory = compiled.memory_analysis()
  return {
    'encoder': f'{name}/{patch}',
    'scan': scan,
    'remat': remat,
    'compile_s': round(seconds, 2),
    'temp_gib': round(memory.temp_size_in_bytes / 2**30, 3),
    'argument_gib': round(memory.argument_size_in_bytes / 2**30, 3),
  }


def main(argv):
  del argv
  rows = []
  print(f'{"encoder":14s} {"scan":5s} {"remat":34s} {"compile s":>9s} {"temp GiB":>9s}')
  for spec in _ENCODERS.value:
    name, patch = spec.split(':')
    for scan, remat in VARIANTS:
      row = compile_gradient(name, int(patch), scan, remat)
      rows.append(row)
      print(
        f'{row["encoder"]:14s} {str(scan):5s} {remat:34s} {row["compile_s"]:9.1f} '
        f'{row["temp_gib"]:9.3f}',
        flush=True,
      )
  with open(_OUT.value, 'w') as f:
    json.dump({'image_size': _IMAGE.value, 'batch': _BATCH.value, 'rows': rows}, f, indent=2)


if __name__ == '__main__':
  app.run(main)

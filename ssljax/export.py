"""A run's encoder for PyTorch users: `python -m ssljax.export --workdir=RUN --out=DIR` writes

  DIR/model.safetensors  the encoder the run evaluates, in timm's names and PyTorch's layouts
  DIR/config.json        {"timm": {"model": NAME, "kwargs": {...}}, "pixel_mean", "pixel_std"}

so that `timm.create_model(NAME, pretrained=False, **kwargs)` loads it with strict=True and, on
`(x - pixel_mean) / pixel_std` (NCHW, x in [0, 1]), returns the h of `ssljax.load_encoder(RUN)`
(docs/weights.md). `ssljax.load_encoder('DIR/model.safetensors')` reads it back.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
from absl import app, flags

from ssljax import errors, paths

USAGE = 'python -m ssljax.export --workdir=RUN --out=DIR'


def export_run(run_dir: str, out: str) -> dict:
  """Writes OUT/model.safetensors and OUT/config.json for RUN's evaluated encoder; returns the
  config.json."""
  import jax

  from ssljax import restore
  from ssljax.models import vit
  from ssljax.weights import files, names, timm_form

  config = restore.load_config(run_dir)
  method, variables, step = restore.encoder_variables(run_dir)
  if isinstance(method.encoder, vit.ViT):
    variables = vit.to_layout(variables, scan=False, depth=method.encoder.depth)
  variables = jax.tree.map(np.asarray, variables)
  flat = names.flat(variables)
  first = flat.get('params/patch_embed/kernel', flat.get('params/stem_conv/kernel'))
  state, meta = timm_form.timm_form(config, variables, first.shape[2])
  meta['source'] = {'workdir': run_dir, 'step': step, 'method': config.method}
  files.write_safetensors(os.path.join(out, 'model.safetensors'), state)
  paths.write_atomic(paths.path(out) / 'config.json', json.dumps(meta, indent=2))
  return meta


def main(argv) -> None:
  if len(argv) > 1:
    print(f'unexpected arguments {argv[1:]}; usage: {USAGE}', file=sys.stderr)
    sys.exit(2)
  out = flags.FLAGS.out
  meta = errors.run_command(export_run, flags.FLAGS.workdir, out)
  print(
    f'{os.path.join(out, "model.safetensors")}: timm.create_model({meta["timm"]["model"]!r}, '
    f'pretrained=False, **{meta["timm"]["kwargs"]})'
  )


if __name__ == '__main__':
  flags.DEFINE_string('workdir', None, 'Run directory written by ssljax.main.')
  flags.DEFINE_string('out', None, 'Directory for model.safetensors and config.json.')
  flags.mark_flags_as_required(['workdir', 'out'])
  app.run(main)

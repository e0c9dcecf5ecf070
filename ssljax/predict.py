"""A run's kept classifier (`evaluators.kept`: the fine-tuned network, or the linear probe on its
encoder) on every image file under a folder:

  python -m ssljax.predict --workdir=RUN --data.path=DIR --out=FILE.csv [--classifier=linear]

FILE.csv: `path` (relative to DIR, '/'-separated, sorted by their parts), then one column per
label of the run's CSV with the probability of that finding. Images are read and batched as
`ssljax.embed` reads them; memory does not grow with the number of files.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import sys

if __name__ == '__main__':  # before JAX starts: XLA's options and the allocator are fixed then
  from ssljax.cpu import process

  process.prepare()

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from ssljax import cluster, embed, errors, methods, paths, restore, sharding  # noqa: E402
from ssljax.evaluators import finetune, kept, multilabel  # noqa: E402

USAGE = 'python -m ssljax.predict --workdir=RUN --data.path=DIR --out=FILE.csv'


def _classifier(run_dir: str, kind: str, mesh: jax.sharding.Mesh):
  """(fn(args, images) -> per-image output, args, to probabilities, label names, channels)."""
  config = restore.load_config(run_dir)
  kind, contents = kept.load(run_dir, kind)
  if kind == 'linear':
    fn, variables, _, channels = embed._encoder(run_dir, mesh)
    probe = multilabel.Probe(
      contents['mean'], contents['std'], contents['w'], contents['b'], contents['l2']
    )
    dtype = config.eval_config.feature_dtype  # as the evaluation kept h
    return fn, variables, lambda h: probe.probabilities(h.astype(dtype)), contents['names']
  ft = ml_collections.ConfigDict(contents['finetune'])
  encoder = finetune.finetune_encoder(methods.build(config, mesh).encoder, ft)
  names = contents['names']
  recipe = finetune.resolve_recipe(encoder, len(names), ft, contents['frozen'], multilabel=True)
  variables = jax.device_put(contents['variables'], sharding.replicated(mesh))
  return finetune.Probabilities(recipe.model), variables, lambda p: p, names


def predict(
  run_dir: str, directory: str, out: str, *, classifier: str = '', batch_size: int = 0
) -> int:
  """Writes OUT (CSV: path, one probability per label) for every image under DIRECTORY with
  RUN's kept classifier (`classifier`: finetune, linear_sgd or linear; '': the first kept of
  those); returns the rows written."""
  config = restore.load_config(run_dir)
  mesh = sharding.make_mesh()
  fn, args, probabilities, names = _classifier(run_dir, classifier, mesh)
  channels = embed.input_channels(_encoder_part(args) if 'encoder' in args['params'] else args)
  files = embed.list_images(directory)
  batches = embed.encode_files(
    fn,
    args,
    paths.absolute(directory),
    files,
    mesh,
    batch_size=int(batch_size or config.eval_config.batch_size),
    size=int(config.data.image_size),
    channels=channels,
    config=config,
  )
  target = paths.path(out)
  partial = target.with_name(target.name + '.partial')
  rows, first = 0, jax.process_index() == 0
  if first:
    target.parent.mkdir(parents=True, exist_ok=True)
  with partial.open('w') if first else contextlib.nullcontext(io.StringIO()) as text:
    writer = csv.writer(text, lineterminator='\n')
    writer.writerow(['path', *names])
    for found, outputs in batches:
      values = np.asarray(probabilities(outputs), np.float32)
      for i, row in zip(found.tolist(), values, strict=True):
        writer.writerow([files[i].replace(os.sep, '/'), *(f'{v:.9g}' for v in row.tolist())])
      rows += len(found)
      if not first:
        text.seek(0)
        text.truncate()
  if first:
    partial.replace(target)
  return rows


def _encoder_part(variables: dict) -> dict:
  """A Classifier's variables -> its encoder's ({'params': {'encoder': ..}} -> {'params': ..})."""
  return {col: tree['encoder'] for col, tree in variables.items() if 'encoder' in tree}


def main(argv) -> None:
  if len(argv) > 1:
    print(f'unexpected arguments {argv[1:]}; usage: {USAGE}', file=sys.stderr)
    sys.exit(2)
  f = flags.FLAGS
  cluster.join(f.multihost)  # on a pod or cluster: every host runs the same command
  rows = errors.run_command(
    predict,
    f.workdir,
    f['data.path'].value,
    f.out,
    classifier=f.classifier,
    batch_size=f.batch_size,
  )
  if jax.process_index() == 0:
    print(f'{f.out}: {rows} images')


if __name__ == '__main__':
  flags.DEFINE_string('workdir', None, 'Run directory written by ssljax.main.')
  cluster.define_flag()
  flags.DEFINE_string('data.path', None, 'Directory of images (read recursively).')
  flags.DEFINE_string('out', None, 'The .csv file to write.')
  flags.DEFINE_enum(
    'classifier', '', ['', *kept.KINDS], 'Which kept classifier; default the first.'
  )
  flags.DEFINE_integer('batch_size', 0, "Global batch; 0: the run's eval_config.batch_size.")
  flags.mark_flags_as_required(['workdir', 'data.path', 'out'])
  app.run(main)

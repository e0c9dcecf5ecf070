"""Pictures of what the encoder learned, under WORKDIR/pictures, during training and after it.

- embeddings/step_NNNNNNN.png: a fixed set of test images' h projected to 2-D (PCA, t-SNE or
  UMAP: config.visualize.projection), coloured by label, one frame per evaluation (step 0 is the
  initial encoder); embeddings.gif and embeddings_grid.png collect the frames at the end.
- attention/step_NNNNNNN.png (ViT encoders): the last block's CLS attention of every head.
- reconstructions/step_NNNNNNN.png (MAE): original, masked input, reconstruction, and the
  reconstruction with the visible patches pasted back, for fixed images and fixed masks.

Command line, on a finished or running run (reads WORKDIR/config.json and the latest checkpoint):

  python -m ssljax.visualize attention --workdir=DIR
  python -m ssljax.visualize embeddings --workdir=DIR
  python -m ssljax.visualize reconstructions --workdir=DIR

The pictures are drawn on process 0 with its first device from its share of the test split, so
they cost no communication and never block the other processes (unless the parameters are split
over processes, config.mesh.fsdp: then every process joins in gathering them first).
"""

from __future__ import annotations

import os
import sys

import jax
import ml_collections
import numpy as np
from absl import app, flags, logging
from jax.experimental import multihost_utils

from ssljax import data, errors, models, paths
from ssljax.config.checks import Checks
from ssljax.data import labels_csv
from ssljax.methods import Method, TrainState
from ssljax.monitor import pictures
from ssljax.restore import load_config, restore_latest


def _whole(tree):
  """`tree`'s global arrays whole on this process: a replicated array's first local copy, a
  split one (config.mesh.fsdp > 1) assembled from its shards. Where the shards live on several
  processes that is a collective every process joins; otherwise nothing leaves the process."""
  arrays = [a for a in jax.tree.leaves(tree) if isinstance(a, jax.Array)]
  if all(a.is_fully_replicated or a.is_fully_addressable for a in arrays):
    device = jax.local_devices()[0]
    return jax.tree.map(
      lambda a: (
        (a.addressable_data(0) if a.is_fully_replicated else jax.device_put(a, device))
        if isinstance(a, jax.Array)
        else a
      ),
      tree,
    )
  return multihost_utils.process_allgather(tree, tiled=True)


def check_config(checks: Checks) -> None:
  """Records every problem of config.visualize."""
  for name in ('embeddings', 'attention', 'reconstructions'):
    checks.boolean(f'visualize.{name}')
  checks.choice('visualize.projection', pictures.PROJECTIONS)
  checks.count('visualize.num_points', 1)
  checks.count('visualize.num_images', 1)


class Pictures:
  """Draws the configured pictures for one run; `draw` at each evaluation, `finish` at the end."""

  def __init__(self, config: ml_collections.ConfigDict, method: Method, workdir: str):
    self.config, self.method = config, method
    self.directory = os.path.join(workdir, 'pictures')
    # The same on every process: a state split over processes is gathered by all of them.
    self.wanted = bool(
      config.visualize.embeddings
      or (config.visualize.attention and models.is_vit(config))
      or self._reconstructs()
    )
    self.enabled = jax.process_index() == 0 and self.wanted
    if not self.enabled:
      return
    test = data.eval_split(config, 'test')
    images, labels = test.take(np.arange(min(test.size, config.visualize.num_points)))
    if labels_csv.is_multilabel(config):  # row numbers: coloured by the CSV's first label
      labels = labels_csv.table(config).targets['test'][labels, 0].astype(np.int32) + 1
    if len(labels) == 0 or np.min(labels) < 0:
      logging.warning('No labelled test split: no embedding or attention pictures.')
      self.enabled = False
      return
    self.images, self.labels = images, labels
    self._features = jax.jit(method.features)
    self._attention = jax.jit(method.attention)
    if self._reconstructs():
      self._reconstruct = jax.jit(method.reconstruct)

  def _reconstructs(self) -> bool:
    return self.config.visualize.reconstructions and self.method.reconstructs

  def draw(self, state: TrainState, step: int) -> None:
    if not self.wanted:
      return
    params, model_state = _whole((state.params, state.model_state))
    if not self.enabled:
      return
    v = self.config.visualize
    title = f'{self.config.name or self.config.method}  step {step}'
    if v.embeddings:
      bs = self.config.eval_config.batch_size
      h = np.concatenate(
        [
          np.asarray(self._features(params, model_state, self.images[i : i + bs]), np.float32)
          for i in range(0, len(self.images), bs)
        ]
      )
      points = pictures.project_2d(h, v.projection, seed=self.config.seed)
      path = os.path.join(self.directory, 'embeddings', f'step_{step:07d}.png')
      pictures.save_embedding_frame(points, self.labels, path, title=title)
    if v.attention and models.is_vit(self.config):
      x = self.images[: v.num_images]
      attn = np.asarray(self._attention(params, model_state, x), np.float32)
      path = os.path.join(self.directory, 'attention', f'step_{step:07d}.png')
      pictures.save_attention_maps(x, attn, path, title=title)
    if self._reconstructs():
      x = self.images[: v.num_images]
      rng = jax.random.PRNGKey(self.config.seed)  # the same masks at every step
      out = jax.device_get(self._reconstruct(params, model_state, x, rng))
      path = os.path.join(self.directory, 'reconstructions', f'step_{step:07d}.png')
      pictures.save_reconstructions(
        out['original'], out['masked'], out['reconstruction'], out['pasted'], path, title=title
      )

  def finish(self) -> None:
    """The 'step 0 ... step N' summary of the embedding frames: a GIF and a grid."""
    if not self.enabled or not self.config.visualize.embeddings:
      return
    frames_dir = os.path.join(self.directory, 'embeddings')
    frames = [
      os.path.join(frames_dir, n)
      for n in paths.names(frames_dir)
      if n.startswith('step_') and n.endswith('.png')
    ]
    if frames:
      pictures.save_frames(
        frames,
        os.path.join(self.directory, 'embeddings.gif'),
        os.path.join(self.directory, 'embeddings_grid.png'),
      )


# ----------------------------------------------------------------------------- command line


def main(argv) -> None:
  commands = ('attention', 'embeddings', 'reconstructions')
  if len(argv) != 2 or argv[1] not in commands:
    print(f'usage: python -m ssljax.visualize {{{"|".join(commands)}}} --workdir=DIR')
    sys.exit(2)
  workdir = flags.FLAGS.workdir
  if not workdir:
    print('error: --workdir is required', file=sys.stderr)
    sys.exit(2)
  config = errors.run_command(load_config, workdir)
  with config.unlocked():
    config.visualize.attention = argv[1] == 'attention'
    config.visualize.embeddings = argv[1] == 'embeddings'
    config.visualize.reconstructions = argv[1] == 'reconstructions'
  if argv[1] == 'attention' and not models.is_vit(config):
    print(f'error: attention maps need a ViT encoder, not {config.model.encoder}', file=sys.stderr)
    sys.exit(2)
  method, state = errors.run_command(restore_latest, config, workdir)
  drawer = Pictures(config, method, workdir)
  drawer.draw(state, int(state.step))
  print(f'wrote {os.path.join(drawer.directory, argv[1])}/step_{int(state.step):07d}.png')


if __name__ == '__main__':
  # Defined here, not at import: ssljax.main imports this module and has its own --workdir.
  flags.DEFINE_string('workdir', None, 'Run directory written by ssljax.main.')
  app.run(main)

"""Entry point: `python -m ssljax.main --config=configs/X.py [--workdir=DIR] [--config.field=v]`.

Run the same command on every host of a TPU pod or SLURM job: `jax.distributed.initialize()`
finds the other processes from the environment.
"""

from __future__ import annotations

import os

if __name__ == '__main__':  # before JAX starts: XLA's options and the allocator are fixed then
  from ssljax.cpu import process

  process.prepare()

import jax  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from absl.logging import converter  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from ssljax import cluster, errors, train  # noqa: E402
from ssljax.cpu import allocator
from ssljax.models import kernels

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory (default: runs/<config name>).')
cluster.define_flag()
flags.mark_flags_as_required(['config'])


def run_name(config, config_path: str) -> str:
  return config.name or os.path.splitext(os.path.basename(config_path.split(':')[0]))[0]


class _QuietLibraries:
  """Drops library chatter from the absl log: Orbax's INFO lines (a dozen per checkpoint) and its
  notice that a type handler was replaced, and JAX's search for a TPU. --verbosity=1 keeps all."""

  _NOTICES = ('Type handler registry', "Unable to initialize backend 'tpu'")

  def filter(self, record) -> bool:
    if logging.get_verbosity() >= 1 or record.levelno >= converter.STANDARD_ERROR:
      return True
    if any(notice in str(record.msg) for notice in self._NOTICES):
      return False
    return record.levelno >= converter.STANDARD_WARNING or 'orbax' not in record.pathname


def main(argv) -> None:
  del argv
  logging.get_absl_handler().addFilter(_QuietLibraries())
  cluster.join(flags.FLAGS.multihost)
  config = _CONFIG.value
  name = run_name(config, config_flags.get_config_filename(flags.FLAGS['config']))
  with config.unlocked():
    config.name = name
  workdir = _WORKDIR.value or os.path.join('runs', name)
  logging.info('Process %d/%d, workdir %s', jax.process_index(), jax.process_count(), workdir)
  allocator.log_choice(jax.default_backend())
  if jax.default_backend() == 'cpu':
    logging.info('XLA_FLAGS: %s', os.environ.get('XLA_FLAGS') or '(none)')
  choice = config.model.get('kernels', 'auto')
  if choice in kernels.CHOICES:  # else the config check refuses it, with the others
    logging.info('Kernels: %s (config.model.kernels=%s)', kernels.resolve(choice).name, choice)
  # A user's mistake (errors.UserError) is one line and exit code 2 (3: the run diverged); a bug
  # keeps its traceback.
  results = errors.run_command(train.train_and_evaluate, config, workdir)
  if jax.process_index() == 0:
    print(f'results: {results}  ({os.path.join(workdir, "results.json")})')


if __name__ == '__main__':
  app.run(main)

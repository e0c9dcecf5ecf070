"""Evaluates a run's latest checkpoint again, without training: new protocols, other label
budgets, after the run ended or while it trains.

  python -m ssljax.evaluate --workdir=RUN [--config=configs/X.py] [--config.field=value ...]

On a pod or cluster run it on every host, as `ssljax.main`: each process reads and encodes its
share of the splits.

The config is the run's own (RUN/config.json) unless --config names another; --config.* overrides
either, e.g. --config.eval_config.few_per_class=10. Writes RUN/eval.json, shaped like
results.json; results.json and the checkpoints are never touched. A RUN without a checkpoint,
with --config=configs/X.py --config.init_from=WEIGHTS.pth, evaluates published weights
(docs/weights.md).
"""

from __future__ import annotations

import json
import os
import sys

if __name__ == '__main__':  # before JAX starts: XLA's options and the allocator are fixed then
  from ssljax.cpu import process

  process.prepare()

import jax  # noqa: E402
import ml_collections  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from ssljax import build, cluster, data, errors, paths, restore, sharding, train  # noqa: E402
from ssljax.evaluators import protocols  # noqa: E402

USAGE = 'python -m ssljax.evaluate --workdir=RUN [--config=configs/X.py] [--config.field=value]'


def get_config(run_dir: str) -> ml_collections.ConfigDict:
  """The --config default: `ssljax/evaluate.py:RUN` is the run's own config (config_flags loads
  it like any config file, so --config.* overrides apply to it)."""
  return restore.load_config(run_dir)


def evaluate_run(config: ml_collections.ConfigDict, run_dir: str) -> dict:
  """Evaluates RUN's latest checkpoint with `config` (config.eval, config.eval_config, and for
  the baseline config.eval_config.random_init), writes RUN/eval.json on process 0; returns it."""
  mesh = sharding.make_mesh(config.mesh)
  train.validate(config, mesh)  # the run's config with any --config.* override
  method, _, _, init, _ = build.build_run(config, mesh, data.dataset_info(config))
  state = restore.state_to_evaluate(config, run_dir, method, init, mesh)
  # The random-init baseline, initialised exactly as in training.
  init = jax.jit(init, out_shardings=build.state_layout(config, mesh, init)[1])
  logging.info('Evaluating %s at step %d', run_dir, int(state.step))
  results = protocols.evaluate_state(
    config, method, state, init if config.eval_config.random_init else None, mesh, keep_in=run_dir
  )
  results['step'] = int(state.step)
  results['config'] = config.name
  results['eval'] = list(config.eval)
  results['eval_config'] = config.eval_config.to_dict()
  if jax.process_index() == 0:
    paths.write_atomic(paths.path(run_dir) / 'eval.json', json.dumps(results, indent=2))
  return results


# ----------------------------------------------------------------------------- command line


def _run_dir_in(argv: list[str]) -> str | None:
  """--workdir from the raw command line: the --config default depends on it."""
  for i, arg in enumerate(argv):
    for prefix in ('--workdir=', '-workdir='):
      if arg.startswith(prefix):
        return arg[len(prefix) :]
    if arg in ('--workdir', '-workdir') and i + 1 < len(argv):
      return argv[i + 1]
  return None


def define_flags(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """--workdir, and --config whose default is the run's own config (so it needs argv)."""
  flags.DEFINE_string(
    'workdir', None, 'Run directory written by ssljax.main.', flag_values=flag_values
  )
  flags.mark_flag_as_required('workdir', flag_values=flag_values)
  cluster.define_flag(flag_values=flag_values)
  run_dir = _run_dir_in(argv)
  config_flags.DEFINE_config_file(
    'config',
    f'{os.path.abspath(__file__)}:{run_dir}' if run_dir else None,
    "Config file (default: the run's own RUN/config.json); --config.* overrides either.",
    flag_values=flag_values,
    lock_config=True,
    sys_argv=argv,
  )


def run_name(config: ml_collections.ConfigDict, run_dir: str) -> ml_collections.ConfigDict:
  """config.name, when a config file left it empty: the run directory's name."""
  if not config.name:
    with config.unlocked():
      config.name = os.path.basename(os.path.normpath(run_dir))
  return config


def _config() -> ml_collections.ConfigDict:
  """--config, loaded by config_flags; a file that fails to load (the run's config.json absent,
  say) is the user's to fix: config_flags reports it as an OSError carrying the reason."""
  config = flags.FLAGS.config
  try:
    config.get('name')  # a config that failed to load raises on first use
  except OSError as e:
    raise errors.RunNotFoundError(str(e).split('failure to load: ', 1)[-1]) from e
  return config


def main(argv) -> None:
  if len(argv) > 1:
    print(f'unexpected arguments {argv[1:]}; usage: {USAGE}', file=sys.stderr)
    sys.exit(2)
  cluster.join(flags.FLAGS.multihost)  # every host runs the same command, as for training
  run_dir = flags.FLAGS.workdir
  results = errors.run_command(lambda: evaluate_run(run_name(_config(), run_dir), run_dir))
  if jax.process_index() == 0:
    print(f'results: {results}  ({os.path.join(run_dir, "eval.json")})')


if __name__ == '__main__':
  # Defined here, not at import: config_flags loads this file again as the default config.
  define_flags(sys.argv)
  app.run(main)

"""Joining the other processes of a pod or cluster job: the entry points (`ssljax.main`,
`ssljax.evaluate`) run the same command on every host, and `jax.distributed.initialize()` finds
the other processes from the environment the launcher set."""

from __future__ import annotations

import os

import jax
from absl import flags

# Variables that cluster launchers set and jax.distributed.initialize() reads.
CLUSTER_ENV = ('JAX_COORDINATOR_ADDRESS', 'TPU_WORKER_HOSTNAMES', 'MEGASCALE_COORDINATOR_ADDRESS')
# What `srun` sets for each task and JAX's SLURM detection needs, all of them
# (jax/_src/clusters/slurm_cluster.py). An sbatch script outside srun has SLURM_NTASKS but no
# SLURM_STEP_NODELIST: one process, not a cluster JAX would fail to find.
SLURM_ENV = (
  'SLURM_JOB_ID',
  'SLURM_STEP_NODELIST',
  'SLURM_NTASKS',
  'SLURM_PROCID',
  'SLURM_LOCALID',
)


def define_flag(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """The entry points' --multihost (auto | yes | no), passed to `join`."""
  flags.DEFINE_enum(
    'multihost',
    'auto',
    ('auto', 'yes', 'no'),
    'Call jax.distributed.initialize(): auto does so when a cluster environment is detected.',
    flag_values=flag_values,
  )


def is_cluster() -> bool:
  """Whether this process is one of several a launcher started (jax.distributed finds them)."""
  if any(os.environ.get(k) for k in CLUSTER_ENV):
    return True
  if all(os.environ.get(k) for k in SLURM_ENV):
    return int(os.environ['SLURM_NTASKS']) > 1
  return int(os.environ.get('OMPI_COMM_WORLD_SIZE', '1')) > 1


def join(multihost: str = 'auto') -> None:
  """Calls jax.distributed.initialize() when `multihost` is 'yes', or 'auto' in a cluster."""
  if multihost == 'yes' or (multihost == 'auto' and is_cluster()):
    # JAX's preemption service catches SIGTERM in C++ and keeps it for a sync point the training
    # loop does not call: a signal before training would be swallowed. The loop agrees on its
    # own (train._Agreement), from the Python handler it installs.
    jax.config.update('jax_enable_preemption_service', False)
    jax.distributed.initialize()

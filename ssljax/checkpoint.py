"""Saving and restoring the train state with Orbax (the only module that imports it)."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from ssljax import paths


def directory(workdir: str) -> str:
  """WORKDIR/checkpoints: a gs:// URL as it is, a local path made absolute (Orbax needs one)."""
  return str(paths.path(paths.absolute(workdir)) / 'checkpoints')


def _serial_saves_on_cpu() -> None:
  """On CPU, save each array from its first replica. Orbax's default spreads a replicated array's
  slices over its replicas, which on CPU buys nothing and compiles a slice program per array
  shape (about 10 s per save of the test models); accelerators keep the parallel default."""
  if jax.default_backend() == 'cpu':
    ocp.type_handlers.register_type_handler(
      jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True
    )


class Checkpointer:
  """Keeps the last `max_to_keep` checkpoints of a run under WORKDIR/checkpoints.

  Saves are asynchronous (the train loop goes on while the arrays are written); `wait` blocks
  until the last one is on disk, which the loop does before exiting.
  """

  def __init__(self, workdir: str, *, max_to_keep: int):
    _serial_saves_on_cpu()
    self.directory = directory(workdir)
    self._manager = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, *, force: bool = False) -> bool:
    """Saves a pytree of (global) arrays; every process must call it."""
    return self._manager.save(step, args=ocp.args.StandardSave(state), force=force)

  def restore(self, step: int, like: Any) -> Any:
    """Restores into the structure, shapes, dtypes and shardings of `like` (abstract is fine)."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def _reader(workdir: str) -> ocp.CheckpointManager | None:
  where = directory(workdir)
  if not paths.path(where).is_dir():
    return None
  # Only reads: no save, no max_to_keep, so nothing is ever deleted (read_only=True would do the
  # same, with a warning at every call).
  return ocp.CheckpointManager(
    where,
    options=ocp.CheckpointManagerOptions(create=False),
    item_handlers=ocp.PyTreeCheckpointHandler(),
  )


def latest_saved_step(workdir: str) -> int | None:
  """The last step saved under WORKDIR/checkpoints, or None; creates and changes nothing (the
  directory may be another run's)."""
  manager = _reader(workdir)
  if manager is None:
    return None
  step = manager.latest_step()
  manager.close()
  return step


def restore_arrays(workdir: str, step: int, keys: tuple[str, ...]) -> dict[str, Any]:
  """{key: tree of NumPy arrays} for `keys` of the state saved at `step`, read without a target:
  no model, shapes, devices or sharding needed, so another run's weights (trained on another
  machine, say) load anywhere. Creates and changes nothing."""
  manager = _reader(workdir)
  if manager is None:
    raise FileNotFoundError(f'no checkpoints under {workdir}')
  saved = manager.item_metadata(step).tree
  item = {k: saved[k] for k in keys if k in saved}
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
  restored = manager.restore(
    step, args=ocp.args.PyTreeRestore(item, restore_args=restore_args, partial_restore=True)
  )
  manager.close()
  return {k: restored.get(k, {}) for k in keys}

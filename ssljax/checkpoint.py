"""Saving and restoring the train state with Orbax (the only module that imports it)."""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Keeps the last `max_to_keep` checkpoints of a run under WORKDIR/checkpoints.

  Saves are asynchronous (the train loop goes on while the arrays are written); `wait` blocks
  until the last one is on disk, which the loop does before exiting.
  """

  def __init__(self, workdir: str, *, max_to_keep: int):
    self.directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
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

"""What every method provides to the method-agnostic train loop, and the state it trains."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

PyTree = Any


class TrainState(NamedTuple):
  """Everything a run needs to continue exactly where it stopped; saved as one checkpoint.

  `model_state` holds the collections that are not trained by gradients (BatchNorm statistics,
  later an EMA teacher or a DINO center); methods update it in `loss` and `after_step`.
  """

  step: jax.Array
  params: PyTree
  model_state: PyTree
  opt_state: PyTree
  rng: jax.Array


class Method:
  """A self-supervised method: how a batch of views becomes a loss.

  Subclasses implement `init`, `loss` and `features` (and `after_step` when they keep a
  teacher). All are pure functions of their arguments, so the train loop can jit them over the
  mesh. `total_steps` is the length of the run, for schedules such as the teacher's momentum.
  """

  def __init__(
    self, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, total_steps: int = 1
  ):
    self.config = config
    self.mesh = mesh
    self.total_steps = total_steps

  def init(self, rng: jax.Array, batch: dict) -> tuple[PyTree, PyTree]:
    """Returns (params, model_state) for a batch shaped like the training batches."""
    raise NotImplementedError

  def loss(
    self, params: PyTree, model_state: PyTree, batch: dict, rng: jax.Array, step: jax.Array
  ) -> tuple[jax.Array, tuple[PyTree, dict[str, jax.Array]]]:
    """Returns (loss, (new model_state, metrics)); differentiated with respect to params."""
    raise NotImplementedError

  def after_step(self, params: PyTree, model_state: PyTree, step: jax.Array) -> PyTree:
    """Updates model_state after the optimizer step (an EMA teacher, say); default: nothing."""
    del params, step
    return model_state

  def features(self, params: PyTree, model_state: PyTree, images: jax.Array) -> jax.Array:
    """h: the representation kept for downstream tasks, in inference mode."""
    raise NotImplementedError


def stack_views(views: list[jax.Array]) -> jax.Array:
  """(N, H, W, C) x V -> (N * V, H, W, C), the V views of an example next to each other.

  Interleaving per example (not [all view 1; all view 2]) keeps every row on the device that
  holds its example, so a batch sharded over 'data' needs no communication here.
  """
  x = jnp.stack(views, axis=1)
  return x.reshape((-1,) + x.shape[2:])

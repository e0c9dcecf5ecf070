"""What every method provides to the method-agnostic train loop, and the state it trains."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from ssljax.config.checks import Checks
from ssljax.config.views import view_specs_if_valid
from ssljax.errors import ConfigError
from ssljax.monitor import health

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

  Subclasses implement `default_config`, `init`, `loss` and `encoder_variables` (and
  `after_step` when they keep a teacher), and declare what they take and offer in the class
  attributes below. `init`, `loss` and `after_step` are pure functions of their arguments, so
  the train loop can jit them over the mesh. `total_steps` and `steps_per_epoch` size schedules
  such as the teacher's momentum.
  """

  encoder: nn.Module  # f; subclasses set it in __init__ (and use it inside their network)
  num_views: int | None = None  # views per example (config.views); None: `check_config` decides
  eval_encoders: tuple[str, ...] = ('online',)  # the config.eval_encoder values it can evaluate
  reconstructs: bool = False  # has `reconstruct` (pictures of what it reconstructs)

  @classmethod
  def default_config(cls, image_size: int = 224) -> ml_collections.ConfigDict:
    """The shared defaults (`config.defaults.base_config`) with this method's own sections and
    settings: what configs/<method>_*.py start from."""
    raise NotImplementedError

  @classmethod
  def check_sections(cls, config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError when the config lacks a section this method reads (config.method
    switched on the command line): nothing else can be checked without them."""
    name = config.method
    missing = sorted(k for k in cls.default_config().keys() if k not in config)
    if missing:
      raise ConfigError(
        f'config.method={name!r} needs config.{", config.".join(missing)}, which this config '
        f'lacks: start from a {name} config (configs/{name}_digits.py) instead of switching '
        'config.method on the command line.'
      )

  @classmethod
  def check_config(cls, checks: Checks) -> None:
    """Records in `checks` every problem of the fields this method owns (views, eval_encoder,
    its sections); run before any data is read or anything compiles. Subclasses extend it."""
    name = checks.config.method
    checks.choice('eval_encoder', cls.eval_encoders)
    specs = view_specs_if_valid(checks.config)
    if specs is None:
      return
    if checks.value('accum_steps') not in (1, None) and (why := cls.accumulation_refusal(checks)):
      checks.fail('accum_steps', f'1 for {name}: {why}', fix=1)
    views = len(specs)
    if cls.num_views is not None and views != cls.num_views:
      checks.fail(
        'views',
        f'{name} takes {cls.num_views} view(s) per example, this config makes {views}; '
        f'see configs/{name}_digits.py',
        value=tuple(sorted(checks.config.views.keys())),
      )

  @classmethod
  def accumulation_refusal(cls, checks: Checks) -> str | None:
    """Why config.accum_steps > 1 would change this method's update, or None where micro-batches
    give exactly the batch's: a loss that is a mean of per-example terms of equal weight, with no
    statistic over the batch (BatchNorm, a centre, negatives) and its randomness drawn for the
    whole batch by `batch_randomness`."""
    return 'its loss couples the examples of a batch'

  def batch_randomness(self, rng: jax.Array, batch: dict) -> dict:
    """Per-example random draws the loss would make from `rng`, made for the whole batch (leading
    axis the batch): with accum_steps > 1 they are added to the batch before it is split, so each
    micro-batch uses its rows of the same draws."""
    del rng, batch
    return {}

  @classmethod
  def require_vit(cls, checks: Checks) -> bool:
    """For methods that mask patches: config.model.encoder must name a ViT."""
    encoder = checks.value('model.encoder')
    ok = isinstance(encoder, str) and encoder.startswith('vit')
    return checks.require(ok, 'model.encoder', f'a ViT for {checks.config.method}', 'vit_small')

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh,
    total_steps: int = 1,
    steps_per_epoch: int = 1,
  ):
    self.config = config
    self.mesh = mesh
    self.total_steps = total_steps
    self.steps_per_epoch = steps_per_epoch

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

  def encoder_variables(self, params: PyTree, model_state: PyTree) -> dict:
    """The variables of the encoder f that is evaluated (for methods with a teacher: the one
    config.eval_encoder names)."""
    raise NotImplementedError

  def warm_start(
    self, params: PyTree, model_state: PyTree, encoder_variables: dict
  ) -> tuple[PyTree, PyTree]:
    """(params, model_state) with `encoder_variables` ({'params': .., 'batch_stats': ..}, any
    subset of the encoder's names) copied into the online encoder and into every teacher copy
    of it, so the EMA starts from the loaded weights too (config.init_from).

    By default a teacher is any model_state entry with its own 'params' (BYOL's target, DINO's
    teacher, I-JEPA's target encoder); the encoder is the submodule named 'encoder' in each
    collection. Methods that keep the encoder elsewhere override this.
    """
    online = _load_submodule({'params': params, **model_state}, 'encoder', encoder_variables)
    model_state = {
      k: _load_submodule(v, 'encoder', encoder_variables) if _is_teacher(v) else online[k]
      for k, v in model_state.items()
    }
    return online['params'], model_state

  def held_parameters(self) -> tuple[Callable[[PyTree], PyTree], int] | None:
    """(mask_fn, steps): the parameters (mask_fn(params) True) the optimizer leaves alone for
    the first `steps` steps and then starts fresh on (`optim.hold_until`); None: none."""
    return None

  def reconstruct(
    self, params: PyTree, model_state: PyTree, images: jax.Array, rng: jax.Array
  ) -> dict[str, jax.Array]:
    """Methods with `reconstructs = True`: {'original', 'masked', 'reconstruction', 'pasted'},
    each (N, H, W, C), for the reconstruction pictures."""
    raise NotImplementedError(f'{type(self).__name__} does not reconstruct its input')

  def features(self, params: PyTree, model_state: PyTree, images: jax.Array) -> jax.Array:
    """h: the representation kept for downstream tasks, in inference mode."""
    variables = self.encoder_variables(params, model_state)
    return self.encoder.apply(variables, images, train=False)

  def health(self, params: PyTree, model_state: PyTree, images: jax.Array) -> dict[str, jax.Array]:
    """Label-free health on un-augmented images, in inference mode: RankMe and normalised std of
    h (`ssljax.monitor.health`). Methods with a projector add its output's (`_z`); methods with a
    teacher add the teacher/student agreement (`health/agreement`)."""
    return health.embedding_health('h', self.features(params, model_state, images))

  def attention(self, params: PyTree, model_state: PyTree, images: jax.Array) -> jax.Array:
    """(N, heads, h, w): the last block's CLS-to-patch attention of a ViT encoder, on its grid.

    A ViT without CLS (I-JEPA) has no such query: its map is the attention each patch receives,
    averaged over all query patches.
    """
    variables = self.encoder_variables(params, model_state)
    _, attn = self.encoder.apply(variables, images, train=False, return_attention=True)
    if self.encoder.use_cls:
      attn = attn[:, :, 0, 1:]
    else:
      attn = jnp.mean(attn, axis=2)
    side = math.isqrt(attn.shape[-1])
    return attn.reshape(attn.shape[:2] + (side, side))


class EncoderWithHead(nn.Module):
  """f followed by a head g: returns (h, g(h)). SimCLR's z, DINO's prototype logits."""

  encoder: nn.Module
  head: nn.Module

  def __call__(self, x, *, train: bool):
    h = self.encoder(x, train=train)
    return h, self.head(h, train=train)


def submodule_variables(variables: dict, name: str) -> dict:
  """{'params': {name: p, ..}, 'batch_stats': {name: s, ..}} -> {'params': p, 'batch_stats': s}."""
  return {col: tree[name] for col, tree in variables.items() if name in tree}


def _is_teacher(value: Any) -> bool:
  return isinstance(value, Mapping) and 'params' in value


def _overwrite(tree: Any, values: Any) -> Any:
  """`tree` with the leaves `values` also has (same nesting) replaced; the rest kept."""
  if not isinstance(values, Mapping):
    return values
  return {k: _overwrite(v, values[k]) if k in values else v for k, v in tree.items()}


def _load_submodule(variables: dict, name: str, submodule: dict) -> dict:
  """`variables` with submodule `name`'s leaves in each collection overwritten by `submodule`
  ({collection: tree}), where the collection has that submodule."""
  out = dict(variables)
  for col, values in submodule.items():
    if isinstance(out.get(col), Mapping) and name in out[col]:
      out[col] = {**out[col], name: _overwrite(out[col][name], values)}
  return out


def dropout_rngs(rng: jax.Array | None) -> dict:
  """The rngs of a training forward pass: stochastic depth in ViT encoders draws from 'dropout'."""
  return {} if rng is None else {'dropout': rng}


def stack_views(views: list[jax.Array]) -> jax.Array:
  """(N, H, W, C) x V -> (N * V, H, W, C), the V views of an example next to each other.

  Interleaving per example (not [all view 1; all view 2]) keeps every row on the device that
  holds its example, so a batch split over the mesh needs no communication here.
  """
  x = jnp.stack(views, axis=1)
  return x.reshape((-1,) + x.shape[2:])

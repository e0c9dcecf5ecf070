"""Fine-tuning: every encoder weight plus a linear head on h, trained with labels on the mesh.

The same recipe from a random init is the supervised baseline: what the labelled subset alone
gives the architecture, the number pretraining has to beat. Recipes (the optimizer by encoder):
- ResNets: SGD with Nesterov momentum and coupled weight decay (He et al.'s supervised recipe;
  SimCLR fine-tunes with Nesterov momentum too), or LARS;
- ViTs: AdamW with layer-wise lr decay, drop path and label smoothing (MAE's fine-tuning: lr of
  block i scaled by decay**(depth - i), the patch embedding, CLS and positions as layer 0, the
  final norm and the head as layer depth + 1, so the layers nearest the input move least).
Linear warm-up then cosine to 0; random resized crop + flip on the labelled images; BatchNorm
statistics over the global batch in train mode. RandAugment, random erasing, mixup and cutmix
in the step when set (`evaluators.mixing`; MAE's recipe: rand-m9-mstd0.5-inc1, 0.25, 0.8, 1.0).

With `frozen=True` the same loop is the papers' linear protocol (`evaluators.linear_sgd`): the
encoder runs in inference mode under stop_gradient and only the head (optionally behind a
non-affine BatchNorm, on the CLS of the last n ViT blocks) learns.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import re
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from ssljax import data, optim, sharding
from ssljax.config.checks import Checks
from ssljax.config.defaults import augment_defaults
from ssljax.data.types import EvalSplit
from ssljax.evaluators import mixing, multilabel
from ssljax.evaluators.batched import apply_in_batches
from ssljax.models import vit as vit_lib

PyTree = Any

# (base lr at batch 256, weight decay) when eval_config.finetune leaves them None. AdamW's lr is
# for small data and batches (MAE fine-tunes ImageNet with 5e-4-1e-3 at batch 1024).
# sgd is Nesterov's, momentum the heavy ball's (DINO's linear protocol).
RECIPES = {'sgd': (0.1, 1e-4), 'momentum': (0.1, 0.0), 'lars': (0.1, 1e-6), 'adamw': (4e-3, 0.05)}


def check_config(checks: Checks, prefix: str = 'eval_config.finetune') -> None:
  """Records every problem of config.PREFIX (eval_config.finetune): no model needed."""
  f = lambda name: f'{prefix}.{name}'  # noqa: E731
  checks.nonnegative(f('epochs'))
  checks.count(f('min_steps'), 0)
  checks.nonnegative(f('warmup_epochs'))
  checks.count(f('batch_size'), 1)
  checks.choice(f('optimizer'), ('auto', *RECIPES))
  checks.positive(f('base_lr'), optional=True)
  checks.nonnegative(f('weight_decay'), optional=True)
  checks.probability(f('momentum'))
  checks.number(f('layer_decay'), 0, 1, low_open=True)
  checks.number(f('label_smoothing'), 0, 1, high_open=True)
  checks.number(f('drop_path'), 0, 1, high_open=True)
  checks.nonnegative(f('mixup'))
  checks.nonnegative(f('cutmix'))
  checks.probability(f('mix_switch_prob'))
  checks.probability(f('random_erasing'))
  checks.absorb(mixing.parse_randaugment, checks.value(f('randaugment')), f('randaugment'))
  checks.pair(f('crop_scale'), 0, 1, low_open=True, optional=True, fix=(0.08, 1.0))
  if checks.value(f('flip')) is not None:
    checks.boolean(f('flip'))
  checks.count(f('seed'), 0)


def check_settings(ft: ml_collections.ConfigDict) -> None:
  """check_config on a resolved eval_config.finetune (the fields checked again with the recipe)."""
  checks = Checks(ml_collections.ConfigDict({'finetune': ft}))
  check_config(checks, 'finetune')
  checks.raise_if_any()


_EMBEDDING = ('patch_embed', 'cls_token', 'pos_embed')  # ViT layer 0; no weight decay on tokens
_BLOCK = re.compile(r'blocks_(\d+)')
FINETUNE_HEAD_STD = 2e-5  # MAE's fine-tune head init: starts near zero logits


class LinearHead(nn.Module):
  """[non-affine BatchNorm (MAE's linear probe) ->] Dense, its kernel N(0, init_std) truncated."""

  num_classes: int
  norm: bool = False
  init_std: float = FINETUNE_HEAD_STD

  @nn.compact
  def __call__(self, h: jax.Array, *, train: bool) -> jax.Array:
    if self.norm:
      h = nn.BatchNorm(
        use_running_average=not train, use_bias=False, use_scale=False, epsilon=1e-6, momentum=0.9
      )(h)
    init = (
      nn.initializers.truncated_normal(self.init_std) if self.init_std else nn.initializers.zeros
    )
    return nn.Dense(self.num_classes, kernel_init=init, name='fc')(h)


class Classifier(nn.Module):
  """logits = head(f(x)): the encoder (its variables under 'encoder') and a linear head on h.

  frozen: the encoder in inference mode under stop_gradient (a linear protocol); its features
  are h, or with last_blocks > 1 the CLS tokens of a ViT's last blocks concatenated (DINO)."""

  encoder: nn.Module
  num_classes: int
  frozen: bool = False
  head_norm: bool = False
  last_blocks: int = 1
  head_init_std: float = FINETUNE_HEAD_STD

  def features(self, x: jax.Array, *, train: bool) -> jax.Array:
    if not self.frozen:
      return self.encoder(x, train=train).astype(jnp.float32)
    if self.last_blocks > 1:
      h = self.encoder.last_cls(x, self.last_blocks)
    else:
      h = self.encoder(x, train=False)
    return jax.lax.stop_gradient(h.astype(jnp.float32))

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    head = LinearHead(self.num_classes, self.head_norm, self.head_init_std, name='head')
    return head(self.features(x, train=train), train=train)


def vit_layer_id(path: tuple[str, ...], depth: int) -> int:
  """MAE's layer of a Classifier parameter: embedding 0, block i -> i + 1, the rest depth + 1."""
  if path[0] == 'encoder' and len(path) > 1:
    if path[1] in _EMBEDDING:
      return 0
    if m := _BLOCK.fullmatch(path[1]):
      return int(m.group(1)) + 1
  return depth + 1


def _path(key_path) -> tuple[str, ...]:
  return tuple(str(getattr(k, 'key', getattr(k, 'name', k))) for k in key_path)


def layer_decay_scales(params: PyTree, depth: int, decay: float) -> PyTree:
  """lr multiplier per leaf of Classifier params: decay ** (depth + 1 - layer id).

  Block i gets decay**(depth - i), the embedding decay**(depth + 1), final norm and head 1.
  """
  return jax.tree_util.tree_map_with_path(
    lambda kp, _: float(decay ** (depth + 1 - vit_layer_id(_path(kp), depth))), params
  )


def weight_decay_mask(params: PyTree) -> PyTree:
  """Kernels decay; biases, norm scales (1-D) and the ViT's CLS / position tokens do not."""
  return jax.tree_util.tree_map_with_path(
    lambda kp, p: p.ndim > 1 and not set(_path(kp)) & {'cls_token', 'pos_embed'}, params
  )


def scale_by_tree(scales: PyTree) -> optax.GradientTransformation:
  """Multiplies each update by its leaf of `scales` (a per-parameter lr factor), stateless."""

  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, s: u * jnp.asarray(s, u.dtype), updates, scales), state

  return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


@dataclasses.dataclass(frozen=True)
class Recipe:
  """What the compiled train step depends on; hashable, so one compilation serves every run of
  the same model and optimizer (label budgets, the supervised baseline, later evaluations)."""

  model: Classifier
  optimizer: str  # sgd | lars | adamw
  weight_decay: float
  momentum: float
  layer_decay: float  # 1.0: none
  depth: int  # ViT blocks (layer decay)
  label_smoothing: float
  mix: mixing.MixSettings = mixing.MixSettings()  # mixup, cutmix, erasing; smoothing inside
  pixel_stats: tuple = ((0.0,), (1.0,))  # the encoder's input standardization (erasing's noise)
  multilabel: bool = False  # CSV labels: targets (B, L), sigmoid cross-entropy (multilabel.py)

  def tx(self, learning_rate, params: PyTree) -> optax.GradientTransformation:
    """The optimizer at `learning_rate` (a traced scalar: the schedule runs on the host); a
    frozen encoder's parameters get no update and no optimizer state."""
    if self.model.frozen:
      labels = {k: 'frozen' if k == 'encoder' else 'head' for k in params}
      # The head's transform sees the encoder as multi_transform passes it: a MaskedNode.
      masked = {
        k: optax.transforms.MaskedNode() if k == 'encoder' else v for k, v in params.items()
      }
      head = self._tx(learning_rate, masked)
      return optax.multi_transform({'head': head, 'frozen': optax.set_to_zero()}, labels)
    return self._tx(learning_rate, params)

  def _tx(self, learning_rate, params: PyTree) -> optax.GradientTransformation:
    mask = weight_decay_mask(params)
    if self.optimizer in ('sgd', 'momentum'):
      tx = optax.chain(
        optax.add_decayed_weights(self.weight_decay, mask),
        optax.sgd(learning_rate, momentum=self.momentum, nesterov=self.optimizer == 'sgd'),
      )
    elif self.optimizer == 'lars':
      tx = optim.lars(learning_rate, self.weight_decay, mask, self.momentum)
    else:  # adamw; resolve_recipe checked the name
      tx = optax.adamw(
        learning_rate, b1=self.momentum, b2=0.999, weight_decay=self.weight_decay, mask=mask
      )
    if self.layer_decay != 1.0:
      tx = optax.chain(tx, scale_by_tree(layer_decay_scales(params, self.depth, self.layer_decay)))
    return tx


class State(NamedTuple):
  step: jax.Array
  params: PyTree  # {'encoder': .., 'head': ..}
  model_state: PyTree  # {'batch_stats': {'encoder': ..}} for ResNets, {} for ViTs
  opt_state: PyTree
  rng: jax.Array


def _train_step(recipe: Recipe, state: State, batch, learning_rate):
  x, y = batch
  rng, dropout_rng = jax.random.split(state.rng)
  num_classes = recipe.model.num_classes
  mix = recipe.mix._replace(smoothing=recipe.label_smoothing)
  mix_rng = jax.random.fold_in(dropout_rng, 1)
  if recipe.multilabel:  # y: targets (B, L); mixup and cutmix are refused for them
    x, _ = mixing.regularize(mix_rng, x, y[:, 0], num_classes, mix, recipe.pixel_stats)
    targets = y
  else:
    x, targets = mixing.regularize(mix_rng, x, y, num_classes, mix, recipe.pixel_stats)

  def loss_fn(params):
    logits, updates = recipe.model.apply(
      {'params': params, **state.model_state},
      x,
      train=True,
      mutable=['batch_stats'],
      rngs={'dropout': dropout_rng},
    )
    if recipe.multilabel:
      known = y != multilabel.IGNORED
      hits = jnp.sum(((logits > 0) == (y == 1)) & known) / jnp.maximum(jnp.sum(known), 1)
      return multilabel.masked_bce(logits, targets), (dict(updates), hits)
    loss = jnp.mean(optax.softmax_cross_entropy(logits, targets))
    return loss, (dict(updates), jnp.mean(jnp.argmax(logits, -1) == y))

  (loss, (updates, accuracy)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  tx = recipe.tx(learning_rate, state.params)
  steps, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, steps)
  model_state = {**state.model_state, **updates}
  metrics = {'loss': loss, 'accuracy': accuracy, 'grad_norm': optax.tree.norm(grads)}
  return State(state.step + 1, params, model_state, opt_state, rng), metrics


@functools.lru_cache(maxsize=16)
def _compiled_train_step(recipe: Recipe, mesh: jax.sharding.Mesh, min_size: int):
  """The jitted step: the state laid out by config.mesh's rule (`sharding.state_sharding`), the
  (images, labels) batch split over the mesh, the metrics replicated."""
  replicated = sharding.replicated(mesh)

  def step(state, batch, learning_rate):
    state, metrics = _train_step(recipe, state, batch, learning_rate)
    return sharding.constrain_state(state, mesh, min_size), metrics

  return jax.jit(
    step,
    in_shardings=(None, sharding.data_sharding(mesh), replicated),  # None: the state's own
    out_shardings=(None, replicated),
    donate_argnums=0,
  )


@dataclasses.dataclass(frozen=True)
class _Predict:
  """variables, images -> predicted class; hashable, so its compilation is cached."""

  model: Classifier

  def __call__(self, variables, x):
    return jnp.argmax(self.model.apply(variables, x, train=False), axis=-1)


@dataclasses.dataclass(frozen=True)
class Probabilities:
  """variables, images -> sigmoid of the logits (multi-label); hashable, as _Predict."""

  model: Classifier

  def __call__(self, variables, x):
    return jax.nn.sigmoid(self.model.apply(variables, x, train=False))


@functools.lru_cache(maxsize=16)
def _compiled_copy(mesh: jax.sharding.Mesh, min_size: int):
  """A copy into fresh buffers laid out by config.mesh's rule: the train step donates its
  state, never the caller's arrays."""
  return jax.jit(
    lambda tree: sharding.constrain_state(
      jax.tree.map(lambda x: jnp.array(x, copy=True), tree), mesh, min_size
    )
  )


def finetune_encoder(encoder: nn.Module, ft: ml_collections.ConfigDict) -> nn.Module:
  """`encoder` as fine-tuning runs it: ViTs with drop path ft.drop_path and their blocks
  unscanned, one subtree each (layer-wise learning-rate decay finds them by name); the same
  parameters, laid out by `encoder_layout`."""
  if isinstance(encoder, vit_lib.ViT):
    return encoder.clone(drop_path=float(ft.drop_path), scan=False)
  return encoder


def encoder_layout(variables: dict, encoder: nn.Module) -> dict:
  """`variables` laid out for `encoder` (a ViT's blocks scanned or not; anything else as is)."""
  if isinstance(encoder, vit_lib.ViT):
    return vit_lib.to_layout(variables, scan=encoder.scan, depth=encoder.depth)
  return variables


def random_encoder_variables(
  encoder: nn.Module,
  image_shape: tuple[int, ...],
  seed: int,
  mesh: jax.sharding.Mesh,
  min_size: int = sharding.FSDP_MIN_SIZE,
) -> dict:
  """A fresh initialisation of `encoder` (the supervised baseline's start), laid out by
  config.mesh's rule (`min_size`: config.mesh.fsdp_min_size)."""

  def init(rng):
    with sharding.init_numbers(mesh):
      return encoder.init(rng, jnp.zeros((2, *image_shape), jnp.float32), train=False)

  shapes = jax.eval_shape(init, jax.random.PRNGKey(0))
  out = sharding.state_sharding(shapes, mesh, min_size)
  return dict(jax.jit(init, out_shardings=out)(jax.random.PRNGKey(seed)))


def resolve_recipe(
  encoder: nn.Module,
  num_classes: int,
  ft: ml_collections.ConfigDict,
  frozen: bool = False,
  multilabel: bool = False,
) -> Recipe:
  """The Recipe for `encoder` (already through `finetune_encoder`) from eval_config.finetune
  (or the resolved eval_config.linear_sgd, frozen)."""
  check_settings(ft)
  is_vit = isinstance(encoder, vit_lib.ViT)
  name = ft.optimizer
  if name == 'auto':
    name = 'adamw' if is_vit else 'sgd'
  weight_decay = RECIPES[name][1] if ft.weight_decay is None else float(ft.weight_decay)
  layer_decay = float(ft.layer_decay) if is_vit and not frozen else 1.0
  classifier = Classifier(
    encoder,
    int(num_classes),
    frozen=frozen,
    head_norm=bool(ft.get('head_norm', False)),
    last_blocks=int(ft.get('last_blocks', 1)),
    head_init_std=float(ft.get('head_init_std', FINETUNE_HEAD_STD)),
  )
  mix = mixing.MixSettings(
    mixup=float(ft.mixup),
    cutmix=float(ft.cutmix),
    switch_prob=float(ft.mix_switch_prob),
    erasing=float(ft.random_erasing),
    randaugment=mixing.parse_randaugment(ft.randaugment),
  )
  stats = (
    tuple(getattr(encoder, 'pixel_mean', (0.0,))),
    tuple(getattr(encoder, 'pixel_std', (1.0,))),
  )
  return Recipe(
    model=classifier,
    optimizer=name,
    weight_decay=weight_decay,
    momentum=float(ft.momentum),
    layer_decay=layer_decay,
    depth=int(encoder.depth) if is_vit else 0,
    label_smoothing=float(ft.label_smoothing),
    mix=mix,
    pixel_stats=stats,
    multilabel=multilabel,
  )


def schedule(ft: ml_collections.ConfigDict, num_train: int, optimizer: str) -> np.ndarray:
  """Learning rate of every step: linear warm-up, then cosine to 0, peak base_lr x B / 256.

  Steps: epochs x num_train / batch (rounded up), at least min_steps; warm-up is the same
  fraction of them as warmup_epochs of epochs.
  """
  batch = int(ft.batch_size)
  total = max(math.ceil(float(ft.epochs) * num_train / batch), int(ft.min_steps), 1)
  warmup = int(total * float(ft.warmup_epochs) / float(ft.epochs)) if ft.epochs > 0 else 0
  base_lr = RECIPES[optimizer][0] if ft.base_lr is None else float(ft.base_lr)
  fn = optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=base_lr * batch / 256,
    warmup_steps=min(warmup, total - 1),
    decay_steps=total,
    end_value=0.0,
  )
  return np.asarray(fn(np.arange(total)), np.float32)


class FineTuneResult(NamedTuple):
  accuracy: dict[str, float]  # test set name -> top-1 in [0, 1]
  variables: dict  # the trained Classifier's {'params': .., ['batch_stats': ..]}
  steps: int
  train_loss: float  # mean over the last tenth of the steps
  scores: dict | None = None  # multilabel: test set name -> (probabilities (N, L), labels (N,))


def finetune(
  encoder: nn.Module,
  encoder_variables: dict,
  train: EvalSplit | tuple[np.ndarray, np.ndarray],
  tests: dict[str, EvalSplit | tuple[np.ndarray, np.ndarray]],
  *,
  num_classes: int,
  num_train: int,
  mesh: jax.sharding.Mesh,
  ft: ml_collections.ConfigDict,
  eval_batch_size: int,
  tf_augment: bool = True,
  frozen: bool = False,
  fsdp_min_size: int = sharding.FSDP_MIN_SIZE,
  multilabel: bool = False,
  train_examples: np.ndarray | None = None,
) -> FineTuneResult:
  """Fine-tunes `encoder` from `encoder_variables` with a new linear head; top-1 on each test set.

  `train` is this process's share of the labelled split (`data.eval_split`; or its images,
  float32 in [0, 1], and labels in memory), `train_examples` the positions in it of the images
  to train on, the same on every process (None: this process's rows), read a batch at a time
  (`data.labelled_train_iterator`); `num_train` is their count.
  `tests` maps a name to this process's share of a test split (an `EvalSplit`, or arrays).
  `ft` is eval_config.finetune. The caller's arrays are never modified or donated. `frozen`:
  only the head learns (`evaluators.linear_sgd`). `fsdp_min_size` (config.mesh's) lays out the
  state as training does. `multilabel`: labels are targets (N, L) of 1, 0, -1 (ignored), the
  loss sigmoid cross-entropy, and the result has each test set's probabilities (`scores`)
  instead of accuracies.
  """
  sharding.check_batch_size(int(ft.batch_size), mesh, 'eval_config.finetune.batch_size')
  if not isinstance(train, EvalSplit):
    train = EvalSplit.of_arrays(*train)
  if train_examples is None:
    train_examples = train.positions(np.arange(train.size))
  image_shape = tuple(train.image_shape)
  if len(train_examples) == 0:
    raise ValueError(
      f'this process holds none of the {num_train} labelled images: use a larger label budget'
    )
  encoder = finetune_encoder(encoder, ft)
  encoder_variables = encoder_layout(encoder_variables, encoder)
  recipe = resolve_recipe(encoder, num_classes, ft, frozen, multilabel)
  lrs = schedule(ft, num_train, recipe.optimizer)
  rng, head_rng = jax.random.split(jax.random.PRNGKey(int(ft.seed)))
  h = jax.eval_shape(
    lambda v: recipe.model.apply(
      {
        'params': {'encoder': v['params']},
        **{k: {'encoder': t} for k, t in v.items() if k != 'params'},
      },
      jnp.zeros((2, *image_shape)),
      train=False,
      method=Classifier.features,
    ),
    encoder_variables,
  )
  m = recipe.model
  with sharding.replicated_init():
    head = LinearHead(num_classes, m.head_norm, m.head_init_std).init(
      head_rng, jnp.zeros(h.shape), train=False
    )
  params = {'encoder': encoder_variables['params'], 'head': head['params']}
  model_state = {
    col: {'encoder': tree} for col, tree in encoder_variables.items() if col != 'params'
  }
  for col, tree in head.items():
    if col != 'params':
      model_state.setdefault(col, {})['head'] = tree
  state = State(
    jnp.zeros((), jnp.int32), params, model_state, recipe.tx(0.0, params).init(params), rng
  )
  state = _compiled_copy(mesh, fsdp_min_size)(state)

  spec = augment_defaults(int(image_shape[0]))
  spec.update(
    dict(
      crop_scale=(0.08, 1.0) if ft.crop_scale is None else tuple(ft.crop_scale),
      flip=True if ft.flip is None else bool(ft.flip),
      color_strength=0.0,
      grayscale_prob=0.0,
      blur_prob=0.0,
      solarize_prob=0.0,
    )
  )
  batches = sharding.prefetch_to_mesh(
    data.labelled_train_iterator(
      train,
      train_examples,
      spec,
      batch_size=int(ft.batch_size),
      seed=int(ft.seed),
      tf_augment=tf_augment,
    ),
    mesh,
  )
  step_fn = _compiled_train_step(recipe, mesh, fsdp_min_size)
  losses = []
  with contextlib.closing(batches):  # the readers' threads stop with the last step
    for step, learning_rate in enumerate(lrs):
      state, metrics = step_fn(state, next(batches), learning_rate)
      losses.append(metrics['loss'])
      if (step + 1) % 100 == 0 or step + 1 == len(lrs):
        logging.info(
          'finetune step %d/%d loss %.4f', step + 1, len(lrs), float(np.mean(losses[-100:]))
        )
  losses = np.asarray(jax.device_get(losses))
  variables = {'params': state.params, **state.model_state}
  tail = max(1, len(losses) // 10)
  if multilabel:  # scored by the caller, which knows the targets (evaluators.multilabel_run)
    probabilities = Probabilities(recipe.model)
    scores = {
      name: apply_in_batches(probabilities, variables, test, mesh, eval_batch_size)[:2]
      for name, test in tests.items()
    }
    return FineTuneResult({}, variables, len(lrs), float(np.mean(losses[-tail:])), scores)
  predict = _Predict(recipe.model)
  accuracy = {}
  for name, test in tests.items():
    preds, truth, _ = apply_in_batches(predict, variables, test, mesh, eval_batch_size)
    accuracy[name] = float(np.mean(preds == truth)) if truth.size else float('nan')
  return FineTuneResult(accuracy, variables, len(lrs), float(np.mean(losses[-tail:])))

"""Reading a run back: its config, its latest state, its encoder on its own (`load_encoder`), and
its encoder as the start of a new run (`config.init_from`: warm starts, as in REMEDIS, where a
model pretrained on natural images continues self-supervised on medical ones).

The encoder is read from the checkpoint without the run's data or optimizer, so a run trained on
ImageNet elsewhere can be loaded, or warm-start a run, on a machine that has only the new data.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from ssljax import build, checkpoint, data, methods, models, paths, sharding, weights
from ssljax.config import defaults
from ssljax.errors import ConfigError, RunNotFoundError
from ssljax.methods import Method, TrainState
from ssljax.models import vit

__all__ = [
  'WarmStart',
  'encoder_variables',
  'load_config',
  'load_encoder',
  'latest_state',
  'prepare_warm_start',
  'restore_latest',
  'warm_start',
]


# ----------------------------------------------------------------------------- config and state


def _tuples(value: Any) -> Any:
  """JSON lists back to the tuples the configs use (command-line overrides parse tuples only)."""
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  return value


def _with_defaults(config: ml_collections.ConfigDict, base: ml_collections.ConfigDict) -> None:
  """Fields a run's config.json predates get their defaults (old runs still load), and fields
  saved as null get their type back (placeholders), so --config.* overrides of them parse."""
  for key in base.keys():
    value = base[key]
    if isinstance(value, ml_collections.ConfigDict):
      if key not in config:
        config[key] = copy.deepcopy(value)
      elif isinstance(config[key], ml_collections.ConfigDict):
        _with_defaults(config[key], value)
    elif key not in config or (config[key] is None and value is None):
      config[key] = copy.deepcopy(base.get_ref(key)) if value is None else value


def load_config(run_dir: str) -> ml_collections.ConfigDict:
  """The config a run was trained with (RUN/config.json), with any field added since then at its
  default."""
  path = paths.path(run_dir) / 'config.json'
  if not path.exists():
    raise RunNotFoundError(
      f'{path} not found: {run_dir!r} is not a run directory. Give the workdir of a run that '
      'python -m ssljax.main wrote (it holds config.json and checkpoints/).'
    )
  config = ml_collections.ConfigDict(_tuples(json.loads(path.read_text())))
  # The method's own defaults (its sections too); the shared ones for an unknown method, which
  # ssljax.methods then refuses with the list of choices.
  method = methods.METHODS.get(config.get('method'))
  _with_defaults(config, method.default_config() if method else defaults.base_config())
  return config


def _latest_step(run_dir: str) -> int:
  step = checkpoint.latest_saved_step(run_dir)
  if step is None:
    raise RunNotFoundError(
      f'no checkpoint under {checkpoint.directory(run_dir)}: train the '
      'run first (python -m ssljax.main --workdir=...), or give a run that has one.'
    )
  return step


def latest_state(
  config: ml_collections.ConfigDict, run_dir: str, init: Callable, mesh: jax.sharding.Mesh
) -> TrainState:
  """The run's latest TrainState, laid out on `mesh` by config.mesh's rule (whatever mesh it
  was saved from); `init` (rng -> TrainState) gives the structure (from `build.build_run` with
  the run's config)."""
  step = _latest_step(run_dir)
  abstract, shardings = build.state_layout(config, mesh, init)
  like = jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
  )
  ckpt = checkpoint.Checkpointer(run_dir, max_to_keep=config.keep_checkpoints)
  state = TrainState(**ckpt.restore(step, like._asdict()))
  ckpt.close()
  return state


def state_to_evaluate(
  config: ml_collections.ConfigDict, run_dir: str, method: Method, init: Callable, mesh
) -> TrainState:
  """The run's latest state; for a run directory without a checkpoint whose config.init_from
  is a weight file, the state initialised with that file's encoder: published weights
  evaluated on your own data without training (python -m ssljax.evaluate)."""
  source = config.get('init_from', '')
  if checkpoint.latest_saved_step(run_dir) is not None or not weights.is_weight_file(source):
    return latest_state(config, run_dir, init, mesh)
  abstract, layout = build.state_layout(config, mesh, init)
  warm = prepare_warm_start(config, method, abstract, run_dir)
  state = jax.jit(init, out_shardings=layout)(jax.random.PRNGKey(config.seed))
  return warm_start(method, state, warm)


def restore_latest(config: ml_collections.ConfigDict, run_dir: str) -> tuple[Method, TrainState]:
  """The method and its latest saved state, on the mesh config.mesh asks for."""
  mesh = sharding.make_mesh(config.get('mesh'))
  run = build.build_run(config, mesh, data.dataset_info(config))
  return run.method, latest_state(config, run_dir, run.init, mesh)


# ----------------------------------------------------------------------------- the encoder


def encoder_variables(
  run_dir: str, mesh: jax.sharding.Mesh | None = None
) -> tuple[Method, dict, int]:
  """(method, variables, step): the variables (NumPy) of the encoder the run evaluates
  (`method.encoder_variables`: BYOL's or DINO's teacher when config.eval_encoder says so) at its
  latest checkpoint. Reads neither the run's data nor its optimizer state."""
  config = load_config(run_dir)
  step = _latest_step(run_dir)
  method = methods.build(config, mesh or sharding.make_mesh())
  saved = checkpoint.restore_arrays(run_dir, step, ('params', 'model_state'))
  return method, method.encoder_variables(saved['params'], saved['model_state']), step


def load_encoder(
  run_dir: str, model: str = '', **options: Any
) -> tuple[Callable[[Any, jax.Array], jax.Array], dict]:
  """(apply_fn, params) of a run's trained encoder, for use outside ssljax:

    apply_fn, params = ssljax.load_encoder('runs/simclr_digits')
    h = apply_fn(params, images)  # images (N, H, W, C) float in [0, 1] -> h (N, d)

  apply_fn is jitted, in inference mode (BatchNorm with its running statistics, no stochastic
  depth) and is a pure function of params, so it can be differentiated or fine-tuned as well.
  Images should have the size and channels the run was trained on (config.data.image_size).

  `run_dir` may instead be a weight file (.safetensors, .pth: timm, torchvision, the official
  DINO, MAE, I-JEPA checkpoints), `model` its timm name where the file does not say it, and
  `options` image_size, channels, part, pixel_mean, pixel_std (`weights.import_encoder`); the
  weights' own input standardization is applied, so images are in [0, 1] as above.
  """
  if weights.is_weight_file(run_dir):
    imported = weights.import_encoder(run_dir, model, **options)
    for line in imported.report:
      logging.info('%s', line)
    encoder, variables = models.build_encoder(imported.config), imported.variables
  else:
    method, variables, _ = encoder_variables(run_dir)
    encoder = method.encoder

  @jax.jit
  def apply_fn(params, images):
    return encoder.apply(params, images, train=False)

  return apply_fn, jax.device_put(variables)


# ----------------------------------------------------------------------------- warm starts


def _flat(tree: Any) -> dict[str, Any]:
  """{'params/stem_conv/kernel': leaf, ...}: variable names as paths."""
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  return {'/'.join(str(getattr(k, 'key', k)) for k in path): leaf for path, leaf in leaves}


_unflat = weights.names.nested  # the inverse of _flat


@dataclasses.dataclass(frozen=True)
class WarmStart:
  """Another run's encoder, checked against this run's: what `warm_start` copies in."""

  source: str  # the run directory (config.init_from)
  step: int  # its checkpoint's step
  variables: dict  # NumPy, only the names this run's encoder has, in its dtypes
  loaded: tuple[str, ...]  # variable names (by collection) present in both encoders
  not_loaded: tuple[str, ...]  # present in one only, each marked with where it is
  notes: tuple[str, ...] = ()  # a weight file's: what each part became, what was left and why
  # A weight file's networks beside the encoder, by the name of the method's module they fill
  # (MAE's decoder, I-JEPA's predictor): {'decoder': {'params': ...}}, NumPy.
  parts: dict = dataclasses.field(default_factory=dict)


def _matched_parts(source: str, others: dict, params: Any) -> dict:
  """`others` ({module name: variables by path}) checked against the run's modules of those
  names, every variable by name and shape: a part loads whole or the run stops, naming why."""
  matched = {}
  for name, flat in others.items():
    if name not in params:
      continue  # the method has no such module (an MAE file warm-starting DINO): encoder only
    ours = _flat({'params': params[name]})
    differ = sorted(ours.keys() ^ flat.keys())
    differ += [
      f'{k} (shape {np.shape(flat[k])} there, {tuple(ours[k].shape)} here)'
      for k in sorted(ours.keys() & flat.keys())
      if np.shape(flat[k]) != tuple(ours[k].shape)
    ]
    if differ:
      raise ConfigError(
        f"config.init_from={source!r}: its {name} does not fit this run's: "
        f"{', '.join(differ[:6])}. Set the sizes of the method's {name} (depth, width, "
        "heads) to the file's, or use a file without one."
      )
    matched[name] = _unflat({k: np.asarray(v, ours[k].dtype) for k, v in flat.items()})
  return matched


def prepare_warm_start(
  config: ml_collections.ConfigDict, method: Method, abstract_state: TrainState, workdir: str
) -> WarmStart | None:
  """Reads config.init_from's encoder and matches it, by name and shape, with this run's
  (`abstract_state` from jax.eval_shape is enough, so a bad source fails before anything
  compiles). None when config.init_from is empty or when WORKDIR has a checkpoint: a run
  resumes its own state, not the source's."""
  source = config.get('init_from', '')
  if not source or checkpoint.latest_saved_step(workdir) is not None:
    return None
  ours = method.encoder_variables(abstract_state.params, abstract_state.model_state)
  if weights.is_weight_file(source):  # timm's, torchvision's, DINO's, MAE's, I-JEPA's weights
    first = _flat(ours).get('params/patch_embed/kernel', _flat(ours).get('params/stem_conv/kernel'))
    flat, report, others = weights.import_for_run(config, first.shape[2])
    theirs, step = weights.names.nested(flat), 0
    warm = _matched(source, step, theirs, ours, method, extra_notes=report)
    return dataclasses.replace(warm, parts=_matched_parts(source, others, abstract_state.params))
  # ValueErrors, not FileNotFoundErrors: a bad config value, which ssljax.main reports as such.
  fix = (
    'config.init_from must be the workdir of an ssljax run with a checkpoint (config.json and '
    "checkpoints/), or '' to start from a random initialisation."
  )
  if not (paths.path(source) / 'config.json').exists():
    raise ConfigError(
      f'config.init_from={source!r}: {os.path.join(source, "config.json")} not found. {fix}'
    )
  if checkpoint.latest_saved_step(source) is None:
    raise ConfigError(
      f'config.init_from={source!r}: no checkpoint under '
      f'{os.path.join(source, "checkpoints")}. {fix}'
    )
  _, theirs, step = encoder_variables(source, method.mesh)
  return _matched(source, step, theirs, ours, method)


def _matched(
  source: str, step: int, theirs: dict, ours: dict, method: Method, extra_notes: Any = ()
) -> WarmStart:
  """The WarmStart of `theirs` (another encoder's variables) into `ours`, by name and shape."""
  if isinstance(method.encoder, vit.ViT):  # blocks scanned in one run and not in the other
    theirs = vit.to_layout(theirs, scan=method.encoder.scan, depth=method.encoder.depth)
  theirs, ours = _flat(theirs), _flat(ours)
  loaded = sorted(ours.keys() & theirs.keys())
  for name in loaded:
    if np.shape(theirs[name]) != tuple(ours[name].shape):
      raise ConfigError(
        f'config.init_from={source!r}: encoder variable {name} has shape '
        f'{np.shape(theirs[name])} there and {tuple(ours[name].shape)} in this run. Make '
        f'config.model build the same encoder as {os.path.join(source, "config.json")} '
        '(encoder, width, patch_size, vit_*, ...), or leave config.init_from empty.'
      )
  if not loaded:
    raise ConfigError(
      f"config.init_from={source!r}: none of its encoder variables is in this run's encoder "
      f'(there: {sorted(theirs)[:4]}..., here: {sorted(ours)[:4]}...); config.model must name '
      'the same encoder as the source run.'
    )
  not_loaded = [f'{n} (only in this run)' for n in sorted(ours.keys() - theirs.keys())]
  not_loaded += [f'{n} (only in {source})' for n in sorted(theirs.keys() - ours.keys())]
  variables = {n: np.asarray(theirs[n], ours[n].dtype) for n in loaded}
  return WarmStart(
    source, step, _unflat(variables), tuple(loaded), tuple(not_loaded), tuple(extra_notes)
  )


def warm_start(method: Method, state: TrainState, warm: WarmStart) -> TrainState:
  """`state` with `warm`'s encoder variables in the online encoder and in every teacher copy
  of it (`Method.warm_start`); heads, optimizer state, step and rng stay as initialised. Logs
  what was loaded and what was not."""
  online = method.encoder_variables(state.params, state.model_state)
  shardings = {n: leaf.sharding for n, leaf in _flat(online).items()}

  def place(name: str, value: np.ndarray) -> jax.Array:
    # Every process holds the same value: build the global, replicated array from it.
    return jax.make_array_from_callback(value.shape, shardings[name], lambda i: value[i])

  variables = _unflat({n: place(n, v) for n, v in _flat(warm.variables).items()})
  params, model_state = method.warm_start(state.params, state.model_state, variables)
  for name, part in warm.parts.items():  # a weight file's decoder or predictor, whole
    shardings.update({n: leaf.sharding for n, leaf in _flat({'params': params[name]}).items()})
    params = {**params, name: _unflat({n: place(n, v) for n, v in _flat(part).items()})['params']}
  message = (
    f'init_from {warm.source} (step {warm.step}): loaded {len(warm.loaded)} encoder variables '
    f'into the encoder and its EMA copies:\n  {", ".join(warm.loaded)}\n'
    f'not loaded ({len(warm.not_loaded)}): {", ".join(warm.not_loaded) or "none"}'
  )
  if warm.notes:
    message += '\n  ' + '\n  '.join(warm.notes)
  for name, part in warm.parts.items():
    message += f'\nloaded its {name}: {len(_flat(part))} variables'
  logging.info('%s', message)
  if jax.process_index() == 0:
    print(message, flush=True)
  return state._replace(params=params, model_state=model_state)

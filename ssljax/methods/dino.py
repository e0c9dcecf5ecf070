"""DINO (Caron et al. 2021): self-distillation with no labels. The student matches, over every
pair of different crops, the teacher's centered and sharpened distribution over K prototypes;
the teacher is an EMA of the student and sees only the global crops (multi-crop)."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import ml_collections

from ssljax import ema, losses, models
from ssljax.config import defaults
from ssljax.config.views import view_specs_if_valid
from ssljax.methods.base import (
  EncoderWithHead,
  Method,
  dropout_rngs,
  stack_views,
  submodule_variables,
)
from ssljax.monitor import health


def _student_stats(model_state: dict) -> dict:
  """The student's non-param collections (BatchNorm statistics): model_state minus the teacher
  and the center."""
  return {k: v for k, v in model_state.items() if k not in ('teacher', 'center')}


def _by_resolution(views: list[jax.Array]) -> list[list[jax.Array]]:
  """Consecutive views of one shape, grouped: one forward pass per resolution (multi-crop)."""
  return [list(g) for _, g in itertools.groupby(views, key=lambda v: v.shape)]


class DINO(Method):
  eval_encoders = ('online', 'target')  # the student, the teacher

  @classmethod
  def accumulation_refusal(cls, checks):
    del checks
    return "the teacher's outputs are centred with the mean over the whole batch"

  @classmethod
  def default_config(
    cls, image_size: int = 224, local_size: int = 96, num_local: int = 8
  ) -> ml_collections.ConfigDict:
    """DINO's defaults (Caron et al. 2021, official code): multi-crop, AdamW, EMA teacher."""
    c = defaults.base_config('dino', image_size)
    c.augment.color_jitter = (0.4, 0.4, 0.2, 0.1)
    c.augment.crop_scale = (0.4, 1.0)
    # Sorted names: global1, global2, then the local crops; the teacher sees the first two.
    c.views = ml_collections.ConfigDict(
      dict(
        global1=dict(blur_prob=1.0),
        global2=dict(blur_prob=0.1, solarize_prob=0.2),
        local=dict(image_size=local_size, crop_scale=(0.05, 0.4), blur_prob=0.5, count=num_local),
      )
    )
    c.model.encoder = 'vit_small'
    c.model.patch_size = 16
    c.model.drop_path = 0.1
    c.dino = ml_collections.ConfigDict(
      dict(
        out_dim=65536,  # K prototypes
        hidden_dim=2048,
        bottleneck_dim=256,
        num_layers=3,
        norm_last_layer=True,  # the last layer's weight norm fixed at 1
        use_bn=False,  # BatchNorm in the head's MLP (the official use_bn_in_head)
        freeze_last_layer_epochs=1.0,  # no gradient into the last layer at first
        global_views=2,  # the first views (sorted names) are the teacher's
        student_temp=0.1,
        teacher_temp=0.04,  # the final teacher temperature
        warmup_teacher_temp=0.04,  # linear from this to teacher_temp over the epochs below
        warmup_teacher_temp_epochs=0.0,
        center_momentum=0.9,
      )
    )
    # The teacher: momentum from `base` to 1 with a cosine over the run (BYOL's schedule).
    c.ema = ml_collections.ConfigDict(dict(base=0.996))
    c.eval_encoder = 'target'  # the teacher (DINO evaluates it)
    c.optimizer = 'adamw'
    c.base_lr = 5e-4
    c.momentum = 0.9
    c.b2 = 0.999
    c.weight_decay = 0.04
    c.weight_decay_end = 0.4
    c.grad_clip = 3.0
    c.grad_clip_by = 'parameter_norm'  # utils.clip_gradients: each parameter's norm
    c.warmup_epochs = 10.0
    return c

  @classmethod
  def check_config(cls, checks):
    super().check_config(checks)
    for name in ('out_dim', 'hidden_dim', 'bottleneck_dim', 'num_layers'):
      checks.count(f'dino.{name}', 1)
    checks.boolean('dino.norm_last_layer')
    checks.boolean('dino.use_bn')
    checks.nonnegative('dino.freeze_last_layer_epochs')
    for name in ('student_temp', 'teacher_temp', 'warmup_teacher_temp'):
      checks.positive(f'dino.{name}')
    checks.nonnegative('dino.warmup_teacher_temp_epochs')
    checks.probability('dino.center_momentum')
    checks.probability('ema.base')
    if not checks.count('dino.global_views', 1):
      return
    specs = view_specs_if_valid(checks.config)
    if specs is None:
      return
    views = len(specs)
    global_views = checks.value('dino.global_views')
    if views < max(global_views, 2):
      checks.fail(
        'dino.global_views',
        f'at most the {views} views config.views makes, which must be 2 or more '
        '(see configs/dino_digits.py)',
      )

  def __init__(self, config, mesh, total_steps=1, steps_per_epoch=1):
    super().__init__(config, mesh, total_steps, steps_per_epoch)
    d = config.dino
    self.encoder = models.build_encoder(config)
    head = models.DINOHead(
      out_dim=d.out_dim,
      hidden_dim=d.hidden_dim,
      bottleneck_dim=d.bottleneck_dim,
      num_layers=d.num_layers,
      norm_last_layer=d.norm_last_layer,
      use_bn=d.use_bn,
      dtype=models.compute_dtype(config),
      kernels=models.resolve_kernels(config),
    )
    # Student and teacher: the same variables (f -> h -> K logits), but the teacher never drops
    # paths (the official code builds it without stochastic depth), even when a BatchNorm head
    # makes it run in training mode.
    self.net = EncoderWithHead(encoder=self.encoder, head=head)
    teacher_encoder = self.encoder.clone(drop_path=0.0) if models.is_vit(config) else self.encoder
    self.teacher_net = EncoderWithHead(encoder=teacher_encoder, head=head)
    self.freeze_last_layer_steps = int(d.freeze_last_layer_epochs * steps_per_epoch)

  def held_parameters(self):
    """The last layer, frozen for dino.freeze_last_layer_epochs: the official code sets its
    gradient to None, so AdamW neither moves nor decays it and its moments start at unfreezing."""

    def last_layer(params):
      return jax.tree_util.tree_map_with_path(
        lambda path, _: [getattr(k, 'key', None) for k in path[:2]] == ['head', 'last_layer'],
        params,
      )

    return last_layer, self.freeze_last_layer_steps

  # ------------------------------------------------------------------ schedules

  def teacher_temperature(self, step: jax.Array) -> jax.Array:
    """Linear warm-up from dino.warmup_teacher_temp to dino.teacher_temp, then constant."""
    d = self.config.dino
    warmup = d.warmup_teacher_temp_epochs * self.steps_per_epoch
    if warmup <= 0:
      return jnp.asarray(d.teacher_temp, jnp.float32)
    frac = jnp.minimum(jnp.asarray(step, jnp.float32) / warmup, 1.0)
    return d.warmup_teacher_temp + (d.teacher_temp - d.warmup_teacher_temp) * frac

  def momentum(self, step: jax.Array) -> jax.Array:
    return ema.cosine_momentum(step, self.total_steps, self.config.ema.base)

  # ------------------------------------------------------------------ method interface

  def init(self, rng, batch):
    # Parameter shapes do not depend on the crop size: the first view is enough.
    variables = self.net.init(rng, batch['views'][0], train=False)
    variables = dict(variables)
    params = variables.pop('params')
    # The teacher starts as a copy of the student; BatchNorm statistics (ResNet encoders) sit
    # next to it, for the student.
    teacher = {'params': params, **variables}
    return params, {**variables, 'teacher': teacher, 'center': jnp.zeros(self.config.dino.out_dim)}

  def _logits(self, net, variables, groups, *, train, rng=None):
    """(V, B, K) logits of every view through `net`, one forward pass per resolution; BatchNorm
    statistics (ResNet encoders, BatchNorm heads) are threaded through the passes. Returns
    (logits, h of the first group, updated non-param collections)."""
    stats = {k: v for k, v in variables.items() if k != 'params'}
    logits, first_h = [], None
    for i, group in enumerate(groups):
      rngs = dropout_rngs(None if rng is None else jax.random.fold_in(rng, i))
      outputs = net.apply(
        {'params': variables['params'], **stats},
        stack_views(group),
        train=train,
        rngs=rngs,
        mutable=list(stats) or False,
      )
      if stats:
        outputs, new_stats = outputs
        stats = dict(new_stats)
      h, out = outputs
      first_h = h if first_h is None else first_h
      logits.append(jnp.swapaxes(out.reshape(-1, len(group), out.shape[-1]), 0, 1))
    return jnp.concatenate(logits, axis=0), first_h, stats

  def loss(self, params, model_state, batch, rng, step):
    d = self.config.dino
    views = batch['views']
    # No gradient into the last layer while it is frozen (the first epoch by default).
    frozen = step < self.freeze_last_layer_steps
    last = params['head']['last_layer']
    last = jax.tree.map(lambda p: jnp.where(frozen, jax.lax.stop_gradient(p), p), last)
    params = {**params, 'head': {**params['head'], 'last_layer': last}}

    student, h, new_student_stats = self._logits(
      self.net,
      {'params': params, **_student_stats(model_state)},
      _by_resolution(views),
      train=True,
      rng=rng,
    )
    # A BatchNorm teacher normalizes with its own batch statistics, as BYOL's target does.
    teacher_vars = model_state['teacher']
    teacher, _, new_teacher_stats = self._logits(
      self.teacher_net,
      teacher_vars,
      _by_resolution(views[: d.global_views]),
      train=len(teacher_vars) > 1,
    )
    teacher = jax.lax.stop_gradient(teacher)
    temp = self.teacher_temperature(step)
    center = model_state['center']
    loss = losses.dino(student, teacher, center, student_temp=d.student_temp, teacher_temp=temp)
    new_state = {
      **new_student_stats,
      'teacher': {'params': teacher_vars['params'], **new_teacher_stats},
      'center': losses.dino_center(center, teacher, momentum=d.center_momentum),
    }
    p_t = jax.nn.softmax((teacher - center) / temp, axis=-1)
    metrics = {
      'loss': loss,
      'teacher_temp': temp,
      'h_std': jnp.mean(jnp.std(h, axis=0)),
      # Collapse watch: per-sample entropy near 0 and batch-mean entropy near log K are healthy;
      # both near log K = uniform collapse, both near 0 = one-prototype collapse.
      'teacher_entropy': -jnp.mean(jnp.sum(p_t * jnp.log(p_t + 1e-12), axis=-1)),
      'teacher_mean_entropy': -jnp.sum(
        jnp.mean(p_t, axis=(0, 1)) * jnp.log(jnp.mean(p_t, axis=(0, 1)) + 1e-12)
      ),
    }
    return loss, (new_state, metrics)

  def health(self, params, model_state, images):
    """h of the evaluated network; z: the student's K prototype logits; the agreement: the
    fraction of images whose student and (centered) teacher pick the same prototype."""
    student = {'params': params, **_student_stats(model_state)}
    h, z = self.net.apply(student, images, train=False)
    h_teacher, teacher = self.teacher_net.apply(model_state['teacher'], images, train=False)
    same = jnp.argmax(z, axis=-1) == jnp.argmax(teacher - model_state['center'], axis=-1)
    evaluated = h_teacher if self.config.eval_encoder == 'target' else h  # features()' encoder
    return {
      **health.embedding_health('h', evaluated),
      **health.embedding_health('z', z),
      'health/agreement': jnp.mean(same.astype(jnp.float32)),
    }

  def after_step(self, params, model_state, step):
    """teacher <- m teacher + (1 - m) student, m from ema.base to 1 with a cosine (BYOL's)."""
    teacher = model_state['teacher']
    new_params = ema.ema_update(teacher['params'], params, self.momentum(step))
    return {**model_state, 'teacher': {**teacher, 'params': new_params}}

  def encoder_variables(self, params, model_state):
    if self.config.eval_encoder == 'target':
      variables = model_state['teacher']
    else:
      variables = {'params': params, **_student_stats(model_state)}
    return submodule_variables(variables, 'encoder')

"""Self-supervised losses as pure jnp functions (no Flax), written from the lecture notes.

Every loss computes in float32, whatever dtype the model ran in: softmax over thousands of
logits in bfloat16 loses the small differences contrastive learning lives on.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


def _gather(z1: jax.Array, z2: jax.Array, axis_name: str | tuple[str, ...] | None):
  """(all z1, all z2, global index of this device's first row): the global batch, gathered
  differentiably inside `jax.shard_map` (its transpose sums the gradients back)."""
  if axis_name is None:
    return z1, z2, 0
  gather = lambda z: jax.lax.all_gather(z, axis_name, tiled=True)  # noqa: E731
  return gather(z1), gather(z2), jax.lax.axis_index(axis_name) * z1.shape[0]


def nt_xent(
  z1: jax.Array,
  z2: jax.Array,
  *,
  temperature: float,
  axis_name: str | tuple[str, ...] | None = None,
) -> jax.Array:
  """SimCLR's NT-Xent loss, L = 1/(2N) sum_i [l(i, i+N) + l(i+N, i)].

  l(i, j) = -log exp(sim(z_i, z_j)/T) / sum_{k != i} exp(sim(z_i, z_k)/T), sim = cosine, over the
  2N embeddings z = [z1; z2]; row k of z1 and row k of z2 are a positive pair.

  Args:
    z1, z2: (n, d) projections of the two views, not normalized.
    temperature: T.
    axis_name: when set, the call runs inside `jax.shard_map` and z1, z2 are this device's rows.
      Every device gathers all devices' embeddings (a differentiable all-gather), scores its own
      2n rows against the global 2N columns (logits (2n, 2N), never 2N x 2N) and the mean over
      devices equals the single-device loss on the global batch.

  Returns:
    The scalar loss (replicated over `axis_name` when set).
  """
  z1, z2 = _l2_normalize(z1), _l2_normalize(z2)
  n = z1.shape[0]
  all1, all2, offset = _gather(z1, z2, axis_name)
  big_n = all1.shape[0]
  rows = jnp.concatenate([z1, z2], axis=0)  # (2n, d): local anchors
  cols = jnp.concatenate([all1, all2], axis=0)  # (2N, d): every candidate
  logits = rows @ cols.T / temperature  # (2n, 2N)

  local = jnp.arange(n) + offset  # global index of each local example
  self_col = jnp.concatenate([local, local + big_n])
  pos_col = jnp.concatenate([local + big_n, local])
  logits = jnp.where(jnp.arange(2 * big_n)[None, :] == self_col[:, None], -jnp.inf, logits)
  log_prob = jax.nn.log_softmax(logits, axis=-1)
  loss = -jnp.mean(jnp.take_along_axis(log_prob, pos_col[:, None], axis=-1))
  if axis_name is not None:
    loss = jax.lax.pmean(loss, axis_name)
  return loss


def triplet(
  anchor: jax.Array,
  positive: jax.Array,
  negative: jax.Array,
  *,
  margin: float,
  squared: bool = True,
) -> jax.Array:
  """The lecture's triplet loss max(0, |f(x) - f(x+)|^2 - |f(x) - f(x-)|^2 + margin), batch mean.

  `squared=False` uses plain (not squared) L2 distances, as FaceNet-style variants do.
  """
  anchor, positive, negative = (a.astype(jnp.float32) for a in (anchor, positive, negative))
  d_pos = jnp.sum(jnp.square(anchor - positive), axis=-1)
  d_neg = jnp.sum(jnp.square(anchor - negative), axis=-1)
  if not squared:
    # sqrt has an infinite gradient at 0: keep it finite when a pair coincides.
    d_pos, d_neg = (jnp.sqrt(jnp.maximum(d, 1e-12)) for d in (d_pos, d_neg))
  return jnp.mean(jax.nn.relu(d_pos - d_neg + margin))


NEGATIVE_RULES = ('random', 'hardest', 'semi_hard')


def batch_triplet(
  z1: jax.Array,
  z2: jax.Array,
  *,
  margin: float,
  negatives: str = 'random',
  normalize: bool = True,
  rng: jax.Array | None = None,
  axis_name: str | tuple[str, ...] | None = None,
) -> jax.Array:
  """The triplet loss over the 2N views of a batch, each view the anchor once: its positive is
  the other view of its image, its negative one view of another image of the global batch.

  negatives: how each anchor's negative is chosen among the 2N - 2 views of other images:
    'random' (the lecture's: uniform, from `rng`), 'hardest' (the smallest squared distance to
    the anchor) or 'semi_hard' (FaceNet, Schroff et al. 2015: the closest one farther than the
    positive; when none is, the farthest one, as TensorFlow Addons' triplet_semihard_loss).
    Ties go to the lowest index of the global order [view 1 of images 0..N-1; view 2 of them].
  normalize: L2-normalize z1, z2 first, so that distances lie in [0, 4] and the margin has a
    fixed meaning (unnormalized, the loss is lowered by scaling the embeddings up).
  axis_name: inside `jax.shard_map`, z1 and z2 are this device's rows; every device gathers the
    global batch (differentiably, as nt_xent does), so the candidates, the chosen negatives and
    the loss equal the single-device ones on the global batch.

  Returns the scalar mean over the 2N anchors (replicated over `axis_name` when set).
  """
  if negatives not in NEGATIVE_RULES:
    raise ValueError(f'negatives={negatives!r}: one of {NEGATIVE_RULES}')
  z1, z2 = (_l2_normalize(z) if normalize else z.astype(jnp.float32) for z in (z1, z2))
  n = z1.shape[0]
  all1, all2, offset = _gather(z1, z2, axis_name)
  big_n = all1.shape[0]
  anchors = jnp.concatenate([z1, z2], axis=0)  # (2n, d)
  positives = jnp.concatenate([z2, z1], axis=0)
  candidates = jnp.concatenate([all1, all2], axis=0)  # (2N, d); candidate c shows image c % N
  local = jnp.arange(n) + offset  # global index of each local image
  image = jnp.concatenate([local, local])  # each anchor's image
  if negatives == 'random':
    if rng is None:
      raise ValueError("negatives='random' needs rng")
    # One draw per global anchor (the same on every device), then this device's rows of it.
    draws = jax.random.randint(rng, (2 * big_n,), 0, 2 * big_n - 2)
    r = draws[jnp.concatenate([local, local + big_n])]  # anchors' global indices
    other = r % (big_n - 1)  # the r-th view of another image: skip the anchor's own image
    chosen = (r // (big_n - 1)) * big_n + other + (other >= image)
  else:
    a, c = jax.lax.stop_gradient(anchors), jax.lax.stop_gradient(candidates)
    dist = jnp.sum(a * a, -1)[:, None] + jnp.sum(c * c, -1)[None, :] - 2 * a @ c.T  # (2n, 2N)
    valid = (jnp.arange(2 * big_n) % big_n)[None, :] != image[:, None]
    if negatives == 'hardest':
      chosen = jnp.argmin(jnp.where(valid, dist, jnp.inf), axis=-1)
    else:
      d_pos = jnp.sum(jnp.square(a - jax.lax.stop_gradient(positives)), axis=-1)
      farther = valid & (dist > d_pos[:, None])
      semi_hard = jnp.argmin(jnp.where(farther, dist, jnp.inf), axis=-1)
      farthest = jnp.argmax(jnp.where(valid, dist, -jnp.inf), axis=-1)
      chosen = jnp.where(jnp.any(farther, axis=-1), semi_hard, farthest)
  loss = triplet(anchors, positives, candidates[chosen], margin=margin)
  if axis_name is not None:
    loss = jax.lax.pmean(loss, axis_name)
  return loss


def byol(p: jax.Array, z: jax.Array) -> jax.Array:
  """BYOL's regression loss, one direction: mean over the batch of |p/|p| - z/|z||^2 = 2 - 2 cos.

  p is the online prediction, z the target projection of the other view; the caller puts z under
  `jax.lax.stop_gradient` and sums both directions.
  """
  p, z = _l2_normalize(p), _l2_normalize(z)
  return jnp.mean(jnp.sum(jnp.square(p - z), axis=-1))


def dino(
  student_logits: jax.Array,
  teacher_logits: jax.Array,
  center: jax.Array,
  *,
  student_temp: float,
  teacher_temp: float | jax.Array,
) -> jax.Array:
  """DINO's self-distillation cross-entropy, averaged over view pairs and the batch.

  P_t = softmax((t - c) / teacher_temp) (centering, then sharpening; no gradient) and
  log P_s = log_softmax(s / student_temp); the loss is the mean over pairs (teacher view i,
  student view j), i != j, of the batch mean of -sum_k P_t[i, b, k] log P_s[j, b, k].

  Args:
    student_logits: (V_s, B, K) for every crop, the V_t global crops first, in the teacher's order.
    teacher_logits: (V_t, B, K) for the global crops only.
    center: (K,) the running center c (see `dino_center`).
    student_temp, teacher_temp: the temperatures (the teacher's may be a traced schedule value).
  """
  v_t, v_s = teacher_logits.shape[0], student_logits.shape[0]
  if v_s < v_t or v_s * v_t < 2:
    raise ValueError(f'DINO needs V_s >= V_t and a pair of views; got V_s={v_s}, V_t={v_t}')
  log_p_s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / student_temp, axis=-1)
  centered = teacher_logits.astype(jnp.float32) - center.astype(jnp.float32)
  p_t = jax.lax.stop_gradient(jax.nn.softmax(centered / teacher_temp, axis=-1))
  cross = -jnp.einsum('ibk,jbk->ij', p_t, log_p_s) / teacher_logits.shape[1]  # (V_t, V_s)
  pairs = 1.0 - jnp.eye(v_t, v_s)  # teacher view i is student view i: skip it
  return jnp.sum(cross * pairs) / jnp.sum(pairs)


def dino_center(
  center: jax.Array,
  teacher_logits: jax.Array,
  *,
  momentum: float,
  axis_name: str | tuple[str, ...] | None = None,
) -> jax.Array:
  """c <- m c + (1 - m) mean of the raw teacher logits over the global batch and global views.

  Under `jax.jit` on a sharded global array the mean is already global; inside `jax.shard_map`
  pass `axis_name` and the per-device means are averaged (equal shards, so equal weights).
  """
  batch_mean = jnp.mean(
    teacher_logits.astype(jnp.float32), axis=tuple(range(teacher_logits.ndim - 1))
  )
  if axis_name is not None:
    batch_mean = jax.lax.pmean(batch_mean, axis_name)
  return momentum * center + (1.0 - momentum) * batch_mean


def mae(pred: jax.Array, target: jax.Array, mask: jax.Array, *, norm_pix: bool = True) -> jax.Array:
  """MAE's reconstruction loss: per-patch mean squared error, averaged over removed patches only.

  Args:
    pred, target: (B, L, p*p*C); target = patchify(images).
    mask: (B, L), 1 = removed (the loss counts these), 0 = visible.
    norm_pix: normalize each target patch by its own mean and unbiased variance (ddof = 1,
      eps 1e-6), as the official code; the model then predicts normalized pixels.
  """
  target = target.astype(jnp.float32)
  if norm_pix:
    target = normalize_patches(target)
  per_patch = jnp.mean(jnp.square(pred.astype(jnp.float32) - target), axis=-1)
  mask = mask.astype(jnp.float32)
  return jnp.sum(per_patch * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def patch_mean_std(patches: jax.Array, eps: float = 1e-6) -> tuple[jax.Array, jax.Array]:
  """Per patch (last axis): the mean and sqrt(var + eps), unbiased variance as torch.var."""
  mean = jnp.mean(patches, axis=-1, keepdims=True)
  return mean, jnp.sqrt(jnp.var(patches, axis=-1, keepdims=True, ddof=1) + eps)


def normalize_patches(patches: jax.Array, eps: float = 1e-6) -> jax.Array:
  """MAE's norm_pix target: (x - mean) / sqrt(var + eps) per patch."""
  mean, std = patch_mean_std(patches, eps)
  return (patches - mean) / std


def ijepa(
  pred: jax.Array,
  target: jax.Array,
  *,
  kind: str = 'l2',
  valid: jax.Array | None = None,
) -> jax.Array:
  """I-JEPA's loss in representation space; the targets get an affine-free layer norm here.

  s_j = layer_norm(target_j) (eps 1e-5, as the official F.layer_norm), under stop_gradient.
  - kind='l2', the lecture's 1/M sum_i sum_{j in B_i} ||s^_j - s_j||^2: per block, the sum over
    its patches of the squared L2 distance, averaged over the blocks (and the batch).
  - kind='smooth_l1', the official code's: smooth-L1 with beta = 1, averaged over every element.

  Args:
    pred, target: (R, K, D), one row per (target block, example), K patches per block.
    valid: (R, K) bool, the real patches of padded blocks (default: all). A row with no valid
      patch (a block the masking dropped) is left out of the average over blocks.
  """
  pred = pred.astype(jnp.float32)
  target = target.astype(jnp.float32)
  mean = jnp.mean(target, axis=-1, keepdims=True)
  s = (target - mean) * jax.lax.rsqrt(jnp.var(target, axis=-1, keepdims=True) + 1e-5)
  diff = pred - jax.lax.stop_gradient(s)
  w = jnp.ones(pred.shape[:2], jnp.float32) if valid is None else valid.astype(jnp.float32)
  if kind == 'l2':
    per_block = jnp.sum(jnp.sum(jnp.square(diff), axis=-1) * w, axis=-1)
    blocks = (jnp.sum(w, axis=-1) > 0).astype(jnp.float32)
    return jnp.sum(per_block * blocks) / jnp.maximum(jnp.sum(blocks), 1.0)
  if kind == 'smooth_l1':
    a = jnp.abs(diff)
    per_elem = jnp.where(a < 1.0, 0.5 * jnp.square(a), a - 0.5)
    return jnp.sum(per_elem * w[..., None]) / jnp.maximum(jnp.sum(w) * pred.shape[-1], 1.0)
  raise ValueError(f"config.loss.kind must be 'l2' or 'smooth_l1' for I-JEPA, got {kind!r}")

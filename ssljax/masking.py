"""Which patches a masked-image method hides: pure functions of random noise, so they can be
tested on their own and jitted inside any loss."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ssljax.errors import ConfigError


def num_visible(num_patches: int, mask_ratio: float) -> int:
  """int(L (1 - ratio)), MAE's count of kept patches; at least one."""
  if not 0.0 <= mask_ratio < 1.0:
    raise ConfigError(f'config.mae.mask_ratio must be in [0, 1), got {mask_ratio}')
  return max(int(num_patches * (1.0 - mask_ratio)), 1)


def random_masking(noise: jax.Array, keep: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """MAE's per-sample random masking: the `keep` patches with the smallest noise stay visible.

  Args:
    noise: (B, L) uniform noise, one draw per patch.
    keep: how many patches stay visible.

  Returns:
    ids_keep (B, keep): indices of the visible patches, in shuffled order;
    mask (B, L): 1 = removed, 0 = visible, in the original patch order;
    ids_restore (B, L): argsort of the shuffle, so `take_along_axis(shuffled, ids_restore)`
      puts [visible; mask tokens] back in the original order.
  """
  ids_shuffle = jnp.argsort(noise, axis=1)
  ids_restore = jnp.argsort(ids_shuffle, axis=1)
  length = noise.shape[1]
  mask = jnp.broadcast_to((jnp.arange(length) >= keep).astype(jnp.float32), noise.shape)
  mask = jnp.take_along_axis(mask, ids_restore, axis=1)
  return ids_shuffle[:, :keep], mask, ids_restore


# ----------------------------------------------------------------------------- I-JEPA multi-block

Range = tuple[float, float]
# 'ssljax': blocks up to the full grid, scale and aspect drawn independently, a crowded image drops
# target blocks, a capped context keeps a random subset. 'official': facebookresearch/ijepa
# src/masks/multiblock.py, whose masks the paper's numbers come from (see multi_block_official).
GEOMETRIES = ('ssljax', 'official')


class BlockMasks(NamedTuple):
  """Where one batch's context and target blocks are (I-JEPA), as padded index lists.

  Shapes are static (they depend only on the grid and the config, not on the draw), so the train
  step compiles once; `*_valid` marks the real entries of each padded list.
  """

  context: jax.Array  # (B, Nc) int32 patch indices (over the row-major grid) the encoder sees
  context_valid: jax.Array  # (B, Nc) bool
  targets: jax.Array  # (B, M, Nt) int32 patch indices of each target block
  targets_valid: jax.Array  # (B, M, Nt) bool: the first h*w entries of every row
  context_mask: jax.Array  # (B, L) bool, the same set as `context`
  target_mask: jax.Array  # (B, M, L) bool, the same sets as `targets`
  target_size: jax.Array  # (2,) int32: (h, w) of every target block in this batch
  context_size: jax.Array  # (2,) int32: (h, w) of the context block (before targets are removed)


def _largest_side(grid: tuple[int, int], official: bool) -> tuple[int, int]:
  """The official sampler shrinks a block until it is narrower than the grid (`while h >=
  height: h -= 1`): at most side - 1, so a block never covers the whole grid."""
  return (grid[0] - 1, grid[1] - 1) if official else grid


def block_size(
  u_scale: jax.Array,
  u_aspect: jax.Array,
  grid: tuple[int, int],
  scale: Range,
  aspect: Range,
  *,
  official: bool = False,
) -> tuple[jax.Array, jax.Array]:
  """I-JEPA's block shape from two uniform draws in [0, 1): (h, w) in patches.

  scale s and aspect a are drawn uniformly in their ranges; the block covers
  area = floor(s * H * W) patches as h = round(sqrt(area * a)), w = round(sqrt(area / a)), each
  clipped to [1, side] (official: [1, side - 1], and the caller passes one draw as both).
  Works on NumPy and JAX inputs alike (jnp ops).
  """
  gh, gw = grid
  s = scale[0] + u_scale * (scale[1] - scale[0])
  a = aspect[0] + u_aspect * (aspect[1] - aspect[0])
  area = jnp.floor(s * gh * gw + 1e-4)  # + 1e-4: 0.15 * 100 is 15 in float64 and in float32
  top_h, top_w = _largest_side(grid, official)
  h = jnp.clip(jnp.round(jnp.sqrt(area * a)), 1, top_h).astype(jnp.int32)
  w = jnp.clip(jnp.round(jnp.sqrt(area / a)), 1, top_w).astype(jnp.int32)
  return h, w


def block_sizes(
  grid: tuple[int, int], scale: Range, aspect: Range, *, official: bool = False
) -> set[tuple[int, int]]:
  """Every (h, w) `block_size` can return, found exactly: within a range of scale the area is an
  integer, and for a fixed area h and w change only where sqrt(area * a) or sqrt(area / a)
  crosses k + 1/2; one aspect per piece between those break points finds every pair. The ranges
  are widened by 1e-6 so float32 rounding at their ends cannot escape the set. For the official
  geometry (one draw sets both scale and aspect) this is a superset: every pair the independent
  draws reach, clipped to side - 1."""
  gh, gw = grid
  top_h, top_w = _largest_side(grid, official)
  a0, a1 = aspect[0] - 1e-6, aspect[1] + 1e-6
  first, last = (int(np.floor(x * gh * gw + 1e-4)) for x in scale)
  sizes = set()
  for area in range(first, last + 1):
    ks = np.arange(0.5, gh + gw + 1.0)
    cuts = np.concatenate([ks**2 / max(area, 1), max(area, 1) / ks**2])
    cuts = np.sort(np.concatenate([[a0, a1], cuts[(cuts > a0) & (cuts < a1)]]))
    points = np.concatenate([cuts, (cuts[1:] + cuts[:-1]) / 2])
    h = np.clip(np.round(np.sqrt(area * points)), 1, top_h).astype(int)
    w = np.clip(np.round(np.sqrt(area / points)), 1, top_w).astype(int)
    sizes.update(zip(h.tolist(), w.tolist(), strict=True))
  return sizes


def max_block_area(
  grid: tuple[int, int], scale: Range, aspect: Range, *, official: bool = False
) -> int:
  return max(h * w for h, w in block_sizes(grid, scale, aspect, official=official))


def _rectangles(
  u: jax.Array, size: tuple[jax.Array, jax.Array], grid, *, official: bool = False
) -> jax.Array:
  """(..., 2) uniform draws -> (..., H*W) bool masks of h x w blocks at uniform positions.

  official: the top-left corner is `torch.randint(0, side - h)`, whose upper end is exclusive,
  so no block ever reaches the last row or the last column."""
  (gh, gw), (h, w) = grid, size
  rows_free, cols_free = (gh - h, gw - w) if official else (gh - h + 1, gw - w + 1)
  top = jnp.minimum(jnp.floor(u[..., 0] * rows_free), rows_free - 1)[..., None]
  left = jnp.minimum(jnp.floor(u[..., 1] * cols_free), cols_free - 1)[..., None]
  rows, cols = jnp.arange(gh * gw) // gw, jnp.arange(gh * gw) % gw
  return (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)


def _padded_indices(mask: jax.Array, size: int, key: jax.Array | None) -> jax.Array:
  """(..., L) bool -> (..., size) int32: the True positions first (in random order with `key`,
  else row-major), then padding."""
  order = (~mask).astype(jnp.float32)
  if key is not None:
    order = order + jax.random.uniform(key, mask.shape, maxval=0.5)
  return jnp.argsort(order, axis=-1, stable=True)[..., :size].astype(jnp.int32)


def multi_block(
  key: jax.Array,
  batch: int,
  grid: tuple[int, int],
  *,
  num_targets: int = 4,
  target_scale: Range = (0.15, 0.2),
  target_aspect: Range = (0.75, 1.5),
  context_scale: Range = (0.85, 1.0),
  context_aspect: Range = (1.0, 1.0),
  min_keep: int = 10,
  max_context: int = 0,
  tries: int = 8,
  geometry: str = 'ssljax',
) -> BlockMasks:
  """I-JEPA's multi-block masks for a batch: M target blocks and one context block per image.

  geometry='official' is `multi_block_official`; what follows is the 'ssljax' geometry.

  The target and the context block shapes are drawn once per batch (as the official collator);
  positions are drawn per image. Target patches are removed from the context, so the two never
  overlap. An image whose context keeps fewer than `min_keep` patches redraws its blocks (up to
  `tries` times, drawn at once); if every try falls short, its first draw drops its last target
  blocks until the context keeps `min_keep` (a dropped block is marked invalid in
  `targets_valid` and left out of `target_mask`). The official code instead lets the context
  overlap some targets then.

  The context list is padded to `max_context` (0: the largest context block) and, when an image
  has more context patches than that, keeps a random subset of them: a fixed-size version of
  the official truncation to the batch's smallest context.
  """
  options = dict(
    num_targets=num_targets,
    target_scale=target_scale,
    target_aspect=target_aspect,
    context_scale=context_scale,
    context_aspect=context_aspect,
    min_keep=min_keep,
    max_context=max_context,
  )
  if geometry == 'official':
    return multi_block_official(key, batch, grid, tries=tries, **options)
  nt, nc = check_multi_block(grid, geometry=geometry, **options)
  k_size, k_target, k_context, k_order = jax.random.split(key, 4)
  u = jax.random.uniform(k_size, (4,))
  t_size = block_size(u[0], u[1], grid, target_scale, target_aspect)
  c_size = block_size(u[2], u[3], grid, context_scale, context_aspect)

  shape = (tries, batch, num_targets)
  targets = _rectangles(jax.random.uniform(k_target, shape + (2,)), t_size, grid)  # (T,B,M,L)
  block = _rectangles(jax.random.uniform(k_context, shape[:2] + (2,)), c_size, grid)  # (T,B,L)
  # covered[..., j, :]: the patches of the first j target blocks, j = 0..M.
  covered = jnp.cumsum(targets, axis=2) > 0
  covered = jnp.concatenate([jnp.zeros_like(covered[:, :, :1]), covered], axis=2)
  keeps = jnp.sum(block[:, :, None] & ~covered, axis=-1) >= min_keep  # (T, B, M+1)
  full = keeps[..., -1]  # (T, B): this try keeps min_keep with every target
  first = jnp.argmax(full, axis=0)  # the first such try, 0 if none
  # The targets an image keeps: all M, or on try 0 the most that leave min_keep (j = 0 always
  # does, check_multi_block made sure).
  kept = jnp.where(jnp.any(full, axis=0), num_targets, _last_true(keeps[0]))  # (B,)

  pick = lambda x: jnp.take_along_axis(x, first.reshape((1, batch) + (1,) * (x.ndim - 2)), 0)[0]
  targets, block, covered = pick(targets), pick(block), pick(covered)
  context = block & ~jnp.take_along_axis(covered, kept[:, None, None], axis=1)[:, 0]
  block_valid = jnp.arange(num_targets) < kept[:, None]  # (B, M)
  targets = targets & block_valid[..., None]

  target_ids = _padded_indices(targets, nt, None)
  in_block = jnp.arange(nt) < t_size[0] * t_size[1]
  return BlockMasks(
    context=_padded_indices(context, nc, k_order),
    context_valid=jnp.arange(nc) < jnp.sum(context, axis=-1, keepdims=True),
    targets=target_ids,
    targets_valid=in_block & block_valid[..., None],
    context_mask=context,
    target_mask=targets,
    target_size=jnp.stack(t_size),
    context_size=jnp.stack(c_size),
  )


def multi_block_official(
  key: jax.Array,
  batch: int,
  grid: tuple[int, int],
  *,
  num_targets: int,
  target_scale: Range,
  target_aspect: Range,
  context_scale: Range,
  context_aspect: Range,
  min_keep: int,
  max_context: int = 0,
  tries: int = 20,
) -> BlockMasks:
  """The official I-JEPA mask sampler's geometry (facebookresearch/ijepa, MaskCollator), with
  static shapes:

  - one uniform draw sets both a block's scale and its aspect (target and context shapes drawn
    once per batch); a side is at most grid - 1, and a corner is drawn in [0, side - h), so no
    block reaches the last row or column and the context never covers the whole grid;
  - targets are placed freely; the context block avoids all of them and is redrawn until it
    keeps more than `min_keep` patches; after `tries` failures (official: 20) it stops avoiding
    the last target still avoided, and so on, so a crowded context overlaps targets rather than
    losing them (here the same `tries` positions serve every level, drawn at once);
  - every image's context is cut to the batch's smallest, keeping its first patches in row-major
    order (`cm[:min_keep_enc]`); `max_context` > 0 caps that further. The official batch is one
    GPU's (128 of 2048); here it is the batch this function is given.
  """
  nt, nc = check_multi_block(
    grid,
    num_targets,
    target_scale,
    target_aspect,
    context_scale,
    context_aspect,
    min_keep,
    max_context,
    geometry='official',
  )
  k_size, k_target, k_context = jax.random.split(key, 3)
  u = jax.random.uniform(k_size, (2,))
  t_size = block_size(u[0], u[0], grid, target_scale, target_aspect, official=True)
  c_size = block_size(u[1], u[1], grid, context_scale, context_aspect, official=True)
  u_targets = jax.random.uniform(k_target, (batch, num_targets, 2))
  targets = _rectangles(u_targets, t_size, grid, official=True)  # (B, M, L)
  blocks = _rectangles(
    jax.random.uniform(k_context, (tries, batch, 2)), c_size, grid, official=True
  )
  # allowed[:, r]: outside the first M - r targets, r = how many avoidances were given up.
  covered = jnp.cumsum(targets, axis=1) > 0
  covered = jnp.concatenate([jnp.zeros_like(covered[:, :1]), covered], axis=1)  # (B, M+1, L)
  allowed = ~covered[:, ::-1]
  keeps = jnp.sum(blocks[:, :, None] & allowed, axis=-1) > min_keep  # (T, B, M+1)
  level = jnp.argmax(jnp.any(keeps, axis=0), axis=-1)  # (B,): r = M always keeps (checked)
  first = jnp.argmax(jnp.take_along_axis(keeps, level[None, :, None], axis=2)[..., 0], axis=0)
  block = jnp.take_along_axis(blocks, first[None, :, None], axis=0)[0]  # (B, L)
  context = block & jnp.take_along_axis(allowed, level[:, None, None], axis=1)[:, 0]
  keep = jnp.minimum(jnp.min(jnp.sum(context, axis=-1)), nc)  # the batch's smallest context
  context = context & (jnp.cumsum(context, axis=-1) <= keep)  # its first `keep`, row-major
  in_block = jnp.arange(nt) < t_size[0] * t_size[1]
  return BlockMasks(
    context=_padded_indices(context, nc, None),
    context_valid=jnp.broadcast_to(jnp.arange(nc) < keep, (batch, nc)),
    targets=_padded_indices(targets, nt, None),
    targets_valid=jnp.broadcast_to(in_block, (batch, num_targets, nt)),
    context_mask=context,
    target_mask=targets,
    target_size=jnp.stack(t_size),
    context_size=jnp.stack(c_size),
  )


def _last_true(x: jax.Array) -> jax.Array:
  """(B, K) bool -> (B,) index of the last True (0 when none)."""
  k = x.shape[-1]
  return k - 1 - jnp.argmax(x[:, ::-1], axis=-1)


def check_multi_block(
  grid: tuple[int, int],
  num_targets: int,
  target_scale: Range,
  target_aspect: Range,
  context_scale: Range,
  context_aspect: Range,
  min_keep: int,
  max_context: int,
  geometry: str = 'ssljax',
) -> tuple[int, int]:
  """(Nt, Nc): the static lengths of the padded target and context lists, after checking that
  the config can work on this grid; errors name the config.ijepa fields."""
  if geometry not in GEOMETRIES:
    raise ConfigError(f'config.ijepa.mask_geometry must be one of {GEOMETRIES}, got {geometry!r}')
  official = geometry == 'official'
  if official and min(grid) < 2:
    raise ConfigError(
      f'config.ijepa.mask_geometry=official needs a grid of 2x2 or more, got {grid}'
    )
  for name, (lo, hi) in (('target_scale', target_scale), ('context_scale', context_scale)):
    if not 0 < lo <= hi <= 1:
      raise ConfigError(f'config.ijepa.{name} must satisfy 0 < low <= high <= 1, got {(lo, hi)}')
  for name, (lo, hi) in (('target_aspect', target_aspect), ('context_aspect', context_aspect)):
    if not 0 < lo <= hi:
      raise ConfigError(f'config.ijepa.{name} must satisfy 0 < low <= high, got {(lo, hi)}')
  if num_targets < 1:
    raise ConfigError(f'config.ijepa.num_targets must be at least 1, got {num_targets}')
  contexts = [h * w for h, w in block_sizes(grid, context_scale, context_aspect, official=official)]
  nc = min(max_context, max(contexts)) if max_context else max(contexts)
  if max_context and max_context < min_keep:
    raise ConfigError(
      f'config.ijepa.max_context={max_context} caps the context below '
      f'config.ijepa.min_keep={min_keep}: raise max_context (0: no cap) or lower min_keep'
    )
  # official: the context must keep more than min_keep, or its sampler never stops redrawing
  if min(contexts) < min_keep + official:
    more = 'more than ' if official else ''
    raise ConfigError(
      f'config.ijepa.min_keep={min_keep}: {more}{min_keep} context patches do not fit in a '
      f'context block of {min(contexts)} patches on a {grid[0]}x{grid[1]} grid '
      f'({geometry} geometry): lower min_keep or raise context_scale'
    )
  return max_block_area(grid, target_scale, target_aspect, official=official), nc

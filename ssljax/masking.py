"""Which patches a masked-image method hides: pure functions of random noise, so they can be
tested on their own and jitted inside any loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def num_visible(num_patches: int, mask_ratio: float) -> int:
  """int(L (1 - ratio)), MAE's count of kept patches; at least one."""
  if not 0.0 <= mask_ratio < 1.0:
    raise ValueError(f'config.mae.mask_ratio must be in [0, 1), got {mask_ratio}')
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

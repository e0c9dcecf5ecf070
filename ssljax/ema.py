"""The EMA teacher: a momentum schedule and the update, as pure functions.

One implementation for every method with a teacher (BYOL's target network, DINO's teacher,
I-JEPA's target encoder): target <- tau * target + (1 - tau) * online, after each optimizer step.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def cosine_momentum(step: jax.Array | int, total_steps: int, base: float) -> jax.Array:
  """BYOL's tau_k = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2: tau_base at k = 0, 1 at k = K."""
  k = jnp.minimum(jnp.asarray(step, jnp.float32), total_steps)
  return 1.0 - (1.0 - base) * (jnp.cos(jnp.pi * k / max(total_steps, 1)) + 1.0) / 2.0


def linear_momentum(
  step: jax.Array | int, total_steps: int, start: float, end: float = 1.0
) -> jax.Array:
  """I-JEPA's schedule: tau goes linearly from `start` to `end` over the run."""
  k = jnp.minimum(jnp.asarray(step, jnp.float32), total_steps)
  return start + (end - start) * k / max(total_steps, 1)


def ema_update(target: Any, online: Any, tau: jax.Array | float) -> Any:
  """tau * target + (1 - tau) * online, leaf by leaf (the trees must match)."""
  return jax.tree.map(lambda t, o: tau * t + (1.0 - tau) * o.astype(t.dtype), target, online)

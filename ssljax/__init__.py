"""Self-supervised representation learning in JAX/Flax.

`ssljax.load_encoder(run_dir)` is loaded on first use, so `import ssljax` stays light (no
TensorFlow, no Orbax) for code that only needs a trained encoder.
"""

from __future__ import annotations

from typing import Any

__all__ = ['load_encoder']


def __getattr__(name: str) -> Any:
  if name == 'load_encoder':
    from ssljax.restore import load_encoder

    return load_encoder
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')

"""scikit-learn's 8 x 8 digits, in memory: a dataset every machine has, for quick runs and tests."""

from __future__ import annotations

import functools

import numpy as np

from ssljax.data.sources.base import InMemory, Split


class Digits(InMemory):
  def load(self, split: str) -> Split:
    return _load_digits(self.fixed_split(split))


@functools.lru_cache(maxsize=2)
def _load_digits(split: str) -> Split:
  from sklearn.datasets import load_digits  # here: a JAX-only machine never loads digits
  from sklearn.model_selection import train_test_split

  digits = load_digits()
  images = (digits.images / 16.0).astype(np.float32)[..., None]  # (N, 8, 8, 1) in [0, 1]
  x_train, x_test, y_train, y_test = train_test_split(
    images, digits.target, test_size=0.25, stratify=digits.target, random_state=0
  )
  x, y = (x_train, y_train) if split == 'train' else (x_test, y_test)
  return Split(x, y.astype(np.int32), 10)

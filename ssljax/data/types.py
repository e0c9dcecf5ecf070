"""Types the data modules share: what the model is told about a dataset, and the error for data
that is not on this machine."""

from __future__ import annotations

import dataclasses

import ml_collections

SOURCES = ('digits', 'tfds', 'idx', 'folder', 'synthetic')


class DatasetNotFoundError(Exception):
  """The configured data is not on this machine; the message says how to get it."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  num_train: int  # examples in the train split (global, all hosts)
  num_classes: int
  image_shape: tuple[int, int, int]  # (H, W, C) of the model input


def source_name(config: ml_collections.ConfigDict) -> str:
  source = config.data.source
  if source not in SOURCES:
    raise ValueError(f'config.data.source={source!r}: expected one of {SOURCES}')
  return source

"""Types the data modules share: what the model is told about a dataset, the source names."""

from __future__ import annotations

import dataclasses

import ml_collections

from ssljax.errors import ConfigError

SOURCES = ('digits', 'tfds', 'idx', 'folder', 'synthetic')


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  num_train: int  # examples in the train split (global, all hosts)
  num_classes: int
  image_shape: tuple[int, int, int]  # (H, W, C) of the model input
  skipped_files: tuple[str, ...] = ()  # 'path: why' of unreadable files left out (folders)


def source_name(config: ml_collections.ConfigDict) -> str:
  source = config.data.source
  if source not in SOURCES:
    raise ConfigError(
      f'config.data.source={source!r}: one of {", ".join(SOURCES)}; '
      'e.g. --config.data.source=digits'
    )
  return source

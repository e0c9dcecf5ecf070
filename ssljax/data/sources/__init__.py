"""Data sources by name: `config.data.source` picks one. A source is one file in this folder (one
class implementing `base.Source`) plus one line in SOURCES."""

from __future__ import annotations

import ml_collections

from ssljax.data.sources.base import InMemory, Source, Split
from ssljax.data.sources.digits import Digits
from ssljax.data.sources.idx import Idx, read_idx
from ssljax.data.sources.image_folder import ImageFolder
from ssljax.data.sources.labelled_folder import LabelledFolder
from ssljax.data.sources.synthetic import Synthetic
from ssljax.data.sources.tfds import StreamedTfds, Tfds
from ssljax.errors import ConfigError

SOURCES: dict[str, type[Source]] = {
  'digits': Digits,
  'tfds': Tfds,
  'idx': Idx,
  'folder': ImageFolder,
  'synthetic': Synthetic,
}

__all__ = [
  'SOURCES',
  'InMemory',
  'Source',
  'Split',
  'StreamedTfds',
  'read_idx',
  'source',
  'source_class',
]


def source_class(config: ml_collections.ConfigDict) -> type[Source]:
  """The class config.data.source names; a ConfigError naming the choices otherwise."""
  name = config.data.source
  if name not in SOURCES:
    raise ConfigError(
      f'config.data.source={name!r}: one of {", ".join(SOURCES)}; e.g. --config.data.source=digits'
    )
  return SOURCES[name]


def source(config: ml_collections.ConfigDict) -> Source:
  """The source `config` reads; a folder with config.data.labels is labelled by that CSV."""
  kind = source_class(config)
  if kind is ImageFolder and config.data.get('labels', ''):
    kind = LabelledFolder
  return kind.open(config)

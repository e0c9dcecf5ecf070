"""The one path layer for what a run reads and writes: local paths and gs:// URLs alike.

Everything outside `ssljax/data/` goes through `etils.epath` (which Orbax uses too), so a
`--workdir=gs://BUCKET/run` works wherever a local directory does. gs:// needs gcsfs, which the
`gcs` extra installs; `require` says so in one line before anything compiles.

epath sends gs:// through tf.io.gfile when TensorFlow is installed, unless EPATH_USE_TF=false.
That default is set here (a user's own setting wins): one backend for every gs:// file of the
process, Orbax's included, and the one the tests check against a GCS emulator (tf.io.gfile
cannot be pointed at one). It must be set before epath first opens a gs:// path, so this module
is imported by every module that writes a run's files.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable

os.environ.setdefault('EPATH_USE_TF', 'false')

import fsspec.config  # noqa: E402
from etils import epath  # noqa: E402

from ssljax.errors import UserError  # noqa: E402

INSTALL_GCS = "pip install 'ssljax[gcs]'"

# gcsfs caches listings, and never sees what Orbax's tensorstore or another process writes: a
# cached listing would hide a checkpoint. No cache (a user's fsspec setting wins).
fsspec.config.conf.setdefault('gcs', {}).setdefault('use_listings_cache', False)


def is_remote(path: str | os.PathLike) -> bool:
  """A URL (gs://, s3://...): a cloud bucket, not this machine's file system."""
  return '://' in os.fspath(path)


def absolute(p: str) -> str:
  """A local path made absolute (Orbax and the caches key on it); a URL as it is."""
  return p if is_remote(p) else os.path.abspath(p)


def require(*paths: str | os.PathLike | None) -> None:
  """Raises a one-line UserError when one of `paths` is a gs:// URL and gcsfs is missing."""
  for p in paths:
    if p and os.fspath(p).startswith('gs://'):
      try:
        importlib.import_module('gcsfs')
      except ImportError:
        message = f'{os.fspath(p)} is in a cloud bucket: gs:// needs gcsfs, {INSTALL_GCS}'
        raise UserError(message) from None
      return


def path(p: str | os.PathLike) -> epath.Path:
  """`p` as an epath.Path (gs:// or local), checked by `require`."""
  require(p)
  return epath.Path(p)


def write_atomic(target: str | os.PathLike, data: bytes | str) -> None:
  """Writes the whole file so that a reader never sees half of it: locally through a temporary
  file and a rename; a bucket object appears only once it is complete anyway."""
  target = path(target)
  target.parent.mkdir(parents=True, exist_ok=True)
  payload = data.encode() if isinstance(data, str) else data
  if is_remote(target):
    target.write_bytes(payload)
    return
  tmp = target.with_name(target.name + '.tmp')
  tmp.write_bytes(payload)
  tmp.replace(target)


def names(directory: str | os.PathLike) -> Iterable[str]:
  """The names of `directory`'s entries; none when it does not exist."""
  d = path(directory)
  return sorted(p.name for p in d.iterdir()) if d.is_dir() else []

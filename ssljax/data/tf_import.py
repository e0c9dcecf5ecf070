"""TensorFlow, imported without the notices its C++ libraries print to stderr as they load (the
oneDNN notice, twice, and the CPU-instructions one): TF_CPP_MIN_LOG_LEVEL no longer reaches them.
Anything else TensorFlow prints while loading is passed on; with --verbosity=1 everything is.

The modules of ssljax.data import TensorFlow from here: `from ssljax.data.tf_import import tf`.
"""

from __future__ import annotations

import os
import sys
import tempfile

from absl import logging

NOTICES = (
  b'All log messages before absl::InitializeLog() is called',
  b'oneDNN custom operations are on',
  b'This TensorFlow binary is optimized to use available CPU instructions',
  b'To enable the following instructions',
)


def import_tensorflow():
  """`import tensorflow`, with what its libraries write to file descriptor 2 while loading passed
  on less NOTICES."""
  if 'tensorflow' in sys.modules or logging.get_verbosity() >= 1:
    import tensorflow

    return tensorflow
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      import tensorflow
    finally:
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      kept = [line for line in captured.read().splitlines(True) if not _is_notice(line)]
      if kept:
        os.write(2, b''.join(kept))
  return tensorflow


def _is_notice(line: bytes) -> bool:
  return any(notice in line for notice in NOTICES)


tf = import_tensorflow()

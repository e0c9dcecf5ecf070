"""The XLA:CPU options the entry points run with: convolutions by Eigen, not YNNPACK, and two CPU
devices per host.

- XLA:CPU hands a convolution to YNNPACK when it has more than 16 channels (counting a kernel
  gradient's batch as its channels) and to Eigen otherwise; Eigen is the faster of the two on every
  convolution a ResNet runs. jaxlib 0.10's XLA has no XNNPACK linked in, so its option is not set.
- Two XLA:CPU devices: the data mesh splits each batch between them (same global batch, BatchNorm
  statistics and NT-Xent negatives), so two ops that XLA runs on one core each (a ViT's attention
  matmuls, batched over images and heads) run at once. A batch must then be even: the batch check
  says so before anything compiles.

Both are read by the CPU compiler and the CPU client alone: what runs on a GPU or TPU is unchanged.
They must be in XLA_FLAGS before JAX starts its backends (`ssljax.cpu.process.prepare`). A value
the user already gave for an option wins; SSLJAX_XLA_CPU_FLAGS=none adds nothing; a jaxlib whose
XLA lacks an option (XLA stops at an unknown option) gets none. Measurements:
experiments/cpu_speed_log.md.
"""

from __future__ import annotations

import functools
import glob
import importlib.util
import mmap
import os
from collections.abc import Mapping

ENV = 'SSLJAX_XLA_CPU_FLAGS'  # auto (default): add FLAGS | none: leave XLA_FLAGS as it is
FLAGS = (
  '--xla_cpu_experimental_ynn_fusion_type=-individual_convolution',
  '--xla_force_host_platform_device_count=2',
)


def with_flags(environ: Mapping[str, str]) -> str:
  """XLA_FLAGS from `environ` with each of FLAGS added unless it names an option set already."""
  current = environ.get('XLA_FLAGS', '')
  if environ.get(ENV, 'auto') == 'none' or not xla_knows(FLAGS):
    return current
  given = {word.split('=', 1)[0] for word in current.split()}
  added = [flag for flag in FLAGS if flag.split('=', 1)[0] not in given]
  return ' '.join([current, *added]).strip()


def apply() -> None:
  """Sets XLA_FLAGS for this process (see with_flags); call it before JAX starts a backend."""
  os.environ['XLA_FLAGS'] = with_flags(os.environ)


@functools.cache
def xla_knows(flags: tuple[str, ...]) -> bool:
  """Whether the installed jaxlib's XLA has every option of `flags`: their names are in one of
  its shared libraries (mapped, not read: 0.02 s to find them, 0.3 s to find they are absent)."""
  spec = importlib.util.find_spec('jaxlib')
  if spec is None or not spec.submodule_search_locations:
    return False
  names = {flag.lstrip('-').split('=', 1)[0].encode() for flag in flags}
  for path in glob.glob(os.path.join(spec.submodule_search_locations[0], '*.so')):
    with open(path, 'rb') as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as library:
      names = {name for name in names if library.find(name) < 0}
    if not names:
      return True
  return False

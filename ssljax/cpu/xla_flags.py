"""The XLA:CPU options the entry points run with: convolutions by Eigen, not YNNPACK, and two
CPU devices.

XLA:CPU hands a convolution to YNNPACK when it has more than 16 channels (counting a kernel
gradient's batch as its channels) and to Eigen otherwise. On a 2-core AVX2 EPYC, YNNPACK is the
slower of the two on every convolution a ResNet runs (512 images of 7x7x32, 3x3: 10.5 ms forward and
9.2 for the input gradient in YNNPACK, 3.7 and 4.0 in Eigen; 128 images of 32x32x64: 169 and 81 ms;
lax's kernel gradient for 512 images of 28x28x8: 125 and 18 ms), and the SimCLR step of ResNet-18
ran 10-30% faster at width 8 and 35% at width 64 with the option when ssljax still computed the
kernel gradients itself (experiments/bench_vs_pytorch.py); the ResNets now take lax's, so without
the option YNNPACK would run those too. (jaxlib 0.10's XLA has no XNNPACK linked in: its option for
XNNPACK convolutions leaves the compiled program unchanged, so it is not set.) The option is read by
the CPU compiler alone, so what runs on a GPU or TPU is unchanged. It must be in XLA_FLAGS before
JAX starts its backends: `apply()` first thing in an entry point.

The host is also split into two XLA:CPU devices, and the data mesh, which spans every device, splits
each batch between them (same global batch, BatchNorm statistics and NT-Xent negatives). Some ops
run on one core whatever the core count, such as a ViT's attention matmuls, batched over images and
heads (50x50 tokens: 7-14 ms each, CPU time equal to wall time). With two devices, two such ops run
at once. The small ViT's SimCLR step ran 260 and 292 instead of 213 images/s, and ResNet-18 width 8
ran 541 and 539 instead of 441 and 536 (2 cores, alternating runs). A batch must then be even: the
batch check says so before anything compiles. GPUs and TPUs are unaffected: the option only creates
host devices, which the mesh ignores where an accelerator is the default backend.

A value the user already gave for an option wins. SSLJAX_XLA_CPU_FLAGS=none adds nothing. A jaxlib
whose XLA lacks an option (XLA stops at an unknown option) gets none.
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

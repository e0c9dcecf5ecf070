"""Every convolution of a ResNet case's SimCLR step, forward and both gradients, timed alone in
XLA:CPU (as ssljax runs it) and in PyTorch, side by side: how much of the step's gap to PyTorch
the convolution libraries themselves account for (Eigen's in XLA:CPU, oneDNN's in PyTorch).

python experiments/bench_conv_layers.py [--cases=resnet18_w8,resnet18_w64] [--dtype=float32]
    [--calls=10] [--repeats=2] [--out=experiments/results/bench_conv_layers.json]

The cases are bench_vs_pytorch's ResNets (ssljax.cpu.cases): each distinct convolution of the
network (the stem, each stage's 3x3, its stride-2 3x3 and its 1x1 stride-2 projection) over the
step's 2N views on one device with every core, and how often the network runs it. The ssljax side
calls ssljax.cpu.conv.conv_general_dilated, the convolution a ResNet runs on CPU (pixel
pairs for narrow inputs, Winograd for wide ones, kernel gradients from stored copies), jitted alone:
forward, the input's gradient, the kernel's, and both in one program (as the step computes them);
the PyTorch side torch.nn.functional.conv2d in NCHW (as bench_vs_pytorch's peer on CPU) and
torch.autograd.grad. Each op's time is its best of --calls calls, the two sides alternating
--repeats times in processes of their own. --dtype=bfloat16 runs both in bfloat16 (ssljax's
model.compute_dtype; PyTorch's autocast casts convolution inputs to it the same way). The ratio is
PyTorch's time over ssljax's, as bench_vs_pytorch's (above 1: ssljax faster).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

if __name__ == '__main__':  # before JAX starts: XLA's options and the allocator are fixed then
  from ssljax.cpu import process

  process.prepare()

from absl import app, flags  # noqa: E402
from side_process import SideProcess, cores, machine  # noqa: E402

from ssljax.cpu.cases import case_config, conv_layers  # noqa: E402

_CASES = flags.DEFINE_list('cases', ['resnet18_w8', 'resnet18_w64'], 'ResNet cases to run.')
_DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'Compute dtype.')
_CALLS = flags.DEFINE_integer(
  'calls', 10, 'Timed calls of each op per repeat; each keeps its best.'
)
_REPEATS = flags.DEFINE_integer('repeats', 2, 'Alternations of the two sides.')
_OUT = flags.DEFINE_string('out', 'experiments/results/bench_conv_layers.json', 'Results file.')
OPS = ('forward', 'input grad', 'kernel grad', 'both grads')


def _best_ms(fn, calls: int) -> float | None:
  if fn is None:
    return None
  fn()  # compiles or warms up
  times = []
  for _ in range(calls):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return 1e3 * min(times)


def _timer(layers: list[dict]):
  """run(calls): each layer's ops (name -> zero-argument call, or None) timed, best of `calls`."""
  return lambda calls: [{op: _best_ms(fn, calls) for op, fn in ops.items()} for ops in layers]


def ssljax_side(specs: list[dict], dtype: str):
  """(run, device) for SideProcess: run(calls) times each op of each layer in XLA."""
  import jax

  from ssljax.cpu import conv as cpu_conv

  def ops(spec, key):
    s, k = spec['size'], spec['kernel']
    kx, kw, kdy = jax.random.split(key, 3)
    x = jax.random.normal(kx, (spec['views'], s, s, spec['cin']), dtype)
    w = jax.random.normal(kw, (k, k, spec['cin'], spec['cout']), dtype) / math.sqrt(k * k)

    def conv(x, w):
      strides = (spec['stride'],) * 2
      return cpu_conv.conv_general_dilated(
        x, w, strides, 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')
      )

    dy = jax.random.normal(kdy, jax.eval_shape(conv, x, w).shape, dtype)
    wanted = (0, 1) if spec['input_grad'] else (1,)
    grads = {
      'forward': jax.jit(conv),
      'input grad': jax.jit(lambda x, w, dy: jax.vjp(conv, x, w)[1](dy)[0]),
      'kernel grad': jax.jit(lambda x, w, dy: jax.vjp(conv, x, w)[1](dy)[1]),
      'both grads': jax.jit(lambda x, w, dy: [jax.vjp(conv, x, w)[1](dy)[i] for i in wanted]),
    }
    args = {op: (x, w) if op == 'forward' else (x, w, dy) for op in OPS}
    fns = {op: (lambda f=f, a=args[op]: jax.block_until_ready(f(*a))) for op, f in grads.items()}
    return fns | ({} if spec['input_grad'] else {'input grad': None})

  keys = jax.random.split(jax.random.key(0), len(specs))
  fns = [ops(spec, key) for spec, key in zip(specs, keys, strict=True)]
  return _timer(fns), f'{jax.devices()[0].device_kind}, jax {jax.__version__}'


def torch_side(specs: list[dict], dtype: str):
  """(run, version) for SideProcess: run(calls) times each op of each layer in PyTorch."""
  import torch
  import torch.nn.functional as F

  torch.set_num_threads(cores())
  torch.manual_seed(0)
  dtype = getattr(torch, dtype)

  def ops(spec):
    s, k = spec['size'], spec['kernel']
    x = torch.randn(spec['views'], spec['cin'], s, s, dtype=dtype, requires_grad=True)
    w = torch.randn(spec['cout'], spec['cin'], k, k, dtype=dtype) / math.sqrt(k * k)
    w.requires_grad_(True)

    def conv():
      return F.conv2d(x, w, stride=spec['stride'], padding=k // 2)

    y = conv()
    dy = torch.randn_like(y)

    def forward():
      with torch.no_grad():
        conv()

    def grad(inputs):
      return lambda: torch.autograd.grad(y, inputs, dy, retain_graph=True)

    if not spec['input_grad']:
      return {'forward': forward, 'input grad': None, 'kernel grad': grad(w), 'both grads': grad(w)}
    return {
      'forward': forward,
      'input grad': grad(x),
      'kernel grad': grad(w),
      'both grads': grad((x, w)),
    }

  return _timer([ops(spec) for spec in specs]), f'torch {torch.__version__}'


def main(argv) -> None:
  del argv
  results = {'machine': machine(), 'dtype': _DTYPE.value}
  results['xla_flags'] = os.environ.get('XLA_FLAGS', '')
  cases = {}
  for name in _CASES.value:
    specs = conv_layers(case_config(name))
    sides = {
      'ssljax': SideProcess(ssljax_side, specs, _DTYPE.value),
      'pytorch': SideProcess(torch_side, specs, _DTYPE.value),
    }
    best = {side: None for side in sides}
    for _ in range(_REPEATS.value):
      for side, process in sides.items():
        times = process.call(_CALLS.value)
        best[side] = times if best[side] is None else _fastest(best[side], times)
    results |= {f'{side}_version': process.close() for side, process in sides.items()}
    rows = [
      {**spec, 'ssljax_ms': best['ssljax'][i], 'pytorch_ms': best['pytorch'][i]}
      for i, spec in enumerate(specs)
    ]
    totals = {
      side: {op: sum(r['count'] * (r[f'{side}_ms'][op] or 0) for r in rows) for op in OPS}
      for side in sides
    }
    cases[name] = {'rows': rows, 'network_ms': totals}
    _print_case(name, rows, totals)
  results['cases'] = cases
  os.makedirs(os.path.dirname(_OUT.value) or '.', exist_ok=True)
  with open(_OUT.value, 'w') as f:
    json.dump(results, f, indent=2)
  print(f'wrote {_OUT.value}')


def _fastest(a: list[dict], b: list[dict]) -> list[dict]:
  """Each layer's and op's faster time of two runs (None where the op is not run)."""
  pairs = zip(a, b, strict=True)
  return [{op: x[op] if x[op] is None else min(x[op], y[op]) for op in OPS} for x, y in pairs]


def _print_case(name: str, rows: list[dict], totals: dict) -> None:
  print(f'\n{name}, {_DTYPE.value}: ms per call, ssljax / PyTorch (ratio = PyTorch / ssljax)')
  header = f'{"convolution":<22} {"x":>2} {"views x HxWxC -> C":>22}'
  print(header + ''.join(f' {op:>22}' for op in OPS))

  def cells(a: dict, b: dict) -> str:
    text = [f'{a[op]:.1f} / {b[op]:.1f} {b[op] / a[op]:.2f}' if a[op] else '-' for op in OPS]
    return ''.join(f' {t:>22}' for t in text)

  for r in rows:
    shape = f'{r["views"]}x{r["size"]}x{r["size"]}x{r["cin"]} -> {r["cout"]}'
    print(f'{r["name"]:<22} {r["count"]:>2} {shape:>22}' + cells(r['ssljax_ms'], r['pytorch_ms']))
  total = {side: totals[side]['forward'] + totals[side]['both grads'] for side in totals}
  print(f'{"network (x counts)":<22} {"":>2} {"":>22}' + cells(totals['ssljax'], totals['pytorch']))
  print(
    f'forward and both gradients of every convolution: ssljax {total["ssljax"]:.0f} ms, '
    f'PyTorch {total["pytorch"]:.0f} ms, ratio {total["pytorch"] / total["ssljax"]:.2f}'
  )


if __name__ == '__main__':
  app.run(main)

"""Images/s of one SimCLR training step in ssljax and in PyTorch on the identical network, batch and
input, back to back in one invocation, and their ratio.

python experiments/bench_vs_pytorch.py [--cases=resnet18_w8,resnet18_w64,vit] [--steps=20]
    [--repeats=2] [--out=experiments/results/bench_vs_pytorch.json]

Needs PyTorch: `pip install -e '.[bench]'` (on a CPU-only machine its CPU wheel, e.g.
`pip install torch --index-url https://download.pytorch.org/whl/cpu`). The cases:
- resnet18_w8: configs/simclr_fashion_mnist.py as it is (ResNet-18, small stem, width 8, 28 px,
  1 channel, batch 256, 64-d projection, LARS);
- resnet18_w64: the same at width 64, 32 px, 3 channels, batch 64;
- vit: SimCLR with a ViT of width 96, depth 4, 3 heads, patch 4 at 28 px, batch 256, AdamW;
- resnet50_224 (for a GPU): configs/simclr_imagenet.py, ResNet-50 at 224 px, batch 256, bf16; the
  PyTorch side uses CUDA when present, autocast to bfloat16 and channels_last.
Each side runs its own train step (forward over the 2N views, NT-Xent, backward, optimizer update)
on random input already in memory: 2 warm-up steps, then --steps timed ones; the two sides
alternate --repeats times and each keeps its best. Each side runs in a process of its own
(side_process.py). The PyTorch peer is plain PyTorch written
from the published layouts, with no ssljax code: torchvision's BasicBlock ResNet (SimCLR's 3x3
stem without max-pool, zero-initialised last BN of each block), timm's VisionTransformer (pre-norm
blocks, fused qkv, exact GELU, LayerNorm eps 1e-6, CLS token), SimCLR's projection head (Linear,
BN, ReLU, Linear, BN), NT-Xent over the 2N views, LARS as SimCLR uses it (trust coefficient 1e-3,
no decay or adaptation for biases and norms) or AdamW.
Both sides run with the host allocator `python -m ssljax.main` picks (ssljax.cpu.allocator:
tcmalloc when installed); SSLJAX_MALLOC=system runs both with glibc's malloc. The ssljax side runs
with the XLA:CPU options of ssljax.cpu.xla_flags, as `python -m ssljax.main` does;
SSLJAX_XLA_CPU_FLAGS=none runs it without them.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

if __name__ == '__main__':  # before JAX starts: XLA's options and the allocator are fixed then
  from ssljax.cpu import process

  process.prepare()

import jax  # noqa: E402
from absl import app, flags  # noqa: E402
from side_process import SideProcess, cores, machine  # noqa: E402

from ssljax import build, data, models, sharding  # noqa: E402
from ssljax.cpu import allocator  # noqa: E402
from ssljax.cpu.cases import case_config  # noqa: E402

_CASES = flags.DEFINE_list('cases', ['resnet18_w8', 'resnet18_w64', 'vit'], 'Cases to run.')
_STEPS = flags.DEFINE_integer('steps', 20, 'Timed steps per repeat.')
_REPEATS = flags.DEFINE_integer('repeats', 2, 'Alternations of the two sides; each keeps its best.')
_OUT = flags.DEFINE_string('out', 'experiments/results/bench_vs_pytorch.json', 'Results file.')
_BATCH = flags.DEFINE_integer('batch_size', 0, "Overrides each case's batch (0: the case's own).")
WARMUP = 2


# ----------------------------------------------------------------------------- ssljax side


def ssljax_timer(config):
  """(a function timing `steps` ssljax train steps in seconds, the parameter count)."""
  step, state, mesh, synthetic = build.synthetic_step(config)
  n_params = sum(x.size for x in jax.tree.leaves(state.params))
  batch = sharding.to_global(next(data.build_train_iterator(synthetic)), mesh)
  holder = {'state': state}

  def run(steps: int) -> float:
    state = holder['state']
    for _ in range(WARMUP):
      state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
      state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    holder['state'] = state
    return time.perf_counter() - start

  return run, n_params


# ----------------------------------------------------------------------------- PyTorch side


def torch_timer(config):
  """(a function timing `steps` PyTorch train steps of the same network, the parameter count)."""
  import torch
  import torch.nn.functional as F
  from torch import nn

  torch.manual_seed(0)
  torch.set_num_threads(cores())
  m = config.model

  class BasicBlock(nn.Module):  # torchvision.models.resnet.BasicBlock
    def __init__(self, inplanes: int, planes: int, stride: int):
      super().__init__()
      self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(planes)
      self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(planes)
      nn.init.zeros_(self.bn2.weight)
      self.downsample = None
      if stride != 1 or inplanes != planes:
        self.downsample = nn.Sequential(
          nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
        )

    def forward(self, x):
      identity = x if self.downsample is None else self.downsample(x)
      out = F.relu(self.bn1(self.conv1(x)))
      return F.relu(self.bn2(self.conv2(out)) + identity)

  class ResNet18(nn.Module):  # SimCLR's CIFAR variant: 3x3 stem, stride 1, no max-pool
    def __init__(self, channels: int, width: int):
      super().__init__()
      self.stem = nn.Sequential(
        nn.Conv2d(channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
      )
      blocks, inplanes = [], width
      for i in range(4):
        planes = width * 2**i
        for j in range(2):
          blocks.append(BasicBlock(inplanes, planes, 2 if i > 0 and j == 0 else 1))
          inplanes = planes
      self.blocks = nn.Sequential(*blocks)

    def forward(self, x):
      return self.blocks(self.stem(x)).mean(dim=(2, 3))

  class Bottleneck(nn.Module):  # torchvision.models.resnet.Bottleneck (stride on the 3x3)
    def __init__(self, inplanes: int, planes: int, stride: int):
      super().__init__()
      self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(planes)
      self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(planes)
      self.conv3 = nn.Conv2d(planes, 4 * planes, 1, bias=False)
      self.bn3 = nn.BatchNorm2d(4 * planes)
      nn.init.zeros_(self.bn3.weight)
      self.downsample = None
      if stride != 1 or inplanes != 4 * planes:
        self.downsample = nn.Sequential(
          nn.Conv2d(inplanes, 4 * planes, 1, stride, bias=False), nn.BatchNorm2d(4 * planes)
        )

    def forward(self, x):
      identity = x if self.downsample is None else self.downsample(x)
      out = F.relu(self.bn1(self.conv1(x)))
      out = F.relu(self.bn2(self.conv2(out)))
      return F.relu(self.bn3(self.conv3(out)) + identity)

  class ResNet50(nn.Module):  # torchvision.models.resnet50 without its classifier
    def __init__(self, channels: int, width: int):
      super().__init__()
      self.stem = nn.Sequential(
        nn.Conv2d(channels, width, 7, 2, 3, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.MaxPool2d(3, 2, 1),
      )
      blocks, inplanes = [], width
      for i, n in enumerate((3, 4, 6, 3)):
        planes = width * 2**i
        for j in range(n):
          blocks.append(Bottleneck(inplanes, planes, 2 if i > 0 and j == 0 else 1))
          inplanes = 4 * planes
      self.blocks = nn.Sequential(*blocks)

    def forward(self, x):
      return self.blocks(self.stem(x)).mean(dim=(2, 3))

  class Block(nn.Module):  # timm.models.vision_transformer.Block
    def __init__(self, dim: int, heads: int):
      super().__init__()
      self.heads = heads
      self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
      self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
      self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x):
      n, t, d = x.shape
      qkv = self.qkv(self.norm1(x)).reshape(n, t, 3, self.heads, d // self.heads)
      q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
      y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, t, d)
      x = x + self.proj(y)
      return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))

  class ViT(nn.Module):  # timm.models.vision_transformer.VisionTransformer, CLS pooling
    def __init__(self, channels: int, size: int, patch: int, dim: int, depth: int, heads: int):
      super().__init__()
      self.patch_embed = nn.Conv2d(channels, dim, patch, patch)
      self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
      self.pos_embed = nn.Parameter(torch.randn(1, 1 + (size // patch) ** 2, dim) * 0.02)
      self.blocks = nn.Sequential(*[Block(dim, heads) for _ in range(depth)])
      self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x):
      x = self.patch_embed(x).flatten(2).transpose(1, 2)
      x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
      return self.norm(self.blocks(x))[:, 0]

  channels, size, batch = int(config.data.channels), int(config.data.image_size), config.batch_size
  if m.encoder.startswith('vit'):
    encoder = ViT(channels, size, m.patch_size, m.vit_width, m.vit_depth, m.vit_heads)
  elif m.encoder == 'resnet50':
    encoder = ResNet50(channels, m.width)
  else:
    encoder = ResNet18(channels, m.width)
  h_dim = models.encoder_dim(config)
  hidden = m.proj_hidden or h_dim
  last_bn = nn.BatchNorm1d(m.proj_dim)
  last_bn.bias.requires_grad_(False)  # SimCLR's last BN has no bias
  head = nn.Sequential(
    nn.Linear(h_dim, hidden, bias=False),
    nn.BatchNorm1d(hidden),
    nn.ReLU(),
    nn.Linear(hidden, m.proj_dim, bias=False),
    last_bn,
  )
  cuda = torch.cuda.is_available()
  device = torch.device('cuda' if cuda else 'cpu')
  layout = torch.channels_last if cuda else torch.contiguous_format
  model = nn.Sequential(encoder, head).to(device, memory_format=layout)
  bf16 = cuda and m.compute_dtype == 'bfloat16'  # AMP where ssljax computes in bf16
  params = [p for p in model.parameters() if p.requires_grad]
  decay = [p for p in params if p.ndim > 1]
  rest = [p for p in params if p.ndim <= 1]
  if config.optimizer == 'adamw':
    optimizer = torch.optim.AdamW(
      [{'params': decay, 'weight_decay': config.weight_decay}, {'params': rest, 'weight_decay': 0}],
      lr=config.base_lr,
      betas=(config.momentum, config.b2),
    )
  else:
    optimizer = _lars(torch, decay, rest, config.base_lr, config.weight_decay, config.momentum)
  temperature = config.loss.temperature
  x = torch.rand(2 * batch, channels, size, size, device=device).to(memory_format=layout)
  labels = torch.cat([torch.arange(batch, 2 * batch), torch.arange(batch)]).to(device)
  eye = torch.eye(2 * batch, dtype=torch.bool, device=device)

  def train_step():
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
      features = model(x)
    z = F.normalize(features.float(), dim=1)
    logits = (z @ z.T / temperature).masked_fill(eye, float('-inf'))  # NT-Xent over 2N views
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    optimizer.step()
    return loss

  def run(steps: int) -> float:
    for _ in range(WARMUP):
      train_step()
    start = time.perf_counter()
    for _ in range(steps):
      loss = train_step()
    float(loss.detach())
    return time.perf_counter() - start

  return run, sum(p.numel() for p in model.parameters())


def _lars(torch, decay, rest, lr: float, weight_decay: float, momentum: float):
  """SimCLR's LARS: for weights, g + wd w scaled by 1e-3 |w| / |g + wd w|; then lr, momentum."""

  class LARS(torch.optim.Optimizer):
    @torch.no_grad()
    def step(self):
      for group in self.param_groups:
        for p in group['params']:
          if p.grad is None:
            continue
          g = p.grad
          if group['adapt']:
            g = g.add(p, alpha=weight_decay)
            w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
            trust = torch.where((w_norm > 0) & (g_norm > 0), 1e-3 * w_norm / g_norm, 1.0)
            g = g * trust
          buf = self.state[p].setdefault('momentum', torch.zeros_like(p))
          buf.mul_(momentum).add_(g, alpha=lr)
          p.sub_(buf)

  return LARS([{'params': decay, 'adapt': True}, {'params': rest, 'adapt': False}], {})


# ----------------------------------------------------------------------------- one process a side


def _side(side: str, config):
  """(run, parameter count) for SideProcess: run(steps) times `steps` steps of one side, its
  step compiled (and warmed up) first, and returns (their seconds, page faults per step, CPU-seconds
  in the kernel per step), warm-up steps included in the two counts, compilation not."""
  timed, n_params = (ssljax_timer if side == 'ssljax' else torch_timer)(config)
  timed(1)

  def run(steps: int) -> tuple[float, float, float]:
    before = resource.getrusage(resource.RUSAGE_SELF)
    seconds = timed(steps)
    after = resource.getrusage(resource.RUSAGE_SELF)
    per_step = 1 / (steps + WARMUP)
    faults = (after.ru_minflt - before.ru_minflt) * per_step
    return seconds, faults, (after.ru_stime - before.ru_stime) * per_step

  return run, n_params


# ----------------------------------------------------------------------------- main


def main(argv) -> None:
  del argv
  import torch

  rows = []
  for name in _CASES.value:
    config = case_config(name)
    if _BATCH.value:
      config.batch_size = _BATCH.value
    sides = {side: SideProcess(_side, side, config) for side in ('ssljax', 'pytorch')}
    best = {side: (float('inf'),) for side in sides}
    for _ in range(_REPEATS.value):
      for side, process in sides.items():
        best[side] = min(best[side], process.call(_STEPS.value))
    jax_params, torch_params = (sides[side].close() for side in ('ssljax', 'pytorch'))
    ips = {side: _STEPS.value * config.batch_size / b[0] for side, b in best.items()}
    # Where the host allocator shows: page faults and kernel CPU-seconds per step of each side.
    kernel = {f'{side}_faults_per_step': round(b[1]) for side, b in best.items()}
    kernel |= {f'{side}_kernel_s_per_step': b[2] for side, b in best.items()}
    m = config.model
    what = (
      f'{m.encoder} w{m.vit_width if m.encoder.startswith("vit") else m.width}, '
      f'{config.data.image_size} px x {config.data.channels}, batch {config.batch_size}, '
      f'{config.optimizer}'
    )
    params = {'ssljax_params': int(jax_params), 'pytorch_params': int(torch_params)}
    rows.append(
      {
        'case': name,
        'what': what,
        **ips,
        'ratio': ips['ssljax'] / ips['pytorch'],
        **params,
        **kernel,
      }
    )
    print(
      f'{name}: {what}: ssljax {ips["ssljax"]:.0f} img/s, PyTorch {ips["pytorch"]:.0f}', flush=True
    )
  host = f'{machine()}, {jax.devices()[0].device_kind}'
  malloc = allocator.active()
  print(
    f'\nSimCLR train step, images/s ({host}; jax {jax.__version__}, torch {torch.__version__}; '
    f'{malloc} malloc on both sides; XLA_FLAGS {os.environ.get("XLA_FLAGS", "")!r})'
  )
  print(
    f'{"case":<14} {"ssljax":>8} {"PyTorch":>8} {"ratio":>6} {"faults/step":>15} '
    f'{"kernel s/step":>13}  network (parameters)'
  )
  for r in rows:
    faults = f'{r["ssljax_faults_per_step"]:,} / {r["pytorch_faults_per_step"]:,}'
    kernel = f'{r["ssljax_kernel_s_per_step"]:.2f} / {r["pytorch_kernel_s_per_step"]:.2f}'
    print(
      f'{r["case"]:<14} {r["ssljax"]:>8.0f} {r["pytorch"]:>8.0f} {r["ratio"]:>6.2f} {faults:>15} '
      f'{kernel:>13}  {r["what"]} ({r["ssljax_params"]:,} / {r["pytorch_params"]:,})'
    )
  os.makedirs(os.path.dirname(_OUT.value) or '.', exist_ok=True)
  with open(_OUT.value, 'w') as f:
    result = {'machine': host, 'jax': jax.__version__, 'torch': torch.__version__}
    result |= {'allocator': malloc, 'xla_flags': os.environ.get('XLA_FLAGS', '')}
    json.dump({**result, 'steps': _STEPS.value, 'rows': rows}, f, indent=2)


if __name__ == '__main__':
  app.run(main)

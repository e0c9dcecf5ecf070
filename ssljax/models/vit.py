"""Vision Transformer encoders f(x) -> h (Dosovitskiy et al. 2021), as in timm, DINO and MAE.

The module exposes its two halves, `embed` (pixels -> patch tokens + position) and `transform`
(tokens -> blocks -> final norm), so that MAE and I-JEPA can run the blocks on a subset of the
patches. The position embedding is made for a nominal `image_size` and resized (bicubic) to the
grid of whatever image comes in: DINO's 96-px local crops go through the model made for 224 px.
"""

from __future__ import annotations

from typing import Any

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ssljax.models import pixels
from ssljax.models.kernels import XLA, Kernels

VIT_SIZES = {
  'vit_tiny': (192, 12, 3),  # (width, depth, heads)
  'vit_small': (384, 12, 6),
  'vit_base': (768, 12, 12),
  'vit_large': (1024, 24, 16),
  'vit_huge': (1280, 32, 16),
}

# timm/MAE initialisation: Linear layers xavier-uniform with zero bias, tokens trunc-normal .02.
_dense_init = nn.initializers.xavier_uniform()
_token_init = nn.initializers.truncated_normal(stddev=0.02)
# The patch embedding is a Linear over the p*p*C pixels of a patch (MAE inits it as one), so its
# fans are p*p*C in and D out, not Flax's conv default of p*p*C and p*p*D.
_patch_init = nn.initializers.variance_scaling(
  1.0, 'fan_avg', 'uniform', in_axis=(0, 1, 2), out_axis=-1
)


def grid_shape(height: int, width: int, patch_size: int) -> tuple[int, int]:
  """(h, w): patches along each side; an image must tile exactly, nothing is cropped silently."""
  if height % patch_size or width % patch_size:
    raise ValueError(
      f'image side {height}x{width} is not divisible by model.patch_size={patch_size}'
    )
  return height // patch_size, width // patch_size


def patchify(images: jax.Array, patch_size: int) -> jax.Array:
  """(N, H, W, C) -> (N, h*w, p*p*C), ordered (h w)(p q c) like MAE's official code.

  Patches run row-major over the grid; inside a patch its rows, then columns, then channels. A
  (p, p, C, D) conv kernel flattens in the same order, so the stride-p convolution equals
  `patchify(x) @ kernel.reshape(p * p * C, D)`.
  """
  grid_shape(images.shape[1], images.shape[2], patch_size)
  return einops.rearrange(images, 'n (h p) (w q) c -> n (h w) (p q c)', p=patch_size, q=patch_size)


def unpatchify(
  patches: jax.Array, patch_size: int, grid_hw: tuple[int, int], channels: int
) -> jax.Array:
  """The exact inverse of `patchify`: (N, h*w, p*p*C) -> (N, h*p, w*p, C)."""
  h, w = grid_hw
  expected = (h * w, patch_size * patch_size * channels)
  if tuple(patches.shape[1:]) != expected:
    raise ValueError(
      f'patches of shape {patches.shape} do not fit grid {grid_hw}, patch {patch_size} and '
      f'{channels} channels: expected (N, {expected[0]}, {expected[1]})'
    )
  return einops.rearrange(
    patches, 'n (h w) (p q c) -> n (h p) (w q) c', h=h, w=w, p=patch_size, q=patch_size
  )


def _sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
  omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2))
  out = np.outer(pos.reshape(-1), omega)
  return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_2d(dim: int, grid_h: int, grid_w: int) -> np.ndarray:
  """Fixed 2-D sin-cos position embedding (grid_h*grid_w, dim), MAE's `get_2d_sincos_pos_embed`.

  For the patch in row i, column j (index i*grid_w + j), with D = dim/2 and
  omega_k = 1 / 10000**(k / (D/2)), k < D/2:
    emb[:, 0:D]  = [sin(j * omega), cos(j * omega)]   (the column, w)
    emb[:, D:2D] = [sin(i * omega), cos(i * omega)]   (the row, h)
  Column first: the official code builds `np.meshgrid(grid_w, grid_h)` and encodes grid[0] first.
  No CLS row (the model gives CLS a zero position embedding).
  """
  if dim % 4:
    raise ValueError(f'sincos position embedding needs a width divisible by 4, got {dim}')
  cols, rows = np.meshgrid(np.arange(grid_w, dtype=np.float64), np.arange(grid_h, dtype=np.float64))
  emb = np.concatenate([_sincos_1d(dim // 2, cols), _sincos_1d(dim // 2, rows)], axis=1)
  return emb.astype(np.float32)


def drop_path(x: jax.Array, rate: float, rng: jax.Array) -> jax.Array:
  """Stochastic depth: zero the residual branch of whole samples with p = rate, scale the rest.

  Per sample (the mask is (N, 1, ..., 1)), as timm's DropPath: the expected output is x.
  """
  keep = 1.0 - rate
  mask = jax.random.bernoulli(rng, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(mask, x / keep, jnp.zeros_like(x))


class QkvProjection(nn.Module):
  """timm's fused qkv Linear: kernel (D, 3D) and bias (3D,), columns ordered (3, heads, head_dim).

  Returns q, k, v as (N, T, heads, head_dim) from one matmul sliced three ways, or with
  `heads_first` as (N, heads, T, head_dim) from three per-head projections: the layout attention
  multiplies in. On 2 CPU cores the slices cost a copy of each forward and a padded sum of the
  three gradients backward (10% of a small ViT's SimCLR step); the models choose `heads_first` on
  the CPU backend only, so GPUs and TPUs keep the one wide matmul. Same parameters either way.
  """

  num_heads: int
  heads_first: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    n, t, d = x.shape
    kernel = self.param('kernel', _dense_init, (d, 3 * d))
    bias = self.param('bias', nn.initializers.zeros, (3 * d,))
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    if self.heads_first:
      kernel = kernel.reshape(d, 3, self.num_heads, d // self.num_heads)
      bias = bias.reshape(3, self.num_heads, 1, d // self.num_heads)
      return tuple(jnp.einsum('ntd,dhk->nhtk', x, kernel[:, i]) + bias[i] for i in range(3))
    qkv = jax.lax.dot_general(x, kernel, (((2,), (0,)), ((), ()))) + bias.reshape(1, 1, -1)
    qkv = qkv.reshape(n, t, 3, self.num_heads, d // self.num_heads)
    return qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]


class Attention(nn.Module):
  """Multi-head self-attention; returns the output and the float32 attention probabilities.

  `valid` (N, T) marks the real tokens of a padded sequence: no token attends to a padding one,
  so the real tokens' outputs equal those of the unpadded sequence (I-JEPA pads the context and
  target blocks to static sizes).
  """

  num_heads: int
  dtype: Any = jnp.float32
  kernels: Kernels = XLA  # heads_first: the qkv layout (ssljax.models.kernels)

  @nn.compact
  def __call__(self, x: jax.Array, valid: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    n, t, d = x.shape
    head_dim = d // self.num_heads
    heads_first = self.kernels.heads_first
    q, k, v = QkvProjection(self.num_heads, heads_first, dtype=self.dtype, name='qkv')(x)
    spec = (lambda s: f'nh{s}d') if heads_first else (lambda s: f'n{s}hd')
    logits = jnp.einsum(f'{spec("q")},{spec("k")}->nhqk', q, k, preferred_element_type=jnp.float32)
    if valid is not None:
      logits = jnp.where(valid[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
    attn = jax.nn.softmax(logits * head_dim**-0.5, axis=-1)  # softmax in float32
    out = jnp.einsum(f'nhqk,{spec("k")}->nqhd', attn.astype(self.dtype), v).reshape(n, t, d)
    dense = nn.Dense(d, dtype=self.dtype, kernel_init=_dense_init, name='proj')
    return dense(out), attn


class Mlp(nn.Module):
  """Dense(hidden) -> GELU -> Dense(width of x)."""

  hidden_dim: int
  dtype: Any = jnp.float32
  kernels: Kernels = XLA  # its GELU (ssljax.models.kernels)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    d = x.shape[-1]
    x = nn.Dense(self.hidden_dim, dtype=self.dtype, kernel_init=_dense_init, name='fc1')(x)
    x = self.kernels.gelu(x)  # PyTorch's nn.GELU is the exact (erf) form
    return nn.Dense(d, dtype=self.dtype, kernel_init=_dense_init, name='fc2')(x)


class Block(nn.Module):
  """Pre-norm transformer block: x + DropPath(Attn(LN(x))), then x + DropPath(MLP(LN(x)))."""

  num_heads: int
  mlp_ratio: float = 4.0
  drop_rate: float = 0.0
  dtype: Any = jnp.float32
  kernels: Kernels = XLA

  @nn.compact
  def __call__(
    self,
    x: jax.Array,
    train: bool,
    valid: jax.Array | None = None,
    rate: jax.Array | None = None,
  ) -> tuple[jax.Array, jax.Array]:
    """`rate` (a scalar array) overrides drop_rate: a scanned stack's rate differs per block.
    `train` may be passed by position, as rematerialization needs it (a static argument)."""
    norm = lambda name: nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name=name)

    def residual(y):
      if train and (rate is not None or self.drop_rate > 0):
        return drop_path(y, self.drop_rate if rate is None else rate, self.make_rng('dropout'))
      return y

    y, attn = Attention(self.num_heads, self.dtype, self.kernels, name='attn')(
      norm('norm1')(x), valid
    )
    x = x + residual(y)
    mlp = Mlp(int(x.shape[-1] * self.mlp_ratio), self.dtype, self.kernels, name='mlp')
    y = mlp(norm('norm2')(x))
    return x + residual(y), attn


REMAT_POLICIES = (
  'none',  # keep every activation for the backward pass
  'nothing_saveable',  # recompute each block's activations in the backward pass
  'dots_saveable',  # keep matrix products' outputs, recompute the rest
  'dots_with_no_batch_dims_saveable',  # keep the weight products' outputs (not attention's)
)


def _remat(block: type[nn.Module], policy: str, static_argnums: tuple[int, ...]):
  """`block` under jax.checkpoint with the named policy (jax.checkpoint_policies), or as it is."""
  if policy == 'none':
    return block
  return nn.remat(
    block, policy=getattr(jax.checkpoint_policies, policy), static_argnums=static_argnums
  )


class _ScanStep(nn.Module):
  """One Block as the body of nn.scan over the blocks: the carry is (tokens, the attention of
  the block before, or None when not asked for), the scanned input its stochastic-depth rate
  (None without stochastic depth), and the output the CLS token it leaves (`ViT.last_cls`)."""

  num_heads: int
  mlp_ratio: float
  dtype: Any
  kernels: Kernels

  @nn.compact
  def __call__(self, carry, rate, train, valid):
    x, attn = carry
    block = Block(self.num_heads, self.mlp_ratio, 0.0, self.dtype, self.kernels, name='block')
    x, new_attn = block(x, train=train, valid=valid, rate=rate)
    return (x, None if attn is None else new_attn), x[:, 0]


def scan_layout(params: dict, depth: int) -> dict:
  """A ViT's variables with blocks_0 .. blocks_{depth-1} stacked as one scanned 'blocks'."""
  blocks = [params[f'blocks_{i}'] for i in range(depth)]
  rest = {k: v for k, v in params.items() if not k.startswith('blocks_')}
  return {**rest, 'blocks': {'block': jax.tree.map(lambda *xs: jnp.stack(xs), *blocks)}}


def unscan_layout(params: dict, depth: int) -> dict:
  """The inverse of scan_layout: one subtree per block, as an unscanned ViT names them."""
  stacked = params['blocks']['block']
  rest = {k: v for k, v in params.items() if k != 'blocks'}
  return {
    **rest,
    **{f'blocks_{i}': jax.tree.map(lambda x, i=i: x[i], stacked) for i in range(depth)},
  }


def to_layout(variables: dict, *, scan: bool, depth: int) -> dict:
  """`variables` ({collection: tree} of a ViT encoder of `depth` blocks) with the blocks scanned
  (`scan`) or one subtree per block, whichever layout they were saved in."""
  out = {}
  for collection, tree in variables.items():
    if scan and 'blocks_0' in tree:
      tree = scan_layout(tree, depth)
    elif not scan and 'blocks' in tree:
      tree = unscan_layout(tree, depth)
    out[collection] = tree
  return out


class ViT(nn.Module):
  """Returns h (N, width): the final-normed CLS token (pool='cls') or mean patch token ('mean').

  `image_size` is the side the position embedding is made for; other (even non-square) inputs
  get it resized to their grid. With `drop_path > 0`, calls with train=True need a 'dropout' rng
  (`apply(..., rngs={'dropout': key})`); train=False is deterministic. `use_cls=False` builds a
  ViT of patch tokens only (I-JEPA's), which needs pool='mean'.
  """

  patch_size: int
  width: int
  depth: int
  num_heads: int
  mlp_ratio: float = 4.0
  image_size: int = 224
  pos_embed: str = 'learned'  # learned | sincos
  drop_path: float = 0.0
  pool: str = 'cls'  # cls | mean
  pixel_mean: tuple[float, ...] = (0.0,)  # embed standardizes pixels per channel
  pixel_std: tuple[float, ...] = (1.0,)
  use_cls: bool = True
  dtype: Any = jnp.float32
  kernels: Kernels = XLA  # ssljax.models.kernels
  # The blocks as one nn.scan (compile time flat in depth; variables stacked under 'blocks',
  # scan_layout / unscan_layout convert), and which activations the backward pass recomputes.
  scan: bool = False
  remat: str = 'none'  # one of REMAT_POLICIES

  def setup(self):
    if self.width % self.num_heads:
      raise ValueError(f'ViT width {self.width} is not divisible by {self.num_heads} heads')
    if self.pos_embed not in ('learned', 'sincos'):
      raise ValueError(f"model.pos_embed must be 'learned' or 'sincos', got {self.pos_embed!r}")
    if self.pool not in ('cls', 'mean'):
      raise ValueError(f"model.pool must be 'cls' or 'mean', got {self.pool!r}")
    if self.pool == 'cls' and not self.use_cls:
      raise ValueError(
        "model.pool='cls' needs a CLS token: set model.cls_token=True or pool='mean'"
      )
    g = self.grid(self.image_size)
    p = self.patch_size
    # A stride-p conv with kernel p: the same map as a Dense over `patchify(images)`.
    self.patch_embed = nn.Conv(
      self.width, (p, p), strides=(p, p), padding='VALID', dtype=self.dtype, kernel_init=_patch_init
    )
    if self.use_cls:
      self.cls_token = self.param('cls_token', _token_init, (1, 1, self.width))
    if self.pos_embed == 'learned':  # row 0 is the CLS token's when there is one
      self.pos_table = self.param('pos_embed', _token_init, (1, self.use_cls + g * g, self.width))
    elif self.width % 4:
      raise ValueError(f'model.pos_embed=sincos needs a width divisible by 4, got {self.width}')
    if self.remat not in REMAT_POLICIES:
      raise ValueError(f'model.remat must be one of {REMAT_POLICIES}, got {self.remat!r}')
    # Stochastic depth rises linearly from 0 at the first block to drop_path at the last.
    self.rates = np.linspace(0.0, self.drop_path, self.depth)
    if self.scan:
      self.blocks = nn.scan(
        _remat(_ScanStep, self.remat, static_argnums=(3,)),
        variable_axes={'params': 0},
        split_rngs={'params': True, 'dropout': True},
        in_axes=(0 if self.drop_path > 0 else nn.broadcast, nn.broadcast, nn.broadcast),
        length=self.depth,
      )(self.num_heads, self.mlp_ratio, self.dtype, self.kernels)
    else:
      block = _remat(Block, self.remat, static_argnums=(2,))
      self.blocks = [
        block(self.num_heads, self.mlp_ratio, float(r), self.dtype, self.kernels)
        for r in self.rates
      ]
    self.norm = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype)

  @nn.nowrap
  def grid(self, image_side: int) -> int:
    """Patches along one side of an image_side-px image."""
    return grid_shape(image_side, image_side, self.patch_size)[0]

  def _patch_pos(self, gh: int, gw: int) -> jax.Array:
    """(1, gh*gw, D) position embedding of the patches of a gh x gw grid."""
    if self.pos_embed == 'sincos':
      return jnp.asarray(sincos_2d(self.width, gh, gw))[None]
    g = self.grid(self.image_size)
    pos = self.pos_table[:, int(self.use_cls) :]
    if (gh, gw) == (g, g):
      return pos
    # DINO's interpolate_pos_encoding: bicubic over the grid, no antialiasing (as F.interpolate).
    pos = jax.image.resize(
      pos.reshape(1, g, g, self.width), (1, gh, gw, self.width), 'bicubic', antialias=False
    )
    return pos.reshape(1, gh * gw, self.width)

  def embed(self, images: jax.Array) -> jax.Array:
    """(N, H, W, C) -> patch tokens with their position embedding (N, L, D), no CLS."""
    gh, gw = grid_shape(images.shape[1], images.shape[2], self.patch_size)
    # Without BatchNorm nothing rescales raw [0, 1] pixels: standardized, the differences between
    # images are not drowned by the constant CLS and position tokens (DINO collapsed without it).
    x = pixels.standardize(images, self.pixel_mean, self.pixel_std)
    x = self.patch_embed(x.astype(self.dtype))
    x = x.reshape(x.shape[0], gh * gw, self.width)
    return (x + self._patch_pos(gh, gw).astype(self.dtype)).astype(jnp.float32)

  def transform(
    self,
    tokens: jax.Array,
    *,
    train: bool,
    add_cls: bool | None = None,
    valid: jax.Array | None = None,
    return_attention: bool = False,
  ) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Tokens (N, L', D) -> [CLS +] blocks -> final norm, (N, [1+]L', D).

    add_cls defaults to the model's use_cls. `valid` (N, L') marks real tokens when the sequence
    is padded (see Attention). With return_attention also returns the last block's attention
    probabilities (N, heads, T, T) in float32.
    """
    x, valid = self._with_cls(tokens, valid, self.use_cls if add_cls is None else add_cls)
    x, attn, _ = self._blocks(x, train, valid, return_attention)
    x = self.norm(x).astype(jnp.float32)
    return (x, attn) if return_attention else x

  def _blocks(
    self, x: jax.Array, train: bool, valid: jax.Array | None, return_attention: bool
  ) -> tuple[jax.Array, jax.Array | None, list[jax.Array]]:
    """Every block in turn: (tokens, the last block's attention or None, each block's CLS)."""
    if not self.scan:
      attn, cls = None, []
      for block in self.blocks:
        x, attn = block(x, train, valid)
        cls.append(x[:, 0])
      return x, attn if return_attention else None, cls
    n, t = x.shape[:2]
    attn = jnp.zeros((n, self.num_heads, t, t), jnp.float32) if return_attention else None
    rates = jnp.asarray(self.rates, jnp.float32) if self.drop_path > 0 else None
    (x, attn), cls = self.blocks((x, attn), rates, train, valid)
    return x, attn, list(cls)

  def _with_cls(
    self, tokens: jax.Array, valid: jax.Array | None, add_cls: bool
  ) -> tuple[jax.Array, jax.Array | None]:
    x = tokens.astype(self.dtype)
    if add_cls:
      cls = self.cls_token
      if self.pos_embed == 'learned':
        cls = cls + self.pos_table[:, :1]  # sincos: CLS has a zero position embedding
      cls = jnp.broadcast_to(cls.astype(self.dtype), (x.shape[0], 1, self.width))
      x = jnp.concatenate([cls, x], axis=1)
      if valid is not None:
        valid = jnp.concatenate([jnp.ones_like(valid[:, :1]), valid], axis=1)
    return x, valid

  def last_cls(self, images: jax.Array, n: int) -> jax.Array:
    """DINO's linear-probe features (eval_linear.py, get_intermediate_layers): the CLS token
    after each of the last n blocks, each through the final norm, concatenated: (N, n * D).
    Inference mode; n = 1 is the CLS of h."""
    if not self.use_cls or not 1 <= n <= self.depth:
      raise ValueError(f'last_cls needs a CLS token and 1 <= n <= {self.depth}, got n={n}')
    x, _ = self._with_cls(self.embed(images), None, True)
    _, _, cls = self._blocks(x, False, None, False)
    return jnp.concatenate([self.norm(c).astype(jnp.float32) for c in cls[-n:]], axis=-1)

  def tokens(self, images: jax.Array, *, train: bool) -> jax.Array:
    """The final-normed patch tokens (N, L, D) of the whole image, CLS (if any) dropped."""
    return self.transform(self.embed(images), train=train)[:, int(self.use_cls) :]

  def __call__(
    self, images: jax.Array, *, train: bool, return_attention: bool = False
  ) -> jax.Array | tuple[jax.Array, jax.Array]:
    out = self.transform(self.embed(images), train=train, return_attention=return_attention)
    x, attn = out if return_attention else (out, None)
    if self.pool == 'cls':
      h = x[:, 0]
    else:
      h = jnp.mean(x[:, int(self.use_cls) :], axis=1)
    return (h, attn) if return_attention else h


def vit(
  name: str,
  *,
  patch_size: int,
  image_size: int,
  pos_embed: str = 'learned',
  drop_path: float = 0.0,
  pool: str = 'cls',
  dtype: Any = jnp.float32,
  pixel_mean: tuple[float, ...] = (0.0,),
  pixel_std: tuple[float, ...] = (1.0,),
  width: int = 0,
  depth: int = 0,
  num_heads: int = 0,
  use_cls: bool = True,
  kernels: Kernels = XLA,
  scan: bool = False,
  remat: str = 'none',
) -> ViT:
  """Builds a ViT by name ('vit_tiny', 'vit_small', 'vit_base') for image_size-px inputs.

  width, depth, num_heads > 0 override the named size's (CPU-sized models for small data).
  """
  width, depth, num_heads = (
    o or n for o, n in zip((width, depth, num_heads), _size(name), strict=True)
  )
  return ViT(
    patch_size=patch_size,
    width=width,
    depth=depth,
    num_heads=num_heads,
    image_size=image_size,
    pos_embed=pos_embed,
    drop_path=drop_path,
    pool=pool,
    pixel_mean=pixel_mean,
    pixel_std=pixel_std,
    use_cls=use_cls,
    dtype=dtype,
    kernels=kernels,
    scan=scan,
    remat=remat,
  )


def feature_dim(name: str, width: int = 0) -> int:
  """Width of h: the token width (`width` when it overrides the named size's)."""
  return width or _size(name)[0]


def _size(name: str) -> tuple[int, int, int]:
  if name not in VIT_SIZES:
    raise ValueError(
      f'config.model.encoder {name!r} is not a ViT; choose one of {sorted(VIT_SIZES)}'
    )
  return VIT_SIZES[name]

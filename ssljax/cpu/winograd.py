"""A 3x3 stride-1 SAME convolution by Winograd's minimal filtering F(2x2, 3x3), for XLA:CPU.

Each 2x2 block of outputs is computed from a 4x4 tile of the padded input as
Y = A^T [(G w G^T) * (B^T d B)] A (Lavin & Gray 2016, "Fast Algorithms for Convolutional Neural
Networks"), where the elementwise product, summed over input channels, becomes 16 matrix products
(one per tile position): 16 multiply-adds per block and channel pair where the direct convolution
spends 36, so 2.25 times fewer. B, G and A hold only 0, +-1 and +-1/2, so the result differs from
the direct convolution by float rounding alone. XLA:CPU runs the direct convolution in Eigen and
the matrix products in YNNPACK, which for a ResNet's deeper layers is the faster of the two.

The gradients are Winograd convolutions too: the input's gradient is the convolution of the
output's gradient with the kernel flipped and its channel axes swapped (whose transform is the
forward one's, tile positions permuted), and the kernel's gradient is 16 matrix products of the
transformed input with the output's gradient carried back through A, then carried back through G.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# G (4x3) is [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]; it, B^T (4x4) and A^T
# (2x4) are written out as the sums below. Flipping the kernel reverses G's columns: that is G with
# rows 0 and 3 swapped, so the flipped kernel's tile positions are the kernel's, permuted.
_FLIP = np.array([3, 1, 2, 0])


def _input_transform(d: list[jax.Array]) -> list[jax.Array]:
  """B^T applied along one axis: four tile rows (or columns) d0..d3 -> four transformed ones."""
  return [d[0] - d[2], d[1] + d[2], d[2] - d[1], d[1] - d[3]]


def _output_transform(m: list[jax.Array]) -> list[jax.Array]:
  """A^T applied along one axis: four transformed rows -> the two output rows of the tile."""
  return [m[0] + m[1] + m[2], m[1] - m[2] - m[3]]


def transform_input(x: jax.Array) -> jax.Array:
  """(N, H, W, C), H and W even -> (16, N * H/2 * W/2, C): B^T d B of every 4x4 tile of the
  once-padded input, tile (i, j) starting at padded row 2i and column 2j."""
  n, h, w, c = x.shape
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))).reshape(n, h // 2 + 1, 2, w + 2, c)
  rows = [padded[:, :-1, 0], padded[:, :-1, 1], padded[:, 1:, 0], padded[:, 1:, 1]]
  tiles = []
  for row in _input_transform(rows):
    row = row.reshape(n, h // 2, w // 2 + 1, 2, c)
    columns = [row[:, :, :-1, 0], row[:, :, :-1, 1], row[:, :, 1:, 0], row[:, :, 1:, 1]]
    tiles += _input_transform(columns)
  return jnp.stack(tiles).reshape(16, -1, c)


def _kernel_transform(g: list[jax.Array]) -> list[jax.Array]:
  """G applied along one axis: three kernel rows (or columns) -> four transformed ones."""
  return [g[0], (g[0] + g[1] + g[2]) * 0.5, (g[0] - g[1] + g[2]) * 0.5, g[2]]


def _kernel_transform_transposed(u: list[jax.Array]) -> list[jax.Array]:
  """G^T applied along one axis: four transformed rows -> three kernel rows."""
  return [u[0] + (u[1] + u[2]) * 0.5, (u[1] - u[2]) * 0.5, (u[1] + u[2]) * 0.5 + u[3]]


def transform_kernel(w: jax.Array) -> jax.Array:
  """(3, 3, C, O) -> (16, C, O): G w G^T for every channel pair."""
  rows = _kernel_transform([w[k] for k in range(3)])
  return jnp.stack([t for row in rows for t in _kernel_transform([row[j] for j in range(3)])])


def untransform_output(m: jax.Array, shape: tuple[int, int, int]) -> jax.Array:
  """(16, N * H/2 * W/2, O) -> (N, H, W, O): A^T M A of every tile, its 2x2 block in place."""
  n, h, w = shape
  m = m.reshape(4, 4, n, h // 2, w // 2, -1)
  rows = _output_transform([m[a] for a in range(4)])
  blocks = [jnp.stack(_output_transform([r[b] for b in range(4)]), axis=3) for r in rows]
  return jnp.stack(blocks, axis=2).reshape(n, h, w, -1)


@jax.custom_vjp
def conv(x: jax.Array, w: jax.Array) -> jax.Array:
  """The 3x3 stride-1 SAME NHWC convolution of x (even height and width) with w (HWIO)."""
  return _conv_fwd(x, w)[0]


def _conv_fwd(x, w):
  u = transform_kernel(w)
  y = untransform_output(jnp.einsum('etc,eco->eto', transform_input(x), u), x.shape[:3])
  return y, (x, u)


def _conv_bwd(residuals, dy):
  x, u = residuals
  # The input's gradient: dy convolved with w flipped, in and out swapped: U permuted, transposed.
  flipped = u.reshape(4, 4, *u.shape[1:])[_FLIP][:, _FLIP].reshape(u.shape)
  dv = jnp.einsum('eto,eco->etc', transform_input(dy), flipped)
  dx = untransform_output(dv, x.shape[:3])
  # The kernel's gradient: dU = V^T dM, dM = A dy A^T per tile; then dW = G^T dU G.
  products = jax.ShapeDtypeStruct((16, dv.shape[1], u.shape[2]), dy.dtype)
  (dm,) = jax.linear_transpose(lambda m: untransform_output(m, x.shape[:3]), products)(dy)
  du = jnp.einsum('etc,eto->eco', transform_input(x), dm).reshape(4, 4, *u.shape[1:])
  rows = _kernel_transform_transposed([du[a] for a in range(4)])
  dw = jnp.stack([jnp.stack(_kernel_transform_transposed([r[b] for b in range(4)])) for r in rows])
  return dx, dw


conv.defvjp(_conv_fwd, _conv_bwd)

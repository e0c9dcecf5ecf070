"""Pictures of what a self-supervised model learned: NumPy arrays in, PNG/GIF files out.

Plotting only, so it imports neither JAX nor TensorFlow: callers pass `np.asarray(...)` (a JAX
array also works, NumPy converts it). Figures are built as `matplotlib.figure.Figure` with the
Agg canvas rather than through pyplot, so no display is needed, no global backend is switched
for the user, and no figure is left registered in pyplot's global list (nothing leaks).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from sklearn.manifold import TSNE

from ssljax import paths

PROJECTIONS = ('pca', 'tsne', 'umap')
_CELL_IN = 2.0  # inches per image cell in the attention / reconstruction grids
_DPI = 100


# ----------------------------------------------------------------------------- projections


def project_2d(features: np.ndarray, method: str = 'pca', seed: int = 0) -> np.ndarray:
  """Projects (N, D) features to (N, 2) points for an embedding scatter plot.

  'pca' is exact and cheap, and its sign is fixed (see `_pca_2d`) so frames of an animation do
  not mirror at random; 'tsne' and 'umap' show clusters better but move between frames.
  """
  features = np.asarray(features, dtype=np.float64)
  if features.ndim != 2:
    raise ValueError(f'features must be (N, D), got shape {features.shape}')
  if method == 'pca':
    return _pca_2d(features)
  if method == 'tsne':
    n = features.shape[0]
    if n < 3:
      return _pca_2d(features)  # t-SNE needs perplexity < N; nothing to cluster anyway
    tsne = TSNE(n_components=2, init='pca', random_state=seed, perplexity=min(30.0, (n - 1) / 3))
    return np.asarray(tsne.fit_transform(features), dtype=np.float64)
  if method == 'umap':
    try:
      import umap
    except ImportError as e:
      raise ImportError(
        "config.visualize.projection='umap' needs the optional package umap-learn: "
        "pip install umap-learn (or use 'pca' or 'tsne')"
      ) from e
    reducer = umap.UMAP(n_components=2, random_state=seed)
    return np.asarray(reducer.fit_transform(features), dtype=np.float64)
  raise ValueError(
    f'Unknown config.visualize.projection {method!r}; choose one of {", ".join(PROJECTIONS)}'
  )


def _pca_2d(x: np.ndarray) -> np.ndarray:
  """Top-2 principal-component scores, with the sign of each fixed by the data.

  Each column is flipped so that its largest-|score| point has a positive score. The rule looks
  at the projected points, not at the axes of the feature space, so the result is the same for
  `x` and `-x` (or any rotation of the features, which an SSL model is free to pick), and the
  same on every call. Missing components (N < 3 or D < 2) are zeros.
  """
  n = x.shape[0]
  out = np.zeros((n, 2), dtype=np.float64)
  if n == 0:
    return out
  centered = x - x.mean(axis=0, keepdims=True)
  _, _, vt = np.linalg.svd(centered, full_matrices=False)
  k = min(2, vt.shape[0])
  scores = centered @ vt[:k].T
  signs = np.sign(scores[np.argmax(np.abs(scores), axis=0), np.arange(k)])
  signs[signs == 0] = 1.0
  out[:, :k] = scores * signs
  return out


# ----------------------------------------------------------------------------- embedding frames


def save_embedding_frame(
  points: np.ndarray,
  labels: np.ndarray,
  path: str,
  *,
  title: str,
  class_names: Sequence[str] | None = None,
) -> None:
  """Saves one frame of the embedding evolution: a 2D scatter coloured by class, as PNG.

  Every frame has the same pixel size (fixed figure size, no tight bbox), so `save_frames` can
  stack them into a GIF. The legend sits outside the axes so it never hides points; past 20
  classes it is dropped because the qualitative colours repeat and it would be unreadable.
  """
  points = np.asarray(points, dtype=np.float64)
  labels = np.asarray(labels).reshape(-1)
  if points.ndim != 2 or points.shape[1] != 2:
    raise ValueError(f'points must be (N, 2), got shape {points.shape}')
  if labels.shape[0] != points.shape[0]:
    raise ValueError(f'{labels.shape[0]} labels for {points.shape[0]} points')

  classes = np.unique(labels)
  cmap = colormaps['tab10' if len(classes) <= 10 else 'tab20']
  fig = Figure(figsize=(6.0, 5.0), dpi=_DPI)
  ax = fig.add_axes((0.05, 0.05, 0.7, 0.85))
  for i, c in enumerate(classes):
    sel = labels == c
    ax.scatter(
      points[sel, 0],
      points[sel, 1],
      s=8,
      alpha=0.8,
      color=cmap(i % cmap.N),
      label=_class_name(c, class_names),
      linewidths=0,
    )
  ax.set_title(title)
  ax.set_xticks([])
  ax.set_yticks([])
  if 0 < len(classes) <= 20:
    ax.legend(
      loc='upper left',
      bbox_to_anchor=(1.02, 1.0),
      fontsize='small' if len(classes) <= 10 else 'x-small',
      markerscale=2.0,
      frameon=False,
    )
  save_png(fig, path)


def _class_name(label: object, class_names: Sequence[str] | None) -> str:
  if class_names is not None and isinstance(label, (int, np.integer)):
    if 0 <= int(label) < len(class_names):
      return str(class_names[int(label)])
  return str(label)


def save_frames(
  frame_paths: Sequence[str],
  gif_path: str | None,
  grid_path: str | None,
  duration_ms: int = 700,
) -> None:
  """Turns the saved frames into an animated GIF and/or one tiled PNG (up to 4 columns).

  Frames are resized to the first frame's size if they differ. Pillow merges identical
  consecutive GIF frames into one (adding up their durations), so a GIF can have fewer frames
  than `frame_paths` if the embedding did not change at all between two frames.
  """
  if gif_path is None and grid_path is None:
    return
  if not frame_paths:
    raise ValueError('save_frames needs at least one frame')
  frames = []
  for p in frame_paths:
    with Image.open(io.BytesIO(paths.path(p).read_bytes())) as im:
      frames.append(im.convert('RGB'))
  size = frames[0].size
  frames = [f if f.size == size else f.resize(size, Image.Resampling.BILINEAR) for f in frames]

  if gif_path is not None:
    gif = io.BytesIO()
    frames[0].save(
      gif,
      format='GIF',
      save_all=True,
      append_images=frames[1:],
      duration=int(duration_ms),
      loop=0,
    )
    paths.write_atomic(gif_path, gif.getvalue())
  if grid_path is not None:
    cols = min(4, len(frames))
    rows = math.ceil(len(frames) / cols)
    w, h = size
    grid = Image.new('RGB', (cols * w, rows * h), 'white')
    for i, f in enumerate(frames):
      grid.paste(f, ((i % cols) * w, (i // cols) * h))
    png = io.BytesIO()
    grid.save(png, format='PNG')
    paths.write_atomic(grid_path, png.getvalue())


# ----------------------------------------------------------------------------- image grids


def save_attention_maps(
  images: np.ndarray,
  attention: np.ndarray,
  path: str,
  *,
  title: str | None = None,
) -> None:
  """Saves the DINO picture: each image, then each head's attention overlaid on it, then the mean.

  `attention` is (N, heads, h, w), the CLS-to-patch attention already on the patch grid. Each
  map is min-max normalised on its own (heads differ a lot in scale) and upsampled to the image
  size by nearest neighbour, so every patch stays a visible square, as in the DINO paper.
  """
  images = _as_images(images, 'images')
  attention = np.asarray(attention, dtype=np.float64)
  if attention.ndim != 4 or attention.shape[0] != images.shape[0]:
    raise ValueError(
      f'attention must be (N, heads, h, w) with N={images.shape[0]}, got shape {attention.shape}'
    )
  n, height, width, _ = images.shape
  heads = attention.shape[1]
  maps = np.concatenate([attention, attention.mean(axis=1, keepdims=True)], axis=1)
  col_titles = ['image'] + [f'head {i + 1}' for i in range(heads)] + ['mean']

  fig, axes = _grid_figure(n, len(col_titles), title)
  for r in range(n):
    gray = _grayscale(images[r])
    _show(axes[r, 0], images[r])
    for k in range(maps.shape[1]):
      ax = axes[r, k + 1]
      ax.imshow(gray, cmap='gray', vmin=0.0, vmax=1.0)
      ax.imshow(
        _upsample(_minmax(maps[r, k]), height, width),
        cmap='inferno',
        alpha=0.6,
        vmin=0.0,
        vmax=1.0,
      )
  _set_column_titles(axes, col_titles)
  save_png(fig, path)


def save_reconstructions(
  original: np.ndarray,
  masked: np.ndarray,
  reconstruction: np.ndarray,
  pasted: np.ndarray,
  path: str,
  *,
  title: str | None = None,
) -> None:
  """Saves the MAE picture: one row per image, original / masked / reconstruction / pasted.

  `pasted` is the reconstruction with the visible patches replaced by the input's, the usual
  way to judge only what the model had to guess. Values are clipped to [0, 1].
  """
  columns = [
    _as_images(original, 'original'),
    _as_images(masked, 'masked'),
    _as_images(reconstruction, 'reconstruction'),
    _as_images(pasted, 'pasted'),
  ]
  shapes = {c.shape for c in columns}
  if len(shapes) != 1:
    raise ValueError(f'original, masked, reconstruction and pasted differ in shape: {shapes}')
  n = columns[0].shape[0]
  fig, axes = _grid_figure(n, 4, title)
  for r in range(n):
    for k, col in enumerate(columns):
      _show(axes[r, k], col[r])
  _set_column_titles(axes, ['original', 'masked', 'reconstruction', 'reconstruction + visible'])
  save_png(fig, path)


# ----------------------------------------------------------------------------- helpers


def _as_images(x: np.ndarray, name: str) -> np.ndarray:
  """(N, H, W, C) float in [0, 1] with C in {1, 3}; (N, H, W) is read as grayscale."""
  x = np.asarray(x, dtype=np.float64)
  if x.ndim == 3:
    x = x[..., None]
  if x.ndim != 4 or x.shape[-1] not in (1, 3):
    raise ValueError(f'{name} must be (N, H, W, C) with C in {{1, 3}}, got shape {x.shape}')
  return np.clip(np.nan_to_num(x), 0.0, 1.0)


def _grayscale(image: np.ndarray) -> np.ndarray:
  if image.shape[-1] == 1:
    return image[..., 0]
  return image @ np.array([0.299, 0.587, 0.114])


def _minmax(a: np.ndarray) -> np.ndarray:
  lo, hi = float(np.min(a)), float(np.max(a))
  if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
    return np.zeros_like(a)  # a flat map carries no information; draw it as all-low
  return (a - lo) / (hi - lo)


def _upsample(a: np.ndarray, height: int, width: int) -> np.ndarray:
  """Nearest-neighbour resize of a (h, w) map to (height, width); works for any ratio."""
  h, w = a.shape
  rows = np.minimum(np.arange(height) * h // height, h - 1)
  cols = np.minimum(np.arange(width) * w // width, w - 1)
  return a[rows[:, None], cols[None, :]]


def _show(ax, image: np.ndarray) -> None:
  if image.shape[-1] == 1:
    ax.imshow(image[..., 0], cmap='gray', vmin=0.0, vmax=1.0)
  else:
    ax.imshow(image)


def _grid_figure(rows: int, cols: int, title: str | None):
  """A figure of rows x cols image cells of fixed size, so more columns means a wider PNG."""
  title_in = 0.4 if title else 0.0
  fig = Figure(figsize=(_CELL_IN * cols, _CELL_IN * rows + 0.3 + title_in), dpi=_DPI)
  axes = fig.subplots(rows, cols, squeeze=False)
  for ax in axes.flat:
    ax.set_axis_off()
  if title:
    fig.suptitle(title)
  fig.set_layout_engine('constrained')
  return fig, axes


def _set_column_titles(axes: np.ndarray, titles: Sequence[str]) -> None:
  for ax, t in zip(axes[0], titles, strict=True):
    ax.set_title(t, fontsize='small')


def save_png(fig: Figure, path: str) -> None:
  """Writes the figure as PNG, whole or not at all (`paths.write_atomic`), and drops its artists
  (the Figure is never known to pyplot)."""
  FigureCanvasAgg(fig)
  png = io.BytesIO()
  try:
    fig.savefig(png, format='png', dpi=_DPI)
  finally:
    fig.clear()
  paths.write_atomic(path, png.getvalue())

"""ssljax.monitor.pictures: projections are right, and every picture is a real, sized file."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
from matplotlib import _pylab_helpers
from PIL import Image
from sklearn.decomposition import PCA

from ssljax.monitor import pictures


def _structured(n: int = 200, d: int = 16, seed: int = 0) -> np.ndarray:
  """Data with two clearly different leading variances, so the PCA axes are well defined."""
  rng = np.random.default_rng(seed)
  latent = rng.normal(size=(n, 2)) * np.array([5.0, 2.0])
  basis = np.linalg.qr(rng.normal(size=(d, d)))[0][:2]
  return latent @ basis + 0.1 * rng.normal(size=(n, d)) + 3.0


def _rgb(path: str) -> np.ndarray:
  with Image.open(path) as im:
    return np.asarray(im.convert('RGB'))


def _size(path: str) -> tuple[int, int]:
  with Image.open(path) as im:
    return im.size  # (width, height)


@pytest.fixture(autouse=True)
def _no_leaked_figures():
  yield
  assert _pylab_helpers.Gcf.get_num_fig_managers() == 0


def test_module_imports_no_ml_framework():
  code = (
    'import sys, ssljax.monitor.pictures; '
    "bad = [m for m in ('jax', 'flax', 'tensorflow') if m in sys.modules]; "
    'assert not bad, bad'
  )
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  subprocess.run([sys.executable, '-c', code], check=True, cwd=root)


def test_pca_matches_sklearn_up_to_sign():
  x = _structured()
  ours = pictures.project_2d(x, 'pca')
  ref = PCA(2).fit_transform(x)
  assert ours.shape == (200, 2)
  for k in range(2):
    sign = np.sign(ours[:, k] @ ref[:, k])
    np.testing.assert_allclose(ours[:, k], sign * ref[:, k], atol=1e-8)
  assert ours[:, 0].var() >= ours[:, 1].var()


def test_pca_sign_rule_is_deterministic_and_invariant():
  x = _structured(seed=1)
  a = pictures.project_2d(x, 'pca')
  np.testing.assert_array_equal(a, pictures.project_2d(x, 'pca'))
  # The rule (largest-|score| point positive) only looks at the scores, so negating or rotating
  # the feature space gives the same picture.
  np.testing.assert_allclose(pictures.project_2d(-x, 'pca'), a, atol=1e-8)
  q = np.linalg.qr(np.random.default_rng(2).normal(size=(16, 16)))[0]
  np.testing.assert_allclose(pictures.project_2d(x @ q, 'pca'), a, atol=1e-8)
  idx = np.argmax(np.abs(a), axis=0)
  assert a[idx[0], 0] > 0 and a[idx[1], 1] > 0


def test_pca_small_inputs():
  assert pictures.project_2d(np.ones((1, 5)), 'pca').shape == (1, 2)
  one_dim = pictures.project_2d(np.arange(6.0)[:, None], 'pca')
  assert one_dim.shape == (6, 2)
  np.testing.assert_array_equal(one_dim[:, 1], 0.0)


def test_tsne_keeps_clusters_apart_and_is_seeded():
  """Three well-separated clusters in 16-D stay three clusters in 2-D: every point's nearest
  neighbour in the projection is from its own cluster; the same seed gives the same picture."""
  rng = np.random.default_rng(0)
  centres = 10.0 * rng.normal(size=(3, 16))
  labels = np.repeat(np.arange(3), 20)
  x = centres[labels] + rng.normal(size=(60, 16))
  out = pictures.project_2d(x, 'tsne', seed=0)
  assert out.shape == (60, 2) and np.all(np.isfinite(out))
  dist = np.linalg.norm(out[:, None] - out[None], axis=-1) + np.diag(np.full(60, np.inf))
  np.testing.assert_array_equal(labels[np.argmin(dist, axis=1)], labels)
  np.testing.assert_array_equal(pictures.project_2d(x, 'tsne', seed=0), out)


def test_unknown_projection_raises():
  with pytest.raises(ValueError, match='config.visualize.projection'):
    pictures.project_2d(_structured(n=10), 'isomap')


@pytest.mark.skipif(importlib.util.find_spec('umap') is not None, reason='umap-learn installed')
def test_umap_missing_raises_import_error():
  with pytest.raises(ImportError, match='umap-learn') as info:
    pictures.project_2d(_structured(n=10), 'umap')
  assert 'config.visualize.projection' in str(info.value)


def _frame(tmp_path, i: int, n_classes: int = 3) -> str:
  rng = np.random.default_rng(i)
  labels = np.repeat(np.arange(n_classes), 20)
  points = rng.normal(size=(labels.size, 2)) + labels[:, None] * (i + 1)
  path = str(tmp_path / 'frames' / f'step_{i:03d}.png')
  pictures.save_embedding_frame(
    points, labels, path, title=f'SimCLR  step {i * 100}', class_names=['cat', 'dog', 'ship']
  )
  return path


def test_save_embedding_frame(tmp_path):
  path = _frame(tmp_path, 0)  # also checks the parent directory is created
  pixels = _rgb(path)
  assert pixels.shape[0] > 0 and pixels.shape[1] > 0
  assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 10  # not a flat colour
  # Same figure size for every frame, whatever the data, so frames stack into a GIF.
  assert _size(_frame(tmp_path, 1)) == _size(path)


def test_save_frames_gif_and_grid(tmp_path):
  paths = [_frame(tmp_path, i) for i in range(5)]
  gif, grid = str(tmp_path / 'out' / 'emb.gif'), str(tmp_path / 'out' / 'emb.png')
  pictures.save_frames(paths, gif, grid, duration_ms=300)
  with Image.open(gif) as im:
    assert im.n_frames == 5
    assert im.info.get('loop') == 0
  w, h = _size(paths[0])
  assert _size(grid) == (4 * w, 2 * h)  # 5 frames -> 4 columns x 2 rows


def test_save_frames_resizes_odd_frame(tmp_path):
  paths = [_frame(tmp_path, i) for i in range(2)]
  odd = str(tmp_path / 'odd.png')
  Image.new('RGB', (50, 40), 'red').save(odd)
  grid = str(tmp_path / 'grid.png')
  pictures.save_frames([*paths, odd], None, grid)
  w, h = _size(paths[0])
  assert _size(grid) == (3 * w, h)


@pytest.mark.parametrize('channels', [1, 3])
def test_save_attention_maps_width_grows_with_heads(tmp_path, channels):
  rng = np.random.default_rng(0)
  images = rng.uniform(size=(2, 32, 32, channels))
  sizes = {}
  for heads in (1, 3):
    attention = rng.uniform(size=(2, heads, 4, 4))
    path = str(tmp_path / f'attn_{heads}.png')
    pictures.save_attention_maps(images, attention, path, title='DINO  step 10')
    sizes[heads] = _size(path)
  assert sizes[3][0] > sizes[1][0]
  assert sizes[3][1] == sizes[1][1]


def test_save_attention_maps_flat_map_and_bad_shape(tmp_path):
  images = np.zeros((1, 16, 16, 3))
  path = str(tmp_path / 'flat.png')
  pictures.save_attention_maps(images, np.ones((1, 2, 2, 2)), path)  # no division by zero
  assert os.path.getsize(path) > 0
  with pytest.raises(ValueError, match='heads'):
    pictures.save_attention_maps(images, np.ones((2, 2, 2, 2)), path)


def test_save_reconstructions_rows(tmp_path):
  rng = np.random.default_rng(0)
  sizes = {}
  for n in (1, 3):
    arrays = [rng.uniform(-0.2, 1.2, size=(n, 24, 24, 3)) for _ in range(4)]  # clipped
    path = str(tmp_path / f'mae_{n}.png')
    pictures.save_reconstructions(*arrays, path, title='MAE  step 5')
    sizes[n] = _size(path)
  assert sizes[3][1] > sizes[1][1]
  assert sizes[3][0] == sizes[1][0]
  assert sizes[1][0] > sizes[1][1]  # 4 columns x 1 row is wide
  gray = [rng.uniform(size=(2, 24, 24, 1)) for _ in range(4)]
  pictures.save_reconstructions(*gray, str(tmp_path / 'gray.png'))
  with pytest.raises(ValueError, match='shape'):
    pictures.save_reconstructions(*gray[:3], gray[3][:1], str(tmp_path / 'bad.png'))

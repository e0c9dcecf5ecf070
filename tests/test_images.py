"""ssljax.data.images: every format a user's folder holds, scaled by its bit depth; broken files
raise BadImageError; DICOM through pydicom's own CT and MR test files."""

import builtins
import io
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from ssljax.data import images


def _save(path, array, mode=None, **kwargs):
  Image.fromarray(array, mode=mode).save(path, **kwargs)
  return str(path)


def test_8_bit_grayscale_rgb_rgba_and_palette(tmp_path):
  rng = np.random.default_rng(0)
  gray = rng.integers(0, 256, (5, 7), dtype=np.uint8)
  rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
  x = images.read_image(_save(tmp_path / 'g.png', gray))
  np.testing.assert_allclose(x[..., 0], gray / 255.0, atol=1e-7)
  assert x.shape == (5, 7, 1) and x.dtype == np.float32
  np.testing.assert_allclose(images.read_image(_save(tmp_path / 'c.bmp', rgb)), rgb / 255.0)
  np.testing.assert_allclose(images.read_image(_save(tmp_path / 'c.tif', rgb)), rgb / 255.0)
  # RGBA: the colour kept, alpha dropped.
  rgba = np.concatenate([rgb, np.full((5, 7, 1), 128, np.uint8)], axis=-1)
  np.testing.assert_allclose(images.read_image(_save(tmp_path / 'a.png', rgba)), rgb / 255.0)
  # Palette: each index looked up in its palette.
  palette_image = Image.fromarray(np.array([[0, 1], [2, 1]], np.uint8), mode='P')
  palette_image.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 759)
  palette_image.save(tmp_path / 'p.png')
  expected = np.array([[[1, 0, 0], [0, 1, 0]], [[0, 0, 1], [0, 1, 0]]], np.float32)
  np.testing.assert_array_equal(images.read_image(str(tmp_path / 'p.png')), expected)


def test_16_bit_png_is_scaled_by_65535_not_clipped_at_255(tmp_path):
  values = np.array([[0, 255, 256], [4095, 40000, 65535]], np.uint16)
  path = _save(tmp_path / 'sixteen.png', values)
  assert Image.open(path).mode.startswith('I')  # really stored as 16-bit
  x = images.read_image(path)
  np.testing.assert_allclose(x[..., 0], values / 65535.0, rtol=1e-6)
  assert len(np.unique(x)) == 6  # 255 and 256 stay apart


def test_broken_files_raise_bad_image_error_naming_the_file(tmp_path):
  good = io.BytesIO()
  Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 77).save(good, format='JPEG')
  (tmp_path / 'truncated.jpg').write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
  (tmp_path / 'empty.png').write_bytes(b'')
  (tmp_path / 'notes.jpg').write_text('not an image, despite the name')
  for name in ('truncated.jpg', 'empty.png', 'notes.jpg'):
    with pytest.raises(images.BadImageError) as e:
      images.read_image(str(tmp_path / name))
    assert e.value.path == str(tmp_path / name) and e.value.reason
  assert images.is_image_file('x/a.JPG') and images.is_image_file('b.dcm')
  assert not images.is_image_file('labels.csv')


def test_dicom_ct_and_mr_follow_rescale_window_and_bit_depth():
  pydicom = pytest.importorskip('pydicom')
  from pydicom.data import get_testdata_file

  # CT: stored values through RescaleSlope 1 / RescaleIntercept -1024 (Hounsfield units), no
  # window, so scaled by the rescaled range of its signed 16 stored bits.
  ct_path = get_testdata_file('CT_small.dcm')
  ct = pydicom.dcmread(ct_path)
  assert (ct.RescaleSlope, ct.RescaleIntercept, 'WindowCenter' in ct) == (1, -1024, False)
  bits, signed = ct.BitsStored, ct.PixelRepresentation == 1
  low = (-(2 ** (bits - 1)) if signed else 0) - 1024
  high = (2 ** (bits - 1) - 1 if signed else 2**bits - 1) - 1024
  hu = ct.pixel_array.astype(np.float64) - 1024
  x = images.read_image(ct_path)
  assert x.shape == ct.pixel_array.shape + (1,)
  np.testing.assert_allclose(x[..., 0], (hu - low) / (high - low), rtol=1e-6)
  # MR: its window (center c, width w) maps c - 0.5 - (w - 1) / 2 .. c - 0.5 + (w - 1) / 2 onto
  # [0, 1], values outside clipped (DICOM PS3.3 C.11.2.1.2.1).
  mr_path = get_testdata_file('MR_small.dcm')
  mr = pydicom.dcmread(mr_path)
  c, w = float(mr.WindowCenter), float(mr.WindowWidth)
  expected = np.clip((mr.pixel_array - (c - 0.5)) / (w - 1) + 0.5, 0, 1)
  np.testing.assert_allclose(images.read_image(mr_path)[..., 0], expected, rtol=1e-6)
  # A window of the user's (config.data.dicom_window) replaces the file's, or its absence: CT
  # soft tissue (40, 400) in Hounsfield units.
  soft = np.clip((hu - 39.5) / 399 + 0.5, 0, 1)
  windowed = images.read_image(ct_path, dicom_window=(40, 400))
  np.testing.assert_allclose(windowed[..., 0], soft, rtol=1e-6)
  assert windowed.std() > 10 * x.std()  # the contrast the full 16-bit range hides


def test_dicom_without_pydicom_names_the_extra(tmp_path, monkeypatch):
  real_import = builtins.__import__

  def no_pydicom(name, *args, **kwargs):
    if name == 'pydicom' or name.startswith('pydicom.'):
      raise ImportError('No module named pydicom')
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, '__import__', no_pydicom)
  (tmp_path / 'scan.dcm').write_bytes(b'\0' * 200)
  with pytest.raises(images.MissingExtraError, match=r"pip install -e '\.\[medical\]'"):
    images.read_image(str(tmp_path / 'scan.dcm'))


def _mixed_folder(root):
  """Two classes of 8-bit RGB PNGs plus RGBA, palette and 16-bit images, three broken files and
  a text file: 46 image files, 3 of them unreadable."""
  rng = np.random.default_rng(1)
  for c in ('cat', 'dog'):
    (root / c).mkdir(parents=True)
    for i in range(20):
      _save(root / c / f'{i}.png', rng.integers(0, 256, (12, 10, 3), dtype=np.uint8))
  _save(root / 'cat' / 'rgba.png', rng.integers(0, 256, (9, 9, 4), dtype=np.uint8))
  Image.fromarray(rng.integers(0, 4, (9, 9), dtype=np.uint8), mode='P').save(root / 'dog' / 'p.png')
  _save(root / 'dog' / 'deep.png', rng.integers(0, 65536, (9, 9), dtype=np.uint16))
  good = io.BytesIO()
  Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(good, format='JPEG')
  (root / 'cat' / 'truncated.jpg').write_bytes(good.getvalue()[:100])
  (root / 'dog' / 'empty.png').write_bytes(b'')
  (root / 'dog' / 'notes.jpg').write_text('text')
  (root / 'cat' / 'README.txt').write_text('not an image: ignored, not counted')
  return ['cat/truncated.jpg', 'dog/empty.png', 'dog/notes.jpg']


def test_folder_source_skips_counts_and_names_unreadable_files(tmp_path, caplog):
  from ssljax import data, errors
  from ssljax.data import scan
  from ssljax.methods import SimCLR

  bad = _mixed_folder(tmp_path / 'images')
  config = SimCLR.default_config(16)
  config.data.source, config.data.path = 'folder', str(tmp_path / 'images')
  config.data.max_bad_fraction = 0.1
  assert data.dataset_info(config) == data.DatasetInfo(46, 2, (16, 16, 3))
  with caplog.at_level('WARNING'):
    x, y = data.load_eval_split(config, 'train')  # streams every file once
  assert x.shape == (43, 16, 16, 3) and x.dtype == np.float32
  assert np.bincount(y).tolist() == [21, 22]
  logged = caplog.text
  assert '(3 of 46 so far)' in logged
  assert all(str(tmp_path / 'images' / b) in logged for b in bad)
  assert [s.split(': ')[0] for s in data.skipped_files(config)] == [
    str(tmp_path / 'images' / b) for b in bad
  ]
  # Past max_bad_fraction: a user error naming them, exit code 2 from the commands.
  config.data.max_bad_fraction = 0.05
  with pytest.raises(errors.DataError, match='3 of 46 image files cannot be read') as e:
    data.load_eval_split(config, 'train')
  assert all(b in str(e.value) for b in bad) and e.value.exit_code == 2
  # The scanner counts what the source would read and names the same files.
  report = scan.scan(str(tmp_path / 'images'))
  assert report['files'] == 46 and report['formats'] == {'png': 44, 'jpg': 2}
  assert sorted(os.path.relpath(f, tmp_path / 'images') for f, _ in report['bad']) == bad
  assert report['modes']['RGB'] == 40 and report['modes']['RGBA'] == 1
  assert sum(report['sizes'].values()) == 43


@pytest.mark.slow
def test_a_run_on_a_folder_with_broken_files_trains_and_names_them(
  tmp_path, config_file, shrink, caplog
):
  import json

  from ssljax import data, train

  bad = _mixed_folder(tmp_path / 'images')
  config = shrink(config_file('simclr_digits.py'), source='folder')
  config.data.path = str(tmp_path / 'images')
  config.data.max_bad_fraction = 0.1
  config.eval = ('knn',)
  config.eval_config.random_init = False
  workdir = tmp_path / 'run'
  with caplog.at_level('WARNING'):
    results = train.train_and_evaluate(config, str(workdir))
  assert results['step'] == 3
  assert '(3 of 46 so far)' in caplog.text and data.dataset_info(config).num_train == 46
  with open(workdir / 'metrics.jsonl') as f:
    logged = [json.loads(line) for line in f]
  counts = [m['data/skipped_files'] for m in logged if 'data/skipped_files' in m]
  assert counts[-1] == 3.0 and counts == sorted(counts)
  report = (workdir / 'report.md').read_text()
  assert '**3 unreadable image file(s) were skipped:**' in report
  assert all(str(tmp_path / 'images' / b) in report for b in bad)


def _dicom_folder(root, per_class=120):
  """train/ and test/ with ct/ and mr/ subfolders: copies of pydicom's own CT and MR files."""
  from pydicom.data import get_testdata_file

  sources = {'ct': ['CT_small.dcm'], 'mr': ['MR_small.dcm', 'MR_small_RLE.dcm']}
  for split, n in (('train', per_class), ('test', per_class // 4)):
    for label, names in sources.items():
      (root / split / label).mkdir(parents=True)
      for i in range(n):
        shutil.copy(get_testdata_file(names[i % len(names)]), root / split / label / f'{i}.dcm')


@pytest.mark.slow
def test_a_run_on_dicom_files_trains_and_evaluates_and_without_pydicom_says_how(
  tmp_path, config_file, shrink, start_main
):
  pytest.importorskip('pydicom')
  from ssljax import train

  _dicom_folder(tmp_path / 'scans')
  config = shrink(config_file('simclr_digits.py'), source='folder')
  config.data.path = str(tmp_path / 'scans')
  config.eval = ('linear', 'knn')
  config.eval_config.random_init = False
  results = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert results['step'] == 3
  assert results['pretrained']['linear'] > 0.9 and results['pretrained']['knn'] > 0.9  # CT vs MR

  # The same folder where pydicom cannot be imported: one line naming the extra, exit 2.
  (tmp_path / 'no_pydicom' / 'pydicom').mkdir(parents=True)
  (tmp_path / 'no_pydicom' / 'pydicom' / '__init__.py').write_text(
    "raise ImportError('No module named pydicom')\n"
  )
  proc = start_main(
    tmp_path / 'run_without',
    '--config=configs/simclr_digits.py',
    '--config.data.source=folder',
    f'--config.data.path={tmp_path / "scans"}',
    env={'PYTHONPATH': str(tmp_path / 'no_pydicom')},
  )
  out = proc.communicate(timeout=300)[0]
  assert proc.returncode == 2, out[-3000:]
  assert "pip install -e '.[medical]'" in out and 'Traceback' not in out

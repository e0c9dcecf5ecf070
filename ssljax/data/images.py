"""One image file to float32 pixels in [0, 1]: PNG, JPEG, BMP, TIFF (8- or 16-bit, grayscale,
RGB, RGBA, palette) through Pillow, DICOM through pydicom (`pip install -e '.[medical]'`).

Pixels are scaled by the file's bit depth (a 16-bit PNG by 65535, a 12-bit DICOM by 4095), never
clipped at 255 and never stretched per image. A file that cannot be decoded (truncated, empty,
not an image despite its name) raises `BadImageError`; the callers skip, count and name it.
NumPy and Pillow only: no TensorFlow.
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

from ssljax.errors import UserError
from ssljax.paths import is_remote

PIL_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff')
DICOM_SUFFIXES = ('.dcm', '.dicom')
IMAGE_SUFFIXES = PIL_SUFFIXES + DICOM_SUFFIXES

_GRAY_MODES = ('1', 'L', 'LA', 'I', 'I;16', 'I;16B', 'I;16L', 'I;16N', 'F')


class BadImageError(Exception):
  """The file has an image's name but no decodable image."""

  def __init__(self, path: str, reason: str):
    self.path, self.reason = path, reason
    super().__init__(f'{path}: {reason}')


class MissingExtraError(UserError):
  """An optional dependency the data needs is not installed; the message says which extra."""


def is_image_file(path: str) -> bool:
  return os.path.splitext(path)[1].lower() in IMAGE_SUFFIXES


def read_image(path: str, *, dicom_window: tuple[float, float] | None = None) -> np.ndarray:
  """(H, W, C) float32 in [0, 1], C = 1 (grayscale) or 3 (colour); BadImageError if unreadable.

  `dicom_window` (center, width), in the units after the rescale (Hounsfield units for CT),
  replaces the window DICOM files carry (e.g. (40, 400) for soft tissue, (-600, 1500) for lung).
  """
  if os.path.splitext(path)[1].lower() in DICOM_SUFFIXES:
    return _read_dicom(path, dicom_window)
  try:
    with Image.open(readable(path)) as im:
      im.load()  # decode now: a truncated file fails here, not later
      return _pil_pixels(im)
  except (OSError, SyntaxError, ValueError) as e:  # Pillow's errors for broken files
    raise BadImageError(path, str(e) or type(e).__name__) from e


def readable(path: str) -> str | io.BytesIO:
  """What Pillow and pydicom open: a local path as it is, a URL (gs://) as its bytes in memory,
  read through fsspec (gcsfs for gs://, the `gcs` extra)."""
  if not is_remote(path):
    return path
  import fsspec

  with fsspec.open(path, 'rb') as f:
    return io.BytesIO(f.read())


def describe(path: str, pixels: np.ndarray | None = None) -> dict:
  """{'size': 'WxH', 'mode': e.g. 'L 8-bit', 'RGB 8-bit', 'I;16', 'DICOM CT 12-bit'} of a
  readable file (decoded in full unless its `pixels` are given, so a broken one raises
  BadImageError)."""
  pixels = read_image(path) if pixels is None else pixels
  h, w = pixels.shape[:2]
  if os.path.splitext(path)[1].lower() in DICOM_SUFFIXES:
    ds = import_pydicom().dcmread(path, stop_before_pixels=True)
    mode = f'DICOM {getattr(ds, "Modality", "?")} {getattr(ds, "BitsStored", "?")}-bit'
  else:
    with Image.open(path) as im:
      mode = im.mode
  return {'size': f'{w}x{h}', 'mode': mode}


def _pil_pixels(im: Image.Image) -> np.ndarray:
  mode = im.mode
  if mode.startswith('I;16'):
    pixels = np.multiply(np.asarray(im, np.uint16), 1 / 65535, dtype=np.float32)
  elif mode == 'I':  # 32-bit integer storage of 16-bit samples (Pillow's 16-bit PNG/TIFF)
    pixels = np.clip(np.multiply(np.asarray(im, np.int32), 1 / 65535, dtype=np.float32), 0, 1)
  elif mode == 'F':
    pixels = np.clip(np.asarray(im, np.float32), 0, 1)
  else:
    if mode == 'P':
      mode = 'RGBA' if 'transparency' in im.info else 'RGB'
      im = im.convert(mode)
    target = 'L' if mode in _GRAY_MODES else 'RGB'  # drops alpha; CMYK, YCbCr -> RGB
    pixels = np.multiply(np.asarray(im.convert(target), np.uint8), 1 / 255, dtype=np.float32)
  if pixels.ndim == 2:
    pixels = pixels[..., None]
  if pixels.size == 0:
    raise OSError('the image has no pixels')
  return pixels


def import_pydicom():
  try:
    import pydicom
  except ImportError as e:
    raise MissingExtraError(
      'DICOM files (.dcm) need pydicom, which is not installed: '
      "pip install -e '.[medical]' (or pip install pydicom)."
    ) from e
  return pydicom


def _read_dicom(path: str, window: tuple[float, float] | None = None) -> np.ndarray:
  """The stored values through the modality LUT (rescale slope and intercept), then the file's
  window where it has one, else the range its bit depth allows, onto [0, 1]; MONOCHROME1
  inverted (its high values are dark)."""
  pydicom = import_pydicom()
  from pydicom.pixels import apply_modality_lut

  try:
    ds = pydicom.dcmread(readable(path))
    stored = ds.pixel_array
  except Exception as e:  # pydicom raises many types for a broken or undecodable file
    raise BadImageError(path, f'{type(e).__name__}: {e}') from e
  values = np.asarray(apply_modality_lut(stored, ds), np.float64)
  if window is None and 'WindowCenter' in ds and 'WindowWidth' in ds:
    window = _first(ds.WindowCenter), _first(ds.WindowWidth)
  if window is not None:
    # DICOM PS3.3 C.11.2.1.2.1, linear: the window onto [0, 1], values outside it clipped.
    center, width = float(window[0]), max(float(window[1]), 1.0)
    pixels = (values - (center - 0.5)) / max(width - 1.0, 1.0) + 0.5
  else:
    # The range the stored bit depth allows, through the same rescale.
    bits = int(getattr(ds, 'BitsStored', 8 * stored.dtype.itemsize))
    signed = int(getattr(ds, 'PixelRepresentation', 0)) == 1
    ends = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    ends = np.asarray(apply_modality_lut(np.asarray(ends, stored.dtype), ds), np.float64)
    low, high = float(ends.min()), float(ends.max())
    pixels = (values - low) / max(high - low, 1e-12)
  pixels = pixels.astype(np.float32)
  photometric = str(getattr(ds, 'PhotometricInterpretation', 'MONOCHROME2'))
  if photometric == 'MONOCHROME1':
    pixels = 1.0 - pixels
  if pixels.ndim == 2:
    pixels = pixels[..., None]
  elif pixels.ndim != 3 or pixels.shape[-1] != 3:
    raise BadImageError(path, f'pixel array of shape {pixels.shape}: not one 2-D image')
  return np.clip(pixels, 0.0, 1.0)


def _first(value) -> float:
  """A DICOM value that may hold several (alternative windows): the first."""
  try:
    return float(value[0])
  except TypeError:
    return float(value)

"""An image folder (`ssljax.data.folder` lists and decodes it), streamed: images are decoded a
step at a time by `random_access`'s threads in `order.global_indices`'s order, so a resumed run
reads the same batches and memory does not grow with the number of files."""

from __future__ import annotations

import numpy as np

from ssljax.data import folder, order, random_access
from ssljax.data.sources.base import Source, Steps
from ssljax.data.types import DatasetInfo, EvalSplit


class ImageFolder(Source):
  def index(self) -> folder.FolderIndex:
    """The files and labels this source reads."""
    return folder.folder_index(self.data.path)

  def check_available(self) -> None:
    self.index()

  def info(self, workdir: str | None = None) -> DatasetInfo:
    index = folder.folder_index(self.data.path, workdir)
    return DatasetInfo(len(index.train.files), len(index.classes), self.image_shape(index.channels))

  def reader(self, side: int) -> random_access.Reader:
    """A Reader of the folder, decoding to `side` pixels."""
    window = self.data.get('dicom_window')
    return folder.reader(
      self.index(),
      side,
      dicom_window=None if window is None else tuple(float(v) for v in window),
      max_bad_fraction=float(self.data.get('max_bad_fraction', 0.001)),
    )

  def _steps(self, start_step: int) -> Steps:
    return random_access.train_steps(
      self.reader(self.base_side()),
      seed=int(self.config.seed),
      batch_size=int(self.config.batch_size),
      start_step=start_step,
    )

  def train_views(self, specs, start_step: int):
    from ssljax.data import pipeline  # tf.data augments

    yield from pipeline.folder_views(self.config, self._steps(start_step), specs)

  def base_images(self, start_step: int) -> Steps:
    steps = self._steps(start_step)
    try:
      for elements, images in steps:
        yield elements, np.round(images * 255).astype(np.uint8)
    finally:
      steps.close()

  def eval_split(self, split: str) -> EvalSplit:
    size = int(self.data.image_size)
    index = self.index()
    share = order.process_share(len(index.split(split).files), self.max_examples())
    labels = index.split(split).labels
    reader = lambda: self.reader(random_access.eval_side(size))  # noqa: E731

    def read(batch: int):
      return random_access.eval_batches(reader(), labels, split, share, batch, size)

    def read_examples(parts):  # an example's position in the split is its file's index
      return random_access.eval_rows(reader(), labels, split, parts, size)

    return EvalSplit(
      len(share), self.image_shape(index.channels), read, None, read_examples, labels[share]
    )

  def skipped_files(self) -> tuple[str, ...]:
    return folder.skipped_files(self.data.path)

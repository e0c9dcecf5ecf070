"""An image folder whose labels come from a CSV (`config.data.labels`, `ssljax.data.labels_csv`):
the CSV's usable rows are the files, its split (or the groups dealt with data.split_seed) the
splits. Streamed as `ImageFolder` is; an evaluation batch's labels are row numbers of its split,
so the multi-label evaluation (`ssljax.evaluators.multilabel`) looks their targets up."""

from __future__ import annotations

from ssljax.data import folder, labels_csv
from ssljax.data.sources.image_folder import ImageFolder
from ssljax.data.types import DatasetInfo


class LabelledFolder(ImageFolder):
  def check_available(self) -> None:
    self.index()

  def index(self) -> folder.FolderIndex:
    return labels_csv.table(self.config).index()

  def info(self, workdir: str | None = None) -> DatasetInfo:
    index = self.index()
    if workdir:
      labels_csv.write_splits(self.config, workdir)
    return DatasetInfo(len(index.train.files), len(index.classes), self.image_shape(index.channels))

  def skipped_files(self) -> tuple[str, ...]:
    return super().skipped_files() + labels_csv.table(self.config).bad_rows

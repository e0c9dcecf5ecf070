"""TensorFlow Datasets: held in memory when small, else streamed (ImageNet-sized).

No TensorFlow at import: tensorflow_datasets is imported on first use.
"""

from __future__ import annotations

import functools
import importlib
import os

import jax
import numpy as np

from ssljax.data.sources.base import InMemory, Split, Steps
from ssljax.data.types import DatasetInfo, EvalSplit
from ssljax.errors import DatasetNotFoundError

# tfds datasets at most this big (examples, pixels per side) are held in memory; larger stream.
MAX_IN_MEMORY_EXAMPLES = 200_000
MAX_IN_MEMORY_SIDE = 64


class Tfds(InMemory):
  """A tfds dataset small enough to hold in memory; `open` gives a `StreamedTfds` otherwise."""

  @classmethod
  def open(cls, config):
    data = config.data
    info = tfds_builder(data.name, data.data_dir).info
    shape = info.features[keys(info)[0]].shape
    num = info.splits[data.train_split].num_examples
    side_known = all(s is not None and s <= MAX_IN_MEMORY_SIDE for s in shape[:2])
    return Tfds(config) if side_known and num <= MAX_IN_MEMORY_EXAMPLES else StreamedTfds(config)

  @property
  def builder(self):
    return tfds_builder(self.data.name, self.data.data_dir)

  def check_available(self) -> None:
    self.builder  # noqa: B018  (raises, saying how to prepare it, if it is not)

  def info(self, workdir: str | None = None) -> DatasetInfo:
    info = self.builder.info
    image_key, label_key = keys(info)
    num_train = info.splits[self.data.train_split].num_examples
    channels = info.features[image_key].shape[-1]
    return DatasetInfo(num_train, info.features[label_key].num_classes, self.image_shape(channels))

  def load(self, split: str) -> Split:
    return _load_tfds(self.data.name, self.data.data_dir, self.split_name(split))


class StreamedTfds(Tfds):
  """A tfds dataset too big for memory, read record by record. Prepared as array_record it is
  read by index in `order.global_indices`'s order (exact on resume); see `pipeline` otherwise."""

  def random_access(self) -> bool:
    """True if prepared in a format read by index (array_record)."""
    formats = set(import_tfds().core.file_adapters.FileFormat.with_random_access())
    return bool(set(self.builder.info.available_file_formats()) & formats)

  def train_views(self, specs, start_step: int):
    from ssljax.data import pipeline

    image_key, _ = keys(self.builder.info)
    return pipeline.tfds_views(
      self.config, self.builder, image_key, specs, start_step, random_access=self.random_access()
    )

  def base_images(self, start_step: int) -> Steps:
    from ssljax.data import pipeline

    image_key, _ = keys(self.builder.info)
    return pipeline.tfds_base_images(
      self.config,
      self.builder,
      image_key,
      self.base_side(),
      start_step,
      random_access=self.random_access(),
    )

  def eval_split(self, split: str) -> EvalSplit:
    from ssljax.data import pipeline

    info, name, max_examples = self.builder.info, self.split_name(split), self.max_examples()
    num = info.splits[name].num_examples
    if max_examples > 0:
      num = min(num, max_examples)
    names = keys(info)
    channels = info.features[names[0]].shape[-1]
    n_proc, proc = jax.process_count(), jax.process_index()
    if '[' in name:  # already a slice ('train[90%:]'): read it whole, keep every P-th record
      start, size = None, len(range(proc, num, n_proc))
      read = lambda batch: pipeline.tfds_eval_batches(  # noqa: E731
        self.config, self.builder, names, name, batch, take=num, every=(n_proc, proc)
      )
    else:
      # Each process reads only its contiguous block of the records, so the reading does not
      # grow with the number of hosts; the others' blocks come before and after it.
      start, end = proc * num // n_proc, (proc + 1) * num // n_proc
      size = end - start
      read = lambda batch: pipeline.tfds_eval_batches(  # noqa: E731
        self.config, self.builder, names, f'{name}[{start}:{end}]', batch
      )
    shape = self.image_shape(channels)
    if self.random_access():  # array_record: read by index (tfds reads it no other way)
      examples = pipeline.tfds_eval_examples(self.config, self.builder, names, name)
      return EvalSplit.by_index(size, shape, examples, start)
    return EvalSplit(size, shape, read, start)  # tfrecord: read only in order


def import_tfds():
  """tensorflow_datasets, imported on first use with TF kept off the accelerators."""
  # TensorFlow first, as ssljax.data loads it: quietly, and with the GPUs hidden from it.
  from ssljax.data import augment  # noqa: F401

  tfds = importlib.import_module('tensorflow_datasets')
  return tfds


@functools.lru_cache(maxsize=4)
def tfds_builder(name: str, data_dir: str):
  """The prepared tfds builder; raises DatasetNotFoundError (saying how to prepare it) if not."""
  tfds = import_tfds()
  shown_dir = data_dir or os.environ.get('TFDS_DATA_DIR', '~/tensorflow_datasets')
  try:
    builder = tfds.builder(name, data_dir=data_dir or None)
  except tfds.core.DatasetNotFoundError as e:
    raise DatasetNotFoundError(
      f"tfds source: there is no tfds dataset named data.name='{name}' "
      '(see https://www.tensorflow.org/datasets/catalog).'
    ) from e
  if builder.is_prepared():
    return builder
  build = f'tfds build {name} --data_dir={shown_dir} --file_format=array_record'
  if name.split(':')[0].split('/')[0] == 'imagenet2012':
    how = (
      'ImageNet needs a manual download: get ILSVRC2012_img_train.tar and '
      f'ILSVRC2012_img_val.tar from image-net.org, put them in {shown_dir}/downloads/manual, '
      f'then run `{build}`.'
    )
  else:
    how = f'Prepare it on a machine with network access: `{build}` (then copy {shown_dir} here).'
  raise DatasetNotFoundError(
    f"tfds source: dataset '{name}' is not prepared in data_dir='{shown_dir}'. {how} "
    'If it is prepared elsewhere, pass --config.data.data_dir=THAT_DIR.'
  )


def keys(info) -> tuple[str, str]:
  """(image feature, label feature) names of a tfds dataset's `info`."""
  supervised = info.supervised_keys
  if isinstance(supervised, tuple) and len(supervised) == 2:
    if all(isinstance(k, str) for k in supervised):
      return supervised
  return 'image', 'label'


@functools.lru_cache(maxsize=2)
def _load_tfds(name: str, data_dir: str, split: str) -> Split:
  tfds = import_tfds()
  builder = tfds_builder(name, data_dir)
  image_key, label_key = keys(builder.info)
  ds = builder.as_dataset(split=split, batch_size=-1, shuffle_files=False)
  arrays = tfds.as_numpy(ds)
  num_classes = builder.info.features[label_key].num_classes
  return Split(arrays[image_key], arrays[label_key].astype(np.int32), num_classes)

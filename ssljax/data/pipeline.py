"""tf.data pipelines: augmented training views and un-augmented evaluation splits, built from
what a source (`ssljax.data.sources`) hands over: arrays, a folder's decoded steps, a tfds builder.

In-memory and folder sources follow the global index order of `ssljax.data.order.global_indices`
exactly, and each example's augmentation is seeded by (config.seed, global element e, view), so a
resumed run re-creates the same batches bit for bit, whatever the number of processes.

Streamed tfds datasets (ImageNet-sized) prepared in the array_record format (`tfds build
--file_format=array_record`) are read by index in the same global order: exact too. In other
formats (tfrecord) each process reads its share of the files (tfds.split_for_jax_process) with
seeded file and buffer shuffles. Resuming then skips start_step * local_batch records: exact in
count, and the same order only while the files, the tfds version and the process count stay the
same (treat it as approximate); the skipped records are read but not decoded, so resuming late
in a long run takes a while.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
from collections.abc import Iterator

import jax
import ml_collections
import numpy as np

from ssljax.data import augment, order, random_access
from ssljax.data.tf_import import tf
from ssljax.data.types import padded

AUTOTUNE = tf.data.AUTOTUNE
SHUFFLE_BUFFER = 10_000  # streamed sources: examples in the shuffle buffer of each process
EVAL_BATCH = 256
CHUNK_EXAMPLES = 1 << 16  # in-memory sources: indices handed to tf.data per chunk
RANDOM_ACCESS_CHUNK = 2048  # array_record sources: records read per chunk (~250 MB of ImageNet)
EVAL_CROP = random_access.EVAL_CROP  # large images: shorter side to S / 0.875, centre S crop


def to_float(image: tf.Tensor) -> tf.Tensor:
  """uint8 [0, 255] -> float32 [0, 1]; float images are taken to be in [0, 1] already."""
  if image.dtype == tf.uint8:
    return tf.cast(image, tf.float32) / 255.0
  return tf.cast(image, tf.float32)


def upsample(image: tf.Tensor, size: int) -> tf.Tensor:
  """Bilinear resize to (size, size) of images smaller than that (digits' 8 px, MNIST's 28 px)."""
  h, w = image.shape[0], image.shape[1]
  resize = lambda: tf.image.resize(image, [size, size], method='bilinear')
  if h is not None and w is not None:
    return resize() if min(h, w) < size else image
  shape = tf.shape(image)
  return tf.cond(tf.minimum(shape[0], shape[1]) < size, resize, lambda: image)


def eval_resize(image: tf.Tensor, size: int) -> tf.Tensor:
  """Evaluation protocol: larger images get shorter side -> S / 0.875 and a center S crop;
  others are resized (bilinear) to (S, S)."""
  shape = tf.shape(image)
  h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
  short = tf.minimum(h, w)

  def resize_and_crop():
    scale = round(size / EVAL_CROP) / short
    nh = tf.maximum(tf.cast(tf.round(h * scale), tf.int32), size)
    nw = tf.maximum(tf.cast(tf.round(w * scale), tf.int32), size)
    resized = tf.image.resize(image, [nh, nw], method='bilinear', antialias=True)
    return tf.image.crop_to_bounding_box(resized, (nh - size) // 2, (nw - size) // 2, size, size)

  def resize():
    return tf.image.resize(image, [size, size], method='bilinear')

  out = tf.cond(short > size, resize_and_crop, resize)
  out = tf.ensure_shape(out, [size, size, image.shape[-1]])
  return tf.clip_by_value(out, 0.0, 1.0)


_VIEW_FUNCTIONS = {}  # spec -> traced augment_view, shared by every pipeline of this process


def _view_function(spec: ml_collections.ConfigDict):
  name = repr(sorted(spec.to_dict().items()))
  if name not in _VIEW_FUNCTIONS:

    def view(image, seed):  # spec is closed over: tf.function traces tensors only
      return augment.augment_view(image, seed, spec)

    _VIEW_FUNCTIONS[name] = tf.function(view, autograph=False)
  return _VIEW_FUNCTIONS[name]


def _view_functions(specs: list[ml_collections.ConfigDict]) -> list:
  """augment_view per spec as tf.functions of (image, seed); equal specs share one.

  Each distinct spec is traced once per input shape (SimCLR's two views and DINO's local crops
  share a graph), and the traces are reused by every dataset built later.
  """
  return [_view_function(spec) for spec in specs]


def _example_function(view_fns: list, seed: int, size: int):
  """(image, global element e) -> all views, view v seeded by (seed, e, v)."""

  @tf.function(autograph=False)
  def example(image, element):
    image = upsample(to_float(image), size)
    key = tf.stack([tf.constant(seed, tf.int64), tf.cast(element, tf.int64)])
    fold = tf.random.experimental.stateless_fold_in
    return tuple(fn(image, fold(key, v)) for v, fn in enumerate(view_fns))

  return example


def _batched(ds: tf.data.Dataset, local: int) -> Iterator[tuple[np.ndarray, ...]]:
  options = tf.data.Options()
  options.deterministic = True
  ds = ds.batch(local, drop_remainder=True).prefetch(AUTOTUNE).with_options(options)
  return ds.as_numpy_iterator()


def _local(config: ml_collections.ConfigDict) -> int:
  return int(config.batch_size) // jax.process_count()


def in_memory_views(
  config: ml_collections.ConfigDict, images: np.ndarray, specs, start_step: int
) -> Iterator[tuple[np.ndarray, ...]]:
  """Views of the train split `images`, following `global_indices`, fed to tf.data a chunk of
  steps at a time.

  The indices come from numpy in this thread, never from a Python callback inside tf.data (those
  can deadlock the interpreter's exit while background threads still run).
  """
  num, seed, local = len(images), int(config.seed), _local(config)
  if num == 0:
    raise ValueError('the train split is empty')
  images = tf.constant(images)
  example = _example_function(_view_functions(specs), seed, int(config.data.image_size))
  shard = dict(
    batch_size=int(config.batch_size),
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )
  steps_per_chunk = max(1, CHUNK_EXAMPLES // local)

  def chunk(first: int) -> tf.data.Dataset:
    steps = range(first, first + steps_per_chunk)
    elements = np.concatenate([order.local_elements(s, **shard) for s in steps])
    indices = np.concatenate(
      [order.global_indices(s, num_examples=num, seed=seed, **shard) for s in steps]
    )
    ds = tf.data.Dataset.from_tensor_slices((elements, indices))
    return ds.map(
      lambda e, i: example(tf.gather(images, i), e),
      num_parallel_calls=AUTOTUNE,
      deterministic=True,
    )

  def batches():
    for first in itertools.count(start_step, steps_per_chunk):
      yield from _batched(chunk(first), local)

  return batches()


def folder_views(
  config: ml_collections.ConfigDict, steps: Iterator[tuple[np.ndarray, np.ndarray]], specs
) -> Iterator[tuple[np.ndarray, ...]]:
  """Views of a folder's (elements, images) `steps` (decoded by `random_access`'s threads a few
  steps ahead), augmented by one traced function over the batch. (A tf.data dataset per step
  would be traced again every step: 0.3 s each; a Python generator inside tf.data could deadlock
  the interpreter's exit.)"""
  view_fns, local, seed = _view_functions(specs), _local(config), int(config.seed)
  example = _example_function(view_fns, seed, int(config.data.image_size))

  @tf.function(autograph=False)
  def views(images, elements):
    return tf.map_fn(
      lambda args: example(*args),
      (images, elements),
      fn_output_signature=(tf.float32,) * len(view_fns),
      parallel_iterations=local,
    )

  try:
    for elements, images in steps:
      yield tuple(v.numpy() for v in views(images, elements))
  finally:
    steps.close()


def _random_access_batches(config, builder, image_key: str, example, start_step: int, local: int):
  """Batches following `global_indices` from a tfds dataset prepared as array_record: for each
  chunk of steps a background thread reads the named records (raw bytes, by index) while tf.data
  decodes and `example` (image, element) augments the previous chunk, as the streamed path
  does."""
  import tensorflow_datasets as tfds

  features = builder.info.features
  records = builder.as_data_source(
    split=config.data.train_split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES
  )
  num, seed = len(records), int(config.seed)
  skip = {image_key: tfds.decode.SkipDecoding()}

  def decode_and_augment(record, element):
    image = features.deserialize_example(record, decoders=skip)[image_key]
    return example(features[image_key].decode_example(image), element)

  shard = dict(
    batch_size=int(config.batch_size),
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )
  steps_per_chunk = max(1, RANDOM_ACCESS_CHUNK // local)

  def read(first: int):
    steps = range(first, first + steps_per_chunk)
    elements = np.concatenate([order.local_elements(s, **shard) for s in steps])
    indices = np.concatenate(
      [order.global_indices(s, num_examples=num, seed=seed, **shard) for s in steps]
    )
    return elements, records.__getitems__(indices.tolist())

  reader = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix='records')
  try:
    ahead = reader.submit(read, start_step)
    for first in itertools.count(start_step, steps_per_chunk):
      elements, raw = ahead.result()
      ahead = reader.submit(read, first + steps_per_chunk)
      ds = tf.data.Dataset.from_tensor_slices((tf.constant(raw, tf.string), elements))
      ds = ds.map(decode_and_augment, num_parallel_calls=AUTOTUNE, deterministic=True)
      yield from _batched(ds, local)
  finally:
    reader.shutdown(wait=False, cancel_futures=True)


def _streamed_batches(config, builder, image_key: str, example, start_step: int, local: int):
  """Batches of `example` (image, element) over this process's files, shuffled with the seed;
  see the module's note on resume."""
  import tensorflow_datasets as tfds

  feature = builder.info.features[image_key]
  seed, batch_size = int(config.seed), int(config.batch_size)
  first = jax.process_index() * local
  ds = builder.as_dataset(
    split=tfds.split_for_jax_process(config.data.train_split),
    shuffle_files=True,
    read_config=tfds.ReadConfig(shuffle_seed=seed),
    decoders={image_key: tfds.decode.SkipDecoding()},
  )
  ds = ds.repeat().shuffle(SHUFFLE_BUFFER, seed=seed)
  ds = ds.skip(start_step * local).enumerate(start_step * local)

  def decode_and_augment(count, ex):
    element = (count // local) * batch_size + first + count % local
    return example(feature.decode_example(ex[image_key]), element)

  ds = ds.map(decode_and_augment, num_parallel_calls=AUTOTUNE, deterministic=True)
  return _batched(ds, local)


def tfds_views(
  config: ml_collections.ConfigDict,
  builder,
  image_key: str,
  specs,
  start_step: int,
  *,
  random_access: bool,
) -> Iterator[tuple[np.ndarray, ...]]:
  """Views of a streamed tfds dataset: read by index when `random_access` (array_record)."""
  example = _example_function(_view_functions(specs), int(config.seed), int(config.data.image_size))
  make = _random_access_batches if random_access else _streamed_batches
  return make(config, builder, image_key, example, start_step, _local(config))


def _base_example(side: int):
  """(image, element) -> (uint8 (side, side, C) base image, element): the shorter side resized
  to `side` (bicubic, antialiased), the centred square, as folders are read."""

  @tf.function(autograph=False)
  def example(image, element):
    image = to_float(image)
    shape = tf.cast(tf.shape(image), tf.float32)
    scale = side / tf.minimum(shape[0], shape[1])
    nh = tf.maximum(tf.cast(tf.round(shape[0] * scale), tf.int32), side)
    nw = tf.maximum(tf.cast(tf.round(shape[1] * scale), tf.int32), side)
    resized = tf.image.resize(image, [nh, nw], method='bicubic', antialias=True)
    square = tf.image.crop_to_bounding_box(resized, (nh - side) // 2, (nw - side) // 2, side, side)
    pixels = tf.round(tf.clip_by_value(square, 0.0, 1.0) * 255.0)
    return tf.cast(pixels, tf.uint8), tf.cast(element, tf.int64)

  return example


def tfds_base_images(
  config: ml_collections.ConfigDict,
  builder,
  image_key: str,
  side: int,
  start_step: int,
  *,
  random_access: bool,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """(global elements, uint8 (side, side, C) base images) of this process, step by step, from a
  streamed tfds dataset, for augment.on='device': decoded and resized once."""
  make = _random_access_batches if random_access else _streamed_batches
  example, local = _base_example(side), _local(config)
  for images, elements in make(config, builder, image_key, example, start_step, local):
    yield elements, images


def labelled_views(
  batches: Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]],
  spec: ml_collections.ConfigDict,
  *,
  seed: int,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Augmented (images, labels) of un-augmented (elements, images, labels) `batches`: element e
  by `augment.augment_view(spec)` seeded by (seed, e), one traced function over the batch (see
  `folder_views`); see `ssljax.data.labelled_train_iterator`."""
  view = _view_function(spec)
  key = tf.constant([int(seed) % 2**63, 0], tf.int64)

  @tf.function(autograph=False)
  def augment(images, elements):
    return tf.map_fn(
      lambda args: view(args[0], tf.random.experimental.stateless_fold_in(key, args[1])),
      (images, elements),
      fn_output_signature=tf.float32,
    )

  with contextlib.closing(batches):
    for elements, images, labels in batches:
      yield augment(np.asarray(images, np.float32), elements).numpy(), labels


def array_eval_examples(images: np.ndarray, labels: np.ndarray, size: int):
  """`EvalSplit.read_examples` of a split in memory: the rows each array names, resized to
  `size` as `array_eval_batches` resizes them (one traced function over the batch)."""

  @tf.function(
    autograph=False, input_signature=[tf.TensorSpec((None, *images.shape[1:]), images.dtype)]
  )
  def resize(batch):
    return tf.map_fn(
      lambda image: eval_resize(to_float(image), size), batch, fn_output_signature=tf.float32
    )

  def read_examples(parts):
    for rows in parts:
      yield resize(images[rows]).numpy(), labels[rows], np.ones(len(rows), bool)

  return read_examples


def array_eval_batches(images: np.ndarray, labels: np.ndarray, size: int, batch: int):
  """(images, labels, valid) batches of arrays in memory, resized to `size`; see `_eval_batches`."""
  return _eval_batches(tf.data.Dataset.from_tensor_slices((images, labels)), size, batch)


def tfds_eval_batches(
  config,
  builder,
  keys: tuple[str, str],
  split: str,
  batch: int,
  take: int = 0,
  every: tuple[int, int] = (1, 0),
):
  """(images, labels, valid) batches of a tfds `split`: this process's slice of it (e.g.
  'test[0:5000]', only its records read), or, with `every` = (P, p), the first `take` records
  (0: all) of which it keeps p, p + P, ...; `keys` names the (image, label) features."""
  import tensorflow_datasets as tfds

  image_key, label_key = keys
  feature = builder.info.features[image_key]
  ds = builder.as_dataset(
    split=split, shuffle_files=False, decoders={image_key: tfds.decode.SkipDecoding()}
  )
  if take > 0:
    ds = ds.take(take)
  if every[0] > 1:
    ds = ds.shard(*every)
  ds = ds.map(lambda ex: (feature.decode_example(ex[image_key]), ex[label_key]))
  return _eval_batches(ds, int(config.data.image_size), batch)


def tfds_eval_examples(config, builder, keys: tuple[str, str], split: str):
  """`EvalSplit.read_examples` of a tfds `split` prepared as array_record: the records at the
  positions asked, read by index (raw bytes) and decoded and resized as `tfds_eval_batches`
  does, one traced function over the batch."""
  import tensorflow_datasets as tfds

  image_key, label_key = keys
  features = builder.info.features
  size = int(config.data.image_size)
  skip = {image_key: tfds.decode.SkipDecoding()}

  def example(record):
    ex = features.deserialize_example(record, decoders=skip)
    image = eval_resize(to_float(features[image_key].decode_example(ex[image_key])), size)
    return image, tf.cast(ex[label_key], tf.int32)

  @tf.function(autograph=False, input_signature=[tf.TensorSpec((None,), tf.string)])
  def decode(raw):
    return tf.map_fn(example, raw, fn_output_signature=(tf.float32, tf.int32))

  def read_examples(parts):
    raw = tfds.decode.DeserializeMethod.RAW_BYTES
    records = builder.as_data_source(split=split, deserialize_method=raw)
    for positions in parts:
      x, y = decode(tf.constant(records.__getitems__(np.asarray(positions).tolist()), tf.string))
      yield x.numpy(), y.numpy(), np.ones(len(positions), bool)

  return read_examples


def _eval_batches(ds: tf.data.Dataset, size: int, batch: int):
  """(images, labels, valid) batches of exactly `batch` rows: the last padded, invalid."""
  ds = ds.map(
    lambda image, label: (eval_resize(to_float(image), size), tf.cast(label, tf.int32)),
    num_parallel_calls=AUTOTUNE,
    deterministic=True,
  )
  for x, y in ds.batch(batch).prefetch(AUTOTUNE).as_numpy_iterator():
    yield padded(x, y, batch)

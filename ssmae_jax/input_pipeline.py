"""Splits (labeled / validation / unlabeled / test) and the tf.data streams of docs/method.md.

The train split's images come from a data_sources.ImageSource: a TFDS split in memory, or image folders
(config.dataset='folder') left on disk, read and decoded by the streams. Data order and augmentations are pure
functions of (config.seed, step) either way, so a run resumed at step s sees exactly the batches of an uninterrupted
run.
"""

import dataclasses
import math
import os
from collections.abc import Iterator
from typing import Any, Callable

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from ssmae_jax import augment, data_sources, folder_data, normalization
from ssmae_jax.errors import UserError

_LABELED_STREAM = 0
_UNLABELED_STREAM = 1
# fold_in data of the seed of the labeled view that config.reference_unlabeled_views puts before the three views.
_REFERENCE_VIEW_SEED = 8
# Decoding in chunks keeps the parsed examples of only one chunk alive next to the growing result.
_LOAD_CHUNK = 4096


@dataclasses.dataclass(frozen=True)
class Splits:
  """The train split (its images, its labels) and the index sets carved from it."""
  num_classes: int
  class_names: list[str]
  source: data_sources.ImageSource  # The train examples' images.
  train_labels: np.ndarray  # int32 [N]; -1 where unknown (the files of an unlabeled folder).
  labeled_idx: np.ndarray  # int64, sorted: labeled training examples (validation excluded).
  val_idx: np.ndarray  # int64, sorted: held-out validation examples (a class-balanced part of the labeled ones).
  unlabeled_idx: np.ndarray  # int64, sorted: pool index i <-> train index unlabeled_idx[i].
  test_images: np.ndarray | None  # Folder data: decoded once, as evaluation sees them.
  test_labels: np.ndarray | None

  def eval_images(self, idx: np.ndarray, image_size: int) -> np.ndarray:
    """uint8 images of train examples idx for evaluation: in-memory rows at their stored size (eval_batches
    ships them at the size the eval step takes), or decoded files, resized and centre-cropped to image_size."""
    return self.source.eval_images(idx, image_size)

  @property
  def has_files(self) -> bool:
    """Whether the train examples are files on disk (folder data): a run then labels them in pseudo_labels.csv."""
    return self.source.has_files


def _builder(config: Any) -> tfds.core.DatasetBuilder:
  # TFDS reads $TFDS_DATA_DIR only when it is imported; reading it here honours a value set later.
  data_dir = config.data_dir or os.environ.get('TFDS_DATA_DIR')
  try:
    builder = tfds.builder(config.dataset, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise UserError(f'Unknown TFDS dataset {config.dataset!r}: set config.dataset to a TFDS name such as '
                    "'cifar10'.") from None
  features = builder.info.features
  if 'image' not in features or 'label' not in features:
    raise UserError(f'Dataset {config.dataset!r} has no image and label features: use an image classification '
                    'dataset.')
  if not isinstance(features['label'], tfds.features.ClassLabel):
    raise UserError(f"Dataset {config.dataset!r}: 'label' is not a class label; use an image classification dataset.")
  height, width, channels = features['image'].shape
  if height is None or height != width:
    raise UserError(f'Dataset {config.dataset!r} has images of shape {features["image"].shape}, not fixed and square: '
                    'use a square dataset or resize it to a square one first.')
  if channels not in (1, 3):
    raise UserError(f'Dataset {config.dataset!r} has {channels}-channel images: use an RGB or grayscale dataset.')
  if not builder.is_prepared():
    offline_fix = ('set TFDS_DATA_DIR or config.data_dir to a directory holding it prepared, or prepare it with '
                   f'`tfds build {config.dataset}` on a connected machine and copy it over.')
    if not config.download:
      raise UserError(f'Dataset {config.dataset!r} is not prepared in {builder.data_dir_root} and '
                      f'config.download is False: {offline_fix}')
    import socket
    import urllib.parse
    import urllib.request
    # Offline, TFDS retries each download for minutes. A quick connection to a host it would download from (the
    # dataset's own, TFDS's copies on storage.googleapis.com, or the proxy when there is one) tells within seconds.
    proxy = urllib.parse.urlsplit(urllib.request.getproxies().get('https', ''))
    if proxy.hostname:
      hosts = [(proxy.hostname, proxy.port or 80)]
    else:
      urls = [urllib.parse.urlsplit(url) for url in builder.url_infos or {}]
      hosts = list(dict.fromkeys([(u.hostname, u.port or (80 if u.scheme == 'http' else 443)) for u in urls
                                  if u.hostname] + [('storage.googleapis.com', 443)]))
    failures = []
    for host, port in hosts:
      try:
        socket.create_connection((host, port), timeout=3).close()
        break
      except OSError as e:
        failures.append(e)
    else:
      tried = ', '.join(f'{host}:{port}' for host, port in hosts)
      raise UserError(f'Dataset {config.dataset!r} is not prepared in {builder.data_dir_root} and this machine '
                      f'cannot download it (no connection to {tried}: {failures[0]}): {offline_fix}')
    try:
      builder.download_and_prepare()
    except Exception as e:  # No network, a proxy, a full disk: all end the same way for the user.
      raise UserError(f'Dataset {config.dataset!r} is not prepared in {builder.data_dir_root} and downloading it '
                      f'failed ({type(e).__name__}): {offline_fix}') from None
  return builder


def _load(builder: tfds.core.DatasetBuilder, split: str) -> tuple[np.ndarray, np.ndarray]:
  """The whole split as numpy: uint8 [N, h, w, 3] images, int32 [N] labels."""

  def image_label(example):
    image = example['image']
    if image.shape[-1] == 1:
      image = tf.image.grayscale_to_rgb(image)
    return image, tf.cast(example['label'], tf.int32)

  ds = builder.as_dataset(split=split, shuffle_files=False)
  ds = ds.map(augment.plain(image_label), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(_LOAD_CHUNK)
  chunks = list(ds.prefetch(1).as_numpy_iterator())
  return np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks])


def _labeled_per_class(config: Any, class_counts: np.ndarray) -> np.ndarray:
  num_classes, total = len(class_counts), int(class_counts.sum())
  if config.num_labels is not None:
    if not num_classes <= config.num_labels <= total:
      raise UserError(f'config.num_labels={config.num_labels} must be between the number of classes ({num_classes}) '
                      f'and the train size ({total}).')
    per_class = np.full(num_classes, config.num_labels // num_classes)
    if (per_class > class_counts).any():
      raise UserError(f'config.num_labels={config.num_labels} asks {per_class[0]} labels per class but some class has '
                      f'only {class_counts.min()} examples: lower config.num_labels.')
    return per_class
  if not 0 < config.label_fraction <= 1:
    raise UserError(f'config.label_fraction={config.label_fraction} must be in (0, 1].')
  return np.array([round(config.label_fraction * n) for n in class_counts])


def _carve(config: Any, labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(labeled, val, unlabeled) train indices, each sorted."""
  if not 0 <= config.val_fraction < 1:
    raise UserError(f'config.val_fraction={config.val_fraction} must be in [0, 1).')
  class_counts = np.bincount(labels, minlength=num_classes)
  per_class = _labeled_per_class(config, class_counts)
  rng = np.random.default_rng(config.split_seed)
  labeled, val = [], []
  for c in range(num_classes):
    chosen = rng.permutation(np.flatnonzero(labels == c))[:per_class[c]]
    num_val = max(1, round(config.val_fraction * len(chosen))) if config.val_fraction > 0 else 0
    if len(chosen) - num_val < 1:
      raise UserError(f'Class {c} gets {len(chosen)} labeled examples and {num_val} of them go to validation, leaving '
                      'none to train on: raise config.label_fraction / config.num_labels or lower config.val_fraction.')
    val.append(chosen[:num_val])
    labeled.append(chosen[num_val:])
  labeled_idx = np.sort(np.concatenate(labeled)).astype(np.int64)
  val_idx = np.sort(np.concatenate(val)).astype(np.int64)
  excluded = val_idx if config.unlabeled_includes_labeled else np.concatenate([val_idx, labeled_idx])
  unlabeled_idx = np.setdiff1d(np.arange(len(labels), dtype=np.int64), excluded)
  return labeled_idx, val_idx, unlabeled_idx


def _folder_splits(config: Any) -> Splits:
  """Splits of image folders: labeled (and validation) from config.labeled_dir, the pool from unlabeled_dir."""
  folders = folder_data.load_folders(config)
  num_labeled, num_classes = len(folders.labeled_paths), len(folders.class_names)
  labeled_idx, val_idx, leftover_idx = _carve(config, folders.labeled_labels, num_classes)
  unlabeled_files = num_labeled + np.arange(len(folders.unlabeled_paths), dtype=np.int64)
  test_images = (None if folders.test_paths is None else
                 folder_data.decode_for_eval(folders.test_paths, config.image_size))
  return Splits(
      num_classes=num_classes,
      class_names=folders.class_names,
      source=data_sources.ImageFiles(np.asarray(folders.labeled_paths + folders.unlabeled_paths, dtype=object),
                                     num_labeled),
      train_labels=np.concatenate([folders.labeled_labels,
                                   np.full(len(folders.unlabeled_paths), -1, np.int32)]),
      labeled_idx=labeled_idx,
      val_idx=val_idx,
      unlabeled_idx=np.concatenate([leftover_idx, unlabeled_files]),
      test_images=test_images,
      test_labels=folders.test_labels,
  )


def load_splits(config: Any) -> Splits:
  """config.dataset's splits: its kind of data (`data_kind`) loads them."""
  return data_kind(config).load_splits(config)


def _tfds_splits(config: Any) -> Splits:
  """Loads config.dataset from TFDS (downloading it only if not prepared and config.download) and carves the seeded,
  class-balanced splits."""
  builder = _builder(config)
  train_images, train_labels = _load(builder, 'train')
  num_classes = builder.info.features['label'].num_classes
  labeled_idx, val_idx, unlabeled_idx = _carve(config, train_labels, num_classes)
  test_images, test_labels = _load(builder, 'test') if 'test' in builder.info.splits else (None, None)
  return Splits(
      num_classes=num_classes,
      class_names=list(builder.info.features['label'].names),
      source=data_sources.InMemoryImages(train_images),
      train_labels=train_labels,
      labeled_idx=labeled_idx,
      val_idx=val_idx,
      unlabeled_idx=unlabeled_idx,
      test_images=test_images,
      test_labels=test_labels,
  )


@dataclasses.dataclass(frozen=True)
class TestSplit:
  num_classes: int
  class_names: list[str]
  images: np.ndarray | None  # uint8 [N, h, w, 3] as evaluation sees them; None: the dataset has no test split.
  labels: np.ndarray | None


def load_test_split(config: Any) -> TestSplit:
  """The test split and the classes alone, without reading the train split (what evaluating a checkpoint needs)."""
  return data_kind(config).load_test_split(config)


def _folder_test_split(config: Any) -> TestSplit:
  folders = folder_data.load_folders(config)
  images = (None if folders.test_paths is None else
            folder_data.decode_for_eval(folders.test_paths, config.image_size))
  return TestSplit(len(folders.class_names), folders.class_names, images, folders.test_labels)


def _tfds_test_split(config: Any) -> TestSplit:
  builder = _builder(config)
  images, labels = _load(builder, 'test') if 'test' in builder.info.splits else (None, None)
  label = builder.info.features['label']
  return TestSplit(label.num_classes, list(label.names), images, labels)


@dataclasses.dataclass(frozen=True)
class DataKind:
  """How one kind of config.dataset loads: its splits, its test split alone, and the source of its train images."""
  load_splits: Callable[[Any], Splits]
  load_test_split: Callable[[Any], TestSplit]
  source: type  # A data_sources.ImageSource: what a user is told about this kind of data (no_test_fix, ...).


_TFDS = DataKind(_tfds_splits, _tfds_test_split, data_sources.InMemoryImages)
_FOLDERS = DataKind(_folder_splits, _folder_test_split, data_sources.ImageFiles)


def data_kind(config: Any) -> DataKind:
  """The one place that tells image folders (config.dataset='folder') from a TFDS dataset."""
  return _FOLDERS if config.dataset == 'folder' else _TFDS


def steps_per_epoch(splits: Splits, config: Any) -> int:
  """An epoch is one pass over the labeled training examples (the shorter stream)."""
  steps = len(splits.labeled_idx) // config.labeled_batch_size
  if steps == 0:
    raise UserError(f'Only {len(splits.labeled_idx)} labeled training examples, fewer than '
                    f'config.labeled_batch_size={config.labeled_batch_size}: lower the batch size or label more.')
  return steps


def _local_rows(global_batch: int, process_index: int, process_count: int, name: str) -> tuple[int, int]:
  """This process's rows [lo, hi) of every global batch."""
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} is outside [0, {process_count}).')
  if global_batch <= 0 or global_batch % process_count:
    raise UserError(f'{name}={global_batch} must be a positive multiple of the process count ({process_count}).')
  local = global_batch // process_count
  return process_index * local, (process_index + 1) * local


def _stream_keys(seed: int, stream_id: int) -> tuple[tf.Tensor, tf.Tensor]:
  """(order key, augmentation key) of a stream: separate, so epoch e and position e never share a seed."""
  stream = tf.random.experimental.stateless_fold_in(tf.constant([seed, 0], tf.int64), stream_id)
  return (tf.random.experimental.stateless_fold_in(stream, 0),
          tf.random.experimental.stateless_fold_in(stream, 1))


def _index_stream(n: int, global_batch: int, start_step: int, rows: tuple[int, int], order_key: tf.Tensor,
                  aug_key: tf.Tensor) -> tf.data.Dataset:
  """(index into the set of n, augmentation seed) for this process's rows, from start_step on.

  Epoch e is a seeded permutation of range(n); the stream is the epochs back to back, so position p is element
  p % n of epoch p // n and nothing before start_step * global_batch is ever generated.
  """
  start = start_step * global_batch
  first_epoch, offset = divmod(start, n)

  def epoch(e):
    order = tf.random.experimental.stateless_shuffle(
        tf.range(n, dtype=tf.int64), seed=tf.random.experimental.stateless_fold_in(order_key, e))
    skip = tf.where(e == first_epoch, tf.constant(offset, tf.int64), 0)
    positions = e * n + tf.range(n, dtype=tf.int64)
    return tf.data.Dataset.from_tensor_slices((order[skip:], positions[skip:]))

  lo, hi = rows
  ds = tf.data.Dataset.counter(first_epoch).flat_map(augment.plain(epoch))
  # The stream starts on a batch boundary, so a position's row in its global batch is position % global_batch.
  ds = ds.filter(augment.plain(lambda i, p: (p % global_batch >= lo) & (p % global_batch < hi)))
  return ds.map(augment.plain(lambda i, p: (i, tf.random.experimental.stateless_fold_in(aug_key, p))))


def _options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  # Parallelism across images beats parallelism inside the tiny per-image ops; a private pool keeps tf.data
  # from competing with TensorFlow's global pool.
  options.threading.private_threadpool_size = os.cpu_count() or 1
  options.threading.max_intra_op_parallelism = 1
  return options


def _reference_view_source(image: tf.Tensor, seed: tf.Tensor, aug: Any) -> tf.Tensor:
  """The image the reference builds its unlabeled views from: labeled view, normalised, then `ToPILImage`.

  ToPILImage on a float tensor is `pic.mul(255).byte()`. We take torch's float -> uint8 cast as it runs on x86:
  truncation toward zero, then the low 8 bits (-0.5 -> 0, -1.2 -> 255, 300.7 -> 44); TensorFlow's float -> int32 and
  int32 -> uint8 casts do the same. Normalised values lie in about [-2.2, 2.7]: only pixels from the channel mean to
  one std above it come through unwrapped.
  """
  x = tf.cast(augment.labeled_view(image, seed, aug), tf.float32) / 255.0
  x = (x - normalization.IMAGENET_MEAN) / normalization.IMAGENET_STD
  return tf.cast(tf.cast(x * 255.0, tf.int32), tf.uint8)


def train_dataset(splits: Splits, config: Any, start_step: int, *, process_index: int = 0, process_count: int = 1,
                  need_labeled: bool = True, need_unlabeled: bool = True) -> tf.data.Dataset:
  """The tf.data pipeline behind `train_iterator`."""
  if not (need_labeled or need_unlabeled):
    raise ValueError('Ask for the labeled stream, the unlabeled stream or both.')
  aug = config.augment
  load = splits.source.train_image(config.image_size, config.resize_on_device, aug)
  autotune = tf.data.AUTOTUNE
  streams = {}

  if need_labeled:
    rows = _local_rows(config.labeled_batch_size, process_index, process_count, 'config.labeled_batch_size')
    labeled_idx = tf.constant(splits.labeled_idx, tf.int64)
    labels = tf.constant(splits.train_labels, tf.int32)

    def labeled(i, seed):
      train_i = tf.gather(labeled_idx, i)
      image = load(train_i, seed)
      return {'labeled_image': augment.labeled_view(image, seed, aug), 'labeled_label': tf.gather(labels, train_i)}

    ds = _index_stream(len(splits.labeled_idx), config.labeled_batch_size, start_step, rows,
                       *_stream_keys(config.seed, _LABELED_STREAM))
    streams['labeled'] = ds.map(augment.plain(labeled), num_parallel_calls=autotune, deterministic=True).batch(
        rows[1] - rows[0], drop_remainder=True)

  if need_unlabeled:
    if not len(splits.unlabeled_idx):
      raise UserError('The unlabeled pool is empty: set config.unlabeled_includes_labeled=True or lower '
                      'config.label_fraction / config.num_labels.')
    rows = _local_rows(config.unlabeled_batch_size, process_index, process_count, 'config.unlabeled_batch_size')
    unlabeled_idx = tf.constant(splits.unlabeled_idx, tf.int64)

    def unlabeled(i, seed):
      image = load(tf.gather(unlabeled_idx, i), seed)
      if config.reference_unlabeled_views:
        image = _reference_view_source(image, tf.random.experimental.stateless_fold_in(seed, _REFERENCE_VIEW_SEED),
                                       aug)
      weak_seed, strong_seed, mae_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
      return {
          'unlabeled_weak': augment.weak_view(image, weak_seed),
          'unlabeled_strong': augment.strong_view(image, strong_seed, aug),
          'unlabeled_mae': augment.labeled_view(image, mae_seed, aug),
          'unlabeled_index': tf.cast(i, tf.int32),
      }

    ds = _index_stream(len(splits.unlabeled_idx), config.unlabeled_batch_size, start_step, rows,
                       *_stream_keys(config.seed, _UNLABELED_STREAM))
    streams['unlabeled'] = ds.map(augment.plain(unlabeled), num_parallel_calls=autotune, deterministic=True).batch(
        rows[1] - rows[0], drop_remainder=True)

  ds = tf.data.Dataset.zip(streams).map(augment.plain(lambda s: {k: v for part in s.values() for k, v in part.items()}))
  return ds.prefetch(autotune).with_options(_options())


def train_iterator(splits: Splits, config: Any, start_step: int, *, process_index: int = 0, process_count: int = 1,
                   need_labeled: bool = True, need_unlabeled: bool = True) -> Iterator[dict[str, np.ndarray]]:
  """Yields step start_step, start_step + 1, ...: this process's contiguous slice of each global batch.

  Keys: labeled_image uint8 [l, S, S, 3], labeled_label int32 [l] (need_labeled); unlabeled_weak / _strong / _mae
  uint8 [u, S, S, 3], unlabeled_index int32 [u] (pool index) (need_unlabeled). l, u = the global batch sizes /
  process_count. S = config.image_size, except with config.resize_on_device for in-memory (TFDS) data: S = S0 =
  min(stored size, image_size), every view augmented at S0, and the train step resizes to image_size
  (`data_sources.shipped_size`). Folder data always ships image_size.
  """
  return train_dataset(splits, config, start_step, process_index=process_index, process_count=process_count,
                       need_labeled=need_labeled, need_unlabeled=need_unlabeled).as_numpy_iterator()


def example_batch(config: Any, splits: Splits | None = None, *, stored_size: int | None = None) -> dict:
  """The layout of one global train batch of `config`'s method (what `train_iterator` yields, all processes
  together): key -> jax.ShapeDtypeStruct. Images travel at the size `train_iterator` ships (S there): from `splits`'
  stored images, or `stored_size`; with neither, config.image_size."""
  import jax  # Here: this module runs in tf.data's world, and the batch's layout is JAX's business.
  from ssmae_jax import methods
  if splits is not None:
    stored_size = splits.eval_images(splits.labeled_idx[:1], config.image_size).shape[1]
  size = data_sources.shipped_size(stored_size or config.image_size, config.image_size, config.resize_on_device)
  images = lambda n: jax.ShapeDtypeStruct((n, size, size, 3), np.uint8)
  method, l, u = methods.get(config.method), config.labeled_batch_size, config.unlabeled_batch_size
  out = {}
  if method.uses_labeled:
    out.update(labeled_image=images(l), labeled_label=jax.ShapeDtypeStruct((l,), np.int32))
  if method.uses_unlabeled:
    out.update(unlabeled_weak=images(u), unlabeled_strong=images(u), unlabeled_mae=images(u),
               unlabeled_index=jax.ShapeDtypeStruct((u,), np.int32))
  return out


def num_eval_batches(n: int, batch_size: int) -> int:
  """Global batches needed to cover n examples."""
  return math.ceil(n / batch_size)


def eval_batches(images: np.ndarray, labels: np.ndarray, batch_size: int, image_size: int, *,
                 resize_on_device: bool = False, process_index: int = 0,
                 process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """This process's slice of each global batch: image uint8 [b, S, S, 3], label int32 [b], mask bool [b].

  S = image_size, or with resize_on_device S0 = min(the images' size, image_size) (`data_sources.shipped_size`): the
  eval step resizes to image_size.

  The set is padded to a multiple of batch_size (global) with zero images masked out, so every example counts
  exactly once on any process count.
  """
  lo, hi = _local_rows(batch_size, process_index, process_count, 'eval batch size')
  n = len(images)
  rows = np.arange(num_eval_batches(n, batch_size) * batch_size).reshape(-1, batch_size)[:, lo:hi]
  if not rows.size:
    return iter(())
  mask = rows < n
  source = np.minimum(rows, n - 1)
  images_t, labels_t = tf.constant(images), tf.constant(labels, tf.int32)
  size = data_sources.shipped_size(images.shape[1], image_size, resize_on_device)

  def batch(i, m):
    image = augment.resize(tf.gather(images_t, i), size)
    image *= tf.cast(m, tf.uint8)[:, None, None, None]
    return {'image': image, 'label': tf.gather(labels_t, i) * tf.cast(m, tf.int32), 'mask': m}

  ds = tf.data.Dataset.from_tensor_slices((source, mask)).map(augment.plain(batch), num_parallel_calls=tf.data.AUTOTUNE,
                                                              deterministic=True)
  return ds.prefetch(tf.data.AUTOTUNE).with_options(_options()).as_numpy_iterator()


def pool_batches(splits: Splits, batch_size: int, image_size: int, *, resize_on_device: bool = False,
                 process_index: int = 0, process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """The unlabeled pool in pool order, as evaluation sees it: this process's slice of each global batch, image uint8
  [b, S, S, 3] and mask bool [b]; padded like eval_batches so every pool example is in exactly one batch. S as in
  eval_batches for in-memory data; folder files are centre-cropped to image_size."""
  lo, hi = _local_rows(batch_size, process_index, process_count, 'eval batch size')
  n = len(splits.unlabeled_idx)
  rows = np.arange(num_eval_batches(n, batch_size) * batch_size).reshape(-1, batch_size)[:, lo:hi]
  if not rows.size:
    return iter(())
  mask = rows < n
  train_idx = splits.unlabeled_idx[np.minimum(rows, n - 1)]
  view = splits.source.eval_image(image_size, resize_on_device)
  ds = tf.data.Dataset.from_tensor_slices((train_idx.reshape(-1), mask.reshape(-1)))
  ds = ds.map(augment.plain(lambda i, m: {'image': view(i), 'mask': m}), num_parallel_calls=tf.data.AUTOTUNE,
              deterministic=True)
  return ds.batch(hi - lo).prefetch(tf.data.AUTOTUNE).with_options(_options()).as_numpy_iterator()

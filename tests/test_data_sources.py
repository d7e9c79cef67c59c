"""Tests for ssmae_jax.data_sources: each image source implements each operation the pipeline asks of it."""

import os

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from ssmae_jax.configs.default import get_config
from ssmae_jax import data_sources, folder_data, input_pipeline

SIZE = 12  # Stored images are SIZE x SIZE: the two sources hold the same pixels.


def _images() -> np.ndarray:
  return np.random.default_rng(0).integers(0, 256, (5, SIZE, SIZE, 3), dtype=np.uint8)


@pytest.fixture(scope='module')
def sources(tmp_path_factory):
  """(InMemoryImages, ImageFiles, config) on the same 5 images; files: 2 labeled (class folders), 3 unlabeled, each
  group sorted as folder_data lists them."""
  root = tmp_path_factory.mktemp('images')
  names = ['labeled/a/x.png', 'labeled/b/y.png', 'unlabeled/sub/u0.png', 'unlabeled/u1.png', 'unlabeled/u2.png']
  for name, image in zip(names, _images()):
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tf.io.encode_png(image).numpy())  # Lossless: decoding gives the pixels back.
  config = ml_collections.ConfigDict(dict(dataset='cifar10', labeled_dir=str(root / 'labeled'),
                                          unlabeled_dir=str(root / 'unlabeled')))
  files = data_sources.ImageFiles(np.asarray([str(root / n) for n in names], dtype=object), num_labeled=2)
  return data_sources.InMemoryImages(_images()), files, config


def _map(op, *args):
  """op inside Dataset.map, as the pipeline runs it, over rows of args."""
  return np.stack(list(tf.data.Dataset.from_tensor_slices(args).map(op).as_numpy_iterator()))


_SEEDS = np.array([[i, 3] for i in range(5)], np.int64)
_IDX = np.arange(5, dtype=np.int64)


def test_has_files():
  assert not data_sources.InMemoryImages.has_files and data_sources.ImageFiles.has_files


@pytest.mark.parametrize('image_size, resize_on_device, shipped', [(16, False, 16), (16, True, SIZE), (8, True, 8)])
def test_in_memory_train_image_is_the_stored_image_at_the_shipped_size(sources, image_size, resize_on_device,
                                                                          shipped):
  in_memory, _, _ = sources
  op = in_memory.train_image(image_size, resize_on_device, get_config().augment)
  out = _map(op, _IDX, _SEEDS)
  assert out.shape == (5, shipped, shipped, 3) and out.dtype == np.uint8
  np.testing.assert_array_equal(out, _map(lambda i, s: op(i, s + 1), _IDX, _SEEDS))  # The seed plays no part.
  if shipped == SIZE:
    np.testing.assert_array_equal(out, _images())


@pytest.mark.parametrize('resize_on_device', [False, True])
def test_files_train_image_is_the_seeded_crop_at_image_size(sources, resize_on_device):
  _, files, _ = sources
  aug = get_config().augment
  op = files.train_image(16, resize_on_device, aug)
  out = _map(op, _IDX, _SEEDS)
  assert out.shape == (5, 16, 16, 3) and out.dtype == np.uint8
  np.testing.assert_array_equal(out, _map(op, _IDX, _SEEDS))
  assert not np.array_equal(out, _map(op, _IDX, _SEEDS + 1))  # Another seed, another crop.

  def crop(i, seed):  # The crop seed is folded out of the example's seed, apart from its views' seeds.
    path = folder_data.path_tensor(files.paths)[i]
    return folder_data.random_resized_crop(folder_data.read(path), tf.random.experimental.stateless_fold_in(seed, 7),
                                           16, aug.crop_scale, aug.crop_ratio)
  np.testing.assert_array_equal(out, _map(crop, _IDX, _SEEDS))


@pytest.mark.parametrize('resize_on_device, in_memory_size', [(False, 16), (True, SIZE)])
def test_eval_image_of_the_same_square_images_agrees(sources, resize_on_device, in_memory_size):
  in_memory, files, _ = sources
  a = _map(in_memory.eval_image(16, resize_on_device), _IDX)
  b = _map(files.eval_image(16, resize_on_device), _IDX)
  assert a.shape == (5, in_memory_size, in_memory_size, 3) and b.shape == (5, 16, 16, 3)
  if not resize_on_device:  # A square file's centre crop is the whole image, resized as in memory.
    np.testing.assert_array_equal(a, b)
  else:
    np.testing.assert_array_equal(a, _images())


def test_eval_images(sources):
  in_memory, files, _ = sources
  idx = np.array([4, 1])
  np.testing.assert_array_equal(in_memory.eval_images(idx, 16), _images()[idx])  # eval_batches resizes them.
  np.testing.assert_array_equal(files.eval_images(idx, SIZE), _images()[idx])
  assert files.eval_images(idx, 16).shape == (2, 16, 16, 3)
  np.testing.assert_array_equal(files.eval_images(idx, 16), _map(files.eval_image(16, False), idx))


def test_in_memory_describe_is_the_size_and_the_labels(sources):
  in_memory, _, config = sources
  labels = np.array([0, 1, 2, 1, 0], np.int32)
  record = in_memory.describe(labels, ['a', 'b', 'c'], config)
  assert record['dataset'] == 'cifar10' and record['num_train_examples'] == 5
  assert in_memory.describe(labels.copy(), [], config) == record
  assert in_memory.describe(np.roll(labels, 1), ['a', 'b', 'c'], config) != record


def test_files_describe_lists_files_relative_to_their_folders(sources):
  _, files, config = sources
  record = files.describe(np.array([0, 1, -1, -1, -1], np.int32), ['a', 'b'], config)
  assert record['dataset'] == 'folder' and record['class_names'] == ['a', 'b']
  assert record['labeled_files'] == [os.path.join('a', 'x.png'), os.path.join('b', 'y.png')]
  assert record['unlabeled_files'] == [os.path.join('sub', 'u0.png'), 'u1.png', 'u2.png']
  assert (record['num_labeled_files'], record['num_unlabeled_files']) == (2, 3)
  moved = ml_collections.ConfigDict(dict(labeled_dir='/elsewhere/labeled', unlabeled_dir='/elsewhere/unlabeled'))
  relocated = data_sources.ImageFiles(np.asarray([p.replace(os.path.dirname(config.labeled_dir), '/elsewhere')
                                                  for p in files.paths], dtype=object), num_labeled=2)
  assert relocated.describe(None, ['a', 'b'], moved) == record  # Moving the folders keeps the record.


def test_csv_rows(sources):
  in_memory, files, _ = sources
  pool = np.array([1, 4, 2, 3])  # A labeled file in the pool, and unlabeled ones out of path order.
  positions, names = in_memory.csv_rows(pool)
  assert positions.tolist() == [0, 1, 2, 3] and names == ['1', '4', '2', '3']
  positions, names = files.csv_rows(pool)
  assert positions.tolist() == [2, 3, 1] and names == sorted(names) == [files.paths[i] for i in pool[positions]]
  positions, names = files.csv_rows(np.array([0, 1]))
  assert positions.size == 0 and names == []


def test_splits_ask_their_source(sources):
  in_memory, files, _ = sources
  for source in (in_memory, files):
    splits = input_pipeline.Splits(num_classes=2, class_names=['a', 'b'], source=source,
                                   train_labels=np.array([0, 1, -1, -1, -1], np.int32), labeled_idx=_IDX[:2],
                                   val_idx=_IDX[:0], unlabeled_idx=_IDX[2:], test_images=None, test_labels=None)
    assert splits.has_files == source.has_files
    np.testing.assert_array_equal(splits.eval_images(_IDX[2:], SIZE), _images()[2:])

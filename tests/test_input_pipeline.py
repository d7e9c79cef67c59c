"""Tests for ssmae_jax.input_pipeline on synthetic TFDS data (tfds.testing.mock_data) and, if present, real CIFAR-10."""

import os
import pathlib
import socket
import zlib

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from ssmae_jax.configs.default import get_config
from ssmae_jax import input_pipeline
from ssmae_jax.errors import UserError

CIFAR10_DIR = os.environ.get('TFDS_DATA_DIR', str(pathlib.Path(__file__).resolve().parents[2] / 'shared' / 'tfds'))
HAS_CIFAR10 = (pathlib.Path(CIFAR10_DIR) / 'cifar10' / '3.0.2' / 'dataset_info.json').exists()


def _write_metadata(data_dir: str, name: str, num_train: int, num_test: int | None) -> None:
  """Writes the files that make TFDS consider `name` prepared in data_dir, with these split sizes."""
  builder = tfds.builder(name, data_dir=data_dir)
  sizes = {'train': num_train} | ({'test': num_test} if num_test is not None else {})
  builder.info.set_splits(tfds.core.SplitDict([
      tfds.core.SplitInfo(name=split, shard_lengths=[n], num_bytes=0, filename_template=tfds.core.ShardedFileTemplate(
          data_dir=builder.data_path, template='{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}',
          dataset_name=builder.name, split=split, filetype_suffix='tfrecord'))
      for split, n in sizes.items()]))
  builder.data_path.mkdir(parents=True, exist_ok=True)
  builder.info.write_to_directory(builder.data_path)


def _synthetic_split(builder, split, decoders=None, read_config=None, shuffle_files=False):
  """Noise images, labels i % num_classes: every class equally often."""
  del decoders, read_config, shuffle_files
  features = builder.info.features
  n = builder.info.splits[str(split)].num_examples
  rng = np.random.default_rng(zlib.crc32(f'{builder.name}/{split}'.encode()))
  return tf.data.Dataset.from_tensor_slices({
      'image': rng.integers(0, 256, (n, *features['image'].shape), dtype=np.uint8),
      'label': np.arange(n) % features['label'].num_classes,
  })


def _serve_synthetic(data_dir: str):
  return tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_FILES, data_dir=data_dir,
                                as_dataset_fn=_synthetic_split)


@pytest.fixture
def fake_tfds(tmp_path):
  """prepare(name, num_train, num_test) -> data_dir where TFDS serves synthetic, class-balanced examples."""
  data_dir = str(tmp_path)

  def prepare(name: str = 'cifar10', num_train: int = 200, num_test: int | None = 30) -> str:
    _write_metadata(data_dir, name, num_train, num_test)
    return data_dir

  with _serve_synthetic(data_dir):
    yield prepare


def _config(data_dir, **overrides):
  config = get_config()
  config.data_dir = data_dir
  config.label_fraction = 0.5
  config.val_fraction = 0.2
  config.labeled_batch_size = 8
  config.unlabeled_batch_size = 16
  config.update(overrides)
  return config


def _with(config, **overrides):
  copy = config.copy_and_resolve_references()
  copy.update(overrides)
  return copy


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_batches_equal(a, b):
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


# Splits.


def test_splits_are_disjoint_sorted_and_class_balanced(fake_tfds):
  splits = input_pipeline.load_splits(_config(fake_tfds()))
  assert splits.num_classes == 10 and len(splits.class_names) == 10
  assert splits.source.images.shape == (200, 32, 32, 3) and splits.source.images.dtype == np.uint8
  assert splits.train_labels.dtype == np.int32
  assert splits.test_images.shape == (30, 32, 32, 3) and splits.test_labels.shape == (30,)
  # 20 per class -> 10 labeled, of which 2 go to validation.
  assert np.bincount(splits.train_labels[splits.labeled_idx], minlength=10).tolist() == [8] * 10
  assert np.bincount(splits.train_labels[splits.val_idx], minlength=10).tolist() == [2] * 10
  assert not set(splits.labeled_idx) & set(splits.val_idx)
  for idx in (splits.labeled_idx, splits.val_idx, splits.unlabeled_idx):
    assert idx.dtype == np.int64 and (np.diff(idx) > 0).all()
  # Test examples come from their own split, not from the train examples.
  assert not any((splits.source.images == t).all(axis=(1, 2, 3)).any() for t in splits.test_images)


def test_unlabeled_pool_excludes_validation(fake_tfds):
  data_dir = fake_tfds()
  splits = input_pipeline.load_splits(_config(data_dir))
  everything_but_val = np.setdiff1d(np.arange(200), splits.val_idx)
  np.testing.assert_array_equal(splits.unlabeled_idx, everything_but_val)
  strict = input_pipeline.load_splits(_config(data_dir, unlabeled_includes_labeled=False))
  np.testing.assert_array_equal(strict.unlabeled_idx, np.setdiff1d(everything_but_val, splits.labeled_idx))


def test_split_seed_decides_the_split(fake_tfds):
  data_dir = fake_tfds()
  a, b = (input_pipeline.load_splits(_config(data_dir, split_seed=1)) for _ in range(2))
  c = input_pipeline.load_splits(_config(data_dir, split_seed=2))
  np.testing.assert_array_equal(a.labeled_idx, b.labeled_idx)
  np.testing.assert_array_equal(a.val_idx, b.val_idx)
  assert not np.array_equal(a.labeled_idx, c.labeled_idx)
  assert not np.array_equal(a.val_idx, c.val_idx)


def test_num_labels_overrides_label_fraction(fake_tfds):
  splits = input_pipeline.load_splits(_config(fake_tfds(), num_labels=50, val_fraction=0.0))
  assert np.bincount(splits.train_labels[splits.labeled_idx], minlength=10).tolist() == [5] * 10
  assert splits.val_idx.size == 0


def test_cifar100_and_missing_test_split(fake_tfds):
  splits = input_pipeline.load_splits(_config(fake_tfds('cifar100', 1000, None), dataset='cifar100'))
  assert splits.num_classes == 100 and len(splits.class_names) == 100
  assert np.bincount(splits.train_labels[splits.labeled_idx], minlength=100).tolist() == [4] * 100
  assert splits.test_images is None and splits.test_labels is None


def test_grayscale_becomes_three_equal_channels(fake_tfds):
  splits = input_pipeline.load_splits(_config(fake_tfds('mnist', 100, 10), dataset='mnist'))
  images = splits.source.images
  assert images.shape == (100, 28, 28, 3)
  assert (images[..., 0] == images[..., 1]).all() and (images[..., 0] == images[..., 2]).all()


@pytest.mark.parametrize('overrides, match', [
    (dict(label_fraction=0.0), 'label_fraction'),
    (dict(label_fraction=1.5), 'label_fraction'),
    (dict(num_labels=5), 'num_labels'),
    (dict(num_labels=10_000), 'num_labels'),
    (dict(val_fraction=1.0), 'val_fraction'),
    (dict(label_fraction=0.05), 'none to train on'),  # 1 labeled per class, and it goes to validation.
])
def test_bad_split_config_raises_user_error(fake_tfds, overrides, match):
  with pytest.raises(UserError, match=match):
    input_pipeline.load_splits(_config(fake_tfds(), **overrides))


def test_unknown_dataset_raises_user_error(tmp_path):
  with pytest.raises(UserError, match='Unknown TFDS dataset'):
    input_pipeline.load_splits(_config(str(tmp_path), dataset='no_such_dataset_xyz'))


def test_unprepared_dataset_raises_user_error_and_downloads_nothing(tmp_path):
  with pytest.raises(UserError, match='not prepared.*download is False.*TFDS_DATA_DIR.*tfds build cifar10'):
    input_pipeline.load_splits(_config(str(tmp_path), download=False))
  assert not any(tmp_path.rglob('*.tfrecord*'))


def test_failed_download_raises_user_error(tmp_path, monkeypatch):
  def no_network(self, *args, **kwargs):
    raise ConnectionError('no route to host')
  monkeypatch.setattr(tfds.core.DatasetBuilder, 'download_and_prepare', no_network)
  monkeypatch.setattr(socket, 'create_connection', lambda *args, **kwargs: socket.socket())  # The host answers.
  with pytest.raises(UserError, match='downloading it failed \\(ConnectionError\\).*TFDS_DATA_DIR'):
    input_pipeline.load_splits(_config(str(tmp_path)))


def test_offline_download_fails_within_seconds(tmp_path, monkeypatch):
  hosts = []

  def unreachable(address, *args, **kwargs):
    hosts.append(address)
    raise OSError('network unreachable')
  monkeypatch.setattr(socket, 'create_connection', unreachable)
  for name in ('https_proxy', 'HTTPS_PROXY'):  # Else the proxy is the one host asked.
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setattr(tfds.core.DatasetBuilder, 'download_and_prepare', lambda *args, **kwargs: pytest.fail())
  with pytest.raises(UserError, match=f"'cifar10' is not prepared in {tmp_path} and this machine cannot download it "
                     r'\(no connection to www\.cs\.toronto\.edu:443, storage\.googleapis\.com:443: network '
                     r'unreachable\): .*`tfds build cifar10`'):
    input_pipeline.load_splits(_config(str(tmp_path)))
  assert hosts == [('www.cs.toronto.edu', 443), ('storage.googleapis.com', 443)]


@pytest.mark.parametrize('name, match', [('imdb_reviews', 'no image and label'), ('dmlab', 'not fixed and square')])
def test_unsuitable_dataset_raises_user_error(tmp_path, name, match):
  with pytest.raises(UserError, match=match):
    input_pipeline.load_splits(_config(str(tmp_path), dataset=name))


def test_steps_per_epoch(fake_tfds):
  config = _config(fake_tfds())
  splits = input_pipeline.load_splits(config)
  assert input_pipeline.steps_per_epoch(splits, config) == 80 // 8
  with pytest.raises(UserError, match='labeled_batch_size'):
    input_pipeline.steps_per_epoch(splits, _config(config.data_dir, labeled_batch_size=81))


# Training streams.


REFERENCE_STEPS = 13


@pytest.fixture(scope='module')
def stream(tmp_path_factory):
  """(splits, config, the first REFERENCE_STEPS batches of a 1-process stream started at step 0), built once."""
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  _write_metadata(data_dir, 'cifar10', 200, None)
  config = _config(data_dir)
  with _serve_synthetic(data_dir):
    splits = input_pipeline.load_splits(config)
  # 80 labeled / 8 = 10 steps and 180 unlabeled / 16 = 11.25 steps per epoch: steps 8..12 cross both boundaries.
  assert (len(splits.labeled_idx), len(splits.unlabeled_idx)) == (80, 180)
  return splits, config, _take(input_pipeline.train_iterator(splits, config, 0), REFERENCE_STEPS)


def test_train_batches_keys_shapes_dtypes_and_contents(stream):
  splits, _, reference = stream
  batch = reference[0]
  expected = {
      'labeled_image': ((8, 32, 32, 3), np.uint8), 'labeled_label': ((8,), np.int32),
      'unlabeled_weak': ((16, 32, 32, 3), np.uint8), 'unlabeled_strong': ((16, 32, 32, 3), np.uint8),
      'unlabeled_mae': ((16, 32, 32, 3), np.uint8), 'unlabeled_index': ((16,), np.int32),
  }
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == expected
  train_idx = splits.unlabeled_idx[batch['unlabeled_index']]
  for weak, image in zip(batch['unlabeled_weak'], splits.source.images[train_idx]):  # The image, maybe mirrored.
    assert np.array_equal(weak, image) or np.array_equal(weak, image[:, ::-1])
  assert set(batch['labeled_label']) <= set(range(10))
  for key in ('unlabeled_strong', 'unlabeled_mae'):
    assert not np.array_equal(batch['unlabeled_weak'], batch[key])


@pytest.mark.parametrize('image_size, resize_on_device, shipped', [
    (40, False, 40), (40, True, 32), (16, False, 16), (16, True, 16)])
def test_train_batches_ship_image_size_or_the_stored_size(stream, image_size, resize_on_device, shipped):
  """Stored at 32 px: resize_on_device leaves the upsampling to the step; shrinking stays on the host."""
  splits, config, _ = stream
  config = _with(config, image_size=image_size, resize_on_device=resize_on_device)
  batch = next(input_pipeline.train_iterator(splits, config, 0))
  assert all(batch[k].shape[1:] == (shipped, shipped, 3) for k in ('labeled_image', 'unlabeled_weak',
                                                                   'unlabeled_strong', 'unlabeled_mae'))


def test_resize_on_device_ships_the_batches_of_a_stored_size_run(stream):
  splits, config, reference = stream
  batches = input_pipeline.train_iterator(splits, _with(config, image_size=64, resize_on_device=True), 0)
  _assert_batches_equal(next(batches), reference[0])


@pytest.mark.parametrize('resize_on_device, shipped', [(False, 40), (True, 32)])
def test_pool_batches_ship_image_size_or_the_stored_size(stream, resize_on_device, shipped):
  splits, _, _ = stream
  batch = next(input_pipeline.pool_batches(splits, 16, 40, resize_on_device=resize_on_device))
  assert batch['image'].shape == (16, shipped, shipped, 3) and batch['mask'].all()


def test_need_flags_select_the_streams(stream):
  splits, config, reference = stream
  labeled = next(input_pipeline.train_iterator(splits, config, 0, need_unlabeled=False))
  unlabeled = next(input_pipeline.train_iterator(splits, config, 0, need_labeled=False))
  assert set(labeled) == {'labeled_image', 'labeled_label'}
  assert set(unlabeled) == {'unlabeled_weak', 'unlabeled_strong', 'unlabeled_mae', 'unlabeled_index'}
  _assert_batches_equal(labeled | unlabeled, reference[0])


def test_each_epoch_visits_every_example_once_in_a_new_order(stream):
  splits, config, _ = stream
  # 180 pool examples / 20 = 9 steps per epoch.
  batches = _take(input_pipeline.train_iterator(splits, _with(config, unlabeled_batch_size=20), 0,
                                                need_labeled=False), 18)
  epochs = [np.concatenate([b['unlabeled_index'] for b in batches[e * 9:(e + 1) * 9]]) for e in range(2)]
  for order in epochs:
    np.testing.assert_array_equal(np.sort(order), np.arange(180))
  assert not np.array_equal(epochs[0], epochs[1])


def test_resume_at_step_s_gives_batches_s_onwards(stream):
  splits, config, reference = stream
  resumed = _take(input_pipeline.train_iterator(splits, config, 8), REFERENCE_STEPS - 8)
  for a, b in zip(reference[8:], resumed):
    _assert_batches_equal(a, b)


def test_seed_decides_order_and_augmentation(stream):
  splits, config, reference = stream
  other = next(input_pipeline.train_iterator(splits, _with(config, seed=1), 0))
  assert not np.array_equal(reference[0]['unlabeled_index'], other['unlabeled_index'])
  assert not np.array_equal(reference[0]['labeled_image'], other['labeled_image'])


_VIEWS = ('unlabeled_weak', 'unlabeled_strong', 'unlabeled_mae')


def test_reference_unlabeled_views_change_only_the_views_deterministically(stream):
  splits, config, reference = stream
  config = _with(config, reference_unlabeled_views=True)
  first, again = (_take(input_pipeline.train_iterator(splits, config, 0), 2) for _ in range(2))
  for a, b, clean in zip(first, again, reference):
    _assert_batches_equal(a, b)
    for key in clean:
      if key in _VIEWS:
        assert (a[key] != clean[key]).mean() > 0.5, key
      else:
        np.testing.assert_array_equal(a[key], clean[key], err_msg=key)


def test_reference_unlabeled_views_off_is_the_default_stream(stream):
  splits, config, reference = stream
  assert not config.reference_unlabeled_views
  _assert_batches_equal(next(input_pipeline.train_iterator(splits, _with(config, reference_unlabeled_views=False),
                                                           0)), reference[0])


def test_reference_view_source_is_the_normalised_labeled_view_wrapped_to_8_bits():
  # torchvision's ToPILImage: pic.mul(255).byte(), truncation toward zero then modulo 256.
  aug = get_config().augment
  aug.labeled_rotation = 0.0
  aug.labeled_jitter = (0.0, 0.0, 0.0, 0.0)
  images = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
  seeds = np.array([[i, 5] for i in range(3)], np.int64)
  op = lambda x, s: input_pipeline._reference_view_source(x, s, aug)
  eager = [op(tf.constant(x), tf.constant(s)).numpy() for x, s in zip(images, seeds)]
  mapped = list(tf.data.Dataset.from_tensor_slices((images, seeds)).map(op).as_numpy_iterator())
  for image, e, m in zip(images, eager, mapped):
    np.testing.assert_array_equal(e, m)
    normalised = (image / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    expected = np.trunc(normalised * 255.0).astype(np.int64) % 256
    assert min(_max_wrapped_diff(e, expected), _max_wrapped_diff(e, expected[:, ::-1])) <= 1


def _max_wrapped_diff(a, b) -> int:
  """Distance modulo 256: float rounding next to a truncation boundary may land on either side of a wrap."""
  d = (np.asarray(a, np.int64) - np.asarray(b, np.int64)) % 256
  return int(np.minimum(d, 256 - d).max())


def test_process_slices_concatenate_to_the_global_batch(stream):
  splits, config, reference = stream
  parts = [_take(input_pipeline.train_iterator(splits, config, 10, process_index=p, process_count=2), 3)
           for p in range(2)]
  for step, batch in enumerate(reference[10:]):
    assert parts[0][step]['labeled_image'].shape[0] == 4 and parts[0][step]['unlabeled_index'].shape[0] == 8
    _assert_batches_equal(batch, {k: np.concatenate([parts[0][step][k], parts[1][step][k]]) for k in batch})


def test_empty_unlabeled_pool_raises_user_error(fake_tfds):
  config = _config(fake_tfds(), label_fraction=1.0, unlabeled_includes_labeled=False)
  splits = input_pipeline.load_splits(config)
  assert splits.unlabeled_idx.size == 0
  with pytest.raises(UserError, match='unlabeled pool is empty'):
    input_pipeline.train_iterator(splits, config, 0)


def test_batch_not_divisible_by_process_count_raises_user_error(stream):
  splits, config, _ = stream
  with pytest.raises(UserError, match='labeled_batch_size'):
    input_pipeline.train_iterator(splits, config, 0, process_count=3)


# Evaluation batches.


def _eval_set(n, size=8):
  images = np.random.default_rng(0).integers(1, 256, (n, size, size, 3), dtype=np.uint8)
  return images, np.arange(n, dtype=np.int32) % 7


def test_num_eval_batches():
  assert [input_pipeline.num_eval_batches(n, 4) for n in (0, 1, 4, 5, 10)] == [0, 1, 1, 2, 3]


def test_eval_batches_count_every_example_once():
  images, labels = _eval_set(10)
  batches = list(input_pipeline.eval_batches(images, labels, 4, 8))
  assert len(batches) == 3 == input_pipeline.num_eval_batches(10, 4)
  assert all(b['image'].shape == (4, 8, 8, 3) and b['image'].dtype == np.uint8 for b in batches)
  assert all(b['label'].dtype == np.int32 and b['mask'].dtype == bool for b in batches)
  mask = np.concatenate([b['mask'] for b in batches])
  assert mask.sum() == 10 and mask[:10].all()
  np.testing.assert_array_equal(np.concatenate([b['image'] for b in batches])[mask], images)
  np.testing.assert_array_equal(np.concatenate([b['label'] for b in batches])[mask], labels)


def test_eval_batches_split_across_processes():
  images, labels = _eval_set(10)
  whole = list(input_pipeline.eval_batches(images, labels, 4, 8))
  parts = [list(input_pipeline.eval_batches(images, labels, 4, 8, process_index=p, process_count=2))
           for p in range(2)]
  assert len(parts[0]) == len(parts[1]) == 3
  for step, batch in enumerate(whole):
    assert parts[1][step]['mask'].shape == (2,)
    _assert_batches_equal(batch, {k: np.concatenate([parts[0][step][k], parts[1][step][k]]) for k in batch})
  with pytest.raises(UserError, match='multiple of the process count'):
    input_pipeline.eval_batches(images, labels, 3, 8, process_count=2)


def test_eval_batches_resize_and_empty_set():
  images, labels = _eval_set(5)
  batch = next(input_pipeline.eval_batches(images, labels, 8, 16))
  assert batch['image'].shape == (8, 16, 16, 3) and batch['mask'].sum() == 5
  # resize_on_device: stored 8 px images travel as they are; larger ones are still shrunk on the host.
  for image_size, shipped in ((16, 8), (4, 4)):
    batch = next(input_pipeline.eval_batches(images, labels, 8, image_size, resize_on_device=True))
    assert batch['image'].shape == (8, shipped, shipped, 3)
  assert list(input_pipeline.eval_batches(images[:0], labels[:0], 8, 16)) == []


# Real CIFAR-10.


@pytest.fixture(scope='module')
def cifar10():
  if not HAS_CIFAR10:
    pytest.skip(f'Real CIFAR-10 not prepared in {CIFAR10_DIR} (set TFDS_DATA_DIR to ../shared/tfds).')
  config = get_config()
  config.data_dir = CIFAR10_DIR
  return input_pipeline.load_splits(config), config


@pytest.mark.slow
def test_cifar10_splits(cifar10):
  splits, _ = cifar10
  assert splits.class_names[:2] == ['airplane', 'automobile']
  assert splits.source.images.shape == (50_000, 32, 32, 3) and splits.test_images.shape == (10_000, 32, 32, 3)
  assert np.bincount(splits.train_labels[splits.labeled_idx]).tolist() == [450] * 10
  assert np.bincount(splits.train_labels[splits.val_idx]).tolist() == [50] * 10
  assert len(splits.unlabeled_idx) == 49_500 and not set(splits.unlabeled_idx) & set(splits.val_idx)


@pytest.mark.slow
def test_cifar10_train_and_eval_batches(cifar10):
  splits, config = cifar10
  batch = next(input_pipeline.train_iterator(splits, config, 0))
  assert batch['labeled_image'].shape == (16, 32, 32, 3) and batch['unlabeled_strong'].shape == (32, 32, 32, 3)
  val = splits.val_idx
  batches = list(input_pipeline.eval_batches(splits.source.images[val], splits.train_labels[val], 256, 32))
  assert len(batches) == 2 and sum(b['mask'].sum() for b in batches) == 500

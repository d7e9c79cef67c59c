"""Shared test setup: offline data and quiet TensorFlow, set before anything imports TF or JAX."""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault('TFDS_DATA_DIR', os.path.join(os.path.dirname(ROOT), 'shared', 'tfds'))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import json  # noqa: E402
import shutil  # noqa: E402

import pytest  # noqa: E402

needs_cifar10 = pytest.mark.skipif(
    not os.path.isdir(os.path.join(os.environ['TFDS_DATA_DIR'], 'cifar10')),
    reason='CIFAR-10 is not prepared in $TFDS_DATA_DIR (CI uses ../shared/tfds)')

TRAIN_IMAGES, TEST_IMAGES = 5000, 1000  # The first ones of CIFAR-10's splits (see `small_cifar10`).


@pytest.fixture(scope='module')
def decode_cifar10_once():
  """Runs of one test module all read the same real CIFAR-10: decode each split once, not once per Run."""
  from ssmae_jax import input_pipeline
  load, cache = input_pipeline._load, {}

  def cached(builder, split):
    key = (str(builder.data_dir), split)
    if key not in cache:
      cache[key] = load(builder, split)
    return cache[key]

  input_pipeline._load = cached
  yield
  input_pipeline._load = load


@pytest.fixture(scope='session')
def small_cifar10(tmp_path_factory) -> str:
  """A TFDS data dir holding CIFAR-10 cut to its first TRAIN_IMAGES / TEST_IMAGES examples, prepared as TFDS does
  it: every run reads real images through the real TFDS path, and decodes 12x fewer of them."""
  import tensorflow as tf
  source = os.path.join(os.environ['TFDS_DATA_DIR'], 'cifar10', '3.0.2')
  data_dir = tmp_path_factory.mktemp('tfds')
  target = data_dir / 'cifar10' / '3.0.2'
  target.mkdir(parents=True)
  for name in ('features.json', 'label.labels.txt'):
    shutil.copy(os.path.join(source, name), target / name)
  with open(os.path.join(source, 'dataset_info.json')) as f:
    info = json.load(f)
  for split in info['splits']:
    count = {'train': TRAIN_IMAGES, 'test': TEST_IMAGES}[split['name']]
    name = f'cifar10-{split["name"]}.tfrecord-00000-of-00001'
    with tf.io.TFRecordWriter(str(target / name)) as writer:
      for record in tf.data.TFRecordDataset(os.path.join(source, name)).take(count):
        writer.write(record.numpy())
    split.update(shardLengths=[str(count)], numBytes=str(os.path.getsize(target / name)))
  with open(target / 'dataset_info.json', 'w') as f:
    json.dump(info, f)
  return str(data_dir)

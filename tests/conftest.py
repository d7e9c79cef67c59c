"""Shared test setup: offline data and quiet TensorFlow, set before anything imports TF or JAX."""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault('TFDS_DATA_DIR', os.path.join(os.path.dirname(ROOT), 'shared', 'tfds'))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import pytest  # noqa: E402

needs_cifar10 = pytest.mark.skipif(
    not os.path.isdir(os.path.join(os.environ['TFDS_DATA_DIR'], 'cifar10')),
    reason='CIFAR-10 is not prepared in $TFDS_DATA_DIR (CI uses ../shared/tfds)')


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

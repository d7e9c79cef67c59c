"""Shared test setup: offline data, quiet TensorFlow and a fast XLA, set before anything imports TF or JAX.

The suite runs in two pytest-xdist workers (README: `pytest -q -n 2 --dist loadscope --no-loadscope-reorder`), a
module or test class to a worker (see `pytest_collection_modifyitems`).
"""

import atexit
import json
import os
import shutil
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault('TFDS_DATA_DIR', os.path.join(os.path.dirname(ROOT), 'shared', 'tfds'))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# XLA compiles with LLVM's optimisations off: the tests' programs are tiny, compiling them dominates, and what they
# compute is the same (tests that compare numbers compare runs under the same flag, or allow float rounding).
if '--xla_backend_optimization_level' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' --xla_backend_optimization_level=0').strip()
# One persistent compilation cache for the whole session, shared by the xdist workers (they inherit the controlling
# process's environment) and by every `main.py` they start: a program compiles once, whichever test runs it first.
# Tests of the cache itself give their runs a cache of their own. Removed when the session ends.
if 'SSMAE_TESTS_XLA_CACHE' not in os.environ:  # Else a worker, under the controlling process that made it.
  os.environ['SSMAE_TESTS_XLA_CACHE'] = tempfile.mkdtemp(prefix='ssmae_tests_xla_cache_')
  atexit.register(shutil.rmtree, os.environ['SSMAE_TESTS_XLA_CACHE'], ignore_errors=True)
os.environ.update(JAX_COMPILATION_CACHE_DIR=os.environ['SSMAE_TESTS_XLA_CACHE'],
                  JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0', JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='-1')

import pytest  # noqa: E402

import ssmae_jax  # noqa: E402,F401  With libtpu and no TPU here: the CPU for this process and every one it starts.

needs_cifar10 = pytest.mark.skipif(
    not os.path.isdir(os.path.join(os.environ['TFDS_DATA_DIR'], 'cifar10')),
    reason='CIFAR-10 is not prepared in $TFDS_DATA_DIR (CI uses ../shared/tfds)')

# The first ones of CIFAR-10's splits (see `small_cifar10`).
TRAIN_IMAGES, TEST_IMAGES = 1000, 200

# The tests' one small run: configs/smoke.py with one encoder block, on `small_cifar10`. Half of the 1,000 training
# images are labeled, 10% of those go to validation: 450 labeled training images in batches of 64 -> 7 steps per epoch;
# the unlabeled pool is the other 950. In-process runs (`small_config`) and `main.py` runs (`config_flags`) of every
# module start from it, so that runs of the same method and switches compile the same programs: the first one
# compiles them into the session's compilation cache, the others load them.
SMALL_RUN = {
    'model.depth': 1,
    'label_fraction': 0.5,
    'labeled_batch_size': 64,
    'eval_batch_size': 256,
    'num_steps': 8,
    'log_every_steps': 4,
    'checkpoint_every_steps': 8,
}


def small_config(data_dir: str, **overrides):
  """SMALL_RUN's config reading `data_dir` (`small_cifar10`), with `overrides` (dotted names for nested fields)."""
  from ssmae_jax.configs import smoke
  c = smoke.get_config()
  c.data_dir = data_dir
  for name, value in {**SMALL_RUN, **overrides}.items():
    *parents, leaf = name.split('.')
    node = c
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def gate_rule_decides(rule: str, epoch: int, warmup: int, hca: float, threshold: float, num_confident: int = 0,
                      min_confident: int = 0) -> bool:
  """The registered gate rule `rule` on a validation pass with these numbers."""
  import ml_collections
  import numpy as np
  from ssmae_jax import registry
  config = ml_collections.ConfigDict(dict(warmup_epochs=warmup, gate_threshold=threshold,
                                          gate_min_confident=min_confident))
  stats = dict(epoch=epoch, accuracy=hca, hca=hca, confident=num_confident, count=100,
               per_class_confident=np.zeros(10, int), per_class_correct=np.zeros(10, int))
  return registry.gate_rules.get(rule)(stats, config)


def config_flags(overrides: dict) -> list[str]:
  """main.py's flags for `overrides` of configs/smoke.py."""
  return [f'--config.{k}={v}' for k, v in overrides.items()]


@pytest.fixture(scope='module')
def decode_cifar10_once():
  """Runs of one test module all read the same real CIFAR-10: decode each split once, not once per run."""
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
  it: every run reads real images through the real TFDS path, and decodes 50x fewer of them."""
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


# Modules (and their classes) in the order they start under pytest-xdist, slowest first (measured on 2 cores), so
# that no long one starts last; the others follow in their usual order.
SLOWEST_FIRST = ('test_reliability.py', 'test_gcs.py', 'test_methods.py', 'test_train.py', 'test_benchmarks.py',
                 'test_folder.py', 'test_input_pipeline.py', 'test_runtime.py', 'test_steps.py', 'test_levers.py',
                 'test_device_resize.py', 'test_configuration.py', 'test_report.py', 'test_precision.py')


def pytest_collection_modifyitems(config, items):
  """Runs the modules of SLOWEST_FIRST first, in that order. The README's `pytest -n 2 --dist loadscope
  --no-loadscope-reorder` hands each module (or test class) to one worker, in this order: a module's fixtures are
  built once, and the two workers end together."""
  rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
  items.sort(key=lambda item: rank.get(os.path.basename(item.nodeid.split('::')[0]), len(rank)))

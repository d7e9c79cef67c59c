"""Trains or evaluates SSMAE. See README.md; e.g.

  TFDS_DATA_DIR=../shared/tfds python main.py --config=configs/cifar10.py --workdir=/tmp/ssmae_c10
"""

import importlib
import os
import re
import sys
import tempfile

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# TensorFlow's C++ start-up lines (oneDNN, cpu_feature_guard) are logged through absl before absl's log is set up, so
# TF_CPP_MIN_LOG_LEVEL does not hold them back: its INFO and WARNING lines in glog format, and absl's notice about it.
_START_UP_NOISE = re.compile(r'(WARNING: All log messages before absl::InitializeLog\(\) is called|[IW]\d{4} )')

# XLA allocates each train step's temporaries (~750 MB at ViT-T/4) afresh; with 4 KiB pages the kernel spends
# 10-15% of a CPU step faulting them in. glibc reads GLIBC_TUNABLES only at start, hence the re-exec.
_HUGEPAGE_MALLOC = 'glibc.malloc.hugetlb=1'
if sys.platform.startswith('linux') and _HUGEPAGE_MALLOC not in os.environ.get('GLIBC_TUNABLES', ''):
  os.environ['GLIBC_TUNABLES'] = ':'.join(filter(None, [os.environ.get('GLIBC_TUNABLES'), _HUGEPAGE_MALLOC]))
  os.execv(sys.executable, [sys.executable, *sys.argv])

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

config_flags.DEFINE_config_file('config', None, 'Path to a config file, e.g. configs/cifar10.py.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and results.json (resumes if it holds a run).')
flags.DEFINE_enum('mode', 'train', ['train', 'eval', 'reconstruct', 'plots', 'predict', 'compile'],
                  'train (or resume) | eval: a checkpoint on the test split | reconstruct: a reconstruction grid of '
                  'the latest checkpoint | plots: curves from the workdir\'s history.json (WORKDIR/figures/) | '
                  'predict: WORKDIR/pseudo_labels.csv, labels of the unlabeled images from the latest checkpoint | '
                  'compile: the run\'s steps compiled for the TPU slice --topology, on this machine (needs libtpu, no '
                  'TPU, no data, no --workdir): memory per chip, FLOPs, a roofline time and checks; see README.')
flags.DEFINE_enum('checkpoint', 'best', ['best', 'latest'], 'Which checkpoint --mode=eval evaluates.')
flags.DEFINE_bool('distributed', False, 'Run as one of several processes (hosts) with jax.distributed: on a TPU pod '
                  'slice or a SLURM / Open MPI cluster the processes find each other; elsewhere also pass the three '
                  'flags below. See README, "Several hosts".')
flags.DEFINE_string('coordinator_address', None, 'HOST:PORT of process 0, the same in every process (implies '
                    '--distributed).')
flags.DEFINE_integer('num_processes', None, 'How many processes take part (with --coordinator_address).')
flags.DEFINE_integer('process_id', None, 'This process\'s index in [0, --num_processes).')
flags.DEFINE_string('topology', None, 'With --mode=compile: the TPU slice, e.g. v5e-8, v4-8, v4-32, v6e-8, or libtpu\'s '
                    'own name (v4:2x2x1).')
flags.DEFINE_bool('json', False, 'With --mode=compile: print the report as one JSON object.')
flags.mark_flags_as_required(['config'])
flags.register_multi_flags_validator(['mode', 'workdir'], lambda f: f['mode'] == 'compile' or f['workdir'],
                                     '--workdir is required (except with --mode=compile).')
flags.register_multi_flags_validator(['mode', 'topology'], lambda f: (f['mode'] == 'compile') == bool(f['topology']),
                                     '--mode=compile and --topology (e.g. --topology=v5e-8) go together.')


def _config_path(argv: list[str]) -> str | None:
  for i, arg in enumerate(argv):
    if arg.startswith('--config='):
      return arg.split('=', 1)[1]
    if arg == '--config' and i + 1 < len(argv):
      return argv[i + 1]
  return None


def parse_flags(argv: list[str]) -> list[str]:
  """absl parsing, but a bad flag or config override is one line naming the fix, not a traceback."""
  config_path = _config_path(argv)
  if config_path:  # A config file's `import my_plugins` finds the modules beside it, from any working directory.
    sys.path.insert(0, os.path.dirname(os.path.abspath(config_path.split(':')[0])))
  try:
    rest = flags.FLAGS(argv)
    flags.FLAGS.config.method  # The config file loads lazily; make its errors surface here.
  except Exception as e:  # Anything raised while parsing flags or loading the config file is bad user input.
    message = ' '.join(str(e).replace('\\n', ' ').replace('\\', '').split()).strip('\'"')
    message = _unsweepable(argv) or message
    print(f'error: {message} (see --helpfull, and the fields of configs/default.py)', file=sys.stderr)
    sys.exit(2)
  from ssmae_jax import configuration
  from ssmae_jax.errors import UserError
  try:  # Also done by the library; here it comes before TensorFlow and JAX start, within a second or two.
    configuration.validate(flags.FLAGS.config)
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  if not flags.FLAGS['verbosity'].present:
    _import_quietly('tensorflow')
  return rest


def _unsweepable(argv: list[str]) -> str | None:
  """The error line for a --config.sweep.NAME override whose field exists but cannot be swept (config.sweep holds the
  sweepable fields only, so flag parsing alone would say the key does not exist)."""
  from ssmae_jax import configuration, sweep
  for arg in argv:
    if arg.startswith('--config.sweep.'):
      name = arg[len('--config.sweep.'):].split('=', 1)[0]
      specs = configuration.declarations()
      if name in specs and not specs[name].sweep:
        return sweep.unsweepable(name, specs)
  return None


def _import_quietly(module: str) -> None:
  """Imports `module` with the C-level stderr captured, and passes on all but its start-up noise."""
  sys.stderr.flush()
  console = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      importlib.import_module(module)
    finally:
      os.dup2(console, 2)
      os.close(console)
      captured.seek(0)
      for line in captured.read().decode(errors='replace').splitlines(keepends=True):
        if not _START_UP_NOISE.match(line):
          sys.stderr.write(line)


def main(argv):
  del argv
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO; our own lines are printed.
  import tensorflow as tf
  # tf.data only runs on the host; the accelerators belong to JAX.
  tf.config.set_visible_devices([], 'GPU')
  import jax
  from ssmae_jax import sharding, tpu_compile
  from ssmae_jax.errors import UserError
  try:
    f = flags.FLAGS
    if f.mode == 'compile':
      sys.exit(tpu_compile.run(f.config, config_flags.get_config_filename(f['config']), f.topology, f.json))
    if f.distributed or f.coordinator_address or f.num_processes is not None or f.process_id is not None:
      sharding.initialize_distributed(f.coordinator_address, f.num_processes, f.process_id)
    mode, config, workdir = flags.FLAGS.mode, flags.FLAGS.config, flags.FLAGS.workdir
    from ssmae_jax import runtime
    if mode != 'plots':
      runtime.enable_compilation_cache(config, workdir)  # Before anything compiles.
      if jax.process_index() == 0:
        print('\n'.join(runtime.describe(config)), flush=True)
    # Only now: their modules create arrays, which starts JAX on this process alone.
    from ssmae_jax import inference, train
    if mode == 'train':
      train.train(config, workdir)
    elif mode == 'eval':
      inference.evaluate(config, workdir, flags.FLAGS.checkpoint)
    elif mode == 'reconstruct':
      inference.reconstruct(config, workdir)
    elif mode == 'predict':
      inference.predict_pool(config, workdir)
    else:
      inference.plots(workdir)
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  except FloatingPointError as e:  # config.nan_policy='stop': the message names the step and the checkpoint kept.
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)

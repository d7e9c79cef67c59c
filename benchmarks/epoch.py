"""Wall time of real training steps, data included, as a user of main.py feels it: the trainer itself, timed.

  TFDS_DATA_DIR=../shared/tfds PYTHONPATH=. .venv/bin/python -m benchmarks.epoch [--json]
      [--config configs/bench_vit_t4.py] [--steps N] [--warmup W] [--no-hugepage-malloc]

Runs `train.train_and_evaluate(config, tmpdir, preemption=train.StopAtStep(N))` in a temporary workdir, the loop
unchanged (tf.data stream, prefetch to device, the jitted step, on-device metrics, checkpoint at the stop), without
test evaluations and periodic checkpoints. The trainer syncs with the device only when it logs, so it logs every W
steps and the times of those syncs give the steady state, `ms_per_step` over steps W..N. The wall from the
process's start splits as
  total_s = startup_s + eval_s + N * ms_per_step + shutdown_s:
startup (imports, data decoding, initial state, compiling), the validation passes at epoch boundaries (the epoch-0
one decides the gate; more if N crosses an epoch), and shutdown (the checkpoint at the stop). `epoch_s` is an
epoch's steady-state wall time, validation excluded.
"""

import time

START = time.perf_counter()

import os  # noqa: E402

import benchmarks  # noqa: E402

if __name__ == '__main__':
  benchmarks.reexec_with_hugepage_malloc('benchmarks.epoch')

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import jax  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import logging  # noqa: E402

from benchmarks import train_step as step_bench  # noqa: E402
from ssmae_jax import experiment, run_output, train  # noqa: E402

IMPORTED = time.perf_counter()


class TimedReporter(run_output.Reporter):
  """The run's reporter, noting when each logging window (a host sync) ended; quiet if asked."""

  def __init__(self, exp, quiet: bool = False):
    super().__init__(exp)
    self.quiet = quiet
    self.flushes = []

  def window(self, done, means, learning_rate):
    super().window(done, means, learning_rate)
    self.flushes.append((done, time.perf_counter()))

  def print(self, line):
    if not self.quiet:
      super().print(line)


def timed_evaluations(evaluations: list):
  """train.evaluate_epoch, appending (start, end) of each call to `evaluations`."""
  evaluate_epoch = train.evaluate_epoch

  def timed(*args, **kwargs):
    start = time.perf_counter()
    out = evaluate_epoch(*args, **kwargs)
    evaluations.append((start, time.perf_counter()))
    return out
  return timed


def benchmark_config(config, num_steps: int, warmup: int):
  """The config with no test evaluation, a log (host sync) every `warmup` steps and no checkpoint before the stop."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.test_every_epochs = 0  # Test accuracy only at the end of a run, which the benchmark stops before.
    config.log_every_steps = warmup
    config.checkpoint_every_steps = num_steps + 1  # One checkpoint, at the stop (timed as shutdown).
    if config.num_steps is not None and config.num_steps <= num_steps:
      config.num_steps = num_steps + 1  # Stop before the end of the run: no final evaluation.
  return config


def run(config, num_steps: int, warmup: int = 10, quiet: bool = False) -> dict:
  if not 0 < warmup < num_steps:
    raise ValueError(f'Need 0 < warmup ({warmup}) < steps ({num_steps}).')
  config = benchmark_config(config, num_steps, warmup)
  with tempfile.TemporaryDirectory(prefix='ssmae_epoch_bench_') as workdir:
    start = time.perf_counter()
    exp = experiment.build(config, workdir)
    reporter = TimedReporter(exp, quiet=quiet)
    init_s = time.perf_counter() - start
    evaluations, evaluate_epoch = [], train.evaluate_epoch
    train.evaluate_epoch = timed_evaluations(evaluations)  # The loop looks it up at each epoch start.
    try:
      train.train_and_evaluate(config, workdir, experiment=exp, reporter=reporter,
                               preemption=train.StopAtStep(num_steps))
    finally:
      train.evaluate_epoch = evaluate_epoch
    end = time.perf_counter()
  flushes = dict(reporter.flushes)
  if warmup not in flushes or num_steps not in flushes:
    raise RuntimeError(f'The trainer synced at steps {sorted(flushes)}, not at {warmup} and {num_steps}.')
  steady_start, steady_end = flushes[warmup], flushes[num_steps]
  eval_s = sum(e - s for s, e in evaluations)
  # An epoch boundary inside the steady window (a long --steps) is evaluation, not step time.
  steady_eval_s = sum(e - s for s, e in evaluations if s >= steady_start)
  step_s = (steady_end - steady_start - steady_eval_s) / (num_steps - warmup)
  total_s = end - START
  shutdown_s = end - steady_end
  startup_s = total_s - shutdown_s - eval_s - num_steps * step_s
  return dict(
      total_s=round(total_s, 2),
      startup_s=round(startup_s, 2),
      ms_per_step=round(1e3 * step_s, 1),
      steps_per_s=round(1 / step_s, 3),
      eval_s=round(eval_s, 2),
      shutdown_s=round(shutdown_s, 2),
      import_s=round(IMPORTED - START, 2),
      init_s=round(init_s, 2),
      steps_per_epoch=exp.steps_per_epoch,
      epoch_s=round(exp.steps_per_epoch * step_s, 1),
      steps=num_steps,
      warmup_steps=warmup,
      method=config.method,
      image_size=config.image_size,
      **benchmarks.machine(),
  )


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', default='configs/bench_vit_t4.py')
  parser.add_argument('--steps', type=int, default=30, help='training steps in all')
  # tf.data fills its buffers while the step compiles: a data-bound config drains them in the first ~10 steps.
  parser.add_argument('--warmup', type=int, default=10, help='steps before the steady state is timed')
  parser.add_argument('--json', action='store_true', help='print one JSON object instead of the trainer\'s lines')
  parser.add_argument('--no-hugepage-malloc', action='store_true',
                      help='do not restart with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (see benchmarks/__init__.py)')
  args = parser.parse_args()
  logging.set_verbosity(logging.WARNING)  # As main.py: orbax logs every save at INFO.
  tf.config.set_visible_devices([], 'GPU')
  # With --json the trainer's own console lines would break the one-object output.
  result = run(step_bench.load_config(args.config), args.steps, args.warmup, quiet=args.json)
  if args.json:
    print(json.dumps(result))
  else:
    print(f"epoch benchmark ({result['method']} at {result['image_size']} px, {result['steps']} steps): "
          f"{result['total_s']:.1f} s in all = startup {result['startup_s']:.1f} s (imports {result['import_s']:.1f}, "
          f"data + init {result['init_s']:.1f}) + validation {result['eval_s']:.1f} s + {result['steps']} x "
          f"{result['ms_per_step']:.0f} ms ({result['steps_per_s']:.2f} steps/s) + final checkpoint "
          f"{result['shutdown_s']:.1f} s; an epoch of {result['steps_per_epoch']} steps: {result['epoch_s']:.0f} s; "
          f"{result['devices']} {result['backend']} device(s), load average {result['load_average'][0]:.2f}")


if __name__ == '__main__':
  main()

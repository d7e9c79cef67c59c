"""The training loop, `train_and_evaluate`: steps, the evaluation and gate decision at each epoch start,
logging, checkpoints and preemption, read top to bottom; `train` (main.py's) runs config.pretrain_steps's MAE stage
before it. What a run is built from is experiment.py; what it writes is run_output.py."""

import collections
import contextlib
import functools
import signal
import threading
import time
from typing import Iterator, Protocol

import jax
import ml_collections
import numpy as np

from ssmae_jax import checkpointing, configuration, evaluation, experiment as experiment_lib, fileio, gate
from ssmae_jax import input_pipeline, predict, run_output, runtime, sharding
from ssmae_jax.run_log import RunLog

PREFETCH_TO_DEVICE = 2


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       experiment: experiment_lib.Experiment | None = None, preemption: 'Preemption | None' = None,
                       reporter: run_output.Reporter | None = None) -> tuple[object, dict | None]:
  """Trains (or resumes) the run of `config` in `workdir` to its end -> (the last train state, results.json's
  content).

  The results are None when `preemption` stopped the run first (a checkpoint is saved there; the same call resumes
  it). `experiment` is `experiment.build(config, workdir)` unless given (e.g. with a changed initial state); it is not
  changed: its `state` stays the initial one (donated to the first step: use the returned state).
  """
  exp = experiment or experiment_lib.build(config, workdir)
  report = reporter or run_output.Reporter(exp)
  with saves_finished_on_error(exp.checkpoints):
    state, log = restore(exp)
    clock = run_output.Clock(log.wall_seconds)
    report.start(int(state.step))
    preemption = preemption or SigtermWatch(exp.checkpoints)
    state, stopped = train_steps(exp, state, log, report, clock, preemption)
    return (state, None) if stopped else finish(exp, state, log, report, clock, preemption)


def restore(exp: experiment_lib.Experiment):
  """(the state to start from, the run's log): the latest checkpoint's if the workdir has one, else the initial."""
  state, log = exp.state, RunLog()
  restored = exp.checkpoints.restore_latest(state, delete_unreadable=True)
  if restored is not None:
    state, saved_log = restored
    log = RunLog.from_json(saved_log)
  log.begin_command()
  # A run killed after saving a best checkpoint but before the next latest one redoes that evaluation.
  exp.checkpoints.discard_best_after(log.best_step())
  return state, log


def train_steps(exp: experiment_lib.Experiment, state, log: RunLog, report: run_output.Reporter,
                clock: run_output.Clock, preemption: 'Preemption'):
  """The steps from the state's to the run's last, with the evaluations at epoch starts, logging windows and
  checkpoints; at a preemption, a checkpoint and a stop there. -> (the state after the last step taken, whether a
  preemption stopped the run)."""
  config, checkpoints, start_step = exp.config, exp.checkpoints, int(state.step)
  train_step = exp.method.make_step(exp.model, exp.tx, config, exp.mesh)
  batches = prefetch_to_device(input_pipeline.train_iterator(
      exp.splits, config, start_step, process_index=jax.process_index(), process_count=jax.process_count(),
      need_labeled=exp.method.uses_labeled, need_unlabeled=exp.method.uses_unlabeled), exp.mesh)
  window = MetricWindow()
  profile = runtime.StepProfile(config.profile_steps, exp.workdir)

  for step in range(start_step, exp.total_steps):
    epoch = step // exp.steps_per_epoch
    if is_due(step, exp.steps_per_epoch) and log.last_epoch_evaluated < epoch:
      log_window(exp, window, step, log, report)
      state = evaluate_epoch(exp, state, epoch, log, report, clock)

    profile.before(step)
    step_start = time.perf_counter()
    state, metrics = train_step(state, next(batches))
    if step == start_step:  # One host sync, to say what compiling cost and what the cache saved.
      jax.block_until_ready(metrics)
      report.first_step(time.perf_counter() - step_start)
    window.add(metrics)
    done = step + 1
    traced = profile.after(done, state)
    if traced:
      report.profile(profile.first, done - 1, traced)

    if is_due(done, config.log_every_steps, last=exp.total_steps):
      log_window(exp, window, done, log, report)
    stop = preemption.reached(done)
    if is_due(done, config.checkpoint_every_steps) or stop:
      log_window(exp, window, done, log, report)
      log.set_clock(clock.seconds())
      checkpoints.save(state, log.to_json())
    if stop:
      checkpoints.wait()
      checkpoints.close()
      preemption.close()
      report.stopped(done, preemption.reason)
      return state, True
  return state, False


def finish(exp: experiment_lib.Experiment, state, log: RunLog, report: run_output.Reporter, clock: run_output.Clock,
           preemption: 'Preemption') -> tuple[object, dict]:
  """After the last step: the final evaluation, the last checkpoint, results.json and the summary -> (the state,
  the results)."""
  if log.last_epoch_evaluated < exp.num_epochs:
    state = evaluate_epoch(exp, state, exp.num_epochs, log, report, clock, final=True)
  log.set_clock(clock.seconds())
  if exp.checkpoints.latest.latest_step() != exp.total_steps:
    exp.checkpoints.save(state, log.to_json())
  exp.checkpoints.wait()
  preemption.close()
  results = run_output.results(exp, log, test_at_best_validation(exp, state, log))
  report.finish(results, log)
  if exp.splits.has_files and exp.method.classifies:  # What a folder user came for: labels for their files.
    report.print('Wrote ' + predict.write_pseudo_labels(exp.workdir, exp.model, state.params, state.pseudo_labels,
                                                        exp.splits, exp.config, exp.mesh))
  exp.checkpoints.close()
  return state, results


@contextlib.contextmanager
def saves_finished_on_error(checkpoints: checkpointing.Checkpoints):
  """An exception inside (a plugin's bug, a non-finite loss) ends the command with that exception, not with orbax's:
  the checkpoint saves in flight finish first, quietly, so no background thread reports after it."""
  try:
    yield
  except BaseException:
    try:
      checkpoints.wait()
      checkpoints.close()
    except Exception:  # The exception being raised is the one the user needs.
      pass
    raise


def train(config: ml_collections.ConfigDict, workdir: str) -> dict | list[dict] | None:
  """main.py's train mode: config.pretrain_steps of MAE pre-training in WORKDIR/pretrain first (if asked; skipped
  once finished), then `train_and_evaluate`, which starts from it. A sweep (config.sweep) trains as one program
  (sweep_train.py), its pre-training stage too, and returns each run's results. None if a preemption stopped either
  stage."""
  from ssmae_jax import sweep, sweep_train  # sweep_train builds on this module.
  is_sweep = sweep.is_sweep(config)
  if config.pretrain_steps:
    configuration.validate(config)  # A mistake in the run's config must not wait for the pre-training to end.
    experiment_lib.prepare_workdir(fileio.path(workdir), config, record=jax.process_index() == 0)
    pretrain_dir = fileio.path(workdir) / experiment_lib.PRETRAIN_DIR
    stages = (sweep_train.run_dirs(workdir, [name for name, _ in sweep.runs(config)], experiment_lib.PRETRAIN_DIR)
              if is_sweep else [pretrain_dir])
    if not all((stage / 'results.json').exists() for stage in stages):
      if jax.process_index() == 0:
        print(f'Pre-training (config.pretrain_steps={config.pretrain_steps}, method mae_pretrain) in {pretrain_dir}; '
              f'then {config.method} starts from it.', flush=True)
      pre = experiment_lib.pretraining_config(config)
      if is_sweep:  # Each run's stage in its own folder, WORKDIR/runs/<run>/pretrain, as a lone run's.
        done = sweep_train.pretrain(pre, pretrain_dir, stages)
      else:
        done = train_and_evaluate(pre, str(pretrain_dir))[1]
      if done is None:
        return None
  if is_sweep:
    return sweep_train.train_and_evaluate(config, workdir)[1]
  return train_and_evaluate(config, workdir)[1]


def is_due(count: int, every: int, last: int | None = None) -> bool:
  """Whether a periodic action is due at `count` (steps done, or an epoch): every `every` (0: never), and at `last`."""
  return count == last or (every > 0 and count % every == 0)


def evaluate_epoch(exp: experiment_lib.Experiment, state, epoch: int, log: RunLog, report: run_output.Reporter,
                   clock: run_output.Clock, final: bool = False):
  """The evaluation at the start of `epoch` (or after the last step, `final`): validation decides the gate for
  the epoch and the best checkpoint; test accuracy every config.test_every_epochs and at the end. -> the state
  with the epoch's gate."""
  is_open = evaluate_run(exp, state.params, state.pseudo_labels, int(state.step), epoch, log, report, clock, final)
  if exp.method.gated and not final:
    state = state.replace(gate_open=jax.device_put(np.bool_(is_open), sharding.replicated(exp.mesh)))
  return state


def evaluate_run(exp: experiment_lib.Experiment, params, pseudo_labels, step: int, epoch: int, log: RunLog,
                 report: run_output.Reporter, clock: run_output.Clock, final: bool = False) -> bool:
  """`evaluate_epoch` for a run's parameters and memory (a lone run's, or one run's of a sweep) -> whether its gate
  is open for the epoch (False where the method has none, and after the last step)."""
  config = exp.config
  classifies = exp.method.classifies  # A method that never trains the head has nothing to evaluate.
  val = exp.evaluate(params, 'val') if classifies else None
  hca = val.high_conf_accuracy if val else 0.0
  is_open = False
  if exp.method.gated and not final:  # After the last step the gate decides nothing.
    is_open = gate.opens(config, evaluation.gate_stats(val, epoch, exp.splits.num_classes))
    log.note_gate(epoch, is_open)
  test_due = classifies and (final or is_due(epoch, config.test_every_epochs))
  test = exp.evaluate(params, 'test') if test_due else None
  memory = gate.memory_summary(np.asarray(jax.device_get(pseudo_labels)),
                               experiment_lib.hidden_labels(exp.splits), exp.splits.num_classes)
  record = dict(epoch=epoch, step=step, val_accuracy=val.accuracy if val else None, val_hca=hca,
                val_num_confident=val.num_confident if val else 0, gate_open=is_open and not final,
                test_accuracy=test.accuracy if test else None, test_hca=test.high_conf_accuracy if test else None,
                pseudo_labels_total=memory['total'], pseudo_labels_new=memory['total'] - log.pseudo_labels_total,
                pseudo_label_precision=memory['precision'], pseudo_labels_per_class=memory['per_class'],
                pseudo_labels_correct_per_class=memory['correct_per_class'],
                **log.take_epoch_means(), flops=exp.step_flops.total(log.kind_steps), wall_seconds=clock.seconds())
  if log.close_epoch(record):
    exp.checkpoints.save_best(step, params, dict(epoch=epoch, val_accuracy=record['val_accuracy']))
  report.epoch(record, log, params, final)
  return is_open


def log_window(exp: experiment_lib.Experiment, window: 'MetricWindow', done: int, log: RunLog,
               report: run_output.Reporter) -> None:
  """Fetches the metrics of the steps since the last call (one host sync), adds them to the epoch's sums and
  reports their means; a non-finite step stops the run here under config.nan_policy='stop'."""
  if not window.steps:
    return
  steps_in_window = window.steps
  sums, steps_per_sec = window.fetch()
  means = window_means(exp, sums, steps_in_window, done, log)
  report.window(done, dict(means, steps_per_sec=steps_per_sec),
                float(experiment_lib.learning_rate_schedule(exp.config, exp.total_steps)(done)))


def window_means(exp: experiment_lib.Experiment, sums: dict, steps_in_window: int, done: int, log: RunLog,
                 run: str = '') -> dict:
  """A logging window's metric `sums` (MetricWindow.fetch's, of one run) added to the run's log -> their means over
  the trained steps, and 'skipped_steps'. A non-finite step raises here under config.nan_policy='stop'."""
  sums = dict(sums)
  nonfinite, finite_steps = int(sums.pop('nonfinite')), int(sums.pop('finite_steps'))
  if nonfinite and exp.config.nan_policy == 'stop':
    exp.checkpoints.wait()  # The checkpoints already saved are good: let them finish before the process ends.
    raise FloatingPointError(
        f'The loss or gradient{" of run " + run if run else ""} became non-finite at step '
        f'{done - steps_in_window + finite_steps + 1}; the run stopped there and the last good checkpoint is in '
        f'{exp.workdir}/checkpoints. Lower the learning rate, clip gradients (config.optimizer.grad_clip_norm) or set '
        'config.nan_policy=skip.')
  # nan_policy='skip': skipped steps report zeros and count in no mean.
  trained = steps_in_window - nonfinite
  log.add_kind_steps(exp.step_flops.counts(sums, steps_in_window))
  log.add_window(sums, trained, nonfinite)
  means = {k: (np.asarray(v) / max(trained, 1)).tolist() if isinstance(v, list) else v / max(trained, 1)
           for k, v in sums.items()}
  means.update(skipped_steps=nonfinite)
  return means


def test_at_best_validation(exp: experiment_lib.Experiment, state, log: RunLog) -> float | None:
  """Test accuracy of the best-validation checkpoint; None without a test split or a validated epoch."""
  if exp.splits.test_images is None or log.best_epoch is None:
    return None
  best_params, _ = exp.checkpoints.restore_params('best', state.params)
  return exp.evaluate(best_params, 'test').accuracy


def prefetch_to_device(iterator: Iterator[dict], mesh, place=sharding.to_global) -> Iterator[dict]:
  """Places the next batches on the devices (`place(batch, mesh)`) while the current step runs."""
  queue = collections.deque()
  for batch in iterator:
    queue.append(place(batch, mesh))
    if len(queue) > PREFETCH_TO_DEVICE:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


class MetricWindow:
  """Sums of the per-step metrics since the last fetch, kept on the device until fetched."""

  def __init__(self):
    self.totals, self.steps, self.start = None, 0, time.time()

  def add(self, metrics: dict) -> None:
    self.totals = start_sums(metrics) if self.totals is None else accumulate(self.totals, metrics)
    self.steps += 1

  def fetch(self) -> tuple[dict, float]:
    """(sums: floats, or lists for array metrics; steps per second since the last fetch), and starts a new window."""
    sums = {k: float(v) if np.ndim(v) == 0 else np.asarray(v).tolist() for k, v in jax.device_get(self.totals).items()}
    rate = self.steps / max(time.time() - self.start, 1e-9)
    self.totals, self.steps, self.start = None, 0, time.time()
    return sums, rate


@functools.partial(jax.jit, donate_argnums=0)
def accumulate(total: dict, metrics: dict) -> dict:
  """Adds a step's metrics to running sums; `finite_steps` counts the steps before the first non-finite one."""
  out = {k: total[k] + v for k, v in metrics.items()}
  out['finite_steps'] = total['finite_steps'] + (out['nonfinite'] == 0)
  return out


def start_sums(metrics: dict) -> dict:
  """The running sums of `accumulate` after one step."""
  return dict(metrics, finite_steps=1.0 - metrics['nonfinite'])


class Preemption(Protocol):
  """Asked after every step whether the run must checkpoint and stop there."""
  reason: str  # Why a run stopped, for its last console line.

  def reached(self, step: int) -> bool: ...

  def close(self) -> None: ...


class SigtermWatch:
  """SIGTERM (what a TPU VM gets before preemption) asks the loop to checkpoint and stop at the next step.

  With several processes every one must stop at the same step: orbax's preemption sync decides it then.
  """

  reason = 'Preempted (SIGTERM)'

  def __init__(self, checkpoints: checkpointing.Checkpoints):
    self.checkpoints = checkpoints
    self.signalled = False
    self.previous = None
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self.previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self.signalled = True

  def reached(self, step: int) -> bool:
    if jax.process_count() > 1:
      return self.checkpoints.latest.reached_preemption(step)
    return self.signalled

  def close(self) -> None:
    if self.previous is not None:
      signal.signal(signal.SIGTERM, self.previous)
      self.previous = None


class StopAtStep:
  """Stops a run at a given step with a checkpoint, as a preemption there would (a session with a time limit;
  tests of resume). The same command without it resumes the run."""

  reason = 'Stopped as asked'

  def __init__(self, step: int):
    self.step = step

  def reached(self, step: int) -> bool:
    return step == self.step

  def close(self) -> None:
    pass

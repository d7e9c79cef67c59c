"""The training loop: epochs, the validation gate, logging, checkpoints, results.json; and `evaluate`."""

import collections
import math
import signal
import threading
import time
from typing import Iterator

from clu import metric_writers
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ssmae_jax import augment, checkpointing, configuration, data_record, fileio, gate, input_pipeline, masking
from ssmae_jax import methods, models, predict, runtime, sharding, steps, train_state, visualize
from ssmae_jax.errors import UserError
from ssmae_jax.run_log import RunLog

PREFETCH_TO_DEVICE = 2
NUM_FIGURE_IMAGES = 8  # Validation images shown in every reconstruction grid (the same ones each time).


def learning_rate_schedule(config, total_steps: int) -> optax.Schedule:
  o = config.optimizer
  if o.schedule == 'cosine':
    return optax.warmup_cosine_decay_schedule(0.0, o.learning_rate, o.warmup_steps,
                                              max(total_steps, o.warmup_steps + 1))
  if o.warmup_steps:
    return optax.linear_schedule(0.0, o.learning_rate, o.warmup_steps)
  return optax.constant_schedule(o.learning_rate)


def make_optimizer(config, total_steps: int) -> optax.GradientTransformation:
  o = config.optimizer
  # Weight decay on every parameter, as torch.optim.AdamW(model.parameters()) in the reference.
  adamw = optax.adamw(learning_rate_schedule(config, total_steps), b1=o.b1, b2=o.b2, weight_decay=o.weight_decay)
  if o.grad_clip_norm:
    return optax.chain(optax.clip_by_global_norm(o.grad_clip_norm), adamw)
  return adamw


def init_state(model: models.SSMAE, tx, config, pool_size: int, mesh) -> train_state.TrainState:
  """The initial state, created directly with replicated sharding (no host round trip)."""
  def init():
    ids_keep, _, ids_restore = masking.random_masking(jax.random.key(0), 1, model.num_patches, config.mask_ratio)
    images = jnp.zeros((1, config.image_size, config.image_size, 3), jnp.float32)
    params = model.init(jax.random.key(config.seed), images, ids_keep, ids_restore)['params']
    return train_state.create(params, tx, pool_size)
  return jax.jit(init, out_shardings=sharding.replicated(mesh))()


def prefetch_to_device(iterator: Iterator[dict], mesh) -> Iterator[dict]:
  """Places the next batches on the devices while the current step runs."""
  queue = collections.deque()
  for batch in iterator:
    queue.append(sharding.to_global(batch, mesh))
    if len(queue) > PREFETCH_TO_DEVICE:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


def evaluate_arrays(eval_step, params, images, labels, config, mesh) -> dict | None:
  """Accuracy and HCA of `params` on a whole split (None if empty); each example counted once on any device count."""
  total = None
  for batch in input_pipeline.eval_batches(images, labels, config.eval_batch_size, config.image_size,
                                           resize_on_device=config.resize_on_device,
                                           process_index=jax.process_index(), process_count=jax.process_count()):
    sums = eval_step(params, sharding.to_global(batch, mesh))
    total = sums if total is None else jax.tree.map(jnp.add, total, sums)
  if total is None:
    return None
  total = jax.tree.map(int, jax.device_get(total))
  return dict(
      accuracy=total['correct'] / max(total['count'], 1),
      high_conf_accuracy=gate.high_confidence_accuracy(total['confident'], total['confident_correct']),
      num_confident=total['confident'],
      count=total['count'],
  )


def _fmt_time(seconds: float) -> str:
  seconds = int(seconds)
  return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m' if seconds >= 3600 else f'{seconds // 60}m{seconds % 60:02d}s'


def _pct(x) -> str:
  return 'n/a' if x is None else f'{100 * x:.2f}%'


class MetricWindow:
  """Sums of the per-step metrics since the last fetch, kept on the device until fetched."""

  def __init__(self):
    self.totals, self.steps, self.start = None, 0, time.time()

  def add(self, metrics: dict) -> None:
    self.totals = steps.start_sums(metrics) if self.totals is None else steps.accumulate(self.totals, metrics)
    self.steps += 1

  def fetch(self) -> tuple[dict, float]:
    """(sums as floats, steps per second since the last fetch), and starts a new window."""
    sums = {k: float(v) for k, v in jax.device_get(self.totals).items()}
    rate = self.steps / max(time.time() - self.start, 1e-9)
    self.totals, self.steps, self.start = None, 0, time.time()
    return sums, rate


class PreemptionWatch:
  """SIGTERM (what a TPU VM gets before preemption) asks the loop to checkpoint and stop at the next step.

  With several processes every one must stop at the same step: orbax's preemption sync decides it then.
  """

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

  def restore(self) -> None:
    if self.previous is not None:
      signal.signal(signal.SIGTERM, self.previous)
      self.previous = None


class Run:
  """One training run in a workdir. `train()` runs or resumes it to the end."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, training: bool = True):
    configuration.validate(config)
    self.config = config
    self.method = methods.get(config.method)
    self.workdir = workdir = fileio.path(workdir)
    self.is_main = jax.process_index() == 0
    self.mesh = sharding.make_mesh()
    for name in ('labeled_batch_size', 'unlabeled_batch_size', 'eval_batch_size'):
      sharding.check_divisible(f'config.{name}', config[name], self.mesh)
    _prepare_workdir(workdir, config, record=training and self.is_main)
    self.splits = input_pipeline.load_splits(config)
    # Before anything is built: a checkpoint resumed on other files would label the wrong ones.
    data_record.check(workdir, self.splits, config, record=training and self.is_main)
    self.steps_per_epoch = input_pipeline.steps_per_epoch(self.splits, config)
    self.total_steps = config.num_steps or config.num_epochs * self.steps_per_epoch
    self.num_epochs = math.ceil(self.total_steps / self.steps_per_epoch)
    self.model = models.from_config(config, self.splits.num_classes)
    self.tx = make_optimizer(config, self.total_steps)
    self.pool_size = len(self.splits.unlabeled_idx)
    self.state = init_state(self.model, self.tx, config, self.pool_size, self.mesh)
    if config.init_from and training:
      self.state = self.state.replace(params=checkpointing.load_pretrained(config.init_from, self.state.params))
    self.eval_step = steps.make_eval_step(self.model, config, self.mesh)
    self.checkpoints = checkpointing.Checkpoints(workdir, config.keep_checkpoints)
    shown = self.splits.val_idx if len(self.splits.val_idx) else self.splits.labeled_idx
    # At the model's size: the grid sets each original beside its reconstruction.
    self.figure_images = np.asarray(augment.resize(
        self.splits.eval_images(shown[:NUM_FIGURE_IMAGES], config.image_size), config.image_size))
    # Once, not per evaluation: for folder data this decodes files.
    self.val_images = self.splits.eval_images(self.splits.val_idx, config.image_size)
    self.figures_dir = workdir / 'figures'
    hidden = self.splits.train_labels[self.splits.unlabeled_idx].astype(np.int32)
    self.hidden_labels = jax.device_put(hidden, sharding.replicated(self.mesh))

  def evaluate(self, params, split: str) -> dict | None:
    s = self.splits
    images, labels = {
        'val': (self.val_images, s.train_labels[s.val_idx]),
        'test': (s.test_images, s.test_labels),
    }[split]
    if images is None or len(images) == 0:
      return None
    return evaluate_arrays(self.eval_step, params, images, labels, self.config, self.mesh)

  def pseudo_label_stats(self) -> tuple[int, float | None]:
    assigned, correct, known = (int(x) for x in steps.memory_stats(self.state.pseudo_labels, self.hidden_labels))
    return assigned, (correct / known if known else None)

  def train(self, stop_at_step: int | None = None) -> dict | None:
    """Runs (or resumes) to the end and returns results.json's content.

    With `stop_at_step`, saves a checkpoint there and returns None, as an interrupted run would have.
    """
    config, cfg_dict = self.config, configuration.to_dict(self.config)
    restored = self.checkpoints.restore_latest(self.state, delete_unreadable=True)
    if restored is None:
      log = RunLog()
    else:
      self.state, saved = restored
      log = RunLog.from_json(saved)
      self._print(f'Resuming from step {int(self.state.step)} in {self.workdir}.')
    # A run killed after saving a best checkpoint but before the next latest one redoes that evaluation.
    self.checkpoints.discard_best_after(log.best_step())
    start_step = int(self.state.step)
    start_wall = time.time() - log.wall_seconds
    # TensorBoard event files from process 0; the console gets our own lines, not the logging writer's.
    writer = metric_writers.AsyncMultiWriter(
        [metric_writers.SummaryWriter(str(self.workdir))] if self.is_main and config.tensorboard else [])
    if start_step == 0:
      writer.write_hparams({k: v for k, v in _flatten(cfg_dict).items() if isinstance(v, (int, float, str, bool))})

    train_step = self.method.make_step(self.model, self.tx, config, self.mesh)
    batches = prefetch_to_device(input_pipeline.train_iterator(
        self.splits, config, start_step, process_index=jax.process_index(), process_count=jax.process_count(),
        need_labeled=self.method.uses_labeled, need_unlabeled=self.method.uses_unlabeled), self.mesh)
    self._print(f'{self.total_steps} steps ({self.num_epochs} epochs of {self.steps_per_epoch}), '
                f'{len(self.splits.labeled_idx)} labeled, {len(self.splits.val_idx)} validation, '
                f'{self.pool_size} unlabeled, {jax.device_count()} devices.')

    window = MetricWindow()
    preemption = PreemptionWatch(self.checkpoints)
    profile = runtime.StepProfile(config.profile_steps, self.workdir)
    for step in range(start_step, self.total_steps):
      epoch = step // self.steps_per_epoch
      if step % self.steps_per_epoch == 0 and log.last_epoch_evaluated < epoch:
        self._flush(window, step, log, writer)
        self._epoch_boundary(epoch, log, writer, start_wall)
      batch = next(batches)
      batch.pop('unlabeled_label', None)
      profile.before(step)
      step_start = time.perf_counter()
      self.state, metrics = train_step(self.state, batch)
      if step == start_step:  # One host sync, to say what compiling cost and what the cache saved.
        jax.block_until_ready(metrics)
        self._print_first_step(time.perf_counter() - step_start)
      window.add(metrics)
      done = step + 1
      traced = profile.after(done, self.state)
      if traced:
        self._print(f'Profiler trace of steps {profile.first}-{done - 1} in {traced} (TensorBoard: Profile tab).')
      if done % config.log_every_steps == 0 or done == self.total_steps:
        self._flush(window, done, log, writer)
      preempted = preemption.reached(done)
      if done % config.checkpoint_every_steps == 0 or done == stop_at_step or preempted:
        self._flush(window, done, log, writer)
        log.wall_seconds = time.time() - start_wall
        self.checkpoints.save(self.state, log.to_json())
      if done == stop_at_step or preempted:
        self.checkpoints.wait()
        self.checkpoints.close()
        preemption.restore()
        writer.flush()
        if preempted:
          self._print(f'Preempted (SIGTERM) at step {done}: checkpoint saved in {self.workdir}/checkpoints; '
                      'run the same command to resume.')
        return None

    final_epoch = self.num_epochs
    if log.last_epoch_evaluated < final_epoch:
      self._epoch_boundary(final_epoch, log, writer, start_wall, final=True)
    log.wall_seconds = time.time() - start_wall
    if self.checkpoints.latest.latest_step() != self.total_steps:
      self.checkpoints.save(self.state, log.to_json())
    self.checkpoints.wait()
    preemption.restore()
    results = self._results(log, cfg_dict)
    writer.flush()
    if self.is_main:
      visualize.plot_history(visualize.load_history(self.workdir), self.figures_dir)
    if self.is_main:
      fileio.write_json(self.workdir / 'results.json', results, indent=2)
    self._print(summary_table(log.history))
    self._print('Done: test accuracy {} (at best validation: {}), best validation {}, {} pseudo-labels '
                '(precision {}), gate opened at epoch {}; {}.'.format(
                    _pct(results['test_accuracy']), _pct(results['test_accuracy_at_best_val']),
                    _pct(results['best_val_accuracy']), results['pseudo_labels_total'],
                    _pct(results['pseudo_label_precision']), results['gate_opened_at_epoch'],
                    _fmt_time(results['wall_seconds'])))
    if self.splits.train_paths is not None and self.method.classifies:
      self._print(f'Wrote {self.write_pseudo_labels()}')  # What a folder user came for: labels for their files.
    self.checkpoints.close()
    return results

  def _print_first_step(self, seconds: float) -> None:
    stats = runtime.cache_stats()
    cache = ('compilation cache off' if stats is None else
             f'{stats[0]} compiled function(s) loaded from the cache, {stats[1]} compiled and cached')
    self._print(f'First step took {seconds:.1f} s including compilation ({cache}).')

  def write_pseudo_labels(self) -> str:
    """WORKDIR/pseudo_labels.csv from the current state: the memory and the model's predictions on the pool."""
    return predict.write_pseudo_labels(self.workdir, self.model, self.state.params, self.state.pseudo_labels,
                                       self.splits, self.config, self.mesh)

  def _flush(self, window: 'MetricWindow', done: int, log: RunLog, writer) -> None:
    """Fetches the metrics of the steps since the last flush (one host sync), logs them, adds them to the epoch's."""
    if not window.steps:
      return
    steps_in_window = window.steps
    sums, steps_per_sec = window.fetch()
    nonfinite, finite_steps = int(sums.pop('nonfinite')), int(sums.pop('finite_steps'))
    if nonfinite and self.config.nan_policy == 'stop':
      self.checkpoints.wait()  # The checkpoints already saved are good: let them finish before the process ends.
      raise FloatingPointError(
          f'The loss or gradient became non-finite at step {done - steps_in_window + finite_steps + 1}; the run '
          f'stopped there and the last good checkpoint is in {self.workdir}/checkpoints. Lower the learning rate, clip '
          'gradients (config.optimizer.grad_clip_norm) or set config.nan_policy=skip.')
    # nan_policy='skip': skipped steps report zeros and count in no mean.
    trained = steps_in_window - nonfinite
    log.add_window(sums, trained, nonfinite)
    means = {k: v / max(trained, 1) for k, v in sums.items()}
    means['skipped_steps'] = nonfinite
    means['steps_per_sec'] = steps_per_sec
    means['learning_rate'] = float(learning_rate_schedule(self.config, self.total_steps)(done))
    writer.write_scalars(done, {f'train/{k}': v for k, v in means.items()})
    eta = (self.total_steps - done) / steps_per_sec
    self._print(f'step {done}/{self.total_steps} | epoch {done / self.steps_per_epoch:.2f} | '
                f'loss {means["loss"]:.4f} (rec {means["rec_loss"]:.4f}, cls {means["cls_loss"]:.4f}) | '
                f'train acc {100 * means["labeled_accuracy"]:.1f}% | unlabeled used/step '
                f'{means["unlabeled_used"]:.1f} | {steps_per_sec:.2f} steps/s | ETA {_fmt_time(eta)}'
                + (f' | {nonfinite} non-finite steps skipped' if nonfinite else ''))

  def _epoch_boundary(self, epoch: int, log: RunLog, writer, start_wall: float, final: bool = False) -> None:
    """Validation at the start of `epoch`: decides the gate for the epoch and the best checkpoint."""
    config = self.config
    classifies = self.method.classifies  # A method that never trains the head has nothing to evaluate.
    val = self.evaluate(self.state.params, 'val') if classifies else None
    val_acc = val['accuracy'] if val else None
    hca = val['high_conf_accuracy'] if val else 0.0
    is_open = self.method.gated and gate.gate_open_for_epoch(config.gate, epoch, config.warmup_epochs, hca,
                                                             config.gate_threshold)
    if not final:
      repl = sharding.replicated(self.mesh)
      self.state = self.state.replace(gate_open=jax.device_put(np.bool_(is_open), repl),
                                      last_hca=jax.device_put(np.float32(hca), repl))
      log.note_gate(epoch, is_open)
    test_due = final or (config.test_every_epochs and epoch % config.test_every_epochs == 0)
    test = self.evaluate(self.state.params, 'test') if test_due and classifies else None
    total, precision = self.pseudo_label_stats()
    per_class = [int(x) for x in gate.memory_class_counts(self.state.pseudo_labels, self.splits.num_classes)]
    record = dict(epoch=epoch, step=int(self.state.step), val_accuracy=val_acc, val_hca=hca,
                  val_num_confident=val['num_confident'] if val else 0, gate_open=is_open and not final,
                  test_accuracy=test['accuracy'] if test else None,
                  test_hca=test['high_conf_accuracy'] if test else None,
                  pseudo_labels_total=total, pseudo_labels_new=total - log.pseudo_labels_total,
                  pseudo_label_precision=precision, pseudo_labels_per_class=per_class, **log.take_epoch_means(),
                  wall_seconds=time.time() - start_wall)
    if log.close_epoch(record):
      self.checkpoints.save_best(int(self.state.step), self.state.params, dict(epoch=epoch, val_accuracy=val_acc))
    writer.write_scalars(int(self.state.step), {
        f'epoch/{k}': float(v) for k, v in record.items()
        if v is not None and k not in ('epoch', 'step', 'pseudo_labels_per_class')})
    _, grid = self.reconstruction_figure(self.state.params, f'reconstruction_epoch_{epoch:03d}.png')
    writer.write_images(int(self.state.step), {'reconstruction': grid[None]})
    self._write_history(log)
    self._print(f'epoch {epoch}{" (final)" if final else ""} | val acc {_pct(val_acc)} | HCA {_pct(hca)} '
                f'({record["val_num_confident"]} confident) | gate {"open" if record["gate_open"] else "closed"} | '
                f'test acc {_pct(record["test_accuracy"])} | pseudo-labels {total} (+{record["pseudo_labels_new"]}, '
                f'precision {_pct(precision)})')

  def reconstruction_figure(self, params, name: str):
    """original | masked | reconstruction | visible pasted back, for the fixed validation images -> PNG path, grid."""
    pred, mask = visualize.reconstruct(self.model, params, self.figure_images, mask_ratio=self.config.mask_ratio)
    grid = visualize.reconstruction_grid(self.figure_images, pred, mask, self.model.patch_size,
                                         norm_pix_loss=self.config.norm_pix_loss)
    path = str(self.figures_dir / name)
    if self.is_main:
      visualize.save_png(path, grid)
    return path, grid

  def _write_history(self, log: RunLog) -> None:
    """WORKDIR/history.json, rewritten at every epoch: what the plots of a running or finished run read."""
    if not self.is_main:
      return
    hidden = np.asarray(self.hidden_labels)
    known = hidden[hidden >= 0]
    history = dict(
        dataset=self.config.dataset,
        method=self.config.method,
        class_names=list(self.splits.class_names),
        unlabeled_class_counts=(np.bincount(known, minlength=self.splits.num_classes).tolist()
                                if len(known) else None),
        gate_threshold=self.config.gate_threshold,
        gate_confidence=self.config.gate_confidence,
        gate_opened_at_epoch=log.gate_opened_at_epoch,
        steps_per_epoch=self.steps_per_epoch,
        epochs=log.history,
    )
    fileio.write_json(self.workdir / 'history.json', history, indent=1)

  def _results(self, log: RunLog, cfg_dict: dict) -> dict:
    last = log.history[-1]
    test_at_best = None
    if self.splits.test_images is not None and log.best_epoch is not None:
      best_params, _ = self.checkpoints.restore_params('best', self.state)
      test_at_best = self.evaluate(best_params, 'test')['accuracy']
    return dict(
        method=self.config.method,
        dataset=self.config.dataset,
        label_fraction=self.config.label_fraction,
        num_labels=len(self.splits.labeled_idx) + len(self.splits.val_idx),
        seed=self.config.seed,
        test_accuracy=last['test_accuracy'],
        high_conf_accuracy=last['test_hca'],
        val_accuracy=last['val_accuracy'],
        best_val_accuracy=log.best_val_accuracy,
        best_epoch=log.best_epoch,
        test_accuracy_at_best_val=test_at_best,
        gate_opened_at_epoch=log.gate_opened_at_epoch,
        pseudo_labels_total=last['pseudo_labels_total'],
        pseudo_label_precision=last['pseudo_label_precision'],
        steps=self.total_steps,
        epochs=self.total_steps / self.steps_per_epoch,
        nonfinite_steps_skipped=log.skipped_steps,
        wall_seconds=log.wall_seconds,
        history=log.history,
        config=cfg_dict,
    )

  def _print(self, line: str) -> None:
    if self.is_main:
      print(line, flush=True)


def summary_table(history: list[dict]) -> str:
  """The run at a glance, one row per evaluation, for the end of the console output."""
  rows = ['| epoch | train acc | val acc | HCA (n) | gate | test acc | pseudo-labels (new) | precision |',
          '|---|---|---|---|---|---|---|---|']
  for r in history:
    rows.append(f'| {r["epoch"]} | {_pct(r["train_labeled_accuracy"])} | {_pct(r["val_accuracy"])} | '
                f'{_pct(r["val_hca"])} ({r["val_num_confident"]}) | {"open" if r["gate_open"] else "closed"} | '
                f'{_pct(r["test_accuracy"])} | {r["pseudo_labels_total"]} ({r["pseudo_labels_new"]}) | '
                f'{_pct(r["pseudo_label_precision"])} |')
  return '\n'.join(rows)


def _flatten(d: dict, prefix: str = '') -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, prefix + k + '.'))
    else:
      out[prefix + k] = v
  return out


def _prepare_workdir(workdir, config, record: bool) -> None:
  """Creates the workdir, refuses one that holds a run of another config, and records this config."""
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    probe = workdir / f'.write_test_{jax.process_index()}'
    probe.write_text('')
    probe.unlink()
  except Exception as e:  # OSError locally; the bucket clients raise their own types (permissions, no bucket).
    why = getattr(e, 'strerror', None) or (str(e).splitlines() or [type(e).__name__])[0]
    raise UserError(f'Cannot write to --workdir={workdir} ({why}): choose a writable directory (for a bucket: '
                    'one that exists and that this machine\'s service account may write).') from None
  path = workdir / 'config.json'
  current = configuration.to_dict(config)
  if path.exists():
    saved = fileio.read_json(path)
    changed = configuration.changed_fields(saved, current)
    if changed and not config.allow_config_change:
      raise UserError(f'--workdir={workdir} holds a run of another config (changed: {", ".join(changed)}): use a '
                      'new --workdir, or pass --config.allow_config_change=True to resume it anyway.')
  if record:
    fileio.write_json(path, current, indent=2)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  return Run(config, workdir).train()


def evaluate(config: ml_collections.ConfigDict, workdir: str, which: str = 'best') -> dict:
  """Evaluates the best (or latest) checkpoint of a workdir on the test split."""
  run = _run_for_reading(config, workdir)
  params, step = run.checkpoints.restore_params(which, run.state) or (None, None)
  if params is None:
    raise UserError(f'No readable checkpoint in --workdir={workdir}: train first (--mode=train).')
  test = run.evaluate(params, 'test')
  val = run.evaluate(params, 'val')
  if test is None:
    if config.dataset == 'folder':
      raise UserError('config.test_dir is not set, so there is nothing to test on: pass --config.test_dir=/path, a '
                      'folder with one sub-folder of images per class, as labeled_dir.')
    raise UserError(f'Dataset {config.dataset} has no test split to evaluate on.')
  out = dict(checkpoint=which, step=step, test_accuracy=test['accuracy'],
             high_conf_accuracy=test['high_conf_accuracy'], num_confident=test['num_confident'],
             val_accuracy=val['accuracy'] if val else None)
  run._print(f'{which} checkpoint (step {step}): test accuracy {_pct(out["test_accuracy"])}, high-confidence '
             f'accuracy {_pct(out["high_conf_accuracy"])} over {out["num_confident"]} confident examples, '
             f'val accuracy {_pct(out["val_accuracy"])}.')
  run.checkpoints.close()
  return out


def reconstruct(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Reconstruction grid of the latest checkpoint -> WORKDIR/figures/reconstruction_step_N.png."""
  run = _run_for_reading(config, workdir)
  params, step = run.checkpoints.restore_params('latest', run.state) or (None, None)
  if params is None:
    raise UserError(f'No readable checkpoint in --workdir={workdir}: train first (--mode=train).')
  path, _ = run.reconstruction_figure(params, f'reconstruction_step_{step}.png')
  run._print(f'Wrote {path}')
  run.checkpoints.close()
  return path


def predict_pool(config: ml_collections.ConfigDict, workdir: str) -> str:
  """WORKDIR/pseudo_labels.csv from the latest checkpoint: its pseudo-label memory and its model's predictions."""
  run = _run_for_reading(config, workdir)
  restored = run.checkpoints.restore_latest(run.state)
  if restored is None:
    raise UserError(f'No readable checkpoint in --workdir={workdir}: train first (--mode=train).')
  run.state, _ = restored
  path = run.write_pseudo_labels()
  run._print(f'Wrote {path} (step {int(run.state.step)}).')
  run.checkpoints.close()
  return path


def plots(workdir: str) -> list[str]:
  """Curves of a finished or running workdir from its history.json -> WORKDIR/figures/*.png."""
  workdir = fileio.path(workdir)
  paths = visualize.plot_history(visualize.load_history(workdir), workdir / 'figures')
  print('Wrote ' + ', '.join(paths))
  return paths


def _run_for_reading(config: ml_collections.ConfigDict, workdir: str) -> 'Run':
  if not (fileio.path(workdir) / 'checkpoints').is_dir():
    raise UserError(f'No checkpoints in --workdir={workdir}: train first (--mode=train) or point at a run.')
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.allow_config_change = True
  return Run(config, workdir, training=False)

"""What a run tells its user: console lines, TensorBoard, history.json, results.json, figures and the summary table.

The loop in train.py decides *when*; a `Reporter` decides *what is written where*. Only process 0 writes.
"""

import time

from clu import metric_writers
import jax
import numpy as np

from ssmae_jax import augment, configuration, experiment, fileio, runtime, visualize

NUM_FIGURE_IMAGES = 8  # Validation images shown in every reconstruction grid (the same ones each time).


def fmt_time(seconds: float) -> str:
  seconds = int(seconds)
  return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m' if seconds >= 3600 else f'{seconds // 60}m{seconds % 60:02d}s'


def pct(x) -> str:
  return 'n/a' if x is None else f'{100 * x:.2f}%'


def _loss(x) -> str:
  return 'n/a' if x is None else f'{x:.4f}'


def summary_table(history: list[dict], method) -> str:
  """The run at a glance, one row per evaluation, for the end of the console output; only the columns that
  `method` (a methods.Method) has. The last row is the evaluation after the last step: its gate decides nothing."""
  columns = [('epoch', lambda r: str(r['epoch']))]
  if method.classifies:
    columns += [('train acc', lambda r: pct(r['train_labeled_accuracy'])),
                ('val acc', lambda r: pct(r['val_accuracy']))]
  else:
    columns += [('train rec loss', lambda r: _loss(r['train_rec_loss']))]
  if method.gated:
    columns += [('HCA (n)', lambda r: f'{pct(r["val_hca"])} ({r["val_num_confident"]})'),
                ('gate', lambda r: '—' if r is history[-1] else 'open' if r['gate_open'] else 'closed')]
  if method.classifies:
    columns += [('test acc', lambda r: pct(r['test_accuracy']))]
  if method.gated:
    columns += [('pseudo-labels (new)', lambda r: f'{r["pseudo_labels_total"]} ({r["pseudo_labels_new"]})'),
                ('precision', lambda r: pct(r['pseudo_label_precision']))]
  rows = ['| ' + ' | '.join(name for name, _ in columns) + ' |', '|' + '---|' * len(columns)]
  rows += ['| ' + ' | '.join(cell(r) for _, cell in columns) + ' |' for r in history]
  return '\n'.join(rows)


def epoch_line(method, record: dict, final: bool) -> str:
  """The console line of an evaluation `record`: only what `method` (a methods.Method) has."""
  r = record
  parts = [f'epoch {r["epoch"]}{" (final)" if final else ""}']
  if method.classifies:
    parts.append(f'val acc {pct(r["val_accuracy"])}')
  else:
    parts.append(f'train rec loss {_loss(r["train_rec_loss"])}')
  if method.gated:
    parts.append(f'HCA {pct(r["val_hca"])} ({r["val_num_confident"]} confident)')
    if not final:  # After the last step the gate decides nothing.
      parts.append(f'gate {"open" if r["gate_open"] else "closed"}')
  if method.classifies:
    parts.append(f'test acc {pct(r["test_accuracy"])}')
  if method.gated:
    parts.append(f'pseudo-labels {r["pseudo_labels_total"]} (+{r["pseudo_labels_new"]}, precision '
                 f'{pct(r["pseudo_label_precision"])})')
  return ' | '.join(parts)


def done_line(method, results: dict) -> str:
  """The last console line of a run: its results (results.json), only what `method` has."""
  r = results
  if not method.classifies:
    return (f'Done: {r["steps"]} steps, train reconstruction loss {_loss(r["history"][-1]["train_rec_loss"])}; '
            f'{fmt_time(r["wall_seconds"])}.')
  line = (f'Done: test accuracy {pct(r["test_accuracy"])} (at best validation: {pct(r["test_accuracy_at_best_val"])}), '
          f'best validation {pct(r["best_val_accuracy"])}')
  if method.gated:
    line += (f', {r["pseudo_labels_total"]} pseudo-labels (precision {pct(r["pseudo_label_precision"])}), '
             f'gate opened at epoch {r["gate_opened_at_epoch"]}')
  return line + f'; {fmt_time(r["wall_seconds"])}.'


def figure_images(splits, image_size: int) -> np.ndarray:
  """The fixed images of every reconstruction grid: the first validation ones (labeled ones without validation),
  at the model's size, so the grid sets each original beside its reconstruction."""
  shown = splits.val_idx if len(splits.val_idx) else splits.labeled_idx
  return np.asarray(augment.resize(splits.eval_images(shown[:NUM_FIGURE_IMAGES], image_size), image_size))


def reconstruction_figure(model, params, images: np.ndarray, config, path, is_main: bool) -> np.ndarray:
  """original | masked | reconstruction | visible pasted back, for `images` -> the grid (a PNG at `path`)."""
  pred, mask = visualize.reconstruct(model, params, images, mask_ratio=config.mask_ratio,
                                    masking_name=config.get('masking', 'random'))
  grid = visualize.reconstruction_grid(images, pred, mask, model.patch_size, norm_pix_loss=config.norm_pix_loss)
  if is_main:
    visualize.save_png(str(path), grid)
  return grid


def _flatten(d: dict, prefix: str = '') -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, prefix + k + '.'))
    else:
      out[prefix + k] = v
  return out


def start_line(method, total: int, epochs: int, steps_per_epoch: int, sizes: tuple[int, int, int],
               devices: int) -> str:
  """The run's first line: its length and the data the method reads ((labeled, validation, unlabeled) `sizes`)."""
  labeled, val, unlabeled = sizes
  data = ([f'{labeled} labeled'] if method.uses_labeled else []) + ([f'{val} validation'] if method.classifies else [])
  if method.uses_unlabeled:
    data.append(f'{unlabeled} unlabeled' + ('' if method.uses_labeled else ' (labels not read)'))
  return f'{total} steps ({epochs} epochs of {steps_per_epoch}), {", ".join(data)}, {devices} devices.'


def window_line(method, done: int, total: int, steps_per_epoch: int, means: dict) -> str:
  """The console line of a logging window: only the terms `method` (a methods.Method) trains."""
  terms = f' (rec {means["rec_loss"]:.4f}, cls {means["cls_loss"]:.4f})' if method.weighs_terms else ''
  line = f'step {done}/{total} | epoch {done / steps_per_epoch:.2f} | loss {means["loss"]:.4f}{terms} | '
  if method.classifies:
    line += f'train acc {100 * means["labeled_accuracy"]:.1f}% | '
  if method.gated:
    line += f'unlabeled used/step {means["unlabeled_used"]:.1f} | '
  line += f'{means["steps_per_sec"]:.2f} steps/s | ETA {fmt_time((total - done) / means["steps_per_sec"])}'
  skipped = means['skipped_steps']
  line += f' | {skipped} non-finite steps skipped' if skipped else ''
  # Any other scalar a step returns (a new method's, a loss term's), as it is; arrays stay in history.json.
  extra = [f'{k} {v:.4g}' for k, v in means.items() if k not in _WINDOW_SHOWN and isinstance(v, (int, float))]
  return ' | '.join([line] + extra)


# The window metrics `window_line` formats itself, or leaves to TensorBoard and history.json (the built-in methods'
# bookkeeping): every other scalar is appended to the line.
_WINDOW_SHOWN = frozenset(('loss', 'rec_loss', 'cls_loss', 'labeled_accuracy', 'unlabeled_used', 'steps_per_sec',
                           'skipped_steps', 'pseudo_labels_new', 'full_cls_pass', 'grad_norm', 'step_kind'))


class Reporter:
  """The outputs of one training run (an experiment.Experiment). `console=False`: files only (a sweep's run; the
  sweep prints its own lines)."""

  def __init__(self, exp, console: bool = True):
    self.exp, self.config, self.workdir = exp, exp.config, exp.workdir
    self.is_main = jax.process_index() == 0
    self.console = console
    self.figures_dir = exp.workdir / 'figures'
    self.figure_images = figure_images(exp.splits, exp.config.image_size)
    # TensorBoard event files from process 0; the console gets our own lines, not the logging writer's.
    self.writer = metric_writers.AsyncMultiWriter(
        [metric_writers.SummaryWriter(str(exp.workdir))] if self.is_main and exp.config.tensorboard else [])

  def print(self, line: str) -> None:
    if self.is_main and self.console:
      print(line, flush=True)

  def start(self, start_step: int) -> None:
    exp = self.exp
    if start_step == 0:
      cfg = _flatten(configuration.to_dict(self.config))
      self.writer.write_hparams({k: v for k, v in cfg.items() if isinstance(v, (int, float, str, bool))})
    else:
      self.print(f'Resuming from step {start_step} in {self.workdir}.')
    self.print(start_line(exp.method, exp.total_steps, exp.num_epochs, exp.steps_per_epoch,
                          (len(exp.splits.labeled_idx), len(exp.splits.val_idx), exp.pool_size), jax.device_count()))

  def first_step(self, seconds: float) -> None:
    stats = runtime.cache_stats()
    cache = ('compilation cache off' if stats is None else
             f'{stats[0]} compiled function(s) loaded from the cache, {stats[1]} compiled and cached')
    self.print(f'First step took {seconds:.1f} s including compilation ({cache}).')

  def window(self, done: int, means: dict, learning_rate: float) -> None:
    """A logging window's per-step means (and 'skipped_steps', 'steps_per_sec'), at step `done`."""
    self.writer.write_scalars(done, {f'train/{k}': v for k, v in dict(means, learning_rate=learning_rate).items()
                                     if isinstance(v, (int, float))})
    self.print(window_line(self.exp.method, done, self.exp.total_steps, self.exp.steps_per_epoch, means))

  def epoch(self, record: dict, log, params, final: bool) -> None:
    """An evaluation's record: TensorBoard, the reconstruction grid of `params`, history.json, one console line."""
    step = record['step']
    # Scalars only: per-class and other array values go to history.json alone.
    self.writer.write_scalars(step, {f'epoch/{k}': float(v) for k, v in record.items()
                                     if isinstance(v, (int, float)) and k not in ('epoch', 'step')})
    grid = reconstruction_figure(self.exp.model, params, self.figure_images, self.config,
                                 self.figures_dir / f'reconstruction_epoch_{record["epoch"]:03d}.png', self.is_main)
    self.writer.write_images(step, {'reconstruction': grid[None]})
    self._write_history(log)
    self.print(epoch_line(self.exp.method, record, final))

  def profile(self, first: int, last: int, path: str) -> None:
    self.print(f'Profiler trace of steps {first}-{last} in {path} (TensorBoard: Profile tab).')

  def stopped(self, step: int, reason: str) -> None:
    self.writer.flush()
    self.print(f'{reason} at step {step}: checkpoint saved in {self.workdir}/checkpoints; run the same command to '
               'resume.')

  def finish(self, results: dict, log) -> None:
    """The end of a run: curves, results.json, the summary table and one line of results."""
    self.writer.flush()
    if self.is_main:
      visualize.plot_history(visualize.load_history(self.workdir), self.figures_dir)
      fileio.write_json(self.workdir / 'results.json', results, indent=2)
    self.print(summary_table(log.history, self.exp.method))
    self.print(done_line(self.exp.method, results))

  def _write_history(self, log) -> None:
    """WORKDIR/history.json, rewritten at every epoch: what the plots of a running or finished run read."""
    if not self.is_main:
      return
    exp = self.exp
    hidden = exp.splits.train_labels[exp.splits.unlabeled_idx]
    known = hidden[hidden >= 0]
    history = dict(
        dataset=self.config.dataset,
        method=self.config.method,
        class_names=list(exp.splits.class_names),
        unlabeled_class_counts=(np.bincount(known, minlength=exp.splits.num_classes).tolist() if len(known) else None),
        gate_threshold=self.config.gate_threshold,
        gate_confidence=self.config.gate_confidence,
        gate_opened_at_epoch=log.gate_opened_at_epoch,
        steps_per_epoch=exp.steps_per_epoch,
        epochs=log.history,
    )
    fileio.write_json(self.workdir / 'history.json', history, indent=1)


def results(exp, log, test_at_best: float | None) -> dict:
  """results.json: the run's final numbers, its history and its config; and what came before its first step, whose
  compute the report counts with the run's: its pre-training stage's steps and wall time (config.pretrain_steps), or
  the results.json of the run it started from (config.init_from), where that run wrote one."""
  last = log.history[-1]
  out = dict(
      method=exp.config.method,
      dataset=exp.config.dataset,
      label_fraction=exp.config.label_fraction,
      num_labels=len(exp.splits.labeled_idx) + len(exp.splits.val_idx),
      seed=exp.config.seed,
      test_accuracy=last['test_accuracy'],
      high_conf_accuracy=last['test_hca'],
      val_accuracy=last['val_accuracy'],
      best_val_accuracy=log.best_val_accuracy,
      best_epoch=log.best_epoch,
      test_accuracy_at_best_val=test_at_best,
      gate_opened_at_epoch=log.gate_opened_at_epoch,
      pseudo_labels_total=last['pseudo_labels_total'],
      pseudo_label_precision=last['pseudo_label_precision'],
      steps=exp.total_steps,
      epochs=exp.total_steps / exp.steps_per_epoch,
      nonfinite_steps_skipped=log.skipped_steps,
      wall_seconds=log.wall_seconds,
      # This command's whole wall time, from its process's start (imports, compiling and a pre-training stage in
      # the same command included); a resumed run counts only the command that finished it.
      command_wall_seconds=runtime.command_wall_seconds(),
      commands_wall_seconds=log.commands_wall_seconds,  # Every command that trained it (RunLog), this one last.
      # XLA's count of the compiled steps this run took, each kind of step times the steps of that kind (flops.py).
      flops=exp.step_flops.total(log.kind_steps),
      flops_per_step={kind: exp.step_flops.of(kind) for kind in log.kind_steps or {}},
      steps_per_kind=log.kind_steps,
      history=log.history,
      config=configuration.to_dict(exp.config),
  )
  if exp.config.pretrain_steps:
    pre = fileio.read_json(exp.workdir / experiment.PRETRAIN_DIR / 'results.json')
    out['pretraining'] = {k: pre[k] for k in ('steps', 'wall_seconds', 'flops') if k in pre}
  source = fileio.path(exp.config.init_from) / 'results.json' if exp.config.init_from else None
  if source and source.exists():
    out['initialization'] = fileio.read_json(source)
  return out


class Clock:
  """Wall seconds of a run across resumes: a resumed run's clock starts where its last checkpoint's stopped."""

  def __init__(self, before: float = 0.0):
    self.start = time.time() - before

  def seconds(self) -> float:
    return time.time() - self.start

"""The run's host-side bookkeeping (RunLog): epoch records, the best validation, the gate's opening, wall time and
the current epoch's metric sums. Saved as JSON with every latest checkpoint, so a resumed run continues it."""

import dataclasses

import numpy as np

from ssmae_jax import runtime

# Per-step metrics whose epoch means every record has, as train_<name> (None in an epoch without a trained step); any
# other metric a step returns joins them in the epochs it was logged. full_cls_pass: the share of steps whose L_cls
# pass covered all U unlabeled rows (config.unlabeled_cls_rows).
TRAIN_MEANS = ('loss', 'rec_loss', 'cls_loss', 'labeled_accuracy', 'unlabeled_used', 'full_cls_pass')


def _add(a, b):
  """Sums of scalars (floats) or of arrays (lists, as JSON keeps them)."""
  if isinstance(a, list) or isinstance(b, list):
    return (np.asarray(a, np.float64) + np.asarray(b, np.float64)).tolist()
  return a + b


def _mean(total, n: int):
  return (np.asarray(total, np.float64) / n).tolist() if isinstance(total, list) else total / n


@dataclasses.dataclass
class RunLog:
  history: list[dict] = dataclasses.field(default_factory=list)  # One record per evaluation.
  best_val_accuracy: float | None = None
  best_epoch: int | None = None
  gate_opened_at_epoch: int | None = None
  last_epoch_evaluated: int = -1
  wall_seconds: float = 0.0  # Up to the last save: a resumed run's clock starts there.
  pseudo_labels_total: int = 0  # At the last evaluation.
  # Sums of the per-step metrics over the current epoch's trained steps, and their count as 'steps'.
  epoch_sums: dict[str, float] = dataclasses.field(default_factory=dict)
  skipped_steps: int = 0  # Non-finite steps skipped (config.nan_policy='skip').
  # Steps taken of each kind of work (methods.Method.kinds), skipped ones included: what the run's FLOPs count. None:
  # unknown, for a run resumed from a checkpoint of a version that did not count them (its FLOPs are then not recorded).
  kind_steps: dict[str, float] | None = dataclasses.field(default_factory=dict)
  # Each command that trained the run (a resume starts another): its wall seconds from its process's start (imports
  # and compiling included) to its last save, or to the run's end. A killed command's time after its last save is not
  # in it, as the steps it took then are not. None: unknown, for a run resumed from a checkpoint of an older version.
  commands_wall_seconds: list[float] | None = dataclasses.field(default_factory=list)

  def to_json(self) -> dict:
    """A deep copy: orbax writes it in the background while the loop goes on changing the log."""
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, saved: dict) -> 'RunLog':
    """The log of a checkpoint; keys it lacks (an older version wrote it) take their defaults, but for the steps of
    each kind, unknown when steps were taken before (`kind_steps` None)."""
    log = cls(**{f.name: saved[f.name] for f in dataclasses.fields(cls) if f.name in saved})
    if 'kind_steps' not in saved and log.history:
      log.kind_steps = None
    if 'commands_wall_seconds' not in saved:
      log.commands_wall_seconds = None
    return log

  def begin_command(self) -> None:
    """This command starts training the run (from scratch, or resuming it)."""
    if self.commands_wall_seconds is not None:
      self.commands_wall_seconds.append(0.0)

  def set_clock(self, wall_seconds: float) -> None:
    """Before a save, and at the end: the run's clock, and this command's wall time so far."""
    self.wall_seconds = wall_seconds
    if self.commands_wall_seconds:
      self.commands_wall_seconds[-1] = runtime.command_wall_seconds()

  def add_window(self, sums: dict[str, float], trained: int, skipped: int) -> None:
    """Adds the metric sums of a logging window of `trained` steps (skipped steps contribute zeros)."""
    for k, v in sums.items():
      self.epoch_sums[k] = _add(self.epoch_sums[k], v) if k in self.epoch_sums else v
    self.epoch_sums['steps'] = self.epoch_sums.get('steps', 0) + trained
    self.skipped_steps += skipped

  def take_epoch_means(self) -> dict[str, float | None]:
    """train_<metric> means over the epoch's trained steps (None without any), and starts the next epoch's sums."""
    sums, self.epoch_sums = self.epoch_sums, {}
    n = sums.pop('steps', 0)
    # A key an older version's checkpoint lacks (resumed mid-epoch) has no mean.
    keys = list(TRAIN_MEANS) + [k for k in sums if k not in TRAIN_MEANS]
    return {f'train_{k}': (_mean(sums[k], n) if n and k in sums else None) for k in keys}

  def add_kind_steps(self, counts: dict[str, float]) -> None:
    if self.kind_steps is None:
      return
    for kind, n in counts.items():
      self.kind_steps[kind] = self.kind_steps.get(kind, 0.0) + n

  def note_gate(self, epoch: int, is_open: bool) -> None:
    if is_open and self.gate_opened_at_epoch is None:
      self.gate_opened_at_epoch = epoch

  def close_epoch(self, record: dict) -> bool:
    """Appends an evaluation's record; True if its validation accuracy is the best so far."""
    self.history.append(record)
    self.pseudo_labels_total = record['pseudo_labels_total']
    self.last_epoch_evaluated = record['epoch']
    val_acc = record['val_accuracy']
    if val_acc is None or (self.best_val_accuracy is not None and val_acc <= self.best_val_accuracy):
      return False
    self.best_val_accuracy, self.best_epoch = val_acc, record['epoch']
    return True

  def best_step(self) -> int:
    """The step of the best evaluation; -1 before any."""
    return next((r['step'] for r in self.history if r['epoch'] == self.best_epoch), -1)

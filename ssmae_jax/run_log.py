"""The run's host-side bookkeeping (RunLog): epoch records, the best validation, the gate's opening, wall time and
the current epoch's metric sums. Saved as JSON with every latest checkpoint, so a resumed run continues it."""

import dataclasses

# Per-step metrics whose epoch means go into each epoch's record, as train_<name>.
# full_cls_pass: the share of steps whose L_cls pass covered all U unlabeled rows (config.unlabeled_cls_rows).
TRAIN_MEANS = ('loss', 'rec_loss', 'cls_loss', 'labeled_accuracy', 'unlabeled_used', 'full_cls_pass')


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

  def to_json(self) -> dict:
    """A deep copy: orbax writes it in the background while the loop goes on changing the log."""
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, saved: dict) -> 'RunLog':
    """The log of a checkpoint; keys it lacks (an older version wrote it) take their defaults."""
    return cls(**{f.name: saved[f.name] for f in dataclasses.fields(cls) if f.name in saved})

  def add_window(self, sums: dict[str, float], trained: int, skipped: int) -> None:
    """Adds the metric sums of a logging window of `trained` steps (skipped steps contribute zeros)."""
    for k, v in sums.items():
      self.epoch_sums[k] = self.epoch_sums.get(k, 0.0) + v
    self.epoch_sums['steps'] = self.epoch_sums.get('steps', 0) + trained
    self.skipped_steps += skipped

  def take_epoch_means(self) -> dict[str, float | None]:
    """train_<metric> means over the epoch's trained steps (None without any), and starts the next epoch's sums."""
    sums, self.epoch_sums = self.epoch_sums, {}
    n = sums.pop('steps', 0)
    # A key an older version's checkpoint lacks (resumed mid-epoch) has no mean.
    return {f'train_{k}': (sums[k] / n if n and k in sums else None) for k in TRAIN_MEANS}

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

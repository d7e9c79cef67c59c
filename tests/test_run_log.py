"""Tests for ssmae_jax.run_log: the checkpointed bookkeeping keeps its JSON keys and reads older checkpoints."""

import json

from ssmae_jax.run_log import RunLog

KEYS = {'history', 'best_val_accuracy', 'best_epoch', 'gate_opened_at_epoch', 'last_epoch_evaluated', 'wall_seconds',
        'pseudo_labels_total', 'epoch_sums', 'skipped_steps', 'kind_steps', 'commands_wall_seconds'}


def _record(epoch, step, val_accuracy, total=0):
  return dict(epoch=epoch, step=step, val_accuracy=val_accuracy, pseudo_labels_total=total)


def test_json_keys_and_round_trip():
  log = RunLog()
  log.add_window({'loss': 2.0, 'rec_loss': 1.0}, trained=2, skipped=1)
  log.close_epoch(_record(0, 10, 0.5, total=3))
  saved = json.loads(json.dumps(log.to_json()))
  assert set(saved) == KEYS
  assert RunLog.from_json(saved) == log


def test_to_json_is_a_copy():
  log = RunLog()
  saved = log.to_json()
  log.close_epoch(_record(0, 10, 0.5))
  log.add_window({'loss': 1.0}, trained=1, skipped=0)
  assert saved['history'] == [] and saved['epoch_sums'] == {}


def test_older_checkpoint_without_skipped_steps_restores():
  saved = RunLog().to_json()
  del saved['skipped_steps']
  assert RunLog.from_json(saved).skipped_steps == 0


def test_each_command_records_its_wall_time_and_an_older_checkpoint_has_none():
  log = RunLog()
  log.begin_command()
  log.set_clock(1.5)
  assert log.wall_seconds == 1.5 and len(log.commands_wall_seconds) == 1 and log.commands_wall_seconds[0] > 0
  resumed = RunLog.from_json(json.loads(json.dumps(log.to_json())))
  resumed.begin_command()
  assert resumed.commands_wall_seconds == [log.commands_wall_seconds[0], 0.0]
  saved = log.to_json()
  del saved['commands_wall_seconds']
  older = RunLog.from_json(saved)
  older.begin_command()
  older.set_clock(2.0)
  assert older.commands_wall_seconds is None and older.wall_seconds == 2.0


def test_epoch_means_over_trained_steps_then_reset():
  log = RunLog()
  log.add_window({'loss': 3.0, 'rec_loss': 0.0, 'cls_loss': 3.0, 'labeled_accuracy': 1.0, 'unlabeled_used': 6.0},
                 trained=3, skipped=2)
  means = log.take_epoch_means()
  assert means['train_loss'] == 1.0 and means['train_unlabeled_used'] == 2.0
  assert means['train_full_cls_pass'] is None  # A metric the window lacks (an older version's checkpoint).
  assert log.skipped_steps == 2 and log.epoch_sums == {}
  assert set(log.take_epoch_means().values()) == {None}


def test_best_epoch_and_gate():
  log = RunLog()
  assert log.best_step() == -1
  assert log.close_epoch(_record(0, 0, None)) is False
  assert log.close_epoch(_record(1, 10, 0.4)) is True
  assert log.close_epoch(_record(2, 20, 0.4)) is False  # A tie keeps the earlier epoch.
  assert log.close_epoch(_record(3, 30, 0.5, total=7)) is True
  assert (log.best_epoch, log.best_step(), log.last_epoch_evaluated, log.pseudo_labels_total) == (3, 30, 3, 7)
  log.note_gate(1, False)
  log.note_gate(2, True)
  log.note_gate(3, True)
  assert log.gate_opened_at_epoch == 2


def test_every_metric_a_step_returns_gets_an_epoch_mean_arrays_included():
  log = RunLog()
  log.add_window({'loss': 2.0, 'consistency_loss': 1.0, 'step_kind': [2.0, 0.0, 0.0]}, trained=2, skipped=0)
  log.add_window({'loss': 4.0, 'consistency_loss': 3.0, 'step_kind': [0.0, 1.0, 1.0]}, trained=2, skipped=0)
  means = RunLog.from_json(json.loads(json.dumps(log.to_json()))).take_epoch_means()  # Across a checkpoint, too.
  assert means['train_loss'] == 1.5 and means['train_consistency_loss'] == 1.0
  assert means['train_step_kind'] == [0.5, 0.25, 0.25]
  assert means['train_labeled_accuracy'] is None  # The built-in keys are always there; None without a value.


def test_kind_steps_add_up_across_windows():
  log = RunLog()
  log.add_kind_steps({'labeled_only': 3.0})
  log.add_kind_steps({'labeled_only': 1.0, 'gate_open': 2.0})
  assert RunLog.from_json(log.to_json()).kind_steps == {'labeled_only': 4.0, 'gate_open': 2.0}


def test_a_checkpoint_that_did_not_count_kinds_of_steps_leaves_the_flops_unknown():
  log = RunLog()
  log.close_epoch(_record(0, 10, 0.5))
  saved = log.to_json()
  del saved['kind_steps']  # An older version's checkpoint, 10 steps in.
  resumed = RunLog.from_json(saved)
  resumed.add_kind_steps({'step': 5.0})
  assert resumed.kind_steps is None  # Not 5 steps' worth: the 10 before are not known.
  assert RunLog.from_json({k: v for k, v in RunLog().to_json().items() if k != 'kind_steps'}).kind_steps == {}

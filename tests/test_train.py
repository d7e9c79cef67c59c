"""End to end: the smoke config on the real shared CIFAR-10, resume, eval mode, workdir and config errors.

The smoke run (`smoke_run`) reads the whole real CIFAR-10; the other runs read its first images (conftest's
`small_cifar10`)."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from ssmae_jax.configs import smoke
from ssmae_jax import checkpointing, experiment, inference, methods, run_output, train
from ssmae_jax.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from conftest import needs_cifar10, small_config


def tiny_config(**overrides):
  c = smoke.get_config()
  c.num_steps = 16
  c.log_every_steps = 4
  c.checkpoint_every_steps = 8
  c.eval_batch_size = 1000
  c.label_fraction = 0.01  # 500 labels: 450 train -> 28 steps per epoch.
  c.labeled_batch_size = 32
  c.update(overrides)
  return c


@pytest.fixture(scope='module')
def smoke_run(tmp_path_factory, decode_cifar10_once):
  """20 steps of a small smoke config on the whole real CIFAR-10: (config, workdir, results)."""
  workdir = str(tmp_path_factory.mktemp('smoke'))
  config = tiny_config(num_steps=20)
  config.val_fraction = 0.2
  config.labeled_batch_size = 16  # 400 labeled -> 25 steps per epoch: 20 steps end inside epoch 0.
  _, results = train.train_and_evaluate(config, workdir)
  return config, workdir, results


@needs_cifar10
class TestSmokeRun:
  """Tests of the one smoke run (a class: under xdist one worker runs them, and the run once)."""

  def test_smoke_writes_results(self, smoke_run):
    _, workdir, results = smoke_run
    with open(os.path.join(workdir, 'results.json')) as f:
      saved = json.load(f)
    for key in ('test_accuracy', 'best_val_accuracy', 'test_accuracy_at_best_val', 'high_conf_accuracy',
                'gate_opened_at_epoch', 'pseudo_labels_total', 'pseudo_label_precision', 'steps', 'epochs',
                'wall_seconds', 'config'):
      assert key in saved, key
    assert saved['steps'] == 20
    assert saved['config']['num_steps'] == 20
    assert 0.0 <= saved['test_accuracy'] <= 1.0
    assert saved['gate_opened_at_epoch'] == 0  # threshold 0 and no warm-up: open from the first epoch.
    assert saved['pseudo_labels_total'] > 0  # tau is low in the smoke config.
    assert 0.0 <= saved['pseudo_label_precision'] <= 1.0
    assert results['test_accuracy'] == saved['test_accuracy']
    # From the process's start: at least the run's own clock.
    assert saved['command_wall_seconds'] >= saved['wall_seconds'] > 0
    assert saved['wall_seconds'] < saved['commands_wall_seconds'][0] <= saved['command_wall_seconds']
    assert any(name.startswith('events.out.tfevents') for name in os.listdir(workdir))
    with open(os.path.join(workdir, 'history.json')) as f:
      history = json.load(f)
    assert [r['epoch'] for r in history['epochs']] == [0, 1]
    assert sum(history['epochs'][-1]['pseudo_labels_per_class']) == saved['pseudo_labels_total']
    assert sum(history['unlabeled_class_counts']) == 50000 - 100  # The pool excludes the 100 validation images.
    assert history['epochs'][-1]['train_loss'] > 0
    assert os.listdir(os.path.join(workdir, 'checkpoints'))
    assert os.listdir(os.path.join(workdir, 'best'))

  def test_eval_mode_evaluates_best_checkpoint(self, smoke_run):
    config, workdir, results = smoke_run
    out = inference.evaluate(config, workdir, 'best')
    assert out['test_accuracy'] == pytest.approx(results['test_accuracy_at_best_val'])
    latest = inference.evaluate(config, workdir, 'latest')
    assert latest['step'] == 20
    assert latest['test_accuracy'] == pytest.approx(results['test_accuracy'])

  def test_figures_and_tensorboard_of_a_run(self, smoke_run):
    import matplotlib.image
    import tensorflow as tf
    config, workdir, _ = smoke_run
    figures = os.path.join(workdir, 'figures')
    for name in ('reconstruction_epoch_000.png', 'reconstruction_epoch_001.png', 'accuracy.png', 'pseudo_labels.png',
                 'pseudo_label_classes.png', 'hca.png', 'losses.png', 'diagnostics.png'):
      image = matplotlib.image.imread(os.path.join(figures, name))
      assert image.std() > 0.02, name
    tags, images = set(), 0
    for name in os.listdir(workdir):
      if name.startswith('events.out.tfevents'):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(workdir, name)):
          for value in event.summary.value:
            tags.add(value.tag)
            images += value.tag == 'reconstruction'
    for tag in ('train/loss', 'train/rec_loss', 'train/cls_loss', 'train/grad_norm', 'train/steps_per_sec',
                'train/learning_rate', 'epoch/val_accuracy', 'epoch/val_hca', 'epoch/gate_open',
                'epoch/pseudo_labels_total', 'epoch/pseudo_labels_new', 'epoch/pseudo_label_precision',
                'epoch/test_accuracy'):
      assert tag in tags, tag
    assert images == 2  # One grid per evaluation.

    path = inference.reconstruct(config, workdir)
    assert path.endswith('reconstruction_step_20.png') and os.path.exists(path)
    assert len(inference.plots(workdir)) == 6


@needs_cifar10
def test_resume_matches_uninterrupted(tmp_path, small_cifar10):
  # 7 steps per epoch: the 16 steps cross the evaluations at steps 7 and 14; the stop at step 6 saves the checkpoint
  # the resumed run starts from, before the first periodic one (step 8). With a teacher (config.teacher_ema), the
  # one part of the state the paper's runs lack (test_reliability resumes those from kill -9 and SIGTERM).
  config = small_config(small_cifar10, num_steps=16, teacher_ema=0.9)
  _, full_results = train.train_and_evaluate(config, str(tmp_path / 'full'))

  assert train.train_and_evaluate(config, str(tmp_path / 'split'), preemption=train.StopAtStep(6))[1] is None
  resumed = experiment.build(config, str(tmp_path / 'split'))
  assert int(resumed.checkpoints.latest.latest_step()) == 6
  _, resumed_results = train.train_and_evaluate(config, str(tmp_path / 'split'), experiment=resumed)

  def final_state(name):
    checkpoints = checkpointing.Checkpoints(str(tmp_path / name), 3)
    state, _ = checkpoints.restore_latest(resumed.state)
    checkpoints.close()
    return state

  full_state, resumed_state = final_state('full'), final_state('split')
  assert int(full_state.step) == config.num_steps
  for a, b in zip(jax.tree.leaves(full_state), jax.tree.leaves(resumed_state), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert int(np.sum(np.asarray(resumed_state.pseudo_labels) >= 0)) > 0
  head = lambda params: np.asarray(params['head']['kernel'])
  assert not np.allclose(head(resumed_state.teacher), head(resumed_state.params))  # It lags the parameters.
  # Two commands trained the resumed run (here two calls in one process, whose clock counts from its start).
  assert len(full_results['commands_wall_seconds']) == 1 and len(resumed_results['commands_wall_seconds']) == 2
  first, second = resumed_results['commands_wall_seconds']
  assert 0 < first <= second <= resumed_results['command_wall_seconds']
  drop = ('wall_seconds', 'command_wall_seconds', 'commands_wall_seconds', 'config', 'history')
  assert {k: v for k, v in full_results.items() if k not in drop} == \
      {k: v for k, v in resumed_results.items() if k not in drop}
  # Train-metric means are sums of per-window float sums whose windows differ after a resume: equal up to rounding.
  for a, b in zip(full_results['history'], resumed_results['history'], strict=True):
    for key in a:
      if key.startswith('train_') and a[key] is not None:
        assert a[key] == pytest.approx(b[key], rel=1e-5), key
      elif key != 'wall_seconds':
        assert a[key] == b[key], key


@needs_cifar10
def test_workdir_of_another_config_is_refused(tmp_path, small_cifar10):
  experiment.build(small_config(small_cifar10), str(tmp_path))  # A run starts by recording its config.
  other = small_config(small_cifar10, mask_ratio=0.5)
  with pytest.raises(UserError, match='mask_ratio'):
    experiment.build(other, str(tmp_path))
  other.allow_config_change = True
  experiment.build(other, str(tmp_path))  # Allowed when asked for.


@pytest.mark.parametrize('overrides, message', [
    (dict(image_size=30), 'divisible'),
    (dict(mask_ratio=0.999), 'visible patch'),
    (dict(mask_ratio=0.0), 'nothing to reconstruct'),
    (dict(gate_rule='sometimes'), 'config.gate_rule'),
    (dict(method='magic'), 'config.method'),
])
def test_bad_config_is_a_clear_error_before_loading(tmp_path, overrides, message):
  with pytest.raises(UserError, match=message):
    experiment.build(tiny_config(**overrides), str(tmp_path))


def test_unwritable_workdir(tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('')
  with pytest.raises(UserError, match='writable'):
    experiment.build(tiny_config(), str(blocker / 'sub'))


def test_eval_without_checkpoints_is_clear(tmp_path):
  with pytest.raises(UserError, match='No checkpoints'):
    inference.evaluate(tiny_config(), str(tmp_path))


@pytest.mark.parametrize('args, message', [
    (['--config.labl_fraction=0.1'], 'label_fraction'),
    (['--config.label_fraction=abc'], 'label_fraction'),
])
def test_main_reports_bad_flags_in_one_line(tmp_path, args, message):
  # A process of its own: absl and ml_collections word a bad override differently once flags were parsed before.
  proc = subprocess.run(
      [sys.executable, 'main.py', '--config=configs/smoke.py', f'--workdir={tmp_path}'] + args,
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2
  assert 'Traceback' not in proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith('error:') and message in last


@pytest.mark.filterwarnings(r'ignore:the load_module\(\) method is deprecated')  # ml_collections loading configs.
def test_main_runs_each_mode_and_maps_errors_to_exit_codes(tmp_path, monkeypatch, capsys):
  monkeypatch.setenv('GLIBC_TUNABLES', 'glibc.malloc.hugetlb=1')  # Else importing main.py re-executes this process.
  import main
  calls = []
  monkeypatch.setattr(train, 'train_and_evaluate', lambda config, workdir: (None, calls.append(('train', workdir))))
  monkeypatch.setattr(inference, 'evaluate', lambda config, workdir, which: calls.append(('eval', workdir, which)))
  monkeypatch.setattr(inference, 'reconstruct', lambda config, workdir: calls.append(('reconstruct', workdir)))
  monkeypatch.setattr(inference, 'predict_pool', lambda config, workdir: calls.append(('predict', workdir)))
  monkeypatch.setattr(inference, 'plots', lambda workdir: calls.append(('plots', workdir)))
  workdir = str(tmp_path)

  def run(*args):
    main.parse_flags(['main.py', '--config=configs/smoke.py', f'--workdir={workdir}', *args])
    main.main([])

  for mode in ('train', 'eval', 'reconstruct', 'predict', 'plots'):
    run(f'--mode={mode}')
  run('--mode=eval', '--checkpoint=latest')
  assert calls == [('train', workdir), ('eval', workdir, 'best'), ('reconstruct', workdir), ('predict', workdir),
                   ('plots', workdir), ('eval', workdir, 'latest')]
  capsys.readouterr()
  # A user's mistake found while running exits 2 with one line; a non-finite loss (nan_policy='stop') exits 1.
  for error, code in ((UserError('No checkpoints in W: train first.'), 2),
                      (FloatingPointError('The loss or gradient became non-finite at step 2; ...'), 1)):
    def fail(config, workdir, error=error):
      raise error
    monkeypatch.setattr(train, 'train_and_evaluate', fail)
    with pytest.raises(SystemExit) as exit_:
      run('--mode=train')
    assert exit_.value.code == code
    assert capsys.readouterr().err.strip().splitlines()[-1] == f'error: {error}'


# SIGTERM (preemption): test_reliability's kill test stops a run with it, resumes it and compares the end.


def test_reconstruct_and_plots_on_an_empty_workdir_are_clear(tmp_path):
  with pytest.raises(UserError, match='No checkpoints'):
    inference.reconstruct(tiny_config(), str(tmp_path))
  with pytest.raises(UserError, match='no history.json'):
    inference.plots(str(tmp_path))


def test_summary_table_has_a_row_per_evaluation():
  record = dict(epoch=0, train_labeled_accuracy=None, val_accuracy=0.5, val_hca=0.75, val_num_confident=4,
                gate_open=True, test_accuracy=None, pseudo_labels_total=7, pseudo_labels_new=3,
                pseudo_label_precision=0.5, train_rec_loss=0.25)
  history = [record, dict(record, epoch=1, gate_open=False), dict(record, epoch=2, gate_open=False)]
  rows = run_output.summary_table(history, methods.get('ssmae')).splitlines()
  assert len(rows) == 5
  assert rows[2] == '| 0 | n/a | 50.00% | 75.00% (4) | open | n/a | 7 (3) | 50.00% |'
  assert '| closed |' in rows[3]
  assert '| — |' in rows[4]  # The evaluation after the last step: its gate decides nothing.
  # Only the columns a method has: no accuracy, gate or pseudo-labels for MAE pre-training, no gate for supervised.
  assert run_output.summary_table([record], methods.get('mae_pretrain')).splitlines()[::2] == [
      '| epoch | train rec loss |', '| 0 | 0.2500 |']
  assert run_output.summary_table([record], methods.get('supervised')).splitlines()[0] == (
      '| epoch | train acc | val acc | test acc |')


def test_console_lines_show_only_what_the_method_has():
  record = dict(epoch=3, train_labeled_accuracy=0.5, val_accuracy=0.5, val_hca=0.75, val_num_confident=4,
                gate_open=True, test_accuracy=0.25, pseudo_labels_total=7, pseudo_labels_new=3,
                pseudo_label_precision=0.5, train_rec_loss=0.25)
  line = lambda name, final=False: run_output.epoch_line(methods.get(name), record, final)
  assert line('ssmae') == ('epoch 3 | val acc 50.00% | HCA 75.00% (4 confident) | gate open | test acc 25.00% | '
                           'pseudo-labels 7 (+3, precision 50.00%)')
  # After the last step the gate decides nothing: the final line does not say it closed.
  assert line('ssmae', final=True) == ('epoch 3 (final) | val acc 50.00% | HCA 75.00% (4 confident) | '
                                       'test acc 25.00% | pseudo-labels 7 (+3, precision 50.00%)')
  assert line('mae_pretrain') == 'epoch 3 | train rec loss 0.2500'
  assert line('finetune') == 'epoch 3 | val acc 50.00% | test acc 25.00%'
  results = dict(test_accuracy=0.25, test_accuracy_at_best_val=0.5, best_val_accuracy=0.5, pseudo_labels_total=7,
                 pseudo_label_precision=0.5, gate_opened_at_epoch=2, wall_seconds=65, steps=10, history=[record])
  done = lambda name: run_output.done_line(methods.get(name), results)
  assert done('ssmae') == ('Done: test accuracy 25.00% (at best validation: 50.00%), best validation 50.00%, '
                           '7 pseudo-labels (precision 50.00%), gate opened at epoch 2; 1m05s.')
  assert done('supervised') == 'Done: test accuracy 25.00% (at best validation: 50.00%), best validation 50.00%; 1m05s.'
  assert done('mae_pretrain') == 'Done: 10 steps, train reconstruction loss 0.2500; 1m05s.'


def test_the_start_line_names_only_the_data_the_method_reads():
  line = lambda name: run_output.start_line(methods.get(name), 30, 6, 5, (450, 50, 4950), 2)
  assert line('ssmae') == '30 steps (6 epochs of 5), 450 labeled, 50 validation, 4950 unlabeled, 2 devices.'
  assert line('supervised') == line('finetune') == '30 steps (6 epochs of 5), 450 labeled, 50 validation, 2 devices.'
  assert line('mae_pretrain') == '30 steps (6 epochs of 5), 4950 unlabeled (labels not read), 2 devices.'


def test_the_progress_line_shows_only_what_the_method_trains():
  means = dict(loss=1.5, rec_loss=1.0, cls_loss=0.5, labeled_accuracy=0.25, unlabeled_used=3.0, steps_per_sec=2.0,
               skipped_steps=0)
  line = lambda name, **kw: run_output.window_line(methods.get(name), 10, 30, 5, dict(means, **kw))
  assert line('ssmae') == ('step 10/30 | epoch 2.00 | loss 1.5000 (rec 1.0000, cls 0.5000) | train acc 25.0% | '
                           'unlabeled used/step 3.0 | 2.00 steps/s | ETA 0m10s')
  assert line('mae_pretrain') == 'step 10/30 | epoch 2.00 | loss 1.5000 | 2.00 steps/s | ETA 0m10s'
  assert line('supervised') == 'step 10/30 | epoch 2.00 | loss 1.5000 | train acc 25.0% | 2.00 steps/s | ETA 0m10s'
  assert line('finetune', skipped_steps=2).endswith(' | 2 non-finite steps skipped')


def test_a_bad_config_stops_before_its_pretraining_stage(tmp_path):
  with pytest.raises(UserError, match='visible patch'):
    train.train(tiny_config(pretrain_steps=5, mask_ratio=0.999), str(tmp_path))
  assert not (tmp_path / 'pretrain').exists()

"""The paper's baselines and ablation switches in the one trainer, end to end at smoke scale on real CIFAR-10 images
(conftest's `small_cifar10`: the first 1,000 training and 200 test images)."""

import json
import os

import jax
import numpy as np
import pytest

from conftest import needs_cifar10, small_config
from ssmae_jax import experiment, input_pipeline, masking, registry, train
from ssmae_jax.errors import UserError

pytestmark = needs_cifar10


class Recorder:
  """What the trainer asks the input pipeline for, the keys of every batch it gets, and the (kept, total) patch
  counts of every masking it traces."""

  def __init__(self, monkeypatch):
    self.kwargs, self.keys, self.masks = [], set(), []
    make = input_pipeline.train_iterator

    def train_iterator(*args, **kwargs):
      self.kwargs.append(kwargs)
      for batch in make(*args, **kwargs):
        self.keys |= set(batch)
        yield batch

    def recording_masking(rng, batch, num_patches, ratio):
      out = masking.random_masking(rng, batch, num_patches, ratio)
      self.masks.append((out[0].shape[1], out[1].shape[1]))  # Traced inside the jitted step: shapes only.
      return out

    monkeypatch.setattr(input_pipeline, 'train_iterator', train_iterator)
    monkeypatch.setitem(registry.maskings._entries, 'random', recording_masking)


@pytest.fixture
def config_for(small_cifar10):
  return lambda method, **overrides: small_config(small_cifar10, method=method, **overrides)


def results_of(workdir):
  with open(os.path.join(workdir, 'results.json')) as f:
    return json.load(f)


def test_supervised_never_reads_the_unlabeled_stream(tmp_path, config_for, monkeypatch):
  seen = Recorder(monkeypatch)
  train.train_and_evaluate(config_for('supervised'), str(tmp_path))
  assert seen.kwargs[0]['need_unlabeled'] is False
  assert seen.keys == {'labeled_image', 'labeled_label'}
  results = results_of(tmp_path)
  assert results['method'] == 'supervised'
  assert results['pseudo_labels_total'] == 0 and results['gate_opened_at_epoch'] is None
  assert 0 <= results['test_accuracy'] <= 1


# An mae_pretrain run, and fine-tuning from it. (A class: under xdist one worker runs its tests, and the run once.)


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory, small_cifar10):
  """A finished mae_pretrain run -> (its experiment, workdir, what it read)."""
  workdir = str(tmp_path_factory.mktemp('mae'))
  with pytest.MonkeyPatch.context() as monkeypatch:
    seen = Recorder(monkeypatch)
    pretrain = experiment.build(small_config(small_cifar10, method='mae_pretrain'), workdir)
    pretrain.state, _ = train.train_and_evaluate(pretrain.config, workdir, experiment=pretrain)
  return pretrain, workdir, seen


class TestPretrainThenFinetune:

  def test_mae_pretrain_never_reads_labels(self, pretrained):
    _, workdir, seen = pretrained
    assert seen.kwargs[0]['need_labeled'] is False
    assert seen.keys and not any(k.startswith('labeled_') for k in seen.keys)
    results = results_of(workdir)
    assert results['method'] == 'mae_pretrain' and results['test_accuracy'] is None
    assert results['history'][-1]['train_rec_loss'] > 0

  def test_finetune_loads_the_pretrained_encoder(self, pretrained, config_for, tmp_path):
    pretrain, pretrain_dir, _ = pretrained
    finetune_dir = str(tmp_path / 'ft')
    finetune = experiment.build(config_for('finetune', init_from=pretrain_dir), finetune_dir)
    fresh = experiment.build(config_for('supervised'), str(tmp_path / 'fresh'))
    for part in ('encoder', 'decoder'):
      for a, b in zip(jax.tree.leaves(finetune.state.params[part]), jax.tree.leaves(pretrain.state.params[part])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # ...and differs from what a fresh initialisation gives, so the loaded encoder is what fine-tuning starts from.
    assert not np.allclose(np.asarray(finetune.state.params['encoder']['pos_embed']),
                           np.asarray(fresh.state.params['encoder']['pos_embed']))
    loaded_val = finetune.evaluate(finetune.state.params, 'val')
    assert loaded_val.count == len(finetune.splits.val_idx)
    train.train_and_evaluate(finetune.config, finetune_dir, experiment=finetune)
    results = results_of(finetune_dir)
    assert results['method'] == 'finetune'
    # The run it started from comes with it, whole: the report counts that run's compute before this one's.
    assert results['initialization'] == results_of(pretrain_dir)

  def test_pretrain_steps_runs_this_pipeline_in_one_call(self, pretrained, config_for, tmp_path, capsys):
    pretrain, pretrain_dir, _ = pretrained
    workdir = tmp_path / 'staged'
    config = config_for('finetune', pretrain_steps=pretrain.total_steps, num_steps=2)
    results = train.train(config, str(workdir))
    assert f'Pre-training (config.pretrain_steps={pretrain.total_steps}, ' in capsys.readouterr().out
    # The stage is the mae_pretrain run above (same data, seed and steps), in WORKDIR/pretrain...
    stage, separate = results_of(workdir / 'pretrain'), results_of(pretrain_dir)
    assert stage['method'] == 'mae_pretrain' and stage['steps'] == pretrain.total_steps
    assert [r['train_rec_loss'] for r in stage['history']] == [r['train_rec_loss'] for r in separate['history']]
    assert results['pretraining'] == dict(steps=pretrain.total_steps, wall_seconds=stage['wall_seconds'],
                                          flops=stage['flops'])
    assert results['steps'] == 2 and results['config']['init_from'] is None
    # ...and the run started from its encoder and decoder, bit for bit.
    start = experiment.build(config, str(workdir)).state.params
    for part in ('encoder', 'decoder'):
      for a, b in zip(jax.tree.leaves(start[part]), jax.tree.leaves(pretrain.state.params[part]), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Run again, it finds the stage finished: no second pre-training.
    train.train(config, str(workdir))
    assert 'Pre-training' not in capsys.readouterr().out

  def test_init_from_a_model_of_another_shape_is_refused(self, pretrained, config_for, tmp_path):
    _, source, _ = pretrained
    other = config_for('finetune', init_from=source)
    other.model.width = 48
    with pytest.raises(UserError, match='another shape'):
      experiment.build(other, str(tmp_path / 'dst'))


def test_finetune_errors(tmp_path, config_for):
  with pytest.raises(UserError, match='needs config.init_from'):
    experiment.build(config_for('finetune'), str(tmp_path / 'a'))
  with pytest.raises(UserError, match='holds no checkpoint'):
    experiment.build(config_for('finetune', init_from=str(tmp_path / 'nowhere')), str(tmp_path / 'b'))


# The gate modes and the switches of the selection rule. Each run is two steps inside epoch 0 (7 steps long); the
# smoke config's gate opens at epoch 0 (threshold 0, no warm-up) and its tau (0.15) lets pseudo-labels through.


def test_gate_never_assigns_no_pseudo_label(tmp_path, config_for):
  _, results = train.train_and_evaluate(config_for('ssmae', gate_rule='never', num_steps=2), str(tmp_path))
  assert results['pseudo_labels_total'] == 0 and results['gate_opened_at_epoch'] is None


def test_gate_always_open_assigns_from_step_zero(tmp_path, config_for):
  # A warm-up and the strictest HCA threshold keep a dynamic gate closed; always_open ignores both.
  config = config_for('ssmae', gate_rule='always_open', warmup_epochs=100, gate_threshold=1.0, num_steps=2)
  _, results = train.train_and_evaluate(config, str(tmp_path))
  assert results['gate_opened_at_epoch'] == 0
  assert results['pseudo_labels_total'] > 0
  dynamic = config_for('ssmae', gate_rule='hca', warmup_epochs=100, gate_threshold=1.0, num_steps=2)
  assert train.train_and_evaluate(dynamic, str(tmp_path / 'dyn'))[1]['pseudo_labels_total'] == 0


def test_tau_of_one_assigns_nothing_even_with_the_gate_open(tmp_path, config_for):
  _, results = train.train_and_evaluate(config_for('ssmae', gate_rule='always_open', tau=1.0, num_steps=2), str(tmp_path))
  assert results['gate_opened_at_epoch'] == 0 and results['pseudo_labels_total'] == 0


def _remembering_run(tmp_path, config_for, sticky):
  """A run whose memory already holds a pseudo-label for every pool example, with a gate that stays closed."""
  config = config_for('ssmae', sticky=sticky, warmup_epochs=100, num_steps=2, log_every_steps=2)
  workdir = str(tmp_path / f'sticky_{sticky}')
  run = experiment.build(config, workdir)
  hidden = run.splits.train_labels[run.splits.unlabeled_idx].astype(np.int32)
  run.state = run.state.replace(pseudo_labels=jax.device_put(hidden, run.state.pseudo_labels.sharding))
  return train.train_and_evaluate(config, workdir, experiment=run)[1]


def test_sticky_memory_trains_on_remembered_labels_while_the_gate_is_closed(tmp_path, config_for):
  sticky = _remembering_run(tmp_path, config_for, sticky=True)
  assert sticky['gate_opened_at_epoch'] is None
  # Every unlabeled example of every step is remembered, so all of them join the classification loss...
  assert sticky['history'][-1]['train_unlabeled_used'] == 32
  # ...while without stickiness a closed gate uses none: selection is redone each step and needs an open gate.
  assert _remembering_run(tmp_path, config_for, sticky=False)['history'][-1]['train_unlabeled_used'] == 0


# Runs with the gate open from step 0 and tau = 0, which makes every example confident: the agreement test alone can
# drop one. Several tests read the same run (`open_run`): a class, which one worker runs under xdist.


@pytest.fixture(scope='module')
def open_run(tmp_path_factory, small_cifar10):
  """switches -> (results, (kept, total) patch counts of every masking traced) of the two-step, gate-open, tau-0
  run with those switches; each run once per module."""
  runs = {}

  def run(**switches):
    key = tuple(sorted(switches.items()))
    if key not in runs:
      config = small_config(small_cifar10, method='ssmae', gate_rule='always_open', tau=0.0, num_steps=2, **switches)
      with pytest.MonkeyPatch.context() as monkeypatch:
        seen = Recorder(monkeypatch)
        _, results = train.train_and_evaluate(config, str(tmp_path_factory.mktemp('open')))
      runs[key] = results, seen.masks
    return runs[key]

  return run


class TestSwitchesWithTheGateOpen:

  def test_require_agreement_drops_examples_whose_views_disagree(self, open_run):
    free, _ = open_run(require_agreement=False)
    seen = 2 * 32  # Two steps of distinct pool indices (U = 32; one epoch of the 950-image pool is 29 steps).
    assert free['pseudo_labels_total'] == seen
    agree, _ = open_run()  # require_agreement=True, the default.
    assert 0 < agree['pseudo_labels_total'] < seen

  def test_rec_weight_zero_removes_the_reconstruction_term(self, open_run):
    last = open_run(rec_weight=0.0)[0]['history'][-1]
    assert last['train_rec_loss'] == 0 and last['train_loss'] == pytest.approx(last['train_cls_loss'])
    with_rec = open_run()[0]['history'][-1]  # rec_weight=1, the default.
    assert with_rec['train_rec_loss'] > 0 and with_rec['train_loss'] > with_rec['train_cls_loss']

  @pytest.mark.parametrize('mask_ratio, kept', [(0.75, 4), (0.5, 8)])
  def test_mask_ratio_sets_how_many_patches_the_encoder_sees(self, open_run, mask_ratio, kept):
    _, masks = open_run() if mask_ratio == 0.75 else open_run(mask_ratio=mask_ratio)  # 0.75: the default.
    # Smoke model: 32x32 images in 8x8 patches -> 16 patches; the encoder sees `kept`, the rest are reconstructed.
    assert masks and all(m == (kept, 16) for m in masks)

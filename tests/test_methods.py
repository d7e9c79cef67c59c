"""The paper's baselines and ablation switches in the one trainer, end to end at smoke scale on real CIFAR-10."""

import json
import os

import jax
import numpy as np
import pytest

from configs import smoke
from ssmae_jax import experiment, input_pipeline, train
from ssmae_jax.errors import UserError

from conftest import needs_cifar10

pytestmark = [needs_cifar10, pytest.mark.usefixtures('decode_cifar10_once')]


@pytest.fixture
def batches_seen(monkeypatch):
  """Records what the trainer asks the input pipeline for, and the keys of every batch it gets."""
  seen = dict(kwargs=[], keys=set())
  make = input_pipeline.train_iterator

  def recording(*args, **kwargs):
    seen['kwargs'].append(kwargs)
    for batch in make(*args, **kwargs):
      seen['keys'] |= set(batch)
      yield batch

  monkeypatch.setattr(input_pipeline, 'train_iterator', recording)
  return seen


def config_for(method, **overrides):
  c = smoke.get_config()
  c.method = method
  c.num_steps = 8
  c.label_fraction = 0.01
  c.labeled_batch_size = 32
  c.eval_batch_size = 1000
  c.log_every_steps = 4
  c.checkpoint_every_steps = 8
  c.update(overrides)
  return c


def results_of(workdir):
  with open(os.path.join(workdir, 'results.json')) as f:
    return json.load(f)


def test_supervised_never_reads_the_unlabeled_stream(tmp_path, batches_seen):
  train.train_and_evaluate(config_for('supervised'), str(tmp_path))
  assert batches_seen['kwargs'][0]['need_unlabeled'] is False
  assert batches_seen['keys'] == {'labeled_image', 'labeled_label'}
  results = results_of(tmp_path)
  assert results['method'] == 'supervised'
  assert results['pseudo_labels_total'] == 0 and results['gate_opened_at_epoch'] is None
  assert 0 <= results['test_accuracy'] <= 1


def test_mae_pretrain_never_reads_labels_then_finetune_loads_its_encoder(tmp_path, batches_seen):
  pretrain_dir, finetune_dir = str(tmp_path / 'mae'), str(tmp_path / 'ft')
  pretrain = experiment.build(config_for('mae_pretrain'), pretrain_dir)
  train.train_and_evaluate(pretrain.config, pretrain_dir, experiment=pretrain)
  assert batches_seen['kwargs'][0]['need_labeled'] is False
  assert not any(k.startswith('labeled_') for k in batches_seen['keys'])
  results = results_of(pretrain_dir)
  assert results['method'] == 'mae_pretrain' and results['test_accuracy'] is None
  assert results['history'][-1]['train_rec_loss'] > 0

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
  assert results_of(finetune_dir)['method'] == 'finetune'


def test_finetune_errors(tmp_path):
  with pytest.raises(UserError, match='needs config.init_from'):
    experiment.build(config_for('finetune'), str(tmp_path / 'a'))
  with pytest.raises(UserError, match='holds no checkpoint'):
    experiment.build(config_for('finetune', init_from=str(tmp_path / 'nowhere')), str(tmp_path / 'b'))


def test_init_from_a_model_of_another_shape_is_refused(tmp_path):
  source = str(tmp_path / 'src')
  train.train_and_evaluate(config_for('supervised', num_steps=1), source)
  other = config_for('finetune', init_from=source)
  other.model.width = 48
  with pytest.raises(UserError, match='another shape'):
    experiment.build(other, str(tmp_path / 'dst'))


def test_gate_never_assigns_no_pseudo_label(tmp_path):
  results = train.train_and_evaluate(config_for('ssmae', gate='never'), str(tmp_path))
  assert results['pseudo_labels_total'] == 0 and results['gate_opened_at_epoch'] is None


def test_gate_always_open_assigns_from_step_zero(tmp_path):
  # A warm-up and the strictest HCA threshold keep a dynamic gate closed; always_open ignores both.
  config = config_for('ssmae', gate='always_open', warmup_epochs=100, gate_threshold=1.0, num_steps=2)
  results = train.train_and_evaluate(config, str(tmp_path))
  assert results['gate_opened_at_epoch'] == 0
  assert results['pseudo_labels_total'] > 0
  dynamic = config_for('ssmae', gate='dynamic', warmup_epochs=100, gate_threshold=1.0, num_steps=2)
  assert train.train_and_evaluate(dynamic, str(tmp_path / 'dyn'))['pseudo_labels_total'] == 0


def test_require_agreement_drops_examples_whose_views_disagree(tmp_path):
  # tau = 0 makes every example of an open gate confident; only the weak/strong agreement test can drop one.
  free = config_for('ssmae', gate='always_open', tau=0.0, require_agreement=False, num_steps=2)
  train.train_and_evaluate(free, str(tmp_path / 'free'))
  seen = 2 * free.unlabeled_batch_size  # Two steps of distinct pool indices (one epoch is far longer).
  assert results_of(tmp_path / 'free')['pseudo_labels_total'] == seen
  agree = train.train_and_evaluate(config_for('ssmae', gate='always_open', tau=0.0, num_steps=2),
                                   str(tmp_path / 'agree'))
  assert 0 < agree['pseudo_labels_total'] < seen


def test_tau_of_one_assigns_nothing_even_with_the_gate_open(tmp_path):
  results = train.train_and_evaluate(config_for('ssmae', gate='always_open', tau=1.0, num_steps=2), str(tmp_path))
  assert results['gate_opened_at_epoch'] == 0 and results['pseudo_labels_total'] == 0


def _remembering_run(tmp_path, sticky):
  """A run whose memory already holds a pseudo-label for every pool example, with a gate that stays closed."""
  config = config_for('ssmae', sticky=sticky, warmup_epochs=100, num_steps=2, log_every_steps=2)
  workdir = str(tmp_path / f'sticky_{sticky}')
  run = experiment.build(config, workdir)
  hidden = run.splits.train_labels[run.splits.unlabeled_idx].astype(np.int32)
  run.state = run.state.replace(pseudo_labels=jax.device_put(hidden, run.state.pseudo_labels.sharding))
  return train.train_and_evaluate(config, workdir, experiment=run)


def test_sticky_memory_trains_on_remembered_labels_while_the_gate_is_closed(tmp_path):
  sticky = _remembering_run(tmp_path, sticky=True)
  assert sticky['gate_opened_at_epoch'] is None
  # Every unlabeled example of every step is remembered, so all of them join the classification loss...
  assert sticky['history'][-1]['train_unlabeled_used'] == 32
  # ...while without stickiness a closed gate uses none: selection is redone each step and needs an open gate.
  assert _remembering_run(tmp_path, sticky=False)['history'][-1]['train_unlabeled_used'] == 0


def test_rec_weight_zero_removes_the_reconstruction_term(tmp_path):
  results = train.train_and_evaluate(config_for('ssmae', rec_weight=0.0, num_steps=2), str(tmp_path))
  last = results['history'][-1]
  assert last['train_rec_loss'] == 0 and last['train_loss'] == pytest.approx(last['train_cls_loss'])
  with_rec = train.train_and_evaluate(config_for('ssmae', num_steps=2), str(tmp_path / 'rec'))['history'][-1]
  assert with_rec['train_rec_loss'] > 0 and with_rec['train_loss'] > with_rec['train_cls_loss']


@pytest.mark.parametrize('mask_ratio, kept', [(0.75, 4), (0.5, 8)])
def test_mask_ratio_sets_how_many_patches_the_encoder_sees(tmp_path, monkeypatch, mask_ratio, kept):
  from ssmae_jax import masking
  shapes, masking_fn = [], masking.random_masking

  def recording(rng, batch, num_patches, ratio):
    out = masking_fn(rng, batch, num_patches, ratio)
    shapes.append((out[0].shape[1], out[1].shape[1]))  # Traced inside the jitted step: shapes only.
    return out

  monkeypatch.setattr(masking, 'random_masking', recording)
  train.train_and_evaluate(config_for('ssmae', mask_ratio=mask_ratio, num_steps=1), str(tmp_path))
  # Smoke model: 32x32 images in 8x8 patches -> 16 patches; the encoder sees `kept`, the rest are reconstructed.
  assert shapes and all(s == (kept, 16) for s in shapes)

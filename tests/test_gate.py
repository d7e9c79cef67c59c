"""Tests for ssmae_jax.gate (HCA, the gate, pseudo-label selection, sticky memory) and train_state.create."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from conftest import gate_rule_decides as _open

from ssmae_jax.configs import default
from ssmae_jax import gate, registry, methods, train_state


TAU = 0.95


def _logits_from_probs(probs):
  return jnp.log(jnp.asarray(probs, jnp.float32))


def _probs(*rows):
  return jnp.asarray(rows, jnp.float32)


# --- high-confidence accuracy ----------------------------------------------------------------------------------------


def test_high_confidence_counts_only_confident_examples():
  logits = _logits_from_probs([
      [0.97, 0.02, 0.01],  # confident, correct
      [0.01, 0.98, 0.01],  # confident, wrong
      [0.60, 0.30, 0.10],  # not confident, correct
      [0.10, 0.20, 0.70],  # not confident, wrong
  ])
  labels = jnp.array([0, 0, 0, 0])
  valid = jnp.ones(4, bool)
  n, c = gate.high_confidence_counts(logits, labels, valid, 0.95)
  assert int(n) == 2
  assert int(c) == 1


def test_high_confidence_threshold_is_strict():
  logits = jnp.zeros((3, 2))  # softmax is exactly [0.5, 0.5]
  labels = jnp.zeros(3, jnp.int32)
  valid = jnp.ones(3, bool)
  n, _ = gate.high_confidence_counts(logits, labels, valid, 0.5)
  assert int(n) == 0
  n, c = gate.high_confidence_counts(logits, labels, valid, 0.49)
  assert int(n) == 3 and int(c) == 3


def test_high_confidence_counts_ignore_padding():
  logits = _logits_from_probs([
      [0.97, 0.02, 0.01],  # confident, correct, valid
      [0.99, 0.005, 0.005],  # confident, correct, padding
      [0.01, 0.98, 0.01],  # confident, wrong, padding
  ])
  labels = jnp.array([0, 0, 0])
  valid = jnp.array([True, False, False])
  n, c = gate.high_confidence_counts(logits, labels, valid, 0.95)
  assert int(n) == 1 and int(c) == 1
  n, c = gate.high_confidence_counts(logits, labels, jnp.array([False, False, True]), 0.95)
  assert int(n) == 1 and int(c) == 0


def test_high_confidence_accuracy_value():
  assert gate.high_confidence_accuracy(4, 3) == pytest.approx(0.75)
  assert gate.high_confidence_accuracy(jnp.int32(8), jnp.int32(2)) == pytest.approx(0.25)


def test_high_confidence_accuracy_is_zero_without_confident_examples():
  assert gate.high_confidence_accuracy(0, 0) == 0.0
  assert gate.high_confidence_accuracy(jnp.int32(0), jnp.int32(0)) == 0.0


def test_high_confidence_accuracy_over_batches_from_counts():
  """Summing counts over batches gives the accuracy over all confident examples, not a mean of batch accuracies."""
  batches = [
      (_logits_from_probs([[0.97, 0.03], [0.97, 0.03], [0.97, 0.03]]), jnp.array([0, 0, 1])),  # 2/3
      (_logits_from_probs([[0.03, 0.97]]), jnp.array([1])),  # 1/1
  ]
  total_n = total_c = 0
  for logits, labels in batches:
    n, c = gate.high_confidence_counts(logits, labels, jnp.ones(labels.shape, bool), 0.95)
    total_n += int(n)
    total_c += int(c)
  assert gate.high_confidence_accuracy(total_n, total_c) == pytest.approx(3 / 4)


# --- the built-in gate rules ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize('epoch', [0, 1, 9])
@pytest.mark.parametrize('hca', [0.0, 0.7, 0.99, 1.0])
def test_gate_closed_during_warmup_whatever_the_hca(epoch, hca):
  assert _open('hca', epoch, 10, hca, 0.70) is False


@pytest.mark.parametrize('epoch', [10, 11, 399])
def test_gate_after_warmup_opens_iff_hca_reaches_threshold(epoch):
  assert _open('hca', epoch, 10, 0.71, 0.70) is True
  assert _open('hca', epoch, 10, 0.69, 0.70) is False
  assert _open('hca', epoch, 10, 0.0, 0.70) is False


def test_gate_opens_exactly_at_threshold():
  assert _open('hca', 10, 10, 0.70, 0.70) is True
  assert _open('hca', 10, 10, 0.75, 0.75) is True


def test_gate_with_zero_warmup_can_open_at_epoch_zero():
  assert _open('hca', 0, 0, 0.8, 0.70) is True


@pytest.mark.parametrize('epoch, hca', [(0, 0.0), (5, 0.0), (50, 0.1), (50, 0.9)])
def test_gate_always_open_mode(epoch, hca):
  assert _open('always_open', epoch, 10, hca, 0.70) is True


@pytest.mark.parametrize('epoch, hca', [(0, 1.0), (10, 1.0), (50, 0.9), (399, 1.0)])
def test_gate_never_mode(epoch, hca):
  assert _open('never', epoch, 10, hca, 0.70) is False


def test_gate_rules_registered():
  assert {'hca', 'always_open', 'never'} <= set(registry.gate_rules.names())


# --- select ----------------------------------------------------------------------------------------------------------

# One row per case; classes 0..2.
WEAK = _probs(
    [0.97, 0.02, 0.01],  # 0: both confident, agree (class 0)
    [0.97, 0.02, 0.01],  # 1: strong not confident
    [0.60, 0.30, 0.10],  # 2: weak not confident
    [0.97, 0.02, 0.01],  # 3: both confident, disagree
    [0.01, 0.01, 0.98],  # 4: both confident, agree (class 2)
    [0.95, 0.04, 0.01],  # 5: weak exactly at tau
)
STRONG = _probs(
    [0.96, 0.03, 0.01],
    [0.90, 0.05, 0.05],
    [0.99, 0.005, 0.005],
    [0.01, 0.98, 0.01],
    [0.02, 0.02, 0.96],
    [0.99, 0.005, 0.005],
)
NO_MEMORY = jnp.full((6,), -1, jnp.int32)


def _select(memory=NO_MEMORY, weak=WEAK, strong=STRONG, **kw):
  targets, used, new = gate.select(weak, strong, jnp.asarray(memory, jnp.int32), tau=TAU, **kw)
  return np.asarray(targets), np.asarray(used), np.asarray(new)


def test_select_needs_both_views_confident_and_agreeing():
  targets, used, new = _select()
  np.testing.assert_array_equal(used, [True, False, False, False, True, False])
  np.testing.assert_array_equal(new, used)
  assert targets[0] == 0 and targets[4] == 2


def test_select_output_dtypes():
  targets, used, new = gate.select(WEAK, STRONG, NO_MEMORY, tau=TAU)
  assert targets.dtype == jnp.int32
  assert used.dtype == jnp.bool_ and new.dtype == jnp.bool_
  assert targets.shape == used.shape == new.shape == (6,)


def test_select_without_agreement_takes_weak_argmax():
  targets, used, new = _select(require_agreement=False)
  np.testing.assert_array_equal(used, [True, False, False, True, True, False])
  np.testing.assert_array_equal(new, used)
  assert targets[3] == 0  # the weak view's class, not the strong view's 1


def test_select_tau_is_strict_on_both_views():
  weak = _probs([0.95, 0.05], [0.951, 0.049])
  strong = _probs([0.99, 0.01], [0.95, 0.05])
  _, used, _ = _select(memory=jnp.full((2,), -1), weak=weak, strong=strong)
  np.testing.assert_array_equal(used, [False, False])


def test_sticky_memory_wins_over_new_prediction_with_gate_open():
  memory = jnp.array([2, -1, 1, -1, 0, -1])  # case 0 predicts class 0 confidently but remembers 2
  targets, used, new = _select(memory=memory)
  np.testing.assert_array_equal(used, [True, False, True, False, True, False])
  np.testing.assert_array_equal(targets[[0, 2, 4]], [2, 1, 0])
  # Remembered examples are never "new", even when confidently predicted again (cases 0 and 4).
  assert not new.any()


def test_remembered_examples_are_never_new_in_either_mode():
  memory = jnp.array([1, 1, 1, 1, 1, 1])
  for sticky in (True, False):
    for require_agreement in (True, False):
      _, _, new = _select(memory=memory, sticky=sticky, require_agreement=require_agreement)
      assert not new.any()


def test_non_sticky_mode_reselects_every_step():
  memory = jnp.array([2, -1, 1, -1, 0, -1])
  targets, used, new = _select(memory=memory, sticky=False)
  # Only the confident, agreeing ones this step, towards this step's prediction; the memory is ignored.
  np.testing.assert_array_equal(used, [True, False, False, False, True, False])
  assert targets[0] == 0 and targets[4] == 2
  np.testing.assert_array_equal(new, [False] * 6)


def test_select_under_jit():
  fn = jax.jit(functools.partial(gate.select, tau=TAU))
  memory = jnp.array([-1, -1, 1, -1, -1, -1], jnp.int32)
  for g, w in zip(fn(WEAK, STRONG, memory), gate.select(WEAK, STRONG, memory, tau=TAU)):
    np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


def test_class_thresholds_drop_with_the_memory_s_share_of_each_class():
  """config.class_tau_drop: tau for the most-held class, tau - drop for a class the memory holds none of, linear
  between; unassigned slots (-1) count for no class."""
  memory = jnp.array([0, 0, 0, 0, 1, 1, -1, -1, -1], jnp.int32)
  got = np.asarray(gate.class_thresholds(memory, 3, 0.9, 0.2))
  np.testing.assert_allclose(got, [0.9, 0.9 - 0.2 * 0.5, 0.7], rtol=1e-6)
  assert got.dtype == np.float32


def test_class_thresholds_keep_tau_while_the_memory_is_empty():
  got = gate.class_thresholds(jnp.full((5,), -1, jnp.int32), 4, 0.85, 0.3)
  np.testing.assert_allclose(np.asarray(got), [0.85] * 4, rtol=1e-6)


def test_select_with_per_class_thresholds_uses_the_weak_view_s_class():
  """An example passes at its weak prediction's threshold, on both views: lowering another class's changes nothing."""
  weak = _probs([0.8, 0.2], [0.3, 0.7], [0.8, 0.2])
  strong = _probs([0.8, 0.2], [0.25, 0.75], [0.2, 0.8])
  per_class = jnp.array([0.9, 0.6])  # class 0 stays strict, class 1 is lowered.
  _, used, _ = gate.select(weak, strong, jnp.full((3,), -1, jnp.int32), tau=per_class, require_agreement=False)
  # 0: class 0 at 0.8 < 0.9; 1: class 1 at 0.7 and 0.75 > 0.6; 2: class 0 (weak) at 0.8 < 0.9, though strong's 0.8
  # would pass class 1's 0.6.
  np.testing.assert_array_equal(np.asarray(used), [False, True, False])
  _, used, _ = gate.select(weak, strong, jnp.full((3,), -1, jnp.int32), tau=0.6, require_agreement=False)
  np.testing.assert_array_equal(np.asarray(used), [True, True, True])  # One tau of 0.6: all pass.


# --- update_memory ---------------------------------------------------------------------------------------------------


def test_update_memory_writes_only_new_labels():
  memory = jnp.full((8,), -1, jnp.int32)
  indices = jnp.array([5, 1, 6])
  targets = jnp.array([3, 4, 2])
  new = jnp.array([True, False, True])
  out = np.asarray(gate.update_memory(memory, indices, targets, new))
  np.testing.assert_array_equal(out, [-1, -1, -1, -1, -1, 3, 2, -1])
  assert out.dtype == np.int32


def test_update_memory_leaves_existing_labels_when_not_new():
  memory = jnp.array([-1, 7, -1, 0, -1], jnp.int32)
  out = gate.update_memory(memory, jnp.array([1, 3, 4]), jnp.array([9, 9, 2]), jnp.array([False, False, True]))
  np.testing.assert_array_equal(np.asarray(out), [-1, 7, -1, 0, 2])


def test_update_memory_never_overwrites_an_existing_label():
  """The docstring's promise: an existing label survives even when `new` is (wrongly) set at its slot."""
  memory = jnp.array([-1, 1, -1, 0], jnp.int32)
  out = gate.update_memory(memory, jnp.array([1, 3, 2]), jnp.array([5, 6, 4]), jnp.array([True, True, True]))
  np.testing.assert_array_equal(np.asarray(out), [-1, 1, 4, 0])


def test_select_then_update_never_overwrites_over_many_steps():
  """The pipeline: once an index has a label, later confident predictions of other classes leave it."""
  rng = np.random.default_rng(0)
  pool, u, c = 20, 8, 3
  memory = jnp.full((pool,), -1, jnp.int32)
  first_label = {}
  for _ in range(30):
    idx = rng.choice(pool, size=u, replace=True)
    cls = rng.integers(0, c, size=u)
    probs = np.full((u, c), 0.01, np.float32)
    probs[np.arange(u), cls] = 0.98
    targets, used, new = gate.select(jnp.asarray(probs), jnp.asarray(probs), memory[idx], tau=TAU)
    memory = gate.update_memory(memory, jnp.asarray(idx), targets, new)
    for i, label in enumerate(np.asarray(memory)):
      if label >= 0:
        assert first_label.setdefault(i, label) == label


def test_update_memory_duplicate_indices_are_deterministic():
  memory = jnp.full((6,), -1, jnp.int32)
  a = gate.update_memory(memory, jnp.array([4, 4]), jnp.array([1, 3]), jnp.array([True, True]))
  b = gate.update_memory(memory, jnp.array([4, 4]), jnp.array([3, 1]), jnp.array([True, True]))
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert int(a[4]) in (1, 3)
  np.testing.assert_array_equal(np.asarray(a)[[0, 1, 2, 3, 5]], -1)


def test_update_memory_duplicate_index_not_new_does_not_leak():
  memory = jnp.full((6,), -1, jnp.int32)
  for order in ([0, 1], [1, 0]):
    targets = jnp.array([2, 5])[jnp.array(order)]
    new = jnp.array([True, False])[jnp.array(order)]
    out = gate.update_memory(memory, jnp.array([4, 4]), targets, new)
    assert int(out[4]) == 2


def test_update_memory_under_jit():
  memory = jnp.array([-1, 2, -1, -1], jnp.int32)
  args = (jnp.array([0, 1, 3]), jnp.array([1, 0, 2]), jnp.array([True, False, False]))
  np.testing.assert_array_equal(np.asarray(jax.jit(gate.update_memory)(memory, *args)), [1, 2, -1, -1])


def test_memory_summary_counts_assigned_labels_and_their_precision():
  memory = np.array([-1, 0, 2, 2, -1, 1, 2], np.int32)
  hidden = np.array([0, 0, 2, 1, 3, -1, 2], np.int32)  # -1: an unlabeled-folder file, no known label.
  summary = gate.memory_summary(memory, hidden, 4)
  assert summary['total'] == 5 and summary['per_class'] == [1, 1, 3, 0]
  assert summary['precision'] == 3 / 4  # Of the 4 assigned with a known label, 3 agree.
  assert summary['correct_per_class'] == [1, 0, 2, 0]  # Class 2: 2 of its 3 are right; class 1's label is unknown.
  empty = gate.memory_summary(np.full(5, -1, np.int32), np.zeros(5, np.int32), 3)
  assert empty == dict(total=0, precision=None, per_class=[0, 0, 0], correct_per_class=[0, 0, 0])


# --- train_state.create ----------------------------------------------------------------------------------------------


def test_create_initial_state():
  params = {'dense': {'kernel': jnp.ones((3, 2)), 'bias': jnp.zeros((2,))}}
  tx = optax.adamw(1e-4, weight_decay=0.05)
  state = train_state.create(params, tx, pool_size=11)
  assert state.step.shape == () and state.step.dtype == jnp.int32 and int(state.step) == 0
  assert state.pseudo_labels.shape == (11,) and state.pseudo_labels.dtype == jnp.int32
  np.testing.assert_array_equal(np.asarray(state.pseudo_labels), -1)
  assert state.gate_open.shape == () and state.gate_open.dtype == jnp.bool_ and not bool(state.gate_open)
  assert jax.tree.structure(state.opt_state) == jax.tree.structure(tx.init(params))
  jax.tree.map(np.testing.assert_array_equal, state.params, params)


def test_a_teacher_starts_as_a_copy_of_the_parameters_it_follows():
  """config.teacher_ema: SSMAE's state holds a teacher, first the initial (or pre-trained) parameters."""
  params = {'w': jnp.arange(3.0)}
  assert train_state.create(params, optax.sgd(0.1), pool_size=5).teacher is None
  state = train_state.create(params, optax.sgd(0.1), pool_size=5, teacher=True)
  np.testing.assert_array_equal(np.asarray(state.teacher['w']), [0, 1, 2])
  assert state.teacher['w'] is not state.params['w']  # Separate buffers: the train step donates both.
  pretrained = train_state.with_params(state, {'w': jnp.ones(3)})
  np.testing.assert_array_equal(np.asarray(pretrained.teacher['w']), 1)
  np.testing.assert_array_equal(np.asarray(pretrained.params['w']), 1)
  assert train_state.with_params(state.replace(teacher=None), {'w': jnp.ones(3)}).teacher is None
  config = default.get_config()
  config.teacher_ema = 0.99
  assert methods.get('ssmae').has_teacher(config)
  assert not any(methods.get(name).has_teacher(config) for name in ('supervised', 'mae_pretrain', 'finetune'))
  config.teacher_ema = 0.0
  assert not methods.get('ssmae').has_teacher(config)


def test_train_state_is_a_pytree_that_survives_jit():
  params = {'w': jnp.ones((2,))}
  state = train_state.create(params, optax.sgd(0.1), pool_size=5)
  out = jax.jit(lambda s: s.replace(step=s.step + 1))(state)
  assert isinstance(out, train_state.TrainState)
  assert int(out.step) == 1
  np.testing.assert_array_equal(np.asarray(out.pseudo_labels), -1)

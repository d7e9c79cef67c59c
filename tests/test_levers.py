"""Switches beyond the paper's method (config.gate_min_confident, config.label_smoothing; the steps of
config.pseudo_label_view and config.teacher_ema are checked against the reference in test_steps.py): off by
default, and each does what it says when on."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from conftest import gate_rule_decides as _open

from ssmae_jax.configs import default, smoke
from ssmae_jax import gate, losses, masking, models, sharding, train_state
from ssmae_jax.methods import baselines, common



def test_levers_are_off_by_default():
  c = default.get_config()
  assert c.gate_min_confident == 0 and c.label_smoothing == 0.0 and c.pseudo_label_view == 'weak'
  assert c.teacher_ema == 0.0 and c.unlabeled_cls_rows == 0 and c.class_tau_drop == 0.0


@pytest.mark.parametrize('num_confident, min_confident, want', [
    (1, 0, True),  # The paper: one confident, correct validation example is an HCA of 100%.
    (0, 0, True),  # ...and with a threshold of 0 even none opens it (configs/smoke.py relies on this).
    (1, 20, False),
    (19, 20, False),
    (20, 20, True),
])
def test_gate_min_confident(num_confident, min_confident, want):
  threshold = 0.0 if num_confident == 0 else 0.7
  assert _open('hca', 5, 0, 1.0 if num_confident else 0.0, threshold,
                                  num_confident=num_confident, min_confident=min_confident) is want
  # A closed warm-up or a low HCA still keep it closed however many are confident.
  assert _open('hca', 5, 10, 1.0, 0.7, num_confident=99, min_confident=20) is False
  assert _open('hca', 5, 0, 0.5, 0.7, num_confident=99, min_confident=20) is False


def test_label_smoothing_targets():
  logits = jnp.array([[2.0, 0.5, -1.0], [0.0, 0.0, 3.0]])
  labels = jnp.array([0, -1])  # -1: a weight-0 slot, clipped to class 0 as without smoothing.
  plain = losses.cross_entropy(logits, labels)
  np.testing.assert_array_equal(np.asarray(losses.cross_entropy(logits, labels, 0.0)), np.asarray(plain))
  e = 0.3
  log_p = jax.nn.log_softmax(logits)
  target = np.full((2, 3), e / 3) + np.array([[1 - e, 0, 0], [1 - e, 0, 0]])
  want = -np.sum(target * np.asarray(log_p), axis=-1)
  np.testing.assert_allclose(np.asarray(losses.cross_entropy(logits, labels, e)), want, rtol=1e-6)


def test_label_smoothing_reaches_the_train_step():
  config = smoke.get_config()
  config.model.depth = 1
  model = models.from_config(config, 10)
  mesh = sharding.make_mesh()
  images = jnp.zeros((1, 32, 32, 3))
  ids_keep, _, ids_restore = masking.random_masking(jax.random.key(0), 1, model.num_patches, config.mask_ratio)
  params = model.init(jax.random.key(0), images, ids_keep, ids_restore)['params']
  tx = optax.adamw(1e-3)
  rng = np.random.default_rng(0)
  batch = dict(labeled_image=rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8),
               labeled_label=rng.integers(0, 10, (16,), dtype=np.int32))

  def cls_loss(smoothing):
    config.label_smoothing = smoothing
    step = baselines.make_supervised_step(model, tx, config, mesh)
    state = train_state.create(jax.tree.map(jnp.copy, params), tx, 4)
    _, metrics = step(state, batch)
    return float(metrics['cls_loss'])

  logits = model.apply({'params': params}, common.prepare_images(jnp.asarray(batch['labeled_image']), 32),
                       method=model.classify)
  got = {smoothing: cls_loss(smoothing) for smoothing in (0.0, 0.5)}
  for smoothing, loss in got.items():  # The step's loss is the smoothed cross-entropy of its logits.
    want = float(jnp.mean(losses.cross_entropy(logits, jnp.asarray(batch['labeled_label']), smoothing)))
    assert loss == pytest.approx(want, rel=1e-4)
  assert got[0.0] != pytest.approx(got[0.5], rel=1e-3)

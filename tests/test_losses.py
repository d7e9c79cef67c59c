"""Tests for ssmae_jax.losses: MAE's masked reconstruction loss and the per-example cross-entropy."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from ssmae_jax import losses


def _rand(shape, seed):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


# --- reconstruction loss ---------------------------------------------------------------------------------------------


def test_reconstruction_loss_hand_computed_single_sample():
  pred = jnp.array([[[1., 2.], [3., 4.], [5., 6.]]])
  target = jnp.zeros((1, 3, 2))
  mask = jnp.array([[1., 0., 1.]])
  # Per-patch MSE: 2.5, 12.5, 30.5; the kept middle patch does not count: (2.5 + 30.5) / 2.
  np.testing.assert_allclose(float(losses.reconstruction_loss(pred, target, mask)), 16.5, rtol=1e-6)


def test_reconstruction_loss_hand_computed_batch_is_mean_over_all_removed_patches():
  pred = jnp.array([[[1., 2.], [3., 4.], [5., 6.]],
                    [[0., 0.], [0., 0.], [0., 0.]]])
  target = jnp.array([[[0., 0.], [0., 0.], [0., 0.]],
                      [[1., 1.], [2., 0.], [0., 3.]]])
  mask = jnp.array([[1., 0., 1.],
                    [0., 1., 1.]])
  # Removed patches' MSEs: 2.5, 30.5 (sample 0) and 2.0, 4.5 (sample 1).
  np.testing.assert_allclose(float(losses.reconstruction_loss(pred, target, mask)), 39.5 / 4, rtol=1e-6)


def test_reconstruction_loss_ignores_kept_patches():
  pred, target = _rand((2, 8, 12), 0), _rand((2, 8, 12), 1)
  mask = np.zeros((2, 8), np.float32)
  mask[:, [1, 3, 4, 6, 7, 2]] = 1.0  # kept: 0 and 5
  base = float(losses.reconstruction_loss(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(mask)))
  changed = pred.copy()
  changed[:, [0, 5]] += 10.0
  np.testing.assert_allclose(
      float(losses.reconstruction_loss(jnp.asarray(changed), jnp.asarray(target), jnp.asarray(mask))), base,
      rtol=1e-6)


def test_reconstruction_loss_depends_on_removed_patches():
  pred, target = _rand((2, 8, 12), 0), _rand((2, 8, 12), 1)
  mask = np.zeros((2, 8), np.float32)
  mask[:, [1, 3, 4, 6, 7, 2]] = 1.0
  base = float(losses.reconstruction_loss(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(mask)))
  changed = pred.copy()
  changed[1, 3] += 1.0
  assert abs(float(losses.reconstruction_loss(jnp.asarray(changed), jnp.asarray(target), jnp.asarray(mask)))
             - base) > 1e-3


def test_reconstruction_loss_gradient_is_zero_on_kept_patches():
  pred, target = jnp.asarray(_rand((2, 6, 4), 2)), jnp.asarray(_rand((2, 6, 4), 3))
  mask = jnp.array([[1., 0., 1., 1., 0., 1.], [0., 1., 1., 0., 1., 1.]])
  grad = np.asarray(jax.jit(jax.grad(losses.reconstruction_loss))(pred, target, mask))
  kept = np.asarray(mask) == 0
  assert np.all(grad[kept] == 0.0)
  assert np.all(np.abs(grad[~kept]).sum(axis=-1) > 0.0)


def test_reconstruction_loss_perfect_prediction_is_zero():
  target = jnp.asarray(_rand((2, 6, 4), 4))
  mask = jnp.array([[1., 0., 1., 1., 0., 1.], [0., 1., 1., 0., 1., 1.]])
  assert float(losses.reconstruction_loss(target, target, mask)) == 0.0


def test_reconstruction_loss_without_removed_patches_is_zero_not_nan():
  pred, target = jnp.asarray(_rand((1, 4, 3), 5)), jnp.asarray(_rand((1, 4, 3), 6))
  assert float(losses.reconstruction_loss(pred, target, jnp.zeros((1, 4)))) == 0.0


def test_norm_pix_loss_matches_mae_reference_formula():
  """MAE: target = (t - mean) / sqrt(var + 1e-6) per patch, with torch's `Tensor.var` (unbiased, ddof=1)."""
  pred, target = _rand((2, 5, 12), 7), 3.0 * _rand((2, 5, 12), 8) + 1.5
  mask = np.array([[1., 0., 1., 1., 0.], [0., 1., 1., 1., 0.]], np.float32)
  mean = target.mean(axis=-1, keepdims=True)
  var = target.var(axis=-1, keepdims=True, ddof=1)
  normed = (target - mean) / np.sqrt(var + 1e-6)
  per_patch = ((pred - normed) ** 2).mean(axis=-1)
  expected = (per_patch * mask).sum() / mask.sum()
  got = float(losses.reconstruction_loss(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(mask),
                                         norm_pix_loss=True))
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_norm_pix_loss_normalises_each_patch_separately():
  """An affine change of one patch's target pixels (positive scale) does not change the normalised loss."""
  pred, target = _rand((2, 5, 12), 9), _rand((2, 5, 12), 10)
  mask = jnp.array([[1., 1., 1., 0., 1.], [1., 0., 1., 1., 1.]])
  scale = np.random.default_rng(11).uniform(0.5, 3.0, size=(2, 5, 1)).astype(np.float32)
  shift = np.random.default_rng(12).normal(size=(2, 5, 1)).astype(np.float32) * 5
  base = float(losses.reconstruction_loss(jnp.asarray(pred), jnp.asarray(target), mask, norm_pix_loss=True))
  moved = jnp.asarray(target * scale + shift)
  np.testing.assert_allclose(
      float(losses.reconstruction_loss(jnp.asarray(pred), moved, mask, norm_pix_loss=True)), base, rtol=1e-4)
  # Without the option the same change does matter: the test above is not vacuous.
  raw = float(losses.reconstruction_loss(jnp.asarray(pred), jnp.asarray(target), mask))
  assert abs(float(losses.reconstruction_loss(jnp.asarray(pred), moved, mask)) - raw) > 1e-2


def test_norm_pix_loss_is_off_by_default():
  pred, target = jnp.asarray(_rand((1, 4, 6), 13)), jnp.asarray(5.0 + 2.0 * _rand((1, 4, 6), 14))
  mask = jnp.ones((1, 4))
  expected = float(np.mean((np.asarray(pred) - np.asarray(target)) ** 2))
  np.testing.assert_allclose(float(losses.reconstruction_loss(pred, target, mask)), expected, rtol=1e-6)


# --- cross-entropy ---------------------------------------------------------------------------------------------------


def test_cross_entropy_hand_computed():
  logits = jnp.array([[1., 2., 3.], [0., 0., 0.], [5., 0., -5.]])
  labels = jnp.array([2, 1, 2])
  expected = [
      math.log(math.e + math.e ** 2 + math.e ** 3) - 3.0,
      math.log(3.0),
      math.log(math.exp(5.) + 1.0 + math.exp(-5.)) + 5.0,
  ]
  got = losses.cross_entropy(logits, labels)
  assert got.shape == (3,)
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5)


def test_cross_entropy_gradient_is_softmax_minus_onehot():
  logits = jnp.asarray(_rand((4, 5), 15))
  labels = jnp.array([0, 4, 2, 2])
  grad = np.asarray(jax.jit(jax.grad(lambda z: losses.cross_entropy(z, labels).sum()))(logits))
  expected = np.asarray(jax.nn.softmax(logits)) - np.eye(5)[np.asarray(labels)]
  np.testing.assert_allclose(grad, expected, atol=1e-6)


def test_cross_entropy_unused_label_minus_one_is_finite():
  """-1 marks an unlabeled example with weight 0: its loss and gradient must be finite so 0 * it stays 0."""
  logits = jnp.asarray(_rand((3, 4), 16))
  labels = jnp.array([-1, 1, -1])
  ce = np.asarray(losses.cross_entropy(logits, labels))
  assert np.all(np.isfinite(ce))
  weights = jnp.array([0., 1., 0.])
  grad = np.asarray(jax.jit(jax.grad(lambda z: jnp.sum(losses.cross_entropy(z, labels) * weights)))(logits))
  assert np.all(np.isfinite(grad))
  np.testing.assert_array_equal(grad[[0, 2]], 0.0)

"""config.resize_on_device: images travel at their stored size and the jitted steps bring them to config.image_size.

The pipeline side (what tf.data ships at which size) is in test_input_pipeline.py; here the device side, on a tiny
ViT whose input (64 px) is twice the size of the batches it is fed (32 px).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow as tf

from ssmae_jax.configs.default import get_config
from ssmae_jax import augment, evaluation, masking, methods, models, normalization, predict, sharding, train_state
from ssmae_jax import visualize
from ssmae_jax.methods import common

STORED, SIZE, L, U, POOL, CLASSES = 32, 64, 4, 8, 16, 10
# The host path rounds its resized image to uint8: half a grey level, in normalised units (the smallest std).
UINT8_ROUNDING = 0.5 / 255 / 0.224 + 1e-5


def uint8_images(n: int, size: int = STORED, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_prepare_images_is_normalize_when_sizes_match():
  images = uint8_images(3)
  np.testing.assert_array_equal(common.prepare_images(images, STORED), common.normalize(images))
  prepare = jax.jit(common.prepare_images, static_argnums=1)
  np.testing.assert_array_equal(prepare(images, STORED), jax.jit(common.normalize)(images))


def test_prepare_images_equals_resize_then_normalize():
  images = uint8_images(3)
  prepared = np.asarray(jax.jit(common.prepare_images, static_argnums=1)(images, SIZE))
  assert prepared.shape == (3, SIZE, SIZE, 3) and prepared.dtype == np.float32
  # The same bilinear resize in float, before normalising: equal up to float rounding.
  resized = jax.image.resize(jnp.asarray(images, jnp.float32), (3, SIZE, SIZE, 3), 'bilinear')
  expected = (resized / 255.0 - normalization.IMAGENET_MEAN) / normalization.IMAGENET_STD
  np.testing.assert_allclose(prepared, expected, atol=1e-5)
  # The host path of resize_on_device=False (tf.data's resize to uint8): within its rounding.
  host = augment.resize(tf.constant(images), SIZE).numpy()
  np.testing.assert_allclose(prepared, common.normalize(host), atol=UINT8_ROUNDING)


def tiny_config(method: str = 'ssmae'):
  c = get_config()
  c.method = method
  c.image_size = SIZE
  c.labeled_batch_size = L
  c.unlabeled_batch_size = U
  c.model.update(dict(patch_size=16, width=32, depth=1, num_heads=2, decoder_width=32, decoder_depth=1,
                      decoder_num_heads=2))
  # Gate open and every unlabeled example accepted: every view reaches the model.
  c.tau = 0.0
  c.require_agreement = False
  return c


@pytest.fixture(scope='module')
def setup():
  config = tiny_config()
  model = models.from_config(config, CLASSES)
  ids_keep, _, ids_restore = masking.random_masking(jax.random.key(0), 1, model.num_patches, config.mask_ratio)
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)), ids_keep, ids_restore)['params']
  return model, params, sharding.make_mesh()


def stored_size_batch() -> dict:
  rng = np.random.default_rng(1)
  return dict(labeled_image=uint8_images(L, seed=2), labeled_label=rng.integers(0, CLASSES, L).astype(np.int32),
              unlabeled_weak=uint8_images(U, seed=3), unlabeled_strong=uint8_images(U, seed=4),
              unlabeled_mae=uint8_images(U, seed=5), unlabeled_index=rng.permutation(POOL)[:U].astype(np.int32))


@pytest.mark.slow
@pytest.mark.parametrize('method', ['ssmae', 'supervised', 'mae_pretrain'])
def test_train_step_at_image_size_from_stored_size_batches(setup, method):
  model, params, mesh = setup
  config = tiny_config(method)
  tx = optax.adamw(1e-3)
  state = train_state.create(jax.tree.map(jnp.copy, params), tx, POOL).replace(gate_open=jnp.asarray(True))
  state = jax.device_put(state, sharding.replicated(mesh))
  train_step = methods.get(method).make_step(model, tx, config, mesh)
  state, metrics = train_step(state, sharding.to_global(stored_size_batch(), mesh))
  metrics = jax.device_get(metrics)
  assert int(state.step) == 1 and metrics['nonfinite'] == 0 and metrics['loss'] > 0
  if method == 'ssmae':
    assert metrics['unlabeled_used'] == U and metrics['rec_loss'] > 0


@pytest.mark.slow
def test_eval_predict_and_reconstruct_take_stored_size_images(setup):
  model, params, mesh = setup
  images = uint8_images(4, seed=6)
  batch = dict(image=images, label=np.arange(4, dtype=np.int32), mask=np.array([True, True, True, False]))
  sums = jax.device_get(evaluation.make_eval_step(model, tiny_config(), mesh)(params, sharding.to_global(batch, mesh)))
  assert int(sums['count']) == 3
  classes, confidences = jax.device_get(predict.make_predict_step(model, mesh)(params, jnp.asarray(images)))
  assert classes.shape == confidences.shape == (4,)
  pred, mask = visualize.reconstruct(model, params, images, mask_ratio=0.75)
  assert pred.shape == (4, model.num_patches, 16 * 16 * 3) and mask.shape == (4, model.num_patches)

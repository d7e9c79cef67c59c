"""Mixed precision: config.model.dtype='bfloat16' computes in bfloat16 and keeps the train state in float32;
'auto' picks bfloat16 on accelerators."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ssmae_jax.configs.default import get_config
from ssmae_jax import masking, models, sharding, train_state
from ssmae_jax.methods import ssmae

pytestmark = pytest.mark.slow  # Two compiles of the SSMAE step.

L, U, POOL, SIZE, CLASSES, STEPS = 4, 8, 32, 16, 10, 3


def tiny_config(dtype: str):
  c = get_config()
  c.image_size = SIZE
  c.labeled_batch_size = L
  c.unlabeled_batch_size = U
  c.model.update(dict(patch_size=4, width=32, depth=1, num_heads=2, decoder_width=32, decoder_depth=1,
                      decoder_num_heads=2, dtype=dtype))
  # Gate open and every unlabeled example accepted: the step runs every pass (labeled, weak, strong, MAE).
  c.tau = 0.0
  c.require_agreement = False
  return c


def batches() -> list[dict]:
  rng = np.random.default_rng(0)

  def images(n):
    return rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)

  return [dict(labeled_image=images(L), labeled_label=rng.integers(0, CLASSES, L).astype(np.int32),
               unlabeled_weak=images(U), unlabeled_strong=images(U), unlabeled_mae=images(U),
               unlabeled_index=rng.permutation(POOL)[:U].astype(np.int32)) for _ in range(STEPS)]


def init_params(config) -> dict:
  """Parameters are float32 whatever the compute dtype, and the same for the same key: initialised once for both."""
  model = models.from_config(config, CLASSES)
  ids_keep, _, ids_restore = masking.random_masking(jax.random.key(0), 1, model.num_patches, config.mask_ratio)
  return jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)), ids_keep, ids_restore)['params']


def train(dtype: str, params: dict) -> dict:
  config = tiny_config(dtype)
  model = models.from_config(config, CLASSES)
  tx = optax.adamw(1e-3, weight_decay=0.05)
  mesh = sharding.make_mesh()
  state = train_state.create(jax.tree.map(jnp.copy, params), tx, POOL).replace(gate_open=jnp.asarray(True))
  state = jax.device_put(state, sharding.replicated(mesh))
  device_batches = [jax.device_put(b, sharding.data_sharded(mesh)) for b in batches()]
  lowered = ssmae.make_step(model, tx, config, mesh).lower(state, device_batches[0])
  train_step = lowered.compile()
  metrics = []
  for batch in device_batches:
    state, m = train_step(state, batch)
    metrics.append({k: float(v) for k, v in jax.device_get(m).items() if np.ndim(v) == 0})
  return dict(state=jax.device_get(state), metrics=metrics, hlo=lowered.as_text())


@pytest.fixture(scope='module')
def runs():
  params = init_params(tiny_config('float32'))
  return {dtype: train(dtype, params) for dtype in ('float32', 'bfloat16')}


def test_bfloat16_step_computes_in_bfloat16(runs):
  assert 'bf16' in runs['bfloat16']['hlo']
  assert 'bf16' not in runs['float32']['hlo']


def test_bfloat16_keeps_params_and_optimizer_state_float32(runs):
  state = runs['bfloat16']['state']
  assert {x.dtype for x in jax.tree.leaves(state.params)} == {np.dtype(np.float32)}
  floats = {x.dtype for x in jax.tree.leaves(state.opt_state) if np.issubdtype(x.dtype, np.floating)}
  assert floats == {np.dtype(np.float32)}
  assert int(state.step) == STEPS


def test_bfloat16_losses_are_finite_and_close_to_float32(runs):
  for f32, bf16 in zip(runs['float32']['metrics'], runs['bfloat16']['metrics']):
    assert bf16['nonfinite'] == 0 and all(np.isfinite(v) for v in bf16.values())
    assert bf16['unlabeled_used'] == f32['unlabeled_used'] == U
    for key in ('loss', 'rec_loss', 'cls_loss'):
      np.testing.assert_allclose(bf16[key], f32[key], rtol=2e-2, err_msg=key)
    # The losses of steps 2 and 3 are also a check on the parameters the earlier bfloat16 steps produced.
    np.testing.assert_allclose(bf16['grad_norm'], f32['grad_norm'], rtol=5e-2)


@pytest.mark.parametrize('name, backend, expected', [
    ('auto', 'gpu', jnp.bfloat16), ('auto', 'tpu', jnp.bfloat16), ('auto', 'cpu', jnp.float32),
    ('float32', 'gpu', jnp.float32), ('bfloat16', 'cpu', jnp.bfloat16)])
def test_compute_dtype(name, backend, expected):
  assert models.compute_dtype(name, backend) == jnp.dtype(expected)


def test_auto_dtype_follows_the_default_backend(monkeypatch):
  for backend, expected in (('tpu', jnp.bfloat16), ('cpu', jnp.float32)):
    monkeypatch.setattr(jax, 'default_backend', lambda: backend)
    assert models.from_config(tiny_config('auto'), CLASSES).dtype == jnp.dtype(expected)

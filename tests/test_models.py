"""Tests for ssmae_jax.models: the reference architecture, its parameter counts, init and the two forward paths."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssmae_jax.configs.default import get_config
from ssmae_jax import masking, models

TINY = dict(num_classes=10, image_size=16, patch_size=4, width=32, depth=2, num_heads=2, decoder_width=32,
            decoder_depth=1, decoder_num_heads=2)
N = 16  # (16 / 4) ** 2
K = 4  # int(16 * 0.25)
B = 2
PATCH_EMBED = 'encoder/patch_embed'


def _count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _abstract_params(model: models.SSMAE, image_size: int):
  n = model.num_patches
  k = masking.num_kept(n, 0.75)
  images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  return jax.eval_shape(model.init, jax.random.key(0), images, jax.ShapeDtypeStruct((1, k), jnp.int32),
                        jax.ShapeDtypeStruct((1, n), jnp.int32))['params']


def _images(b=2, seed=0, size=16):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(b, size, size, 3)).astype(np.float32))


class Tiny:
  """The tiny model with its functions jitted once for batch B, shared by the tests of this module."""

  def __init__(self):
    self.model = models.SSMAE(**TINY)
    self.ids_keep, self.mask, self.ids_restore = masking.random_masking(jax.random.key(1), B, N, 0.75)
    # rbg keys: the same initialisers, and XLA compiles their random bits several times faster on CPU than threefry.
    init = jax.jit(lambda key: self.model.init(key, _images(), self.ids_keep, self.ids_restore)['params'])
    self.init = lambda seed: init(jax.random.key(seed, impl='rbg'))
    self.params = self.init(0)
    self.classify = jax.jit(lambda p, x: self.model.apply({'params': p}, x, method=models.SSMAE.classify))
    self.reconstruct = jax.jit(lambda p, x, keep, restore: self.model.apply(
        {'params': p}, x, keep, restore, method=models.SSMAE.reconstruct))


@pytest.fixture(scope='module')
def tiny():
  return Tiny()


def _leaves_with_path(tree):
  return [('/'.join(str(getattr(k, 'key', k)) for k in path), leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]


# --- parameter counts (docs/method.md) ---------------------------------------------------------------------------------


@pytest.mark.parametrize('kwargs, image_size, total, encoder, decoder, head', [
    (dict(patch_size=16, width=768, depth=12, num_heads=12, decoder_width=512, decoder_depth=8, decoder_num_heads=16),
     224, 111_875_594, 85_771_008, 26_096_896, 7_690),
    (dict(patch_size=4, width=192, depth=12, num_heads=3, decoder_width=128, decoder_depth=2, decoder_num_heads=4),
     32, 5_791_226, 5_353_920, 435_376, 1_930),
], ids=['paper_vit_b16_224', 'bench_32px'])
def test_reference_parameter_counts(kwargs, image_size, total, encoder, decoder, head):
  params = _abstract_params(models.SSMAE(num_classes=10, image_size=image_size, **kwargs), image_size)
  assert set(params) == {'encoder', 'decoder', 'head'}
  assert _count(params['encoder']) == encoder
  assert _count(params['decoder']) == decoder
  assert _count(params['head']) == head
  assert _count(params) == total


def test_default_config_builds_the_bench_model():
  model = models.from_config(get_config(), num_classes=10)
  assert _count(_abstract_params(model, 32)) == 5_791_226
  assert model.dtype == jnp.float32


def test_mask_token_and_positions_live_where_the_reference_counts_them():
  params = _abstract_params(models.SSMAE(**TINY), 16)
  assert params['encoder']['cls_token'].shape == (1, 1, 32)
  assert params['encoder']['pos_embed'].shape == (1, N + 1, 32)
  assert params['decoder']['mask_token'].shape == (1, 1, 32)
  assert params['decoder']['pos_embed'].shape == (1, N + 1, 32)
  assert params['decoder']['pred']['kernel'].shape == (32, 4 * 4 * 3)


# --- architecture details --------------------------------------------------------------------------------------------


def test_qkv_has_no_bias_and_proj_has_one(tiny):
  names = [name for name, _ in _leaves_with_path(tiny.params)]
  qkv = [n for n in names if '/attn/qkv/' in n]
  proj = [n for n in names if '/attn/proj/' in n]
  # 2 encoder blocks + 1 decoder block.
  assert sorted(n.rsplit('/', 1)[1] for n in qkv) == ['kernel'] * 3
  assert sorted(n.rsplit('/', 1)[1] for n in proj) == ['bias'] * 3 + ['kernel'] * 3
  attn = tiny.params['encoder']['blocks_0']['attn']
  assert attn['qkv']['kernel'].shape == (32, 96)
  assert attn['proj']['kernel'].shape == (32, 32) and attn['proj']['bias'].shape == (32,)


def test_layer_norm_helper_uses_epsilon_1e5():
  x = jnp.array([[1e-3, -1e-3, 1e-3, -1e-3]])  # variance 1e-6, comparable to epsilon
  ln = models.layer_norm(jnp.float32)
  y = ln.apply(ln.init(jax.random.key(0), x), x)
  np.testing.assert_allclose(np.asarray(y), np.asarray(x) / math.sqrt(1e-6 + 1e-5), rtol=1e-4)


def test_every_layer_norm_in_the_model_uses_epsilon_1e5():
  """Collects every LayerNorm the model calls, then feeds a copy a tiny-variance input, where epsilon dominates."""
  model = models.SSMAE(**TINY)
  seen = {}

  def interceptor(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.LayerNorm) and context.method_name == '__call__':
      seen[context.module.path] = context.module.clone(parent=None, name=None)
    return next_fun(*args, **kwargs)

  ids_keep, _, ids_restore = masking.random_masking(jax.random.key(1), B, N, 0.75)
  with nn.intercept_methods(interceptor):
    jax.eval_shape(model.init, jax.random.key(0), _images(), ids_keep, ids_restore)
  # Encoder: 2 per block + final; decoder: 2 per block + final.
  assert len(seen) == 2 * 2 + 1 + 2 * 1 + 1
  probe = jnp.tile(jnp.array([1e-3, -1e-3], jnp.float32), 16)
  expected = 1e-3 / math.sqrt(1e-6 + 1e-5)
  for path, ln in seen.items():
    assert ln.epsilon == pytest.approx(1e-5), path
    out = ln.apply(ln.init(jax.random.key(0), probe), probe)
    np.testing.assert_allclose(np.abs(np.asarray(out)), expected, rtol=1e-3, err_msg=str(path))


def _np_layer_norm(x, p, eps=1e-5):
  mu = x.mean(-1, keepdims=True)
  var = x.var(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * p['scale'] + p['bias']


def test_block_matches_a_numpy_reference_vit_block():
  """Pre-norm block, timm's qkv layout (3, heads, head_dim), scaled dot-product, exact (erf) GELU, MLP ratio 4."""
  heads, d = 2, 32
  x = np.random.default_rng(0).normal(size=(2, 5, d)).astype(np.float32)
  block = models.Block(num_heads=heads)
  p = jax.jit(block.init)(jax.random.key(3, impl='rbg'), jnp.asarray(x))['params']
  p = jax.tree.map(np.asarray, p)
  # Non-trivial LN params, so that their use is tested too.
  rng = np.random.default_rng(1)
  for ln in ('norm1', 'norm2'):
    p[ln] = {'scale': 1.0 + 0.1 * rng.normal(size=d).astype(np.float32), 'bias': 0.1 * rng.normal(size=d).astype(
        np.float32)}
  for name in ('proj', 'fc1', 'fc2'):
    layer = p['attn'][name] if name == 'proj' else p[name]
    layer['bias'] = 0.1 * rng.normal(size=layer['bias'].shape).astype(np.float32)
  got = np.asarray(jax.jit(block.apply)({'params': p}, jnp.asarray(x)))

  b, t, _ = x.shape
  hd = d // heads
  h = _np_layer_norm(x, p['norm1'])
  qkv = (h @ p['attn']['qkv']['kernel']).reshape(b, t, 3, heads, hd).transpose(2, 0, 3, 1, 4)
  q, k, v = qkv[0], qkv[1], qkv[2]
  att = q @ k.transpose(0, 1, 3, 2) * hd ** -0.5
  att = np.exp(att - att.max(-1, keepdims=True))
  att /= att.sum(-1, keepdims=True)
  o = (att @ v).transpose(0, 2, 1, 3).reshape(b, t, d)
  x1 = x + o @ p['attn']['proj']['kernel'] + p['attn']['proj']['bias']
  h = _np_layer_norm(x1, p['norm2']) @ p['fc1']['kernel'] + p['fc1']['bias']
  assert h.shape[-1] == 4 * d
  erf = np.vectorize(math.erf)
  h = 0.5 * h * (1.0 + erf(h / math.sqrt(2.0)))
  want = x1 + h @ p['fc2']['kernel'] + p['fc2']['bias']
  np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)


def test_block_cls_only_is_the_first_token_of_the_full_block():
  x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 5, 32)).astype(np.float32))
  block = models.Block(num_heads=2)
  p = jax.jit(block.init)(jax.random.key(4, impl='rbg'), x)
  full = jax.jit(block.apply)(p, x)
  cls = jax.jit(lambda p, x: block.apply(p, x, True))(p, x)
  assert cls.shape == (2, 1, 32)
  np.testing.assert_allclose(np.asarray(cls), np.asarray(full[:, :1]), atol=1e-5, rtol=1e-5)


# --- forward paths ---------------------------------------------------------------------------------------------------


def test_classify_output_shape_and_dtype(tiny):
  logits = tiny.classify(tiny.params, _images())
  assert logits.shape == (B, 10)
  assert logits.dtype == jnp.float32
  assert np.all(np.isfinite(np.asarray(logits)))


def test_classify_is_the_head_on_the_full_encoders_class_token(tiny):
  """`classify` may shortcut the last block to the class token; it must equal the plain computation."""
  def reference(module, images):
    tokens = module.encoder(masking.patchify(images, 4))
    assert tokens.shape == (B, 1 + N, 32)
    return module.head(tokens[:, 0])

  images = _images()
  want = jax.jit(lambda p, x: tiny.model.apply({'params': p}, x, method=reference))(tiny.params, images)
  np.testing.assert_allclose(np.asarray(tiny.classify(tiny.params, images)), np.asarray(want), atol=1e-5, rtol=1e-5)


def test_classify_depends_on_every_patch(tiny):
  images = _images()
  base = np.asarray(tiny.classify(tiny.params, images))
  patches = masking.patchify(images, 4)
  for i in range(N // 2):
    # Example 0 gets patch i changed, example 1 patch i + N/2.
    bumped = patches.at[0, i].add(1.0).at[1, i + N // 2].add(1.0)
    logits = np.asarray(tiny.classify(tiny.params, masking.unpatchify(bumped, 4)))
    assert np.abs(logits - base).max(axis=1).min() > 1e-5, i


def test_classify_examples_are_independent(tiny):
  images = _images()
  base = np.asarray(tiny.classify(tiny.params, images))
  changed = np.asarray(tiny.classify(tiny.params, images.at[1].add(1.0)))
  np.testing.assert_allclose(changed[0], base[0], atol=1e-6)
  assert np.abs(changed[1] - base[1]).max() > 1e-4


def test_reconstruct_output_shape_and_dtype(tiny):
  pred = tiny.reconstruct(tiny.params, _images(), tiny.ids_keep, tiny.ids_restore)
  assert pred.shape == (B, N, 4 * 4 * 3)
  assert pred.dtype == jnp.float32
  assert np.all(np.isfinite(np.asarray(pred)))


def test_reconstruct_encoder_sees_only_kept_patches(tiny):
  images = _images()

  def rec(imgs):
    return np.asarray(tiny.reconstruct(tiny.params, imgs, tiny.ids_keep, tiny.ids_restore))

  base = rec(images)
  patches = masking.patchify(images, 4)
  removed = tiny.mask[..., None] > 0
  # Overwrite every removed patch with garbage: the prediction must not move.
  garbage = jnp.where(removed, 50.0, patches)
  np.testing.assert_array_equal(rec(masking.unpatchify(garbage, 4)), base)
  # Changing one kept patch does move it (the check above is not vacuous).
  bumped = patches.at[0, int(tiny.ids_keep[0, 0])].add(1.0)
  assert np.abs(rec(masking.unpatchify(bumped, 4))[0] - base[0]).max() > 1e-4


def _shuffle_to_ids(shuffles):
  shuffles = np.asarray(shuffles)
  return jnp.asarray(shuffles[:, :K], jnp.int32), jnp.asarray(np.argsort(shuffles, axis=1), jnp.int32)


def test_reconstruct_does_not_depend_on_the_order_of_the_shuffle(tiny):
  """Same kept set, different shuffles: the decoder must put every token back at its own patch."""
  images = _images()
  kept = np.array([3, 9, 12, 0])
  removed = np.array([i for i in range(N) if i not in kept])
  outs = []
  for seed in range(2):
    rng = np.random.default_rng(seed)
    shuffles = [np.concatenate([rng.permutation(kept), rng.permutation(removed)]) for _ in range(B)]
    outs.append(np.asarray(tiny.reconstruct(tiny.params, images, *_shuffle_to_ids(shuffles))))
  np.testing.assert_allclose(outs[0], outs[1], atol=1e-5)


def test_reconstruct_uses_the_position_of_kept_patches(tiny):
  """Swapping the contents of two kept patches changes the prediction: each patch gets its own position."""
  patches = masking.patchify(_images(), 4)
  swapped = patches.at[:, 0].set(patches[:, 5]).at[:, 5].set(patches[:, 0])
  shuffle = [0, 5, 1, 2] + [i for i in range(N) if i not in (0, 5, 1, 2)]
  ids = _shuffle_to_ids([shuffle] * B)

  def rec(p):
    return np.asarray(tiny.reconstruct(tiny.params, masking.unpatchify(p, 4), *ids))

  assert np.abs(rec(swapped) - rec(patches)).max() > 1e-4


# --- initialisation --------------------------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def init_samples(tiny):
  """Params of the tiny model from 16 seeds, so token statistics have enough samples."""
  return [jax.tree.map(np.asarray, tiny.init(s)) for s in range(16)]


@pytest.mark.parametrize('path', [('encoder', 'pos_embed'), ('encoder', 'cls_token'), ('decoder', 'pos_embed'),
                                  ('decoder', 'mask_token')])
def test_tokens_and_positions_are_normal_std_002(init_samples, path):
  values = np.concatenate([p[path[0]][path[1]].ravel() for p in init_samples])
  assert abs(values.std() - 0.02) < 0.002, values.std()
  assert abs(values.mean()) < 0.003
  # Normal, not uniform or truncated: some values beyond 2 std (about 4.6% for a normal).
  assert (np.abs(values) > 0.04).mean() > 0.02


def test_learned_positions_differ_between_seeds(init_samples):
  a, b = init_samples[0]['encoder']['pos_embed'], init_samples[1]['encoder']['pos_embed']
  assert not np.allclose(a, b)


def test_linear_biases_zero_and_layer_norm_scales_one(init_samples):
  params = init_samples[0]
  leaves = _leaves_with_path(params)
  biases = [(n, v) for n, v in leaves if n.endswith('/bias') and n != PATCH_EMBED + '/bias']
  scales = [(n, v) for n, v in leaves if n.endswith('/scale')]
  assert len(biases) > 10 and len(scales) == 2 * 2 + 1 + 2 * 1 + 1
  for name, value in biases:
    assert np.all(value == 0.0), name
  for name, value in scales:
    assert np.all(value == 1.0), name


def test_linear_kernels_are_xavier_uniform(init_samples):
  kernels = [(n, v) for n, v in _leaves_with_path(init_samples[0])
             if n.endswith('/kernel') and n != PATCH_EMBED + '/kernel']
  names = {n for n, _ in kernels}
  for expected in ('head/kernel', 'decoder/embed/kernel', 'decoder/pred/kernel',
                   'encoder/blocks_0/attn/qkv/kernel', 'encoder/blocks_0/fc1/kernel'):
    assert expected in names
  for name, w in kernels:
    assert w.ndim == 2, name
    fan_in, fan_out = w.shape
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    assert np.abs(w).max() <= bound * (1 + 1e-6), name
    assert np.abs(w).max() >= 0.95 * bound, name
    np.testing.assert_allclose(w.std(), bound / math.sqrt(3.0), rtol=0.1, err_msg=name)


def test_patch_embed_kernel_has_conv_shape():
  """A stride-p conv on p*p*3 inputs to `width` outputs."""
  params = _abstract_params(models.SSMAE(**TINY), 16)
  assert params['encoder']['patch_embed']['kernel'].shape == (4 * 4 * 3, 32)


@pytest.mark.parametrize('leaf', ['kernel', 'bias'])
def test_patch_embed_keeps_torch_conv2d_default_init(init_samples, leaf):
  # The reference leaves its Conv2d patch embedding at PyTorch's default: U(±1/√fan_in), fan_in = 3·p², bias too.
  bound = 1.0 / math.sqrt(3 * 4 ** 2)
  values = np.concatenate([p['encoder']['patch_embed'][leaf].ravel() for p in init_samples])
  assert np.abs(values).max() <= bound * (1 + 1e-6)
  assert np.abs(values).max() >= 0.95 * bound
  np.testing.assert_allclose(values.std(), bound / math.sqrt(3.0), rtol=0.1)
  assert abs(values.mean()) < 0.1 * bound


# --- mixed precision -------------------------------------------------------------------------------------------------


def _tiny_config(dtype: str):
  config = get_config()
  config.image_size = TINY['image_size']
  m = config.model
  for field in ('patch_size', 'width', 'depth', 'num_heads', 'decoder_width', 'decoder_depth', 'decoder_num_heads'):
    setattr(m, field, TINY[field])
  m.dtype = dtype
  return config


def test_float32_config_is_the_tiny_model():
  assert models.from_config(_tiny_config('float32'), num_classes=10) == models.SSMAE(**TINY)


def test_bfloat16_config_keeps_float32_params_and_outputs(tiny):
  model = models.from_config(_tiny_config('bfloat16'), num_classes=10)
  assert model.dtype == jnp.bfloat16
  images = _images()
  abstract = jax.eval_shape(model.init, jax.random.key(0), images, tiny.ids_keep, tiny.ids_restore)['params']
  assert jax.tree.structure(abstract) == jax.tree.structure(tiny.params)
  for name, leaf in _leaves_with_path(abstract):
    assert leaf.dtype == jnp.float32, name
  out = jax.eval_shape(model.apply, {'params': tiny.params}, images, tiny.ids_keep, tiny.ids_restore)
  assert out[0].dtype == jnp.float32 and out[0].shape == (B, 10)
  assert out[1].dtype == jnp.float32 and out[1].shape == (B, N, 48)
  # The compute really runs in bfloat16: every Dense layer's output is bfloat16.
  dense_out = []

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if isinstance(context.module, nn.Dense) and context.method_name == '__call__':
      dense_out.append(out.dtype)
    return out

  with nn.intercept_methods(interceptor):
    jax.eval_shape(model.apply, {'params': tiny.params}, images, tiny.ids_keep, tiny.ids_restore)
  # Per encoder pass: patch embed + 4 per block; decoder: embed + 4 per block + pred; head.
  assert len(dense_out) == 2 * (1 + 4 * 2) + (1 + 4 * 1 + 1) + 1
  assert set(dense_out) == {jnp.dtype(jnp.bfloat16)}

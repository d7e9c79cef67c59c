"""Tests for ssmae_jax.masking: MAE's patch layout and per-sample random masking (docs/method.md)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssmae_jax import masking

# One batch size and patch count for most tests: eager JAX compiles each op once per shape.
B, N = 8, 64


def _mae_patchify_nchw(imgs_nchw: np.ndarray, p: int) -> np.ndarray:
  """MAE's reference patchify, on (N, C, H, W): reshape, einsum 'nchpwq->nhwpqc', reshape."""
  n, c, h_px, w_px = imgs_nchw.shape
  h, w = h_px // p, w_px // p
  x = imgs_nchw.reshape(n, c, h, p, w, p)
  x = np.einsum('nchpwq->nhwpqc', x)
  return x.reshape(n, h * w, p * p * c)


def _mae_unpatchify_nchw(x: np.ndarray, p: int, c: int = 3) -> np.ndarray:
  """MAE's reference unpatchify -> (N, C, H, W)."""
  n, l, _ = x.shape
  h = w = int(round(l ** 0.5))
  x = x.reshape(n, h, w, p, p, c)
  x = np.einsum('nhwpqc->nchpwq', x)
  return x.reshape(n, c, h * p, w * p)


def _images(b=2, h=8, w=8, c=3, seed=0) -> np.ndarray:
  return np.random.default_rng(seed).normal(size=(b, h, w, c)).astype(np.float32)


# --- patchify / unpatchify -------------------------------------------------------------------------------------------


def test_patchify_shape():
  assert masking.patchify(jnp.asarray(_images(b=3, h=16, w=16)), 4).shape == (3, 16, 48)


@pytest.mark.parametrize('p', [2, 4])
def test_patchify_matches_mae_nchw_convention(p):
  imgs = _images(b=2, h=8, w=8)
  expected = _mae_patchify_nchw(imgs.transpose(0, 3, 1, 2), p)
  np.testing.assert_array_equal(np.asarray(masking.patchify(jnp.asarray(imgs), p)), expected)


def test_patchify_matches_mae_convention_non_square():
  imgs = _images(b=1, h=8, w=12)
  expected = _mae_patchify_nchw(imgs.transpose(0, 3, 1, 2), 4)
  np.testing.assert_array_equal(np.asarray(masking.patchify(jnp.asarray(imgs), 4)), expected)


def test_patchify_explicit_layout():
  """Patch index is row-major over the patch grid; inside a patch, pixels are (row, col) with channels fastest."""
  b, h, w, c, p = 1, 4, 4, 3, 2
  imgs = np.arange(b * h * w * c, dtype=np.float32).reshape(b, h, w, c)
  patches = np.asarray(masking.patchify(jnp.asarray(imgs), p))
  # Patch 1 is the top row's second patch: rows 0-1, cols 2-3.
  np.testing.assert_array_equal(patches[0, 1], imgs[0, 0:2, 2:4, :].reshape(-1))
  # Patch 2 is the second row's first patch: rows 2-3, cols 0-1.
  np.testing.assert_array_equal(patches[0, 2], imgs[0, 2:4, 0:2, :].reshape(-1))
  # The first entries of a patch are the 3 channels of its top-left pixel.
  np.testing.assert_array_equal(patches[0, 3, :3], imgs[0, 2, 2, :])


@pytest.mark.parametrize('p', [2, 4])
def test_unpatchify_inverts_patchify(p):
  imgs = jnp.asarray(_images(b=2, h=16, w=16))
  np.testing.assert_array_equal(np.asarray(masking.unpatchify(masking.patchify(imgs, p), p)), np.asarray(imgs))


def test_patchify_inverts_unpatchify():
  patches = jnp.asarray(np.random.default_rng(1).normal(size=(2, 16, 4 * 4 * 3)).astype(np.float32))
  np.testing.assert_array_equal(np.asarray(masking.patchify(masking.unpatchify(patches, 4), 4)), np.asarray(patches))


def test_unpatchify_matches_mae_convention():
  patches = np.random.default_rng(2).normal(size=(2, 16, 2 * 2 * 3)).astype(np.float32)
  expected_nhwc = _mae_unpatchify_nchw(patches, 2).transpose(0, 2, 3, 1)
  np.testing.assert_array_equal(np.asarray(masking.unpatchify(jnp.asarray(patches), 2)), expected_nhwc)


# --- random masking --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize('num_patches, ratio, expected_kept', [
    (196, 0.75, 49),  # ViT-B/16 at 224 px, MAE's default ratio
    (64, 0.75, 16),
    (64, 0.9, 6),  # 6.4 -> 6: truncation, not rounding
    (64, 0.33, 42),  # 42.88 -> 42
    (64, 0.5, 32),
    (64, 0.0, 64),
    (10, 0.33, 6),  # 6.7 -> 6
])
def test_kept_count_is_truncated_fraction(num_patches, ratio, expected_kept):
  assert masking.num_kept(num_patches, ratio) == expected_kept
  ids_keep, mask, ids_restore = masking.random_masking(jax.random.key(0), B, num_patches, ratio)
  assert ids_keep.shape == (B, expected_kept)
  assert mask.shape == (B, num_patches)
  assert ids_restore.shape == (B, num_patches)
  mask = np.asarray(mask)
  assert set(np.unique(mask)) <= {0.0, 1.0}
  np.testing.assert_array_equal(mask.sum(axis=1), np.full(B, num_patches - expected_kept))


def test_masking_dtypes():
  ids_keep, mask, ids_restore = masking.random_masking(jax.random.key(0), B, N, 0.75)
  assert ids_keep.dtype == jnp.int32
  assert ids_restore.dtype == jnp.int32
  assert mask.dtype == jnp.float32


def test_ids_keep_are_distinct_valid_patches():
  ids_keep, _, _ = masking.random_masking(jax.random.key(3), B, N, 0.75)
  ids_keep = np.asarray(ids_keep)
  assert ids_keep.min() >= 0 and ids_keep.max() < 64
  for row in ids_keep:
    assert len(set(row.tolist())) == len(row)


def test_mask_is_zero_exactly_at_ids_keep():
  b, n = B, N
  ids_keep, mask, _ = masking.random_masking(jax.random.key(4), b, n, 0.75)
  ids_keep, mask = np.asarray(ids_keep), np.asarray(mask)
  for i in range(b):
    expected = np.ones(n, np.float32)
    expected[ids_keep[i]] = 0.0
    np.testing.assert_array_equal(mask[i], expected)


def test_ids_restore_is_the_inverse_permutation():
  b, n = B, N
  ids_keep, mask, ids_restore = masking.random_masking(jax.random.key(5), b, n, 0.75)
  ids_keep, mask, ids_restore = map(np.asarray, (ids_keep, mask, ids_restore))
  k = ids_keep.shape[1]
  for i in range(b):
    assert sorted(ids_restore[i].tolist()) == list(range(n))
    ids_shuffle = np.argsort(ids_restore[i])
    np.testing.assert_array_equal(ids_shuffle[ids_restore[i]], np.arange(n))
    # The kept patches are the first K of the shuffle, in the order of ids_keep.
    np.testing.assert_array_equal(ids_shuffle[:k], ids_keep[i])
    np.testing.assert_array_equal(ids_restore[i][ids_keep[i]], np.arange(k))
    # Shuffled positions >= K are exactly the removed patches.
    np.testing.assert_array_equal((ids_restore[i] >= k).astype(np.float32), mask[i])


def test_unshuffle_puts_kept_tokens_back_in_place():
  """MAE's decoder: concat(kept tokens, mask tokens), gather by ids_restore -> kept tokens at their own patch."""
  b, n, d = B, N, 5
  x = np.random.default_rng(0).normal(size=(b, n, d)).astype(np.float32)
  ids_keep, mask, ids_restore = masking.random_masking(jax.random.key(6), b, n, 0.75)
  kept = jnp.take_along_axis(jnp.asarray(x), ids_keep[..., None], axis=1)
  fill = jnp.full((b, n - kept.shape[1], d), -100.0)
  unshuffled = np.asarray(jnp.take_along_axis(jnp.concatenate([kept, fill], axis=1), ids_restore[..., None], axis=1))
  mask = np.asarray(mask).astype(bool)
  np.testing.assert_array_equal(unshuffled[~mask], x[~mask])
  assert np.all(unshuffled[mask] == -100.0)


def test_different_rngs_give_different_masks():
  _, m1, _ = masking.random_masking(jax.random.key(0), B, N, 0.75)
  _, m2, _ = masking.random_masking(jax.random.key(1), B, N, 0.75)
  assert not np.array_equal(np.asarray(m1), np.asarray(m2))


def test_same_rng_gives_same_mask():
  a = masking.random_masking(jax.random.key(7), B, N, 0.75)
  b = masking.random_masking(jax.random.key(7), B, N, 0.75)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_masks_differ_within_a_batch():
  _, mask, _ = masking.random_masking(jax.random.key(0), B, N, 0.75)
  rows = {tuple(r) for r in np.asarray(mask).tolist()}
  assert len(rows) == B


def test_every_patch_is_kept_equally_often():
  fn = jax.jit(masking.random_masking, static_argnums=(1, 2, 3))
  masks = np.concatenate([np.asarray(fn(jax.random.key(s), B, N, 0.75)[1]) for s in range(250)])
  keep_freq = 1.0 - masks.mean(axis=0)
  np.testing.assert_allclose(keep_freq, np.full(N, 0.25), atol=0.04)


def test_masking_under_jit_matches_eager():
  fn = jax.jit(masking.random_masking, static_argnums=(1, 2, 3))
  eager = masking.random_masking(jax.random.key(9), B, N, 0.75)
  jitted = fn(jax.random.key(9), B, N, 0.75)
  for x, y in zip(eager, jitted):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))

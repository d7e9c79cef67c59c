"""Patchify / unpatchify, and the maskings (config.masking): MAE's per-sample random masking is the built-in one.

Every consumer draws a masking through `draw`, so a registered masking reaches the train steps, the figures, the FLOP
counts and the state's initialisation alike.
"""

import jax
import jax.numpy as jnp

from ssmae_jax import registry


def patchify(images: jax.Array, patch_size: int) -> jax.Array:
  """[B, H, W, C] -> [B, N, p*p*C], patches row-major, pixels ordered (row, col, channel) as in MAE."""
  b, h, w, c = images.shape
  p = patch_size
  x = images.reshape(b, h // p, p, w // p, p, c)
  x = x.transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches: jax.Array, patch_size: int, channels: int = 3) -> jax.Array:
  """Inverse of `patchify` for square images."""
  b, n, _ = patches.shape
  p = patch_size
  g = int(round(n ** 0.5))
  x = patches.reshape(b, g, g, p, p, channels)
  x = x.transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, g * p, g * p, channels)


def num_kept(num_patches: int, mask_ratio: float) -> int:
  return int(num_patches * (1 - mask_ratio))


def draw(config, rng: jax.Array, batch: int, num_patches: int):
  """config.masking's (ids_keep, mask, ids_restore) for `batch` images of `num_patches` at config.mask_ratio."""
  return registry.maskings.get(config.get('masking', 'random'))(rng, batch, num_patches, config.mask_ratio)


@registry.masking('random')
def random_masking(rng: jax.Array, batch: int, num_patches: int, mask_ratio: float):
  """Per-sample uniform shuffle; keep the first `num_kept` patches.

  Returns:
    ids_keep: int32 [B, K] indices of the kept patches (in shuffled order).
    mask: float32 [B, N], 1 on removed patches, 0 on kept ones (in the original order).
    ids_restore: int32 [B, N], the inverse permutation: ids_shuffle[ids_restore] == arange(N).
  """
  k = num_kept(num_patches, mask_ratio)
  noise = jax.random.uniform(rng, (batch, num_patches))
  ids_shuffle = jnp.argsort(noise, axis=1).astype(jnp.int32)
  ids_restore = jnp.argsort(ids_shuffle, axis=1).astype(jnp.int32)
  ids_keep = ids_shuffle[:, :k]
  mask_shuffled = (jnp.arange(num_patches) >= k).astype(jnp.float32)
  mask = jnp.take_along_axis(jnp.broadcast_to(mask_shuffled, (batch, num_patches)), ids_restore, axis=1)
  return ids_keep, mask, ids_restore

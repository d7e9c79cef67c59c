"""Reconstruction and classification losses."""

import jax
import jax.numpy as jnp
import optax


def reconstruction_loss(pred: jax.Array, target_patches: jax.Array, mask: jax.Array,
                        norm_pix_loss: bool = False) -> jax.Array:
  """MSE per patch (mean over its pixels), averaged over removed patches only (mask == 1)."""
  target = target_patches
  if norm_pix_loss:
    mean = target.mean(axis=-1, keepdims=True)
    var = target.var(axis=-1, keepdims=True, ddof=1)  # torch.var's unbiased default, as in MAE.
    target = (target - mean) / jnp.sqrt(var + 1e-6)
  per_patch = jnp.mean((pred - target) ** 2, axis=-1)
  return jnp.sum(per_patch * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
  """Per-example cross-entropy; labels may be -1 where the weight is 0 (they are clipped, not used).

  With `label_smoothing` = e the target puts 1 - e on the label and e / C on every class (config.label_smoothing).
  """
  labels = jnp.maximum(labels, 0)
  if not label_smoothing:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype), label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)

"""Three one-idea changes to SSMAE, each registered from this file, none editing ssmae_jax/ (docs/tinkering.md).

A config file that imports this module can select them:
  c.gate_rule = 'per_class'              # open only once every class has confident validation examples
  c.masking = 'block'                    # remove one contiguous run of patches instead of a uniform draw
  c.loss_terms = {'consistency': 1.0}    # + soft consistency between the weak and the strong view
"""

import jax
import jax.numpy as jnp

from ssmae_jax import fields, registry

# A plugin's own config field, checked like the built-in ones (--config.per_class_min_confident=-1 is refused).
registry.config_field('per_class_min_confident', fields.Int(1, min=0))


@registry.gate_rule('per_class')
def per_class(stats, config) -> bool:
  """The paper's warm-up, then open iff every class has at least config.per_class_min_confident confident
  validation examples and the HCA reaches config.gate_threshold."""
  every_class = bool((stats['per_class_confident'] >= config.per_class_min_confident).all())
  return stats['epoch'] >= config.warmup_epochs and every_class and stats['hca'] >= config.gate_threshold


@registry.masking('block')
def block_masking(rng, batch_size: int, num_patches: int, mask_ratio: float):
  """Per image, one run of patches in raster order (wrapping around), at a random start, is removed; the same
  number is kept as MAE's random masking keeps."""
  num_kept = int(num_patches * (1 - mask_ratio))
  start = jax.random.randint(rng, (batch_size, 1), 0, num_patches)
  removed = (jnp.arange(num_patches)[None] - start) % num_patches < num_patches - num_kept
  ids_shuffle = jnp.argsort(removed, axis=1, stable=True).astype(jnp.int32)  # Kept patches first.
  ids_restore = jnp.argsort(ids_shuffle, axis=1).astype(jnp.int32)
  return ids_shuffle[:, :num_kept], removed.astype(jnp.float32), ids_restore


@registry.loss_term('consistency')
def consistency(ctx):
  """Cross-entropy of the strong view's prediction against the weak view's soft one (no gradient through it)."""
  weak = jax.nn.softmax(jax.lax.stop_gradient(ctx.classify(ctx.unlabeled_weak)))
  strong_logits = ctx.classify(ctx.unlabeled_strong)
  loss = -jnp.mean(jnp.sum(weak * jax.nn.log_softmax(strong_logits), axis=-1))
  agreement = jnp.mean(jnp.argmax(weak, -1) == jnp.argmax(strong_logits, -1))
  return loss, {'agreement': agreement}

"""What every method's train step shares: images prepared on the device, the reconstruction loss and its gradient,
config.loss_terms, and the end of a step (the optimizer update, config.nan_policy). Pure functions, fixed shapes."""

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from ssmae_jax import losses, masking, registry, sharding, sweep
from ssmae_jax.normalization import IMAGENET_MEAN, IMAGENET_STD
from ssmae_jax.train_state import TrainState


def normalize(images: jax.Array) -> jax.Array:
  """uint8 [B, H, W, 3] from the pipeline -> float32, ImageNet mean/std."""
  return (images.astype(jnp.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD


def prepare_images(images: jax.Array, image_size: int) -> jax.Array:
  """uint8 [B, S0, S0, 3] from the pipeline -> float32 [B, image_size, image_size, 3], normalised.

  The pipeline ships images at their stored size when config.resize_on_device (data_sources.shipped_size), so
  the model's input size is reached here: a bilinear resize, which jax.image.resize computes as two small matmuls
  (one per spatial axis), work accelerators do well and negligible next to the model's. Normalising first touches
  S0² pixels instead of image_size²; the two orders agree up to float rounding (bilinear weights sum to 1). At
  image_size already, this is `normalize` exactly.
  """
  x = normalize(images)
  if x.shape[1:3] == (image_size, image_size):
    return x
  return jax.image.resize(x, (x.shape[0], image_size, image_size, x.shape[3]), 'bilinear')


def jit_train_step(train_step, mesh):
  """`train_step(state, batch)` jitted over `mesh`: batch split along 'data', state replicated and donated. Without a
  mesh (None), `train_step` itself: the pure step, which a sweep vmaps over its runs (sweep_train.py)."""
  if mesh is None:
    return train_step
  repl, data = sharding.replicated(mesh), sharding.data_sharded(mesh)
  return jax.jit(train_step, in_shardings=(repl, data), out_shardings=(repl, repl), donate_argnums=0)


def reconstruction_loss(model, config, params, images: jax.Array, rng: jax.Array) -> jax.Array:
  """L_rec of `images` (prepared, at the model's size) under config.masking drawn from `rng`."""
  ids_keep, mask, ids_restore = masking.draw(config, rng, images.shape[0], model.num_patches)
  pred = model.apply({'params': params}, images, ids_keep, ids_restore, method=model.reconstruct)
  return losses.reconstruction_loss(pred, masking.patchify(images, model.patch_size), mask, config.norm_pix_loss)


def reconstruction(model, config, params, images: jax.Array, rng: jax.Array) -> tuple[jax.Array, dict]:
  """(L_rec, its gradient): `reconstruction_loss` differentiated, the masking and targets drawn outside it."""
  ids_keep, mask, ids_restore = masking.draw(config, rng, images.shape[0], model.num_patches)
  target = masking.patchify(images, model.patch_size)

  def loss_fn(params):
    pred = model.apply({'params': params}, images, ids_keep, ids_restore, method=model.reconstruct)
    return losses.reconstruction_loss(pred, target, mask, config.norm_pix_loss)

  return jax.value_and_grad(loss_fn)(params)


@dataclasses.dataclass(frozen=True)
class LossContext:
  """What a registered loss term (`@registry.loss_term`) sees in one SSMAE step. Images are float32, normalised and
  at the model's size; `classify(images) -> logits` runs the classifier with the parameters being trained, so a loss
  built on it has a gradient."""
  classify: Callable[[jax.Array], jax.Array]
  labeled_image: jax.Array  # [L, S, S, 3]
  labeled_label: jax.Array  # int32 [L]
  unlabeled_weak: jax.Array  # [U, S, S, 3]
  unlabeled_strong: jax.Array  # [U, S, S, 3]
  rng: jax.Array  # This term's own key for this step.
  step: jax.Array  # int32: the step being taken (0 first).
  config: object


def active_loss_terms(config) -> dict:
  """config.loss_terms without the terms at weight 0 -> name: weight (an array in a sweep that sweeps it)."""
  on = [name for name, w in sweep.static(config).get('loss_terms', {}).items() if w]
  return {name: config.loss_terms[name] for name in on}


def loss_terms(model, config, params, views: dict, rng: jax.Array, step: jax.Array):
  """config.loss_terms: (their weighted sum, its gradient, metrics) — `<name>_loss` (unweighted) and `<name>_<key>`
  for each metric a term returns. None for the gradient when no term is active."""
  terms = active_loss_terms(config)
  if not terms:
    return jnp.zeros((), jnp.float32), None, {}

  def loss_fn(params):
    classify = lambda images: model.apply({'params': params}, images, method=model.classify)
    total, metrics = jnp.zeros((), jnp.float32), {}
    for i, (name, weight) in enumerate(sorted(terms.items())):
      ctx = LossContext(classify=classify, rng=jax.random.fold_in(rng, i), step=step, config=config, **views)
      loss, term_metrics = registry.loss_terms.get(name)(ctx)
      total += weight * loss
      metrics[f'{name}_loss'] = loss
      metrics.update({f'{name}_{k}': v for k, v in term_metrics.items()})
    return total, metrics

  (total, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  return total, grads, metrics


def finish(config, tx: optax.GradientTransformation, state: TrainState, grads, loss: jax.Array, metrics: dict,
           **state_fields) -> tuple[TrainState, dict]:
  """The end of every method's train step: the optimizer update, then config.nan_policy.

  The built-in methods report the same metric keys (a term a method lacks is 0), so their console lines and
  histories compare; any other metric a method returns is logged as it is. `state_fields` are the method's own
  changes to the state (SSMAE's memory); a teacher (config.teacher_ema) is moved towards the new parameters here.
  """
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  if state.teacher is not None:  # config.teacher_ema: the teacher follows the updated parameters.
    decay = config.teacher_ema
    state_fields['teacher'] = jax.tree.map(lambda t, p: decay * t + (1 - decay) * p, state.teacher, params)
  grad_norm = optax.tree.norm(grads)
  zero = jnp.zeros((), jnp.float32)
  out = dict(loss=loss, rec_loss=zero, cls_loss=zero, labeled_accuracy=zero, unlabeled_used=zero,
             pseudo_labels_new=zero, full_cls_pass=zero, grad_norm=grad_norm,
             nonfinite=(~jnp.isfinite(loss) | ~jnp.isfinite(grad_norm)).astype(jnp.float32))
  out.update(metrics)
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, **state_fields)
  return _skip_if_nonfinite(config, state, new_state, out)


def _skip_if_nonfinite(config, state: TrainState, new_state: TrainState, metrics: dict) -> tuple[TrainState, dict]:
  """With config.nan_policy='skip', a non-finite step only advances the step counter and reports zeros but for
  `nonfinite` (the skip count). With 'stop' the training loop raises instead, before any checkpoint of it."""
  if config.nan_policy != 'skip':
    return new_state, metrics
  bad = metrics['nonfinite'] > 0
  kept = state.replace(step=new_state.step)
  new_state = jax.tree.map(lambda new, old: jnp.where(bad, old, new), new_state, kept)
  # A skipped step still did its work: its step_kind counts in the run's FLOPs.
  metrics = {k: v if k in ('nonfinite', 'step_kind') else jnp.where(bad, jnp.zeros_like(v), v)
             for k, v in metrics.items()}
  return new_state, metrics

"""Train steps of the paper's baselines, with the same contract as `steps.make_train_step`.

- supervised / finetune: cross-entropy on the labeled batch only; the unlabeled stream is never built.
- mae_pretrain: MAE reconstruction on the unlabeled stream's MAE views only; labels are never built.
"""

import jax
import jax.numpy as jnp
import optax

from ssmae_jax import losses, masking, sharding, steps
from ssmae_jax.train_state import TrainState


def _finish(config, state: TrainState, tx, grads, loss, **metrics):
  """Optimizer update and the metric dict every step returns (absent terms are 0); config.nan_policy applied."""
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  grad_norm = optax.tree.norm(grads)
  zero = jnp.zeros((), jnp.float32)
  out = dict(loss=loss, rec_loss=zero, cls_loss=zero, labeled_accuracy=zero, unlabeled_used=zero,
             pseudo_labels_new=zero, grad_norm=grad_norm,
             nonfinite=(~jnp.isfinite(loss) | ~jnp.isfinite(grad_norm)).astype(jnp.float32))
  out.update(metrics)
  return steps.skip_if_nonfinite(config, state, state.replace(step=state.step + 1, params=params, opt_state=opt_state),
                                 out)


def _jit(step, mesh):
  repl, data = sharding.replicated(mesh), sharding.data_sharded(mesh)
  return jax.jit(step, in_shardings=(repl, data), out_shardings=(repl, repl), donate_argnums=0)


def make_supervised_step(model, tx: optax.GradientTransformation, config, mesh):
  """Labeled cross-entropy only: the supervised ViT baseline, and fine-tuning from a pre-trained encoder."""

  def train_step(state: TrainState, batch: dict):
    images, labels = steps.prepare_images(batch['labeled_image'], model.image_size), batch['labeled_label']

    def loss_fn(params):
      logits = model.apply({'params': params}, images, method=model.classify)
      return jnp.mean(losses.cross_entropy(logits, labels)), logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
    return _finish(config, state, tx, grads, loss, cls_loss=loss, labeled_accuracy=accuracy)

  return _jit(train_step, mesh)


def make_mae_step(model, tx: optax.GradientTransformation, config, mesh):
  """MAE reconstruction on the unlabeled MAE views (all train images): the pre-training half of the MAE baseline."""
  base_key = jax.random.key(config.seed)

  def train_step(state: TrainState, batch: dict):
    images = steps.prepare_images(batch['unlabeled_mae'], model.image_size)
    ids_keep, mask, ids_restore = masking.random_masking(jax.random.fold_in(base_key, state.step), images.shape[0],
                                                         model.num_patches, config.mask_ratio)
    target = masking.patchify(images, model.patch_size)

    def loss_fn(params):
      pred = model.apply({'params': params}, images, ids_keep, ids_restore, method=model.reconstruct)
      return losses.reconstruction_loss(pred, target, mask, config.norm_pix_loss)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return _finish(config, state, tx, grads, loss, rec_loss=loss)

  return _jit(train_step, mesh)


def make_step(model, tx: optax.GradientTransformation, config, mesh):
  """The train step of `config.method`."""
  if config.method == 'ssmae':
    return steps.make_train_step(model, tx, config, mesh)
  if config.method == 'mae_pretrain':
    return make_mae_step(model, tx, config, mesh)
  return make_supervised_step(model, tx, config, mesh)

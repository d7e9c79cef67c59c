"""Train steps of the paper's baselines, with the same contract as SSMAE's `steps.make_train_step`.

- supervised / finetune: cross-entropy on the labeled batch only; the unlabeled stream is never built.
- mae_pretrain: MAE reconstruction on the unlabeled stream's MAE views only; labels are never built.
"""

import jax
import jax.numpy as jnp
import optax

from ssmae_jax import losses, steps
from ssmae_jax.train_state import TrainState


def make_supervised_step(model, tx: optax.GradientTransformation, config, mesh):
  """Labeled cross-entropy only: the supervised ViT baseline, and fine-tuning from a pre-trained encoder."""

  def train_step(state: TrainState, batch: dict):
    images, labels = steps.prepare_images(batch['labeled_image'], model.image_size), batch['labeled_label']

    def loss_fn(params):
      logits = model.apply({'params': params}, images, method=model.classify)
      return jnp.mean(losses.cross_entropy(logits, labels, config.label_smoothing)), logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
    return steps.finish(config, tx, state, grads, loss, dict(cls_loss=loss, labeled_accuracy=accuracy))

  return steps.jit_train_step(train_step, mesh)


def make_mae_step(model, tx: optax.GradientTransformation, config, mesh):
  """MAE reconstruction on the unlabeled MAE views (all train images): the pre-training half of the MAE baseline."""
  base_key = jax.random.key(config.seed)

  def train_step(state: TrainState, batch: dict):
    images = steps.prepare_images(batch['unlabeled_mae'], model.image_size)
    loss, grads = steps.reconstruction(model, config, state.params, images, jax.random.fold_in(base_key, state.step))
    return steps.finish(config, tx, state, grads, loss, dict(rec_loss=loss))

  return steps.jit_train_step(train_step, mesh)

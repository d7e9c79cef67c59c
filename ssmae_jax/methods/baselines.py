"""Train steps of the paper's baselines, with the same contract as SSMAE's (`ssmae.make_step`).

- supervised / finetune: cross-entropy on the labeled batch only; the unlabeled stream is never built.
- mae_pretrain: MAE reconstruction on the unlabeled stream's MAE views only; labels are never built.
"""

import jax
import jax.numpy as jnp

from ssmae_jax import losses, registry
from ssmae_jax.methods import common


def make_supervised_step(model, tx, config, mesh, kind: str | None = None):
  """Labeled cross-entropy only: the supervised ViT baseline, and fine-tuning from a pre-trained encoder."""
  del kind  # One kind of step.

  def train_step(state, batch: dict):
    images, labels = common.prepare_images(batch['labeled_image'], model.image_size), batch['labeled_label']

    def loss_fn(params):
      logits = model.apply({'params': params}, images, method=model.classify)
      return jnp.mean(losses.cross_entropy(logits, labels, config.label_smoothing)), logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
    return common.finish(config, tx, state, grads, loss, dict(cls_loss=loss, labeled_accuracy=accuracy))

  return common.jit_train_step(train_step, mesh)


registry.method('supervised', uses_labeled=True, uses_unlabeled=False, classifies=True)(make_supervised_step)
registry.method('finetune', uses_labeled=True, uses_unlabeled=False, classifies=True,
                needs_init_from=True)(make_supervised_step)


@registry.method('mae_pretrain', uses_labeled=False, uses_unlabeled=True, classifies=False, reconstructs=True)
def make_mae_step(model, tx, config, mesh, kind: str | None = None):
  """MAE reconstruction on the unlabeled MAE views (all train images): the pre-training half of the MAE baseline."""
  del kind  # One kind of step.
  base_key = jax.random.key(config.seed)

  def train_step(state, batch: dict):
    images = common.prepare_images(batch['unlabeled_mae'], model.image_size)
    loss, grads = common.reconstruction(model, config, state.params, images, jax.random.fold_in(base_key, state.step))
    return common.finish(config, tx, state, grads, loss, dict(rec_loss=loss))

  return common.jit_train_step(train_step, mesh)

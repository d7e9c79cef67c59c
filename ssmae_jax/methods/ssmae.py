"""SSMAE (docs/method.md): L = L_rec + λ·L_cls, where L_cls covers the labeled images and the unlabeled examples the
selection rule uses, and each newly selected pseudo-label is remembered for good.

`objective` is the paper's objective as one differentiable function; `make_step`'s train step computes the same loss,
gradient and selection with less work (methods/cls_pass.py; tests/test_steps.py checks they agree), adds
config.loss_terms, and updates the memory.
"""

import jax
import jax.numpy as jnp

from ssmae_jax import gate, losses, registry, sweep
from ssmae_jax.methods import cls_pass, common


def views(batch: dict, image_size: int) -> dict:
  """The batch's images, prepared at the model's size, under LossContext's names."""
  return dict(labeled_image=common.prepare_images(batch['labeled_image'], image_size),
              labeled_label=batch['labeled_label'],
              unlabeled_weak=common.prepare_images(batch['unlabeled_weak'], image_size),
              unlabeled_strong=common.prepare_images(batch['unlabeled_strong'], image_size))


def objective(model, config, params, v: dict, rec_images, memory, gate_is_open, rng, tau=None):
  """The paper's loss for one step, and its selection: (loss, (targets, used, new)).

  `v`: `views`; `memory`: the batch examples' stored pseudo-labels (-1: none). With the gate closed only remembered
  examples are used; with it open, the selection rule (gate.select) on the softmax of both views also picks new ones.
  Predictions select targets but pass no gradient. (The teacher of config.teacher_ema is not in the paper: not here.)
  `tau`: the selection's threshold, config.tau by default; config.class_tau_drop's per class (`thresholds`).
  """
  classify = lambda x: model.apply({'params': params}, x, method=model.classify)
  x_l, y_l = v['labeled_image'], v['labeled_label']
  x_train, x_other = v['unlabeled_weak'], v['unlabeled_strong']
  if config.pseudo_label_view == 'strong':
    x_train, x_other = x_other, x_train
  logits_l, logits_u = classify(x_l), classify(x_train)
  probs_train = jax.nn.softmax(jax.lax.stop_gradient(logits_u))
  probs_other = jax.nn.softmax(jax.lax.stop_gradient(classify(x_other)))
  probs_w, probs_s = (probs_other, probs_train) if config.pseudo_label_view == 'strong' else (probs_train, probs_other)
  targets, used, new = gate.select(probs_w, probs_s, memory, tau=config.tau if tau is None else tau,
                                   require_agreement=config.require_agreement, sticky=config.sticky)
  remembered = (memory >= 0) if config.sticky else jnp.zeros_like(used)
  targets, used, new = (jnp.where(gate_is_open, targets, memory), jnp.where(gate_is_open, used, remembered),
                        new & gate_is_open)
  ce_l = losses.cross_entropy(logits_l, y_l, config.label_smoothing)
  ce_u = losses.cross_entropy(logits_u, targets, config.label_smoothing)
  l_cls = (jnp.sum(ce_l) + jnp.sum(jnp.where(used, ce_u, 0.0))) / (x_l.shape[0] + jnp.sum(used))
  l_rec = common.reconstruction_loss(model, config, params, rec_images, rng) if sweep.static(config).rec_weight else 0.0
  return config.rec_weight * l_rec + config.cls_weight * l_cls, (targets, used, new)


def thresholds(config, pool_memory, num_classes: int):
  """The selection's threshold for this step: config.tau, or with config.class_tau_drop (not in the paper) one per
  class from what the whole memory holds (gate.class_thresholds)."""
  if not sweep.static(config).class_tau_drop:
    return config.tau
  return gate.class_thresholds(pool_memory, num_classes, config.tau, config.class_tau_drop)


@registry.method('ssmae', uses_labeled=True, uses_unlabeled=True, classifies=True, gated=True, reconstructs=True,
                 weighs_terms=True, kinds=cls_pass.kinds)
def make_step(model, tx, config, mesh, kind: str | None = None):
  """SSMAE's `train_step(state, batch) -> (state, metrics)`, jitted over `mesh` with the state donated.

  `batch` holds global arrays: labeled_image/label and unlabeled_weak/strong/mae/index, the images uint8 at the size
  the pipeline ships (resized to model.image_size here). The hidden labels of unlabeled examples are not an input:
  they cannot reach the loss. L_rec, L_cls and each loss term share no activations, so each is differentiated on its
  own and the gradients are added.
  """
  base_key = jax.random.key(config.seed)
  classify = lambda params, images: model.apply({'params': params}, images, method=model.classify)

  def train_step(state, batch: dict):
    rng = jax.random.fold_in(base_key, state.step)
    v = views(batch, model.image_size)
    idx = batch['unlabeled_index']
    memory = state.pseudo_labels[idx]
    x_train, x_other = v['unlabeled_weak'], v['unlabeled_strong']
    if config.pseudo_label_view == 'strong':
      x_train, x_other = x_other, x_train
    problem = cls_pass.Problem(classify, config, v['labeled_image'], v['labeled_label'], x_train, x_other, memory,
                               remembered=(memory >= 0) if config.sticky else jnp.zeros_like(memory, bool),
                               teacher=state.teacher,  # None without config.teacher_ema.
                               gate_is_open=state.gate_open if sweep.in_sweep(config) else True,
                               tau=thresholds(config, state.pseudo_labels, model.num_classes))
    cls, grads, (logits_l, used, new, targets), full, step_kind = cls_pass.classification_pass(
        problem, state.params, state.gate_open, kind)
    grads = jax.tree.map(lambda c: config.cls_weight * c, grads)
    rec = jnp.zeros((), jnp.float32)
    if sweep.static(config).rec_weight:
      rec_images = jnp.concatenate([v['labeled_image'], common.prepare_images(batch['unlabeled_mae'],
                                                                               model.image_size)])
      rec, rec_grads = common.reconstruction(model, config, state.params, rec_images, rng)
      grads = jax.tree.map(lambda r, c: config.rec_weight * r + c, rec_grads, grads)
    terms, term_grads, term_metrics = common.loss_terms(model, config, state.params, v, jax.random.fold_in(rng, 1),
                                                        state.step)
    if term_grads is not None:
      grads = jax.tree.map(jnp.add, grads, term_grads)
    loss = config.rec_weight * rec + config.cls_weight * cls + terms
    metrics = dict(rec_loss=rec, cls_loss=cls,
                   labeled_accuracy=jnp.mean(jnp.argmax(logits_l, -1) == v['labeled_label']),
                   unlabeled_used=jnp.sum(used).astype(jnp.float32),
                   pseudo_labels_new=jnp.sum(new).astype(jnp.float32),
                   full_cls_pass=full.astype(jnp.float32), step_kind=step_kind, **term_metrics)
    return common.finish(config, tx, state, grads, loss, metrics,
                         pseudo_labels=gate.update_memory(state.pseudo_labels, idx, targets, new))

  return common.jit_train_step(train_step, mesh)

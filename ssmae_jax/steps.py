"""SSMAE's train step, the eval step, and the parts every method's train step shares: pure functions, fixed
shapes, no host syncs."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ssmae_jax import gate, losses, masking, sharding
from ssmae_jax.train_state import TrainState

# numpy, not jnp: a jnp array made at import would start JAX's backend before jax.distributed.initialize() can run.
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)

# Which classification work a step needs; chosen on device from replicated values with lax.switch, so the
# work that cannot change the loss is skipped, not masked out.
LABELED_ONLY, WITH_MEMORY, GATE_OPEN = 0, 1, 2


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


def make_train_step(model, tx: optax.GradientTransformation, config, mesh):
  """SSMAE's `train_step(state, batch) -> (state, metrics)`, jitted over `mesh` with the state donated.

  `batch` holds global arrays: labeled_image/label and unlabeled_weak/strong/mae/index, the images uint8 at the
  size the pipeline ships (resized to model.image_size here). The hidden labels of unlabeled examples are not an
  input: they cannot reach the loss.

  The loss is L_rec + lambda * L_cls and the two terms share no activations, so each is differentiated on its
  own and the gradients are added. The classification term's forward and backward pass both live inside one
  branch of a lax.switch: a switch inside the differentiated function would make every branch output the
  residuals of every other branch (as zeros), which costs more than the skipped work saves.

  With config.unlabeled_cls_rows = k > 0, a branch that classifies unlabeled examples first narrows them to the
  candidates that can be used (the remembered ones, and while the gate is open those confident on the view that
  gets the forward pass only: selection needs both views confident). When there are at most k, only those rows,
  gathered, go through L_cls's forward and backward pass with the labeled ones; otherwise all U rows do. The loss,
  the gradient and the selection are the same either way (`full_cls_pass` says which pass a step took).

  With config.teacher_ema (not in the paper) the state's teacher, a moving average of the parameters, picks the
  pseudo-labels: the same rule on its softmax of both views (forward passes only). Its targets are then known before
  L_cls's pass, which trains the parameters on the view of config.pseudo_label_view, as for remembered examples; the
  teacher follows the updated parameters at the end of the step.
  """
  tau = config.tau
  require_agreement = config.require_agreement
  sticky = config.sticky
  smoothing = config.label_smoothing
  train_on_strong = config.pseudo_label_view == 'strong'
  rows = config.unlabeled_cls_rows
  teacher_decay = config.teacher_ema
  rec_weight, cls_weight = config.rec_weight, config.cls_weight
  base_key = jax.random.key(config.seed)
  size = model.image_size

  def classify(params, images):
    return model.apply({'params': params}, images, method=model.classify)

  def train_step(state: TrainState, batch: dict):
    rng = jax.random.fold_in(base_key, state.step)
    x_l = prepare_images(batch['labeled_image'], size)
    y_l = batch['labeled_label']
    x_w = prepare_images(batch['unlabeled_weak'], size)
    x_s = prepare_images(batch['unlabeled_strong'], size)
    # The view L_cls trains (forward and backward pass), and the other one (forward pass only, for the selection).
    x_train, x_other = (x_s, x_w) if train_on_strong else (x_w, x_s)
    idx = batch['unlabeled_index']
    num_l, num_u = x_l.shape[0], x_w.shape[0]

    memory = state.pseudo_labels[idx]
    remembered = (memory >= 0) if sticky else jnp.zeros_like(memory, bool)
    branch = jnp.where(state.gate_open, GATE_OPEN, jnp.where(jnp.any(remembered), WITH_MEMORY, LABELED_ONLY))
    nothing_new = jnp.zeros((num_u,), bool)

    def cls_loss(logits_l, ce_u, used):
      ce_l = losses.cross_entropy(logits_l, y_l, smoothing)
      return (jnp.sum(ce_l) + jnp.sum(jnp.where(used, ce_u, 0.0))) / (num_l + jnp.sum(used))

    # Each branch: (L_cls, its gradient, (labeled logits, used, new, targets), whether all U rows took L_cls's pass).
    def labeled_only(params):
      def loss_fn(params):
        logits_l = classify(params, x_l)
        return cls_loss(logits_l, jnp.zeros((num_u,), jnp.float32), nothing_new), logits_l

      (loss, logits_l), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
      return loss, grads, (logits_l, nothing_new, nothing_new, memory), jnp.zeros((), bool)

    def gathered(candidates):
      """The batch positions of the first `rows` candidates (U where there are fewer) and which of them are real."""
      (pos,) = jnp.nonzero(candidates, size=rows, fill_value=num_u)
      take = lambda x: jnp.take(x, pos, axis=0, mode='clip')
      scatter = lambda base, values: base.at[pos].set(values, mode='drop')
      return take, scatter, pos < num_u

    # L_cls with targets known before its pass (remembered, or the teacher's): (loss, grads, labeled logits).
    def known_targets_full(params, used, targets):
      def loss_fn(params):
        logits = classify(params, jnp.concatenate([x_l, x_train]))
        ce_u = losses.cross_entropy(logits[num_l:], targets, smoothing)
        return cls_loss(logits[:num_l], ce_u, used), logits[:num_l]

      (loss, logits_l), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
      return loss, grads, logits_l

    def known_targets_rows(params, used, targets):
      take, _, real = gathered(used)

      def loss_fn(params):
        logits = classify(params, jnp.concatenate([x_l, take(x_train)]))
        ce_u = losses.cross_entropy(logits[num_l:], take(targets), smoothing)
        return cls_loss(logits[:num_l], ce_u, real), logits[:num_l]

      (loss, logits_l), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
      return loss, grads, logits_l

    def known_targets(params, used, targets):
      """-> (loss, grads, labeled logits, whether all U rows took the pass)."""
      if not rows:
        return known_targets_full(params, used, targets) + (jnp.ones((), bool),)
      full = jnp.sum(used) > rows
      return jax.lax.cond(full, known_targets_full, known_targets_rows, params, used, targets) + (full,)

    def with_memory(params):
      loss, grads, logits_l, full = known_targets(params, remembered, memory)
      return loss, grads, (logits_l, remembered, nothing_new, memory), full

    def select_and_loss(logits, probs_other, mem):
      probs_train = jax.nn.softmax(jax.lax.stop_gradient(logits[num_l:]))
      probs_w, probs_s = (probs_other, probs_train) if train_on_strong else (probs_train, probs_other)
      targets, used, new = gate.select(probs_w, probs_s, mem, tau=tau, require_agreement=require_agreement,
                                       sticky=sticky)
      return targets, used, new, losses.cross_entropy(logits[num_l:], targets, smoothing)

    def gate_open_full(params, probs_other):
      def loss_fn(params):
        logits = classify(params, jnp.concatenate([x_l, x_train]))
        targets, used, new, ce_u = select_and_loss(logits, probs_other, memory)
        return cls_loss(logits[:num_l], ce_u, used), (logits[:num_l], used, new, targets)

      (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
      return loss, grads, aux

    def gate_open_rows(params, probs_other):
      take, scatter, real = gathered(candidates_open(probs_other))

      def loss_fn(params):
        logits = classify(params, jnp.concatenate([x_l, take(x_train)]))
        targets, used, new, ce_u = select_and_loss(logits, take(probs_other), take(memory))
        used, new = used & real, new & real
        return cls_loss(logits[:num_l], ce_u, used), (logits[:num_l], used, new, targets)

      (loss, (logits_l, used, new, targets)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
      return loss, grads, (logits_l, scatter(nothing_new, used), scatter(nothing_new, new), scatter(memory, targets))

    def candidates_open(probs_other):
      """The examples a gate-open step can use: remembered, or confident on the view with the forward pass only."""
      return remembered | (jnp.max(probs_other, axis=-1) > tau)

    def gate_open(params):
      # Outside the differentiated function: the view not trained gets a forward pass only.
      probs_other = jax.nn.softmax(classify(params, x_other))
      if not rows:
        return gate_open_full(params, probs_other) + (jnp.ones((), bool),)
      full = jnp.sum(candidates_open(probs_other)) > rows
      return jax.lax.cond(full, gate_open_full, gate_open_rows, params, probs_other) + (full,)

    def gate_open_teacher(params):
      probs = lambda x: jax.nn.softmax(classify(state.teacher, x))
      targets, used, new = gate.select(probs(x_w), probs(x_s), memory, tau=tau, require_agreement=require_agreement,
                                       sticky=sticky)
      loss, grads, logits_l, full = known_targets(params, used, targets)
      return loss, grads, (logits_l, used, new, targets), full

    cls, cls_grads, (logits_l, used, new, targets), full_pass = jax.lax.switch(
        branch, [labeled_only, with_memory, gate_open_teacher if teacher_decay else gate_open], state.params)
    if rec_weight:
      rec_images = jnp.concatenate([x_l, prepare_images(batch['unlabeled_mae'], size)])
      rec, rec_grads = reconstruction(model, config, state.params, rec_images, rng)
      grads = jax.tree.map(lambda r, c: rec_weight * r + cls_weight * c, rec_grads, cls_grads)
    else:
      rec = jnp.zeros((), jnp.float32)
      grads = jax.tree.map(lambda c: cls_weight * c, cls_grads)
    loss = rec_weight * rec + cls_weight * cls
    pseudo_labels = gate.update_memory(state.pseudo_labels, idx, targets, new)
    return finish(config, tx, state, grads, loss, dict(
        rec_loss=rec,
        cls_loss=cls,
        labeled_accuracy=jnp.mean(jnp.argmax(logits_l, -1) == y_l),
        unlabeled_used=jnp.sum(used).astype(jnp.float32),
        pseudo_labels_new=jnp.sum(new).astype(jnp.float32),
        full_cls_pass=full_pass.astype(jnp.float32),
    ), pseudo_labels=pseudo_labels)

  return jit_train_step(train_step, mesh)


def jit_train_step(train_step, mesh):
  """`train_step(state, batch)` jitted over `mesh`: batch split along 'data', state replicated and donated."""
  repl, data = sharding.replicated(mesh), sharding.data_sharded(mesh)
  return jax.jit(train_step, in_shardings=(repl, data), out_shardings=(repl, repl), donate_argnums=0)


def reconstruction(model, config, params, images: jax.Array, rng: jax.Array) -> tuple[jax.Array, dict]:
  """(L_rec, its gradient) for `images` (prepared, at the model's size) under a random masking drawn from `rng`."""
  ids_keep, mask, ids_restore = masking.random_masking(rng, images.shape[0], model.num_patches, config.mask_ratio)
  target = masking.patchify(images, model.patch_size)

  def loss_fn(params):
    pred = model.apply({'params': params}, images, ids_keep, ids_restore, method=model.reconstruct)
    return losses.reconstruction_loss(pred, target, mask, config.norm_pix_loss)

  return jax.value_and_grad(loss_fn)(params)


def finish(config, tx: optax.GradientTransformation, state: TrainState, grads, loss: jax.Array, metrics: dict,
           **state_fields) -> tuple[TrainState, dict]:
  """The end of every method's train step: the optimizer update, then config.nan_policy.

  Every method reports the same metric keys (a term it lacks is 0), so the loop's sums and logs need not know
  which method ran. `state_fields` are the method's own changes to the state (SSMAE's memory); a teacher
  (config.teacher_ema) is moved towards the new parameters here.
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
  metrics = {k: v if k == 'nonfinite' else jnp.where(bad, jnp.zeros_like(v), v) for k, v in metrics.items()}
  return new_state, metrics


def make_eval_step(model, config, mesh):
  """Returns `eval_step(params, batch) -> sums` over a padded batch (image uint8 at any size, label, mask)."""
  confidence = config.gate_confidence

  def eval_step(params, batch):
    logits = model.apply({'params': params}, prepare_images(batch['image'], model.image_size),
                         method=model.classify)
    valid = batch['mask']
    correct = (jnp.argmax(logits, -1) == batch['label']) & valid
    confident, confident_correct = gate.high_confidence_counts(logits, batch['label'], valid, confidence)
    return dict(count=jnp.sum(valid), correct=jnp.sum(correct), confident=confident,
                confident_correct=confident_correct)

  repl, data = sharding.replicated(mesh), sharding.data_sharded(mesh)
  return jax.jit(eval_step, in_shardings=(repl, data), out_shardings=repl)


@functools.partial(jax.jit, donate_argnums=0)
def accumulate(total: dict, metrics: dict) -> dict:
  """Adds a step's metrics to running sums; `finite_steps` counts the steps before the first non-finite one."""
  out = {k: total[k] + v for k, v in metrics.items()}
  out['finite_steps'] = total['finite_steps'] + (out['nonfinite'] == 0)
  return out


def start_sums(metrics: dict) -> dict:
  """The running sums of `accumulate` after one step."""
  return dict(metrics, finite_steps=1.0 - metrics['nonfinite'])

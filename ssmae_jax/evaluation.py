"""Evaluation, in one place: the jitted eval step, a whole split scored as an `EvalResult`, and the gate's statistics
of a validation pass (what a gate rule reads)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ssmae_jax import gate, input_pipeline, sharding
from ssmae_jax.methods import common


def make_eval_step(model, config, mesh):
  """`eval_step(params, batch) -> sums` over a padded batch (image uint8 at any size, label, mask): counts overall
  and, per true class, of the examples predicted with confidence > config.gate_confidence and of those correct."""
  confidence = config.gate_confidence

  def eval_step(params, batch):
    logits = model.apply({'params': params}, common.prepare_images(batch['image'], model.image_size),
                         method=model.classify)
    valid, labels = batch['mask'], batch['label']
    correct = (jnp.argmax(logits, -1) == labels) & valid
    confident, confident_correct = gate.high_confidence_counts(logits, labels, valid, confidence)
    is_confident = (jnp.max(jax.nn.softmax(logits, axis=-1), axis=-1) > confidence) & valid
    per_class = lambda flags: jnp.zeros((logits.shape[-1],), jnp.int32).at[labels].add(flags.astype(jnp.int32))
    return dict(count=jnp.sum(valid), correct=jnp.sum(correct), confident=confident,
                confident_correct=confident_correct, per_class_confident=per_class(is_confident),
                per_class_correct=per_class(is_confident & correct))

  repl, data = sharding.replicated(mesh), sharding.data_sharded(mesh)
  return jax.jit(eval_step, in_shardings=(repl, data), out_shardings=repl)


@dataclasses.dataclass(frozen=True)
class EvalResult:
  accuracy: float
  high_conf_accuracy: float  # Accuracy over the examples predicted with confidence > config.gate_confidence.
  num_confident: int
  count: int  # Examples evaluated, each once on any device count.
  per_class_confident: np.ndarray  # int [C]: confident examples per true class.
  per_class_correct: np.ndarray  # int [C]: correct among those.


def evaluate_arrays(eval_step, params, images: np.ndarray, labels: np.ndarray, config, mesh) -> EvalResult | None:
  """`eval_step` (make_eval_step) summed over a whole split; None if the split is empty."""
  total = None
  for batch in input_pipeline.eval_batches(images, labels, config.eval_batch_size, config.image_size,
                                           resize_on_device=config.resize_on_device,
                                           process_index=jax.process_index(), process_count=jax.process_count()):
    sums = eval_step(params, sharding.to_global(batch, mesh))
    total = sums if total is None else jax.tree.map(jnp.add, total, sums)
  if total is None:
    return None
  total = jax.device_get(total)
  return EvalResult(
      accuracy=int(total['correct']) / max(int(total['count']), 1),
      high_conf_accuracy=gate.high_confidence_accuracy(int(total['confident']), int(total['confident_correct'])),
      num_confident=int(total['confident']),
      count=int(total['count']),
      per_class_confident=np.asarray(total['per_class_confident']),
      per_class_correct=np.asarray(total['per_class_correct']),
  )


def gate_stats(val: EvalResult | None, epoch: int, num_classes: int) -> dict:
  """What a gate rule reads (registry.gate_rule): the validation pass's numbers at the start of `epoch` (zeros
  without a validation split)."""
  zeros = np.zeros((num_classes,), np.int64)
  if val is None:
    return dict(epoch=epoch, accuracy=0.0, hca=0.0, confident=0, count=0, per_class_confident=zeros,
                per_class_correct=zeros)
  return dict(epoch=epoch, accuracy=val.accuracy, hca=val.high_conf_accuracy, confident=val.num_confident,
              count=val.count, per_class_confident=val.per_class_confident, per_class_correct=val.per_class_correct)


@dataclasses.dataclass
class Evaluator:
  """The splits a run is evaluated on, decoded once, and the jitted step that scores them."""
  eval_step: object  # make_eval_step(...)
  config: object
  mesh: object
  splits: dict[str, tuple[np.ndarray, np.ndarray]]  # name -> (uint8 images, int32 labels); absent or empty: none.

  def evaluate(self, params, split: str) -> EvalResult | None:
    """`params` on split 'val' or 'test'; None where the run has no such examples (or a split is not loaded)."""
    images, labels = self.splits.get(split, (None, None))
    if images is None or len(images) == 0:
      return None
    return evaluate_arrays(self.eval_step, params, images, labels, self.config, self.mesh)

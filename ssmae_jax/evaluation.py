"""Evaluation: accuracy and high-confidence accuracy (HCA) of parameters on a whole split, as an `EvalResult`."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ssmae_jax import gate, input_pipeline, sharding


@dataclasses.dataclass(frozen=True)
class EvalResult:
  accuracy: float
  high_conf_accuracy: float  # Accuracy over the examples predicted with confidence > config.gate_confidence.
  num_confident: int
  count: int  # Examples evaluated, each once on any device count.


def evaluate_arrays(eval_step, params, images: np.ndarray, labels: np.ndarray, config, mesh) -> EvalResult | None:
  """`eval_step` (steps.make_eval_step) summed over a whole split; None if the split is empty."""
  total = None
  for batch in input_pipeline.eval_batches(images, labels, config.eval_batch_size, config.image_size,
                                           resize_on_device=config.resize_on_device,
                                           process_index=jax.process_index(), process_count=jax.process_count()):
    sums = eval_step(params, sharding.to_global(batch, mesh))
    total = sums if total is None else jax.tree.map(jnp.add, total, sums)
  if total is None:
    return None
  total = jax.tree.map(int, jax.device_get(total))
  return EvalResult(
      accuracy=total['correct'] / max(total['count'], 1),
      high_conf_accuracy=gate.high_confidence_accuracy(total['confident'], total['confident_correct']),
      num_confident=total['confident'],
      count=total['count'],
  )


@dataclasses.dataclass
class Evaluator:
  """The splits a run is evaluated on, decoded once, and the jitted step that scores them."""
  eval_step: object  # steps.make_eval_step(...)
  config: object
  mesh: object
  splits: dict[str, tuple[np.ndarray, np.ndarray]]  # name -> (uint8 images, int32 labels); absent or empty: none.

  def evaluate(self, params, split: str) -> EvalResult | None:
    """`params` on split 'val' or 'test'; None where the run has no such examples (or a split is not loaded)."""
    images, labels = self.splits.get(split, (None, None))
    if images is None or len(images) == 0:
      return None
    return evaluate_arrays(self.eval_step, params, images, labels, self.config, self.mesh)

"""The validation gate, the pseudo-label selection rule and the sticky memory (DESIGN.md §1): pure functions."""

import jax
import jax.numpy as jnp
import numpy as np

GATE_MODES = ('dynamic', 'always_open', 'never')
# The unlabeled view L_cls trains: the paper's weak view, or the strong one (FixMatch's consistency; not in the paper).
PSEUDO_LABEL_VIEWS = ('weak', 'strong')


def high_confidence_counts(logits: jax.Array, labels: jax.Array, valid: jax.Array, confidence: float):
  """Sums for HCA over one batch: (#confident, #confident and correct). `valid` masks padding."""
  probs = jax.nn.softmax(logits, axis=-1)
  confident = (jnp.max(probs, axis=-1) > confidence) & valid
  correct = jnp.argmax(logits, axis=-1) == labels
  return jnp.sum(confident), jnp.sum(confident & correct)


def high_confidence_accuracy(num_confident, num_confident_correct) -> float:
  """Accuracy over the confident examples; 0 when there are none."""
  return float(num_confident_correct) / float(num_confident) if num_confident > 0 else 0.0


def gate_open_for_epoch(mode: str, epoch: int, warmup_epochs: int, hca: float, threshold: float,
                        num_confident: int = 0, min_confident: int = 0) -> bool:
  """Whether pseudo-labels may be assigned during `epoch`, decided at its start from the validation HCA.

  `min_confident` > 0 also asks for that many confident validation examples (`num_confident`): the paper's rule
  (0) lets a single confident, correct example give an HCA of 100%.
  """
  if mode == 'always_open':
    return True
  if mode == 'never':
    return False
  return epoch >= warmup_epochs and hca >= threshold and num_confident >= min_confident


def select(probs_weak: jax.Array, probs_strong: jax.Array, memory: jax.Array, *, tau: float,
           require_agreement: bool = True, sticky: bool = True):
  """Which unlabeled examples of the batch train the classifier, and with which target, in a gate-open step.

  (While the gate is closed no prediction is selected; the train step then uses the memory alone, or nothing.)

  Args:
    probs_weak, probs_strong: [U, C] softmax of the weak and strong views (treated as constants).
    memory: int32 [U], the stored pseudo-label of each example, -1 for none.
  Returns:
    targets: int32 [U], the class each used example is trained towards.
    used: bool [U].
    new: bool [U], examples assigned a pseudo-label in this step (memory must store `targets` there).
  """
  pred = jnp.argmax(probs_weak, axis=-1).astype(jnp.int32)
  confident = (jnp.max(probs_weak, axis=-1) > tau) & (jnp.max(probs_strong, axis=-1) > tau)
  if require_agreement:
    confident &= pred == jnp.argmax(probs_strong, axis=-1)
  if not sticky:
    return pred, confident, confident & (memory < 0)
  remembered = memory >= 0
  new = confident & ~remembered
  return jnp.where(remembered, memory, pred), remembered | new, new


def update_memory(memory: jax.Array, indices: jax.Array, targets: jax.Array, new: jax.Array) -> jax.Array:
  """Writes new pseudo-labels; an existing one is never overwritten.

  `max` with -1 makes the scatter deterministic when an index appears twice in a batch (an epoch boundary of
  the unlabeled stream), and leaves every slot not newly assigned as it was.
  """
  writable = new & (memory[indices] < 0)
  return memory.at[indices].max(jnp.where(writable, targets, -1))


def memory_summary(memory: np.ndarray, hidden_labels: np.ndarray, num_classes: int) -> dict:
  """What the pseudo-label memory holds, on the host: total, precision against the hidden labels (None where none
  is known: folder files), the count per pseudo-label class, and per pseudo-label class how many of those whose true
  label is known are right (`correct_per_class`; with `per_class`, the precision of each class's pseudo-labels)."""
  assigned = memory >= 0
  known = assigned & (hidden_labels >= 0)
  num_known = int(np.sum(known))
  right = known & (memory == hidden_labels)
  return dict(total=int(np.sum(assigned)),
              precision=(int(np.sum(right)) / num_known if num_known else None),
              per_class=np.bincount(memory[assigned], minlength=num_classes).astype(int).tolist(),
              correct_per_class=np.bincount(memory[right], minlength=num_classes).astype(int).tolist())

"""The validation gate, the pseudo-label selection rule and the sticky memory (docs/method.md): pure functions; the
built-in gate rules (config.gate_rule), and `decide`, which sets an epoch's gate on the state."""

import jax
import jax.numpy as jnp
import numpy as np

from ssmae_jax import registry, sharding


def high_confidence_counts(logits: jax.Array, labels: jax.Array, valid: jax.Array, confidence: float):
  """Sums for HCA over one batch: (#confident, #confident and correct). `valid` masks padding."""
  probs = jax.nn.softmax(logits, axis=-1)
  confident = (jnp.max(probs, axis=-1) > confidence) & valid
  correct = jnp.argmax(logits, axis=-1) == labels
  return jnp.sum(confident), jnp.sum(confident & correct)


def high_confidence_accuracy(num_confident, num_confident_correct) -> float:
  """Accuracy over the confident examples; 0 when there are none."""
  return float(num_confident_correct) / float(num_confident) if num_confident > 0 else 0.0


@registry.gate_rule('hca')
def hca_rule(stats: dict, config) -> bool:
  """The paper's gate: closed for config.warmup_epochs, then open iff the validation HCA >= config.gate_threshold.

  config.gate_min_confident > 0 (not in the paper) also asks for that many confident validation examples: the paper's
  rule lets a single confident, correct example give an HCA of 100%."""
  return bool(stats['epoch'] >= config.warmup_epochs and stats['hca'] >= config.gate_threshold
              and stats['confident'] >= config.gate_min_confident)


@registry.gate_rule('always_open')
def always_open(stats: dict, config) -> bool:
  del stats, config
  return True


@registry.gate_rule('never')
def never(stats: dict, config) -> bool:
  del stats, config
  return False


def opens(config, stats: dict) -> bool:
  """Whether config.gate_rule opens the gate of the epoch whose validation pass gave `stats` (evaluation.gate_stats)."""
  return bool(registry.gate_rules.get(config.gate_rule)(stats, config))


def decide(state, config, stats: dict, mesh) -> tuple[object, bool]:
  """The gate of the epoch whose validation pass gave `stats`, by config.gate_rule (`opens`), set on the train
  state -> (the state, whether it is open)."""
  is_open = opens(config, stats)
  return state.replace(gate_open=jax.device_put(np.bool_(is_open), sharding.replicated(mesh))), is_open


def class_thresholds(pool_memory: jax.Array, num_classes: int, tau, drop) -> jax.Array:
  """config.class_tau_drop's threshold per class, float32 [C] (not in the paper; FlexMatch's idea, bounded):
  tau - drop * (1 - n_c / max_c n_c), where n_c counts the memory's pseudo-labels of class c. The class the memory
  holds most of keeps tau, a class it holds none of gets tau - drop; with the memory empty every class keeps tau.

  `pool_memory`: int32 [N], the whole pool's stored pseudo-labels, -1 for none."""
  counts = jnp.sum(pool_memory[:, None] == jnp.arange(num_classes, dtype=pool_memory.dtype), axis=0)
  most = jnp.max(counts)
  share = jnp.where(most > 0, counts / jnp.maximum(most, 1), 1.0)
  return (tau - drop * (1.0 - share)).astype(jnp.float32)


def example_thresholds(tau, probs: jax.Array) -> jax.Array | float:
  """The threshold of each example: `tau` itself, or with per-class thresholds [C], that of its predicted class in
  `probs` [U, C]."""
  return tau[jnp.argmax(probs, axis=-1)] if jnp.ndim(tau) else tau


def select(probs_weak: jax.Array, probs_strong: jax.Array, memory: jax.Array, *, tau,
           require_agreement: bool = True, sticky: bool = True):
  """Which unlabeled examples of the batch train the classifier, and with which target, in a gate-open step.

  (While the gate is closed no prediction is selected; the train step then uses the memory alone, or nothing.)

  Args:
    probs_weak, probs_strong: [U, C] softmax of the weak and strong views (treated as constants).
    memory: int32 [U], the stored pseudo-label of each example, -1 for none.
    tau: the confidence both views must exceed; or float [C] (`class_thresholds`), the threshold of the class the
      weak view predicts.
  Returns:
    targets: int32 [U], the class each used example is trained towards.
    used: bool [U].
    new: bool [U], examples assigned a pseudo-label in this step (memory must store `targets` there).
  """
  pred = jnp.argmax(probs_weak, axis=-1).astype(jnp.int32)
  tau = example_thresholds(tau, probs_weak)
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

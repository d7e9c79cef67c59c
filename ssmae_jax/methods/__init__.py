"""The training methods (config.method): one registered record each, saying what the method reads and trains and
which step it runs. The built-in ones: ssmae (ssmae.py), and the paper's baselines supervised, finetune and
mae_pretrain (baselines.py). A new one is `@registry.method(name, ...)` on its step's maker, from any module.

The loop, the config checks and the data readers ask a method's record, never its name.
"""

import dataclasses
from typing import Callable

from ssmae_jax import registry


def _one_kind(config) -> tuple[str, ...]:
  del config
  return ('step',)


@dataclasses.dataclass(frozen=True)
class Method:
  name: str
  # (model, tx, config, mesh, kind=None) -> jitted train_step(state, batch) -> (state, metrics). With `kind` (one of
  # `kinds(config)`), the step always does that kind's work: the program whose FLOPs a step of that kind counts.
  make_step: Callable
  uses_labeled: bool  # The labeled stream is built.
  uses_unlabeled: bool  # The unlabeled stream is built.
  classifies: bool  # Trains the classifier head: evaluated on val/test, and may label the unlabeled pool.
  gated: bool = False  # The validation gate decides, each epoch, whether pseudo-labels may be assigned.
  needs_init_from: bool = False  # Starts from the encoder of another run (config.init_from).
  reconstructs: bool = False  # Has a reconstruction term.
  weighs_terms: bool = False  # Its loss is config.rec_weight * L_rec + config.cls_weight * L_cls.
  # config -> the names of the kinds of work its steps do (branches of different cost). A step reports which it did
  # as metrics['step_kind'], one-hot over these; a method without branches has one kind and need not report it.
  kinds: Callable = _one_kind

  def trains_reconstruction(self, config) -> bool:
    """Whether a run of `config` trains on the reconstruction loss (SSMAE drops it at config.rec_weight=0)."""
    return self.reconstructs and (bool(config.rec_weight) or not self.weighs_terms)

  def has_teacher(self, config) -> bool:
    """Whether a run of `config` keeps a teacher that picks pseudo-labels (config.teacher_ema; SSMAE only)."""
    return self.gated and bool(config.get('teacher_ema', 0.0))


def get(name: str) -> Method:
  """The registered method `name`; an unknown one is one error line listing the registered ones."""
  return registry.methods.get(name)


# The built-in methods register themselves on import.
from ssmae_jax.methods import baselines, ssmae  # noqa: E402,F401

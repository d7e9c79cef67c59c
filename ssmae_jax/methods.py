"""The training methods (config.method): one record each, saying what the method trains on and which step it runs.

The loop, the config checks and the data readers ask a method's record, never its name.
"""

import dataclasses
from typing import Callable

from ssmae_jax import baselines, steps
from ssmae_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Method:
  name: str
  # (model, tx, config, mesh) -> jitted train_step(state, batch) -> (state, metrics).
  make_step: Callable
  uses_labeled: bool  # The labeled stream is built.
  uses_unlabeled: bool  # The unlabeled stream is built.
  classifies: bool  # Trains the classifier head: evaluated on val/test, and may label the unlabeled pool.
  reconstructs: bool  # Has a reconstruction term.
  weighs_terms: bool  # Its loss is config.rec_weight * L_rec + config.cls_weight * L_cls.
  gated: bool  # The validation gate decides, each epoch, whether pseudo-labels may be assigned.
  needs_init_from: bool  # Starts from the encoder of another run (config.init_from).

  def trains_reconstruction(self, config) -> bool:
    """Whether a run of `config` trains on the reconstruction loss (SSMAE drops it at config.rec_weight=0)."""
    return self.reconstructs and (bool(config.rec_weight) or not self.weighs_terms)

  def has_teacher(self, config) -> bool:
    """Whether a run of `config` keeps a teacher that picks pseudo-labels (config.teacher_ema; SSMAE only)."""
    return self.gated and bool(config.get('teacher_ema', 0.0))


METHODS: dict[str, Method] = {m.name: m for m in (
    Method('ssmae', steps.make_train_step, uses_labeled=True, uses_unlabeled=True, classifies=True,
           reconstructs=True, weighs_terms=True, gated=True, needs_init_from=False),
    Method('supervised', baselines.make_supervised_step, uses_labeled=True, uses_unlabeled=False, classifies=True,
           reconstructs=False, weighs_terms=False, gated=False, needs_init_from=False),
    Method('mae_pretrain', baselines.make_mae_step, uses_labeled=False, uses_unlabeled=True, classifies=False,
           reconstructs=True, weighs_terms=False, gated=False, needs_init_from=False),
    Method('finetune', baselines.make_supervised_step, uses_labeled=True, uses_unlabeled=False, classifies=True,
           reconstructs=False, weighs_terms=False, gated=False, needs_init_from=True),
)}


def get(name: str) -> Method:
  if name not in METHODS:
    raise UserError(f'config.method={name!r} is not a method: choose one of {", ".join(METHODS)}.')
  return METHODS[name]

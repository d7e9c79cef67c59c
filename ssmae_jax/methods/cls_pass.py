"""Speed only: SSMAE's classification term L_cls, its gradient and the pseudo-label selection, computed with as
little work as each step allows. `ssmae.objective` is what it computes; tests/test_steps.py checks they agree.

Which work a step needs is chosen on device, from replicated values, with lax.switch, so the work that cannot change
the loss is skipped, not masked out:
- labeled_only: the gate is closed and no example of the batch is remembered: L_cls over the labeled images alone.
- with_memory: the gate is closed; the remembered examples train towards their stored labels.
- gate_open: the view L_cls does not train gets a forward pass only (outside the differentiated function), then
  the selection rule runs on both views inside L_cls's pass. With a teacher (config.teacher_ema), its forward passes
  of both views select the targets before the pass, as for remembered examples.
The pass's forward and backward both live inside one branch: a switch inside the differentiated function would make
every branch output the residuals of every other branch (as zeros), which costs more than the skipped work saves.
In a sweep (ssmae_jax/sweep.py) the runs agree on the most expensive branch any of them needs (vmap would otherwise
compute them all); a run whose gate is closed then takes the gate-open work with its selection masked off
(`Problem.gate_is_open`), which gives the loss and gradient of its own branch.

With config.unlabeled_cls_rows = k > 0, a branch that classifies unlabeled examples first narrows them to the
candidates that can be used (the remembered ones, and while the gate is open those confident on the view that gets
the forward pass only: selection needs both views confident). When there are at most k, only those rows, gathered,
go through L_cls's pass with the labeled ones (the kinds `*_rows`); otherwise all U rows do. The loss, the gradient
and the selection are the same either way.
"""

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from ssmae_jax import gate, losses, sweep

LABELED_ONLY, WITH_MEMORY, GATE_OPEN = 0, 1, 2


def kinds(config) -> tuple[str, ...]:
  """The kinds of work a step may do (the FLOPs of each differ), in the order of the step_kind metric."""
  base = ('labeled_only', 'with_memory', 'gate_open')
  return base + (('with_memory_rows', 'gate_open_rows') if config.unlabeled_cls_rows else ())


@dataclasses.dataclass(frozen=True)
class Problem:
  """One step's L_cls: images prepared at the model's size, and the memory of the batch's unlabeled examples."""
  classify: Callable  # (params, images) -> logits
  config: object
  x_l: jax.Array
  y_l: jax.Array
  x_train: jax.Array  # The unlabeled view L_cls trains (config.pseudo_label_view).
  x_other: jax.Array  # The other view: a forward pass only, for the selection.
  memory: jax.Array  # int32 [U]: each example's stored pseudo-label, -1 for none.
  remembered: jax.Array  # bool [U]: used whatever the gate (config.sticky).
  teacher: dict | None = None  # config.teacher_ema's parameters, which select the pseudo-labels.
  # bool: whether this run's gate is open; the gate-open branch selects nothing new without it (a sweep's run whose
  # gate is closed, in the branch another run needs).
  gate_is_open: jax.Array | bool = True
  # The selection's threshold: config.tau, or float [C] per class (config.class_tau_drop: gate.class_thresholds).
  tau: jax.Array | float | None = None

  @property
  def threshold(self):
    return self.config.tau if self.tau is None else self.tau

  @property
  def num_u(self) -> int:
    return self.x_train.shape[0]

  @property
  def train_on_strong(self) -> bool:
    return self.config.pseudo_label_view == 'strong'


def cls_loss(p: Problem, logits_l, ce_u, used):
  """Cross-entropy averaged over the labeled images and the used unlabeled examples."""
  ce_l = losses.cross_entropy(logits_l, p.y_l, p.config.label_smoothing)
  return (jnp.sum(ce_l) + jnp.sum(jnp.where(used, ce_u, 0.0))) / (p.x_l.shape[0] + jnp.sum(used))


def gathered(p: Problem, candidates):
  """The batch positions of the first `rows` candidates (U where there are fewer) and which of them are real."""
  (pos,) = jnp.nonzero(candidates, size=p.config.unlabeled_cls_rows, fill_value=p.num_u)
  take = lambda x: jnp.take(x, pos, axis=0, mode='clip')
  scatter = lambda base, values: base.at[pos].set(values, mode='drop')
  return take, scatter, pos < p.num_u


def narrowed(p: Problem, candidates, full_fn, rows_fn, full: bool | None, *args):
  """`full_fn(*args)` or, with config.unlabeled_cls_rows, `rows_fn(*args)` when the candidates fit in the rows.
  `full` forces one (a kind's program) -> (its outputs..., whether all U rows took the pass)."""
  if not p.config.unlabeled_cls_rows:
    return full_fn(*args) + (jnp.ones((), bool),)
  if full is not None:
    return (full_fn if full else rows_fn)(*args) + (jnp.asarray(full),)
  use_full = sweep.agree(p.config, jnp.sum(candidates) > p.config.unlabeled_cls_rows)
  return jax.lax.cond(use_full, full_fn, rows_fn, *args) + (use_full,)


def labeled_only(p: Problem, params, full=None):
  del full
  nothing = jnp.zeros((p.num_u,), bool)

  def loss_fn(params):
    logits_l = p.classify(params, p.x_l)
    return cls_loss(p, logits_l, jnp.zeros((p.num_u,), jnp.float32), nothing), logits_l

  (loss, logits_l), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  return loss, grads, (logits_l, nothing, nothing, p.memory), jnp.zeros((), bool)


def known_targets_full(p: Problem, params, used, targets):
  """L_cls with targets known before its pass (remembered, or the teacher's): (loss, grads, labeled logits)."""
  num_l = p.x_l.shape[0]

  def loss_fn(params):
    logits = p.classify(params, jnp.concatenate([p.x_l, p.x_train]))
    ce_u = losses.cross_entropy(logits[num_l:], targets, p.config.label_smoothing)
    return cls_loss(p, logits[:num_l], ce_u, used), logits[:num_l]

  (loss, logits_l), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  return loss, grads, logits_l


def known_targets_rows(p: Problem, params, used, targets):
  take, _, real = gathered(p, used)
  num_l = p.x_l.shape[0]

  def loss_fn(params):
    logits = p.classify(params, jnp.concatenate([p.x_l, take(p.x_train)]))
    ce_u = losses.cross_entropy(logits[num_l:], take(targets), p.config.label_smoothing)
    return cls_loss(p, logits[:num_l], ce_u, real), logits[:num_l]

  (loss, logits_l), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  return loss, grads, logits_l


def with_memory(p: Problem, params, full=None):
  nothing = jnp.zeros((p.num_u,), bool)
  loss, grads, logits_l, full = narrowed(p, p.remembered, lambda *a: known_targets_full(p, *a),
                                         lambda *a: known_targets_rows(p, *a), full, params, p.remembered, p.memory)
  return loss, grads, (logits_l, p.remembered, nothing, p.memory), full


def select_and_loss(p: Problem, logits, probs_other, memory):
  """The selection rule on this pass's (stopped) softmax and the other view's, and the unlabeled cross-entropy."""
  num_l = p.x_l.shape[0]
  probs_train = jax.nn.softmax(jax.lax.stop_gradient(logits[num_l:]))
  probs_w, probs_s = (probs_other, probs_train) if p.train_on_strong else (probs_train, probs_other)
  c = p.config
  targets, used, new = only_if_open(p, memory, *gate.select(probs_w, probs_s, memory, tau=p.threshold,
                                                             require_agreement=c.require_agreement, sticky=c.sticky))
  return targets, used, new, losses.cross_entropy(logits[num_l:], targets, c.label_smoothing)


def only_if_open(p: Problem, memory, targets, used, new):
  """The selection of a gate-open pass, or with this run's gate closed, the remembered examples alone."""
  if p.gate_is_open is True:
    return targets, used, new
  remembered = (memory >= 0) if p.config.sticky else jnp.zeros_like(used)
  is_open = p.gate_is_open
  return jnp.where(is_open, targets, memory), jnp.where(is_open, used, remembered), new & is_open


def gate_open_full(p: Problem, params, probs_other):
  num_l = p.x_l.shape[0]

  def loss_fn(params):
    logits = p.classify(params, jnp.concatenate([p.x_l, p.x_train]))
    targets, used, new, ce_u = select_and_loss(p, logits, probs_other, p.memory)
    return cls_loss(p, logits[:num_l], ce_u, used), (logits[:num_l], used, new, targets)

  (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  return loss, grads, aux


def gate_open_rows(p: Problem, params, probs_other):
  take, scatter, real = gathered(p, candidates_open(p, probs_other))
  num_l = p.x_l.shape[0]
  nothing = jnp.zeros((p.num_u,), bool)

  def loss_fn(params):
    logits = p.classify(params, jnp.concatenate([p.x_l, take(p.x_train)]))
    targets, used, new, ce_u = select_and_loss(p, logits, take(probs_other), take(p.memory))
    used, new = used & real, new & real
    return cls_loss(p, logits[:num_l], ce_u, used), (logits[:num_l], used, new, targets)

  (loss, (logits_l, used, new, targets)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  return loss, grads, (logits_l, scatter(nothing, used), scatter(nothing, new), scatter(p.memory, targets))


def candidates_open(p: Problem, probs_other):
  """The examples a gate-open step can use: remembered, or confident on the view with the forward pass only."""
  tau = p.threshold
  if jnp.ndim(tau):  # Per class, by the weak view's class: this view's when it is the weak one or must agree with it.
    tau = gate.example_thresholds(tau, probs_other) if p.config.require_agreement or p.train_on_strong else tau.min()
  return p.remembered | ((jnp.max(probs_other, axis=-1) > tau) & p.gate_is_open)


def gate_open(p: Problem, params, full=None):
  # Outside the differentiated function: the view not trained gets a forward pass only.
  probs_other = jax.nn.softmax(p.classify(params, p.x_other))
  return narrowed(p, candidates_open(p, probs_other), lambda *a: gate_open_full(p, *a),
                  lambda *a: gate_open_rows(p, *a), full, params, probs_other)


def gate_open_teacher(p: Problem, params, full=None):
  probs = lambda x: jax.nn.softmax(p.classify(p.teacher, x))
  x_w, x_s = (p.x_other, p.x_train) if p.train_on_strong else (p.x_train, p.x_other)
  c = p.config
  targets, used, new = only_if_open(p, p.memory, *gate.select(probs(x_w), probs(x_s), p.memory, tau=p.threshold,
                                                               require_agreement=c.require_agreement, sticky=c.sticky))
  loss, grads, logits_l, full = narrowed(p, used, lambda *a: known_targets_full(p, *a),
                                         lambda *a: known_targets_rows(p, *a), full, params, used, targets)
  return loss, grads, (logits_l, used, new, targets), full


def classification_pass(p: Problem, params, gate_is_open, kind: str | None = None):
  """(L_cls, its gradient, (labeled logits, used, new, targets), step_kind one-hot over `kinds`).

  `kind` forces that kind's work (the program whose FLOPs a step of that kind counts)."""
  open_branch = gate_open_teacher if p.teacher is not None else gate_open
  branches = [labeled_only, with_memory, open_branch]
  if kind is not None:
    base, rows, _ = kind.partition('_rows')
    index = ('labeled_only', 'with_memory', 'gate_open').index(base)
    out = branches[index](p, params, full=None if index == LABELED_ONLY else not rows)
    branch = jnp.asarray(index)
  else:
    branch = jnp.where(gate_is_open, GATE_OPEN, jnp.where(jnp.any(p.remembered), WITH_MEMORY, LABELED_ONLY))
    branch = sweep.agree(p.config, branch)
    out = jax.lax.switch(branch, [lambda params, b=b: b(p, params) for b in branches], params)
  loss, grads, aux, full = out
  return loss, grads, aux, full, _kind_one_hot(p.config, branch, full)


def _kind_one_hot(config, branch, full):
  index = branch
  if config.unlabeled_cls_rows:  # with_memory / gate_open without the full pass: their *_rows kinds, 3 / 4.
    index = jnp.where((branch == LABELED_ONLY) | full, branch, jnp.where(branch == WITH_MEMORY, 3, 4))
  return jax.nn.one_hot(index, len(kinds(config)), dtype=jnp.float32)

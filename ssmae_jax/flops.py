"""FLOPs by XLA's count: of the train steps a run took (`StepFlops`, recorded in results.json as 'flops' and in each
history record), and of a finished run up to each evaluation (`run_flops`, the report's equal-compute view).

A run counts each of its steps as the compiled program of the kind of work that step did (a method's `kinds`: for
SSMAE the branches of methods/cls_pass.py), compiled for the run's own shapes on one device: the count does not
depend on the device count, and a new method is counted by what it runs, not by what its flags say.

Runs written before results.json recorded 'flops' are counted by `legacy_step_kinds`, from the built-in methods'
flags, as this module did then: those files only hold built-in methods.
"""

import functools
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ssmae_jax import losses, masking, methods, models

NUM_CLASSES = 10  # The head's width barely changes the count; results.json does not record it.


class StepFlops:
  """XLA's FLOP count of each kind of train step of a run (`methods.Method.kinds`), each compiled once when first
  needed, for the global batch on one device."""

  def __init__(self, method, model, tx, config, state, batch: dict):
    """`state`, `batch`: the run's initial state and input_pipeline.example_batch (only their shapes are read)."""
    self.method, self.model, self.tx, self.config = method, model, tx, config
    self.kinds = method.kinds(config)
    self._flops: dict[str, float] = {}
    self._specs = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), (state, batch))

  def of(self, kind: str) -> float:
    if kind not in self._flops:
      mesh = jax.sharding.Mesh(np.asarray(jax.local_devices()[:1]), ('data',))
      step = self.method.make_step(self.model, self.tx, self.config, mesh, kind=kind if len(self.kinds) > 1 else None)
      cost = step.lower(*self._specs).compile().cost_analysis()
      self._flops[kind] = float((cost[0] if isinstance(cost, (list, tuple)) else cost)['flops'])
    return self._flops[kind]

  def counts(self, sums: dict, steps: int) -> dict[str, float]:
    """Steps of each kind in a logging window: its summed step_kind one-hots, or all `steps` for a single kind."""
    if len(self.kinds) == 1:
      return {self.kinds[0]: float(steps)}
    return {k: float(n) for k, n in zip(self.kinds, np.asarray(sums['step_kind']).tolist()) if n}

  def total(self, kind_steps: dict[str, float] | None) -> float | None:
    """The FLOPs of `kind_steps` (RunLog.kind_steps); None where they are unknown."""
    if kind_steps is None:
      return None
    return float(sum(n * self.of(kind) for kind, n in kind_steps.items() if n))


def work_flops(model: models.SSMAE, config, *, rec: int, cls: int, forward: int) -> float:
  """XLA's FLOP count (compiled for abstract shapes) of one step's work on `rec`, `cls` and `forward` images."""
  size = config.image_size
  images = lambda n: jnp.zeros((n, size, size, 3), jnp.float32)
  ids_keep, mask, ids_restore = masking.draw(config, jax.random.key(0), max(rec, 1), model.num_patches)
  params = jax.eval_shape(model.init, jax.random.key(0), images(1), ids_keep[:1], ids_restore[:1])['params']
  tx = optax.adamw(1e-3, weight_decay=config.optimizer.weight_decay)

  def work(params, opt_state):
    def loss_fn(params):
      loss = jnp.zeros(())
      if rec:
        x = images(rec)
        pred = model.apply({'params': params}, x, ids_keep, ids_restore, method=model.reconstruct)
        loss += losses.reconstruction_loss(pred, masking.patchify(x, model.patch_size), mask)
      if cls:
        logits = model.apply({'params': params}, images(cls), method=model.classify)
        loss += jnp.mean(losses.cross_entropy(logits, jnp.zeros((cls,), jnp.int32)))
      return loss

    out = model.apply({'params': params}, images(forward), method=model.classify) if forward else None
    updates, opt_state = tx.update(jax.grad(loss_fn)(params), opt_state, params)
    return optax.apply_updates(params, updates), opt_state, out

  cost = jax.jit(work).lower(params, jax.eval_shape(tx.init, params)).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost['flops'])


def legacy_step_kinds(config) -> dict[str, dict[str, int]]:
  """The kinds of train step a built-in method's run took, as the images of each part of their work: for the
  results.json files written before runs recorded their FLOPs."""
  method = methods.get(config.method)
  num_l, num_u = config.labeled_batch_size, config.unlabeled_batch_size
  rec = (num_l if method.uses_labeled else 0) + num_u if method.trains_reconstruction(config) else 0
  if not method.classifies:
    return {'step': dict(rec=num_u, cls=0, forward=0)}
  if not method.uses_unlabeled:
    return {'step': dict(rec=rec, cls=num_l, forward=0)}
  # With the gate open, forward passes only: the view L_cls does not train, or a teacher's of both views.
  forward = 2 * num_u if method.has_teacher(config) else num_u
  kinds = {'labeled_only': dict(rec=rec, cls=num_l, forward=0),
           'with_memory': dict(rec=rec, cls=num_l + num_u, forward=0),
           'gate_open': dict(rec=rec, cls=num_l + num_u, forward=forward)}
  rows = config.get('unlabeled_cls_rows', 0)
  if rows:  # The same branches with L_cls's pass over `rows` gathered unlabeled rows.
    kinds.update(with_memory_rows=dict(rec=rec, cls=num_l + rows, forward=0),
                 gate_open_rows=dict(rec=rec, cls=num_l + rows, forward=forward))
  return kinds


def _kind_flops(config_json: str, kind: str) -> float:
  config = ml_collections.ConfigDict(json.loads(config_json))
  # Compiled once per model and work: runs that differ in seeds, steps or anything else a step's program does not
  # read (the report's many runs of a few models) share the count.
  work = dict(model=config.model.to_dict(), image_size=config.image_size, mask_ratio=config.mask_ratio,
              optimizer=dict(weight_decay=config.optimizer.weight_decay))
  return _work_flops(json.dumps(work, sort_keys=True), **legacy_step_kinds(config)[kind])


@functools.cache
def _work_flops(work_json: str, rec: int, cls: int, forward: int) -> float:
  config = ml_collections.ConfigDict(json.loads(work_json))
  return work_flops(models.from_config(config, NUM_CLASSES), config, rec=rec, cls=cls, forward=forward)


def pretraining_flops(results: dict) -> float:
  """Training FLOPs of a run's pre-training stage (config.pretrain_steps); 0 without one."""
  if 'pretraining' not in results:
    return 0.0
  if results['pretraining'].get('flops') is not None:
    return results['pretraining']['flops']
  config = dict(results['config'], method='mae_pretrain', pretrain_steps=0)
  return results['pretraining']['steps'] * _kind_flops(json.dumps(config, sort_keys=True), 'step')


def before_flops(results: dict) -> float:
  """Training FLOPs before a run's first step: its pre-training stage's (config.pretrain_steps), or the whole of the
  run it started from (config.init_from; results.json's 'initialization'); 0 without either."""
  initialization = results.get('initialization')
  return pretraining_flops(results) + (run_flops(initialization)[-1] if initialization else 0.0)


def run_flops(results: dict) -> list[float]:
  """Training FLOPs of a finished run up to each of its evaluations (history records) and, last, to its end;
  those before its first step (`before_flops`: a pre-training stage, or the run it started from) come first.

  A run that recorded its FLOPs (results.json 'flops', each record's 'flops') is read as it is. For older files,
  each epoch's steps count the FLOPs of the step kind its gate record says it took: 'gate_open' while open; with
  the gate closed, 'with_memory' once the sticky memory holds a label (an upper bound: a batch without a
  remembered example takes the cheaper branch), else 'labeled_only'. With config.unlabeled_cls_rows, the epoch's
  share of steps that took the full L_cls pass (its record's train_full_cls_pass) counts the full kind, the rest
  the gathered one; without that record, all count as full. Evaluations are not counted.
  """
  history = results['history']
  if results.get('flops') is not None and all(r.get('flops') is not None for r in history):
    before = before_flops(results)
    return [before + r['flops'] for r in history] + [before + results['flops']]
  config = results['config']
  config_json = json.dumps(config, sort_keys=True)
  kinds = legacy_step_kinds(ml_collections.ConfigDict(config))
  done, out = before_flops(results), []
  for record, following in zip(history, history[1:] + [None]):
    out.append(done)
    steps = (following['step'] if following else results['steps']) - record['step']
    if steps <= 0:
      continue
    if len(kinds) == 1:
      kind = 'step'
    elif record['gate_open']:
      kind = 'gate_open'
    elif record['pseudo_labels_total'] and config.get('sticky', True):
      kind = 'with_memory'
    else:
      kind = 'labeled_only'
    full = (following or {}).get('train_full_cls_pass')
    if f'{kind}_rows' in kinds and full is not None:
      done += steps * (full * _kind_flops(config_json, kind) + (1 - full) * _kind_flops(config_json, f'{kind}_rows'))
    else:
      done += steps * _kind_flops(config_json, kind)
  return out + [done]

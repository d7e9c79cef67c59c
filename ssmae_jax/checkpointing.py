"""Orbax checkpoints in the workdir: `checkpoints/` (latest, for resume) and `best/` (by validation accuracy).

Each checkpoint holds the whole TrainState (params, optimizer, step, gate, pseudo-label memory) and a JSON
`meta` with the host-side history (epoch records, best validation accuracy, gate-open epoch, wall time), so a
resumed run continues exactly where the checkpoint was.
"""

import copy
from typing import Any

import jax
import orbax.checkpoint as ocp

from ssmae_jax import fileio
from ssmae_jax.errors import UserError


def _abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def _options(name: str, keep: int) -> ocp.CheckpointManagerOptions:
  # Each manager's own name on its cross-host barriers: both save step N at an epoch's first step, and on several
  # hosts their background commits met at the same barrier ('_async_write_complete.N is already ongoing') and the
  # run hung, then aborted.
  return ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                      multiprocessing_options=ocp.options.MultiprocessingOptions(
                                          barrier_sync_key_prefix=name))


class Checkpoints:
  """The two checkpoint managers of a run."""

  def __init__(self, workdir: str, keep: int):
    workdir = fileio.path(workdir)
    self.latest = ocp.CheckpointManager(workdir / 'checkpoints', options=_options('latest', keep),
                                        item_names=('state', 'meta'))
    self.best = ocp.CheckpointManager(workdir / 'best', options=_options('best', 1), item_names=('params', 'meta'))

  def save(self, state, meta: dict, step: int | None = None) -> None:
    """`state` as the latest checkpoint of its step (`step`: a sweep's stacked state has one per run)."""
    # `meta` may name a best checkpoint: it must be complete before a checkpoint that relies on it can be.
    self.best.wait_until_finished()
    # A copy: orbax writes it in the background while the loop goes on changing `meta` (epoch sums, history).
    self.latest.save(int(state.step) if step is None else step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(copy.deepcopy(meta))), force=True)

  def save_best(self, step: int, params, meta: dict) -> None:
    self.best.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(params), meta=ocp.args.JsonSave(meta)), force=True)

  def restore_latest(self, state_like, delete_unreadable: bool = False) -> tuple[Any, dict] | None:
    """The newest readable checkpoint as (state, meta); a corrupt one is reported and the previous one used.

    A resuming run deletes the unreadable ones (`delete_unreadable`): it would fail to save its own checkpoint of
    that step when it gets there.
    """
    for step in sorted(self.latest.all_steps(), reverse=True):
      try:
        restored = self.latest.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(_abstract(state_like)), meta=ocp.args.JsonRestore()))
      except Exception as e:  # Orbax raises many types for unreadable or mismatched files.
        if _shape_mismatch(e):
          raise UserError(f'The checkpoint at step {step} in {self.latest.directory} holds a model of another '
                          'shape than this config: use a fresh --workdir or the config it was trained with.') from e
        if delete_unreadable:
          self.latest.delete(step)
        if jax.process_index() == 0:
          print(f'Checkpoint at step {step} in {self.latest.directory} is unreadable ({type(e).__name__})'
                f'{": deleted it" if delete_unreadable else ""}; falling back to an earlier one.', flush=True)
        continue
      return restored.state, restored.meta
    return None

  def discard_best_after(self, step: int) -> None:
    """Deletes best checkpoints newer than `step`: left by a run killed before its latest checkpoint recorded them."""
    for newer in self.best.all_steps():
      if newer > step:
        self.best.delete(newer)

  def restore_params(self, which: str, params_like):
    """(params, step) of the 'best' checkpoint (falling back to the latest) or the 'latest'; None if none.

    Only the parameters are read, placed and shaped like `params_like` (arrays or jax.ShapeDtypeStruct with a
    sharding): the rest of the state (its pseudo-label memory's size) need not be known.
    """
    step = self.best.latest_step()
    if which == 'best' and step is not None:
      restored = self.best.restore(step, args=ocp.args.Composite(
          params=ocp.args.StandardRestore(_abstract(params_like))))
      return restored.params, step
    for step in sorted(self.latest.all_steps(), reverse=True):
      try:
        state = self.latest.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore())).state
      except Exception as e:  # Orbax raises many types for unreadable files.
        if jax.process_index() == 0:
          print(f'Checkpoint at step {step} in {self.latest.directory} is unreadable ({type(e).__name__}); '
                'falling back to an earlier one.', flush=True)
        continue
      where = f'The checkpoint at step {step} in {self.latest.directory}'
      return _place_like(state['params'], params_like, where), step
    return None

  def wait(self) -> None:
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    self.latest.close()
    self.best.close()


def _shape_mismatch(e: Exception) -> bool:
  text = str(e).lower()
  return 'shape' in text and ('mismatch' in text or 'does not match' in text or 'incompatible' in text)


def load_pretrained(path: str, fresh_params: dict) -> dict:
  """`fresh_params` with the encoder and decoder of the latest checkpoint of the run at `path` (its workdir).

  The classifier head stays freshly initialised: the source may have been trained for other classes, or not
  for classification at all (mae_pretrain).
  """
  path = fileio.path(path)
  directory = path if path.name == 'checkpoints' else path / 'checkpoints'
  # Read-only, with the two settings it implies spelled out (else orbax warns that it changed them).
  options = ocp.CheckpointManagerOptions(read_only=True, save_interval_steps=0, create=False)
  manager = (ocp.CheckpointManager(directory, options=options, item_names=('state', 'meta'))
             if directory.is_dir() else None)
  step = manager.latest_step() if manager else None
  if step is None:
    raise UserError(f'config.init_from={path} holds no checkpoint (looked in {directory}): point it at the workdir '
                    'of a finished run, e.g. an mae_pretrain run.')
  source = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore())).state['params']
  manager.close()
  params = dict(fresh_params)
  for part in ('encoder', 'decoder'):
    params[part] = _place_like(source.get(part, {}), fresh_params[part], f'config.init_from={path}: its {part}')
  return params


def _place_like(loaded, like, what: str):
  """`loaded` (host arrays) with the sharding and dtype of `like`; a tree of other shapes is a UserError."""
  if jax.tree.map(lambda x: x.shape, loaded) != jax.tree.map(lambda x: x.shape, like):
    raise UserError(f'{what} has another shape than this config\'s model (compare config.model and '
                    'config.image_size with the source run\'s config.json).')
  return jax.tree.map(lambda fresh, x: jax.device_put(x, fresh.sharding).astype(fresh.dtype), like, loaded)

"""What a run is made of — mesh, data, model, optimizer, initial state, checkpoints, evaluator — built by `build`.

`build` checks the config and the workdir (a run of another config or on other data is refused), then makes
every piece the loop in train.py uses; it trains nothing. Tests and scripts may change `experiment.state` before
handing the experiment to `train.train_and_evaluate`.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ssmae_jax import checkpointing, configuration, data_record, evaluation, fileio, flops, input_pipeline, masking
from ssmae_jax import methods, models, runtime, sharding, sweep, train_state
from ssmae_jax.errors import UserError


@dataclasses.dataclass
class Experiment:
  config: ml_collections.ConfigDict
  method: methods.Method
  workdir: object  # epath.Path: a local folder or a bucket.
  mesh: jax.sharding.Mesh
  splits: input_pipeline.Splits
  steps_per_epoch: int
  total_steps: int
  model: models.SSMAE
  tx: optax.GradientTransformation
  # The initial state (with config.init_from's encoder); train.train_and_evaluate returns the last one.
  state: train_state.TrainState
  checkpoints: checkpointing.Checkpoints
  evaluator: evaluation.Evaluator
  step_flops: flops.StepFlops  # XLA's count of each kind of step the run takes: what results.json's 'flops' adds up.

  @property
  def num_epochs(self) -> int:
    return math.ceil(self.total_steps / self.steps_per_epoch)

  @property
  def pool_size(self) -> int:
    return len(self.splits.unlabeled_idx)

  def evaluate(self, params, split: str) -> evaluation.EvalResult | None:
    return self.evaluator.evaluate(params, split)


def learning_rate_schedule(config, total_steps: int) -> optax.Schedule:
  o = config.optimizer
  if o.schedule == 'cosine':
    return optax.warmup_cosine_decay_schedule(0.0, o.learning_rate, o.warmup_steps,
                                              max(total_steps, o.warmup_steps + 1))
  if o.warmup_steps:
    return optax.linear_schedule(0.0, o.learning_rate, o.warmup_steps)
  return optax.constant_schedule(o.learning_rate)


def make_optimizer(config, total_steps: int) -> optax.GradientTransformation:
  o = config.optimizer
  # Weight decay on every parameter, as torch.optim.AdamW(model.parameters()) in the reference.
  adamw = optax.adamw(learning_rate_schedule(config, total_steps), b1=o.b1, b2=o.b2, weight_decay=o.weight_decay)
  if sweep.static(config).optimizer.grad_clip_norm:  # In a sweep every run clips, or none does.
    return optax.chain(optax.clip_by_global_norm(o.grad_clip_norm), adamw)
  return adamw


def initial_state(model: models.SSMAE, tx, config, pool_size: int, seed) -> train_state.TrainState:
  """The state before the first step, its parameters drawn from `seed` (an int, or a sweep's traced seed)."""
  ids_keep, _, ids_restore = masking.draw(config, jax.random.key(0), 1, model.num_patches)
  images = jnp.zeros((1, config.image_size, config.image_size, 3), jnp.float32)
  params = model.init(jax.random.key(seed), images, ids_keep, ids_restore)['params']
  return train_state.create(params, tx, pool_size, teacher=methods.get(config.method).has_teacher(config))


def init_state(model: models.SSMAE, tx, config, pool_size: int, mesh) -> train_state.TrainState:
  """The initial state, created directly with replicated sharding (no host round trip)."""
  return jax.jit(lambda: initial_state(model, tx, config, pool_size, config.seed),
                 out_shardings=sharding.replicated(mesh))()


def make_mesh(config) -> jax.sharding.Mesh:
  """The data-parallel mesh over every device; batch sizes that do not split over it stop here, before compiling."""
  mesh = sharding.make_mesh()
  for name in ('labeled_batch_size', 'unlabeled_batch_size', 'eval_batch_size'):
    sharding.check_divisible(f'config.{name}', config[name], mesh)
  return mesh


PRETRAIN_DIR = 'pretrain'  # In the workdir: the MAE pre-training stage of config.pretrain_steps.


def pretraining_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config of config.pretrain_steps's stage: the same run as mae_pretrain, for that many steps."""
  pre = config.copy_and_resolve_references()
  pre.method, pre.num_steps, pre.pretrain_steps = 'mae_pretrain', config.pretrain_steps, 0
  return pre


def build(config: ml_collections.ConfigDict, workdir: str, *, init: bool = True, mesh=None, eval_step=None,
          step_flops: flops.StepFlops | None = None) -> Experiment:
  """Everything a training run needs, in `workdir` (created; its config.json and data.json recorded or checked).

  A sweep builds each of its runs with `init=False` (no state: the sweep's stacked one trains them), and shares
  `mesh`, `eval_step` and `step_flops` among runs where they are the same."""
  configuration.validate(config)
  method = methods.get(config.method)
  workdir = fileio.path(workdir)
  is_main = jax.process_index() == 0
  mesh = mesh or make_mesh(config)
  prepare_workdir(workdir, config, record=is_main)
  runtime.ensure_compilation_cache(config, workdir)  # Before anything of the run compiles.
  splits = input_pipeline.load_splits(config)
  # Before anything is built: a checkpoint resumed on other files would label the wrong ones.
  data_record.check(workdir, splits, config, record=is_main)
  steps_per_epoch = input_pipeline.steps_per_epoch(splits, config)
  total_steps = config.num_steps or config.num_epochs * steps_per_epoch
  model = models.from_config(config, splits.num_classes)
  tx = make_optimizer(config, total_steps)
  pool_size = len(splits.unlabeled_idx)
  state = init_state(model, tx, config, pool_size, mesh) if init else None
  init_from = config.init_from or (str(workdir / PRETRAIN_DIR) if config.pretrain_steps else None)
  if init_from and init:
    state = train_state.with_params(state, checkpointing.load_pretrained(init_from, state.params))
  evaluator = evaluation.Evaluator(eval_step or evaluation.make_eval_step(model, config, mesh), config, mesh, {
      # Decoded once, not per evaluation: for folder data this reads files.
      'val': (splits.eval_images(splits.val_idx, config.image_size), splits.train_labels[splits.val_idx]),
      'test': (splits.test_images, splits.test_labels),
  })
  shapes = state if init else jax.eval_shape(lambda: initial_state(model, tx, config, pool_size, 0))
  return Experiment(config=config, method=method, workdir=workdir, mesh=mesh, splits=splits,
                    steps_per_epoch=steps_per_epoch, total_steps=total_steps, model=model, tx=tx, state=state,
                    checkpoints=checkpointing.Checkpoints(workdir, config.keep_checkpoints), evaluator=evaluator,
                    step_flops=step_flops or flops.StepFlops(method, model, tx, config, shapes,
                                                             input_pipeline.example_batch(config, splits)))


def prepare_workdir(workdir, config, record: bool) -> None:
  """Creates the workdir, refuses one that holds a run of another config, and records this config (`record`)."""
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    probe = workdir / f'.write_test_{jax.process_index()}'
    probe.write_text('')
    probe.unlink()
  except Exception as e:  # OSError locally; the bucket clients raise their own types (permissions, no bucket).
    why = getattr(e, 'strerror', None) or (str(e).splitlines() or [type(e).__name__])[0]
    raise UserError(f'Cannot write to --workdir={workdir} ({why}): choose a writable directory (for a bucket: '
                    'one that exists and that this machine\'s service account may write).') from None
  path = workdir / 'config.json'
  current = configuration.to_dict(config)
  if path.exists():
    saved = fileio.read_json(path)
    changed = configuration.changed_fields(saved, current)
    if changed and not config.allow_config_change:
      raise UserError(f'--workdir={workdir} holds a run of another config (changed: {", ".join(changed)}): use a '
                      'new --workdir, or pass --config.allow_config_change=True to resume it anyway.')
    filled = configuration.upgrade(saved)[1]
    if filled and record:  # A run saved by older code: the fields declared since then ran at their defaults.
      print(f'Resuming a run saved before these fields existed; they take their defaults: {", ".join(filled)}.',
            flush=True)
  if record:
    fileio.write_json(path, current, indent=2)


def hidden_labels(splits: input_pipeline.Splits) -> np.ndarray:
  """int32 [pool size]: the true label of each pool example (-1 where unknown), for pseudo-label precision only."""
  return splits.train_labels[splits.unlabeled_idx].astype(np.int32)

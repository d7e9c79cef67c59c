"""The modes that read a run's workdir (--mode=eval / reconstruct / predict / plots): each restores only what it
needs, leaves the user's config as given, and writes nothing but its output."""

import jax
import ml_collections
import numpy as np

from ssmae_jax import augment, checkpointing, configuration, data_record, evaluation, experiment, fileio
from ssmae_jax import input_pipeline, models, predict, run_output, sharding, visualize
from ssmae_jax.errors import UserError


def _require_checkpoints(workdir) -> None:
  if not (fileio.path(workdir) / 'checkpoints').is_dir():
    raise UserError(f'No checkpoints in --workdir={workdir}: train first (--mode=train) or point at a run.')


def _checkpoints(config, workdir) -> checkpointing.Checkpoints:
  _require_checkpoints(workdir)
  return checkpointing.Checkpoints(workdir, config.keep_checkpoints)


def _abstract_params(model: models.SSMAE, config, mesh):
  """The model's parameters as shapes with replicated sharding, computed without initialising them."""
  params = jax.eval_shape(lambda: experiment.init_state(model, experiment.make_optimizer(config, 1), config, 0,
                                                        mesh).params)
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding.replicated(mesh)), params)


def _restore_params(config, workdir, which: str, num_classes: int):
  """(model, params, step, mesh) of checkpoint `which` ('best' or 'latest')."""
  configuration.validate(config)
  checkpoints = _checkpoints(config, workdir)
  mesh = experiment.make_mesh(config)
  model = models.from_config(config, num_classes)
  restored = checkpoints.restore_params(which, _abstract_params(model, config, mesh))
  checkpoints.close()
  if restored is None:
    raise UserError(f'No readable checkpoint in --workdir={workdir}: train first (--mode=train).')
  return model, *restored, mesh


def evaluate(config: ml_collections.ConfigDict, workdir: str, which: str = 'best') -> dict:
  """Test accuracy and HCA of the best (or latest) checkpoint; reads the test split only."""
  _require_checkpoints(workdir)
  test = input_pipeline.load_test_split(config)
  if test.images is None:
    raise UserError(f'Dataset {config.dataset} has no test split to evaluate on: '
                    f'{input_pipeline.data_kind(config).source.no_test_fix}.')
  model, params, step, mesh = _restore_params(config, workdir, which, test.num_classes)
  result = evaluation.evaluate_arrays(evaluation.make_eval_step(model, config, mesh), params, test.images, test.labels,
                                      config, mesh)
  out = dict(checkpoint=which, step=step, test_accuracy=result.accuracy,
             high_conf_accuracy=result.high_conf_accuracy, num_confident=result.num_confident)
  if jax.process_index() == 0:
    print(f'{which} checkpoint (step {step}): test accuracy {run_output.pct(out["test_accuracy"])}, high-confidence '
          f'accuracy {run_output.pct(out["high_conf_accuracy"])} over {out["num_confident"]} confident examples.',
          flush=True)
  return out


def reconstruct(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Reconstruction grid of the latest checkpoint, on the first test images.

  -> WORKDIR/figures/reconstruction_step_N.png.
  """
  _require_checkpoints(workdir)
  test = input_pipeline.load_test_split(config)
  if test.images is None:
    raise UserError('Reconstruction grids show test images and this dataset has none: set config.test_dir (folder '
                    'data) or use a dataset with a test split.')
  model, params, step, _ = _restore_params(config, workdir, 'latest', test.num_classes)
  images = np.asarray(augment.resize(test.images[:run_output.NUM_FIGURE_IMAGES], config.image_size))
  path = fileio.path(workdir) / 'figures' / f'reconstruction_step_{step}.png'
  run_output.reconstruction_figure(model, params, images, config, path, jax.process_index() == 0)
  if jax.process_index() == 0:
    print(f'Wrote {path}', flush=True)
  return str(path)


def predict_pool(config: ml_collections.ConfigDict, workdir: str) -> str:
  """WORKDIR/pseudo_labels.csv from the latest checkpoint: its pseudo-label memory and its model's predictions on
  the unlabeled pool (which this mode decodes: the pool is part of the training split)."""
  configuration.validate(config)
  checkpoints = _checkpoints(config, workdir)
  mesh = experiment.make_mesh(config)
  splits = input_pipeline.load_splits(config)
  data_record.check(workdir, splits, config, record=False)  # The memory's indices must name the same files.
  model = models.from_config(config, splits.num_classes)
  tx = experiment.make_optimizer(config, 1)
  state_like = jax.eval_shape(lambda: experiment.init_state(model, tx, config, len(splits.unlabeled_idx), mesh))
  state_like = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding.replicated(mesh)),
                            state_like)
  restored = checkpoints.restore_latest(state_like)
  checkpoints.close()
  if restored is None:
    raise UserError(f'No readable checkpoint in --workdir={workdir}: train first (--mode=train).')
  state, _ = restored
  path = predict.write_pseudo_labels(workdir, model, state.params, state.pseudo_labels, splits, config, mesh)
  if jax.process_index() == 0:
    print(f'Wrote {path} (step {int(state.step)}).', flush=True)
  return path


def plots(workdir: str) -> list[str]:
  """Curves of a finished or running workdir from its history.json -> WORKDIR/figures/*.png."""
  workdir = fileio.path(workdir)
  paths = visualize.plot_history(visualize.load_history(workdir), workdir / 'figures')
  print('Wrote ' + ', '.join(paths))
  return paths

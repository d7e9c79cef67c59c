"""Labels for the unlabeled pool: the model's predictions beside the pseudo-label memory, in pseudo_labels.csv."""

import csv
import io

import jax
import jax.numpy as jnp
import numpy as np

from ssmae_jax import fileio, input_pipeline, methods, sharding
from ssmae_jax.methods import common
from ssmae_jax.errors import UserError

CSV_NAME = 'pseudo_labels.csv'
COLUMNS = ('path', 'pseudo_label', 'prediction', 'confidence', 'source')


def make_predict_step(model, mesh):
  """Returns `predict_step(params, images) -> (class int32 [B], its probability float32 [B])`, replicated."""

  def predict_step(params, images):
    probs = jax.nn.softmax(model.apply({'params': params}, common.prepare_images(images, model.image_size),
                                       method=model.classify))
    return jnp.argmax(probs, -1).astype(jnp.int32), jnp.max(probs, -1)

  # Replicated outputs: every process holds the predictions of the whole global batch.
  repl = sharding.replicated(mesh)
  return jax.jit(predict_step, in_shardings=(repl, sharding.data_sharded(mesh)), out_shardings=(repl, repl))


def pool_predictions(model, params, splits, config, mesh) -> tuple[np.ndarray, np.ndarray]:
  """(predicted class int32 [P], its softmax probability float32 [P]) for every pool example, in pool order."""
  predict_step = make_predict_step(model, mesh)
  classes, confidences = [], []
  for batch in input_pipeline.pool_batches(splits, config.eval_batch_size, config.image_size,
                                           resize_on_device=config.resize_on_device,
                                           process_index=jax.process_index(), process_count=jax.process_count()):
    images = sharding.to_global({'image': batch['image']}, mesh)['image']
    c, p = jax.device_get(predict_step(params, images))
    classes.append(c)
    confidences.append(p)
  n = len(splits.unlabeled_idx)
  if not n:
    return np.zeros(0, np.int32), np.zeros(0, np.float32)
  # The padding rows sit at the end of the last batch.
  return np.concatenate(classes)[:n], np.concatenate(confidences)[:n]


def pseudo_label_rows(splits, memory: np.ndarray, classes: np.ndarray, confidences: np.ndarray,
                      tau: float) -> list[tuple[str, str, str, str, str]]:
  """The rows of the pool examples its source lists (data_sources.ImageSource.csv_rows): each unlabeled-folder file,
  by path, sorted; each pool example of TFDS data, named by its train-split index.

  The pseudo-label is the memory's (source `memory`: the gate gave it during training); without one, the final
  model's prediction if its confidence exceeds tau (source `model`); else empty.
  """
  names = splits.class_names
  rows = []
  for i, path in zip(*splits.source.csv_rows(splits.unlabeled_idx)):
    if memory[i] >= 0:
      label, source = names[memory[i]], 'memory'
    elif confidences[i] > tau:
      label, source = names[classes[i]], 'model'
    else:
      label, source = '', ''
    rows.append((path, label, names[classes[i]], f'{confidences[i]:.6f}', source))
  return rows


def write_pseudo_labels(workdir: str, model, params, memory, splits, config, mesh) -> str:
  """Writes WORKDIR/pseudo_labels.csv (process 0) from the pseudo-label memory and the predictions of `params`."""
  if not methods.get(config.method).classifies:
    raise UserError(f'A {config.method} run has no trained classifier to label images with: fine-tune it first '
                    '(config.method=finetune, config.init_from=WORKDIR).')
  classes, confidences = pool_predictions(model, params, splits, config, mesh)
  rows = pseudo_label_rows(splits, np.asarray(jax.device_get(memory)), classes, confidences, config.tau)
  path = fileio.path(workdir) / CSV_NAME
  if jax.process_index() == 0:
    text = io.StringIO(newline='')
    writer = csv.writer(text)
    writer.writerow(COLUMNS)
    writer.writerows(rows)
    # Paths as the file system spells them, even where that is not valid UTF-8.
    fileio.write_text(path, text.getvalue(), errors='surrogateescape')
  return str(path)

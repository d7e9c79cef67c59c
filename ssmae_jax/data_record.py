"""WORKDIR/data.json: the data a run started on, so that a resume on other data is refused before any training.

The splits and the pseudo-label memory are indexed by position in the train split. For image folders the position
comes from the sorted file list: a file added, removed or renamed between a stop and a resume shifts the later
indices, and the resumed memory would label other files (or not fit the pool at all). data.json lists the files by
their paths relative to config.labeled_dir and config.unlabeled_dir, so moving the folders (the same files in
another place) still resumes. For a TFDS dataset it holds the size of the train split and a hash of its labels:
another version of the dataset is refused too.
"""

from ssmae_jax import fileio
from ssmae_jax.errors import UserError

FILE_NAME = 'data.json'


def describe(splits, config) -> dict:
  """What identifies the train split of `splits` (its source says: data_sources.ImageSource.describe)."""
  return splits.source.describe(splits.train_labels, splits.class_names, config)


def difference(saved: dict, current: dict, splits, config) -> str | None:
  """What differs between the data a run started on and the data now, in words; None if nothing."""
  if saved.get('dataset') != current['dataset']:
    return f'it started on dataset {saved.get("dataset")}, not {current["dataset"]}'
  return splits.source.difference(saved, current, config)


def _has_checkpoint(workdir) -> bool:
  directory = fileio.path(workdir) / 'checkpoints'
  return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())


def check(workdir: str, splits, config, record: bool) -> None:
  """Refuses data other than what the checkpoints of `workdir` were trained on; records it (`record`) otherwise.

  A workdir without a checkpoint has nothing to resume: its data.json is simply replaced. One of a run older than
  data.json is recorded at its next start.
  """
  path = fileio.path(workdir) / FILE_NAME
  current = describe(splits, config)
  if path.exists() and _has_checkpoint(workdir):
    saved = fileio.read_json(path)
    change = difference(saved, current, splits, config)
    if change is None:
      return
    raise UserError(f'The data differs from what the run in --workdir={workdir} started on ({FILE_NAME}): {change}; '
                    f'{splits.source.changed_data_fix}.')
  if record:
    fileio.write_json(path, current)

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


def _folder_change(field: str, folder: str, old: list[str], new: list[str], skip_bad: bool) -> str:
  old_set, new_set = set(old), set(new)
  added, removed = sorted(new_set - old_set), sorted(old_set - new_set)
  if not added and not removed:
    return f'config.{field}={folder} lists the same files in another order'
  parts = []
  if added:
    parts.append(f'{len(added)} file(s) added (e.g. {added[0]})')
  if removed:
    gone = 'removed or now unreadable' if skip_bad else 'removed'
    parts.append(f'{len(removed)} {gone} (e.g. {removed[0]})')
  return (f'config.{field}={folder} has {len(new)} images, {len(old)} when the run started: '
          + ' and '.join(parts))


def difference(saved: dict, current: dict, config) -> str | None:
  """What differs between the data a run started on and the data now, in words; None if nothing."""
  if saved.get('dataset') != current['dataset']:
    return f'it started on dataset {saved.get("dataset")}, not {current["dataset"]}'
  if current['dataset'] != 'folder':
    if saved == current:
      return None
    return (f'its train split had {saved.get("num_train_examples")} examples (labels sha256 '
            f'{str(saved.get("train_labels_sha256"))[:12]}), now {current["num_train_examples"]} '
            f'({current["train_labels_sha256"][:12]}): another version of the dataset')
  if saved.get('sha256') == current['sha256']:
    return None
  changes = [_folder_change(field, config[field], saved.get(key, []), current[key], config.skip_bad_images)
             for field, key in (('labeled_dir', 'labeled_files'), ('unlabeled_dir', 'unlabeled_files'))
             if saved.get(key, []) != current[key]]
  return '; '.join(changes) or 'its file list differs'


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
    change = difference(saved, current, config)
    if change is None:
      return
    if current['dataset'] == 'folder':
      fix = ('the pool indices, and with them the pseudo-label memory, would point at other files: restore the '
             'folders as they were (moving them elsewhere is fine), or train in a new --workdir')
    else:
      fix = 'use the data the run started with (config.data_dir), or train in a new --workdir'
    raise UserError(f'The data differs from what the run in --workdir={workdir} started on ({FILE_NAME}): {change}; '
                    f'{fix}.')
  if record:
    fileio.write_json(path, current)

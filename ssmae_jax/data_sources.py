"""Where the train split's images come from: in memory (a TFDS split) or files on disk (image folders).

input_pipeline builds the splits and the tf.data streams and asks the split's `ImageSource` for the few things
that differ between the two: the image a training example is augmented from, the evaluation view of an example, what
identifies the data in data.json, and which examples pseudo_labels.csv lists under which name. Nothing outside this
module tells the two apart, except through `ImageSource.has_files`.
"""

import abc
import dataclasses
import hashlib
import os
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import tensorflow as tf

from ssmae_jax import augment, fileio, folder_data

# fold_in data of a file's crop seed: apart from the seeds its views split off the same per-example seed.
_CROP_SEED = 7


def shipped_size(stored_size: int, image_size: int, resize_on_device: bool) -> int:
  """The size tf.data resizes in-memory images to before augmenting and shipping them.

  With resize_on_device, images smaller than image_size travel at their stored size and the jitted step upsamples
  them (methods.common.prepare_images): the host augments ~(image_size / stored_size)² fewer pixels. Larger ones are
  still shrunk here, where it saves the host work rather than adding it.
  """
  return min(stored_size, image_size) if resize_on_device else image_size


class ImageSource(abc.ABC):
  """The images of the train split, addressed by train index (the index into Splits.train_labels)."""

  # True: the examples are the user's files, and a run ends by labelling them in pseudo_labels.csv.
  has_files: ClassVar[bool]

  @abc.abstractmethod
  def train_image(self, image_size: int, resize_on_device: bool, aug: Any) -> Callable[..., tf.Tensor]:
    """A tf op for Dataset.map: (train index, the example's seed) -> uint8 [S, S, 3], the image its views are
    augmented from (S: see input_pipeline.train_iterator)."""

  @abc.abstractmethod
  def eval_image(self, image_size: int, resize_on_device: bool) -> Callable[[tf.Tensor], tf.Tensor]:
    """A tf op for Dataset.map: train index -> uint8 [S, S, 3], the example as evaluation sees it."""

  @abc.abstractmethod
  def eval_images(self, idx: np.ndarray, image_size: int) -> np.ndarray:
    """uint8 [len(idx), s, s, 3]: train examples idx for input_pipeline.eval_batches, which ships them at the size
    the eval step takes."""

  @abc.abstractmethod
  def describe(self, labels: np.ndarray, class_names: list[str], config: Any) -> dict:
    """What identifies the data for data.json (data_record): a resume on other data is refused."""

  @abc.abstractmethod
  def difference(self, saved: dict, current: dict, config: Any) -> str | None:
    """What differs between the `describe` record a run started on and the current one, in words; None if nothing."""

  # What a user is told to do when the data differs from what a run started on (data_record.check).
  changed_data_fix: ClassVar[str]
  # What a user is told when there is no test split to evaluate on (--mode=eval).
  no_test_fix: ClassVar[str]

  @abc.abstractmethod
  def csv_rows(self, pool_idx: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """The pool examples pseudo_labels.csv lists, in row order: (their positions in pool_idx, their names)."""


@dataclasses.dataclass(frozen=True, eq=False)
class InMemoryImages(ImageSource):
  """A train split held in memory, as TFDS ships it."""
  images: np.ndarray  # uint8 [N, h, h, 3]

  has_files = False

  def train_image(self, image_size, resize_on_device, aug):
    del aug  # The views augment the stored image as it is.
    images = tf.constant(self.images)
    size = shipped_size(self.images.shape[1], image_size, resize_on_device)

    def load(train_i, seed):
      del seed
      return augment.resize(tf.gather(images, train_i), size)
    return load

  def eval_image(self, image_size, resize_on_device):
    images = tf.constant(self.images)
    size = shipped_size(self.images.shape[1], image_size, resize_on_device)
    return lambda train_i: augment.resize(tf.gather(images, train_i), size)

  def eval_images(self, idx, image_size):
    del image_size  # At their stored size: eval_batches resizes them.
    return self.images[idx]

  def describe(self, labels, class_names, config):
    """The dataset, the size of its train split and a hash of its labels: another version is refused too."""
    del class_names
    labels = np.ascontiguousarray(labels, '<i4')
    return dict(dataset=config.dataset, num_train_examples=len(labels),
                train_labels_sha256=hashlib.sha256(labels.tobytes()).hexdigest())

  changed_data_fix = 'use the data the run started with (config.data_dir), or train in a new --workdir'
  no_test_fix = 'choose a dataset with a test split'

  def difference(self, saved, current, config):
    del config
    if saved == current:
      return None
    return (f'its train split had {saved.get("num_train_examples")} examples (labels sha256 '
            f'{str(saved.get("train_labels_sha256"))[:12]}), now {current["num_train_examples"]} '
            f'({current["train_labels_sha256"][:12]}): another version of the dataset')

  def csv_rows(self, pool_idx):
    """Every pool example, in pool order, named by its train index."""
    return np.arange(len(pool_idx)), [str(i) for i in pool_idx]


@dataclasses.dataclass(frozen=True, eq=False)
class ImageFiles(ImageSource):
  """Image files on disk, read and decoded by the tf.data streams: the labeled folder's, then the unlabeled
  folder's, each sorted (folder_data.load_folders)."""
  paths: np.ndarray  # object [N]: the file of each train example.
  num_labeled: int  # paths[:num_labeled] are in config.labeled_dir, the rest in config.unlabeled_dir.

  has_files = True

  def train_image(self, image_size, resize_on_device, aug):
    """A random resized crop of the file, drawn from the example's seed: one crop, shared by its views, as one
    stored image is for in-memory data. Files always ship image_size."""
    del resize_on_device
    paths = folder_data.path_tensor(self.paths)

    def load(train_i, seed):
      crop_seed = tf.random.experimental.stateless_fold_in(seed, _CROP_SEED)
      return folder_data.random_resized_crop(folder_data.read(tf.gather(paths, train_i)), crop_seed, image_size,
                                             aug.crop_scale, aug.crop_ratio)
    return load

  def eval_image(self, image_size, resize_on_device):
    del resize_on_device
    paths = folder_data.path_tensor(self.paths)
    return lambda train_i: folder_data.center_crop(folder_data.read(tf.gather(paths, train_i)), image_size)

  def eval_images(self, idx, image_size):
    """Decoded, centre-cropped and resized to image_size."""
    return folder_data.decode_for_eval(self.paths[idx], image_size)

  def describe(self, labels, class_names, config):
    """Every file by its path relative to its folder, in index order (moving the folders keeps the record); a
    labeled file's path starts with its class folder, so it records the label too."""
    del labels
    labeled_files = _relative(self.paths[:self.num_labeled], config.labeled_dir)
    unlabeled_files = _relative(self.paths[self.num_labeled:], config.unlabeled_dir) if config.unlabeled_dir else []
    return dict(dataset='folder', sha256=_sha256([labeled_files, unlabeled_files]),
                num_labeled_files=len(labeled_files), num_unlabeled_files=len(unlabeled_files),
                class_names=list(class_names), labeled_files=labeled_files, unlabeled_files=unlabeled_files)

  changed_data_fix = ('the pool indices, and with them the pseudo-label memory, would point at other files: restore '
                      'the folders as they were (moving them elsewhere is fine), or train in a new --workdir')
  no_test_fix = ('config.test_dir is not set: pass --config.test_dir=/path, a folder with one sub-folder of images per '
                 'class, as labeled_dir')

  def difference(self, saved, current, config):
    if saved.get('sha256') == current['sha256']:
      return None
    changes = [_folder_change(field, config[field], saved.get(key, []), current[key], config.skip_bad_images)
               for field, key in (('labeled_dir', 'labeled_files'), ('unlabeled_dir', 'unlabeled_files'))
               if saved.get(key, []) != current[key]]
    return '; '.join(changes) or 'its file list differs'

  def csv_rows(self, pool_idx):
    """The unlabeled folder's files in the pool (what the user came to label), by path, sorted."""
    positions = np.flatnonzero(pool_idx >= self.num_labeled)
    names = [str(p) for p in self.paths[pool_idx[positions]]]
    order = sorted(range(len(names)), key=names.__getitem__)
    return positions[order], [names[k] for k in order]


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


def _relative(paths, root: str) -> list[str]:
  if fileio.is_remote(root):
    # Not os.path.relpath: it would take a bucket URL (gs://b/x) for a path below the current directory.
    prefix = root.rstrip('/') + '/'
    return [str(p).removeprefix(prefix) for p in paths]
  return [os.path.relpath(str(p), root) for p in paths]


def _sha256(groups: list[list[str]]) -> str:
  h = hashlib.sha256()
  for group in groups:
    for name in group:
      h.update(os.fsencode(name) + b'\n')
    h.update(b'\0')
  return h.hexdigest()

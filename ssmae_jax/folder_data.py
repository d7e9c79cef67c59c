"""Image folders as a dataset: listing, checking and decoding, as TensorFlow ops for tf.data.

A labeled folder holds one sub-folder per class (the class names are the folder names, sorted); an unlabeled folder
holds images anywhere below it. Paths are sorted, so an example's index depends only on the folder contents, never
on the file system's listing order: the pseudo-label memory, indexed by pool position, survives a resume.
"""

import dataclasses
import os

from absl import logging
from etils import epath
import numpy as np
import tensorflow as tf

from ssmae_jax import augment, fileio, methods
from ssmae_jax.errors import UserError

# What tf.io.decode_image reads; other files (notes, masks in other formats, .DS_Store) are not images of the set.
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif')
_CHECK_BATCH = 1024


@dataclasses.dataclass(frozen=True)
class FolderData:
  """Checked, sorted file lists of the folders of a config."""
  class_names: list[str]
  labeled_paths: list[str]
  labeled_labels: np.ndarray  # int32, index into class_names
  unlabeled_paths: list[str]
  test_paths: list[str] | None
  test_labels: np.ndarray | None


def _is_image(name: str) -> bool:
  return not name.startswith('.') and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _require_dir(path: str | None, field: str) -> str:
  if not path:
    raise UserError(f'config.{field} is not set: pass --config.{field}=/path/to/folder.')
  if not epath.Path(path).is_dir():
    raise UserError(f'config.{field}={path} is not a folder (missing or misspelt?).')
  return path


def list_images(root: str) -> list[str]:
  """Sorted paths of the image files anywhere below root; hidden files and folders are skipped."""
  found = []
  for dirpath, dirnames, filenames in fileio.walk(root):
    dirnames[:] = [d for d in dirnames if not d.startswith('.')]
    found += [str(dirpath / f) for f in filenames if _is_image(f)]
  # Every path starts with root, so this is also the order of the paths relative to it.
  return sorted(found)


def class_folders(root: str, field: str) -> dict[str, list[str]]:
  """{class name: sorted image paths} of the sub-folders of root, in name order; an empty class is an error."""
  _require_dir(root, field)
  names = sorted(d.name for d in epath.Path(root).iterdir() if not d.name.startswith('.') and d.is_dir())
  classes = {}
  for name in names:
    folder = str(epath.Path(root) / name)
    classes[name] = list_images(folder)
    if not classes[name]:
      raise UserError(f'Class folder {folder} holds no image ({", ".join(IMAGE_EXTENSIONS)}): add images or remove '
                      'the folder.')
  return classes


def path_tensor(paths) -> tf.Tensor:
  """tf.string [n] of the paths as the file system spells them (any file name, not just ASCII)."""
  return tf.constant([os.fsencode(str(p)) for p in paths], tf.string, shape=[len(paths)])


def decode(contents: tf.Tensor) -> tf.Tensor:
  """Encoded JPEG / PNG / BMP / GIF (first frame) bytes -> uint8 [h, w, 3]; grayscale is repeated, alpha dropped."""
  image = tf.io.decode_image(contents, channels=3, dtype=tf.uint8, expand_animations=False)
  return tf.ensure_shape(image, [None, None, 3])


def _read_with_epath(path: bytes) -> bytes:
  return epath.Path(os.fsdecode(path)).read_bytes()


def read(path: tf.Tensor) -> tf.Tensor:
  """A file's decoded image; a bucket's (gs://...) through epath, so it is read by the client the workdir uses."""
  remote = tf.strings.regex_full_match(path, '[a-zA-Z][a-zA-Z0-9+.-]*://.*')
  contents = tf.cond(remote, lambda: tf.numpy_function(_read_with_epath, [path], tf.string, stateful=False),
                     lambda: tf.io.read_file(path))
  return decode(tf.ensure_shape(contents, []))


def random_resized_crop(image: tf.Tensor, seed: tf.Tensor, size: int, scale=(0.35, 1.0),
                        ratio=(3 / 4, 4 / 3)) -> tf.Tensor:
  """A crop of U(scale) of the area with aspect ratio log-U(ratio), resized to uint8 [size, size, 3].

  One draw, always valid: a crop that does not fit is shrunk, keeping its aspect ratio, until it does, so an image
  far from square gives a smaller crop rather than a squashed one.
  """
  area_seed, ratio_seed, y_seed, x_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
  shape = tf.shape(image)
  h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
  area = h * w * tf.random.stateless_uniform([], area_seed, scale[0], scale[1])
  aspect = tf.exp(tf.random.stateless_uniform([], ratio_seed, np.log(ratio[0]), np.log(ratio[1])))
  crop_w, crop_h = tf.sqrt(area * aspect), tf.sqrt(area / aspect)
  shrink = tf.minimum(1.0, tf.minimum(h / crop_h, w / crop_w))
  crop_h = tf.cast(tf.clip_by_value(tf.round(crop_h * shrink), 1.0, h), tf.int32)
  crop_w = tf.cast(tf.clip_by_value(tf.round(crop_w * shrink), 1.0, w), tf.int32)
  y = tf.cast(tf.random.stateless_uniform([], y_seed) * tf.cast(shape[0] - crop_h + 1, tf.float32), tf.int32)
  x = tf.cast(tf.random.stateless_uniform([], x_seed) * tf.cast(shape[1] - crop_w + 1, tf.float32), tf.int32)
  # uniform is in [0, 1), so y <= h - crop_h; the minimum guards against float rounding all the same.
  y, x = tf.minimum(y, shape[0] - crop_h), tf.minimum(x, shape[1] - crop_w)
  return augment.resize(image[y:y + crop_h, x:x + crop_w], size)


def center_crop(image: tf.Tensor, size: int) -> tf.Tensor:
  """The evaluation view: the central square (side = the shorter side), resized to uint8 [size, size, 3]."""
  shape = tf.shape(image)
  side = tf.minimum(shape[0], shape[1])
  y, x = (shape[0] - side) // 2, (shape[1] - side) // 2
  return augment.resize(image[y:y + side, x:x + side], size)


def decode_for_eval(paths, size: int) -> np.ndarray:
  """Files -> uint8 [n, size, size, 3] evaluation views, in order, decoded in parallel."""
  if not len(paths):
    return np.zeros((0, size, size, 3), np.uint8)
  ds = tf.data.Dataset.from_tensor_slices(path_tensor(paths))
  ds = ds.map(augment.plain(lambda p: center_crop(read(p), size)), num_parallel_calls=tf.data.AUTOTUNE,
              deterministic=True)
  return np.concatenate(list(ds.batch(_CHECK_BATCH).prefetch(1).as_numpy_iterator()))


def _readable(paths: list[str]) -> np.ndarray:
  """bool [n]: whether each file reads and decodes; one parallel pass over the files."""
  ds = tf.data.Dataset.from_tensor_slices((np.arange(len(paths)), path_tensor(paths)))
  # The shape is all that is kept of each image, so only a few images are alive at a time.
  ds = ds.map(augment.plain(lambda i, p: (i, tf.shape(read(p)))), num_parallel_calls=tf.data.AUTOTUNE,
              deterministic=False)
  ok = np.zeros(len(paths), bool)
  for indices, _ in ds.ignore_errors().batch(_CHECK_BATCH).as_numpy_iterator():
    ok[indices] = True
  return ok


def _why_unreadable(path: str) -> str:
  try:
    read(path_tensor([path])[0])
  except tf.errors.OpError as e:
    return e.message.strip().splitlines()[0] if e.message.strip() else type(e).__name__
  return 'unknown error'


def check_readable(paths: list[str], skip_bad: bool) -> list[str]:
  """The paths whose files decode; an unreadable one is a UserError naming it, or (skip_bad) dropped and counted."""
  if not paths:
    return paths
  ok = _readable(paths)
  bad = [p for p, good in zip(paths, ok) if not good]
  if not bad:
    return paths
  if not skip_bad:
    more = f' (and {len(bad) - 1} more)' if len(bad) > 1 else ''
    raise UserError(f'Cannot read image {bad[0]}{more}: {_why_unreadable(bad[0])}. Fix or remove it, or set '
                    'config.skip_bad_images=True to skip unreadable files.')
  logging.warning('Skipped %d unreadable image(s) (config.skip_bad_images=True), e.g. %s.', len(bad), bad[0])
  return [p for p, good in zip(paths, ok) if good]


def load_folders(config) -> FolderData:
  """Lists and checks config.labeled_dir, unlabeled_dir and test_dir: every image decodes before training starts."""
  classes = class_folders(config.labeled_dir, 'labeled_dir')
  if len(classes) < 2:
    loose = len([f for f in epath.Path(config.labeled_dir).iterdir() if _is_image(f.name)])
    found = f' ({", ".join(classes)})' if classes else ''
    loose_note = f'; its {loose} images outside class folders are not read' if loose else ''
    raise UserError(f'config.labeled_dir={config.labeled_dir} has {len(classes)} class folder(s){found}{loose_note}: '
                    'it needs one sub-folder of images per class, at least 2 classes.')
  class_names = list(classes)
  if not config.unlabeled_dir and methods.get(config.method).uses_unlabeled:
    raise UserError(f'config.method={config.method} needs unlabeled images: pass --config.unlabeled_dir=/path.')
  unlabeled = list_images(_require_dir(config.unlabeled_dir, 'unlabeled_dir')) if config.unlabeled_dir else []
  if config.unlabeled_dir and not unlabeled:
    raise UserError(f'config.unlabeled_dir={config.unlabeled_dir} holds no image ({", ".join(IMAGE_EXTENSIONS)}).')
  test = None
  if config.test_dir:
    test = class_folders(config.test_dir, 'test_dir')
    unknown = [name for name in test if name not in classes]
    if unknown:
      raise UserError(f'Class folder {os.path.join(config.test_dir, unknown[0])} is not a class of '
                      f'config.labeled_dir={config.labeled_dir} (classes: {", ".join(class_names)}).')
    if not test:
      raise UserError(f'config.test_dir={config.test_dir} has no class folder: it needs the layout of labeled_dir.')

  # One pass over every file, so a corrupt image is found now and not hours into training.
  groups = [*classes.values(), unlabeled, *(test.values() if test else [])]
  kept = set(check_readable([p for paths in groups for p in paths], config.skip_bad_images))
  labeled_paths, labeled_labels = [], []
  for label, (name, paths) in enumerate(classes.items()):
    paths = [p for p in paths if p in kept]
    if not paths:
      raise UserError(f'Class folder {os.path.join(config.labeled_dir, name)} has no readable image.')
    labeled_paths += paths
    labeled_labels += [label] * len(paths)
  unlabeled = [p for p in unlabeled if p in kept]
  if config.unlabeled_dir and not unlabeled:
    raise UserError(f'config.unlabeled_dir={config.unlabeled_dir} has no readable image.')
  test_paths = test_labels = None
  if test:
    test_paths, labels = [], []
    for name, paths in test.items():
      paths = [p for p in paths if p in kept]
      test_paths += paths
      labels += [class_names.index(name)] * len(paths)
    test_labels = np.asarray(labels, np.int32)
  return FolderData(class_names=class_names, labeled_paths=labeled_paths,
                    labeled_labels=np.asarray(labeled_labels, np.int32), unlabeled_paths=unlabeled,
                    test_paths=test_paths, test_labels=test_labels)

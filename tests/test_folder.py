"""Image folders as a dataset (issue 7): listing, decoding, splits, streams, end to end, pseudo_labels.csv, bad data."""

import csv
import json
import os
import pathlib
import re
import shutil
import subprocess
import types
import sys

import numpy as np
import pytest
import tensorflow as tf

from ssmae_jax.configs import folder
from ssmae_jax import configuration, data_record, data_sources, experiment, folder_data, inference, input_pipeline
from ssmae_jax import predict, train
from ssmae_jax.errors import UserError
from test_input_pipeline import fake_tfds  # noqa: F401  (a fixture: synthetic TFDS data)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ('alpha', 'beta', 'gamma')
COLOURS = ((200, 40, 40), (40, 200, 40), (40, 40, 200))
PER_CLASS, UNLABELED, TEST_PER_CLASS = 14, 40, 4


def _write(path, image: np.ndarray, fmt: str) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  encoded = tf.io.encode_png(image) if fmt == 'png' else tf.io.encode_jpeg(image, quality=95)
  with open(path, 'wb') as f:
    f.write(encoded.numpy())


def _image(rng, label: int, k: int) -> tuple[np.ndarray, str]:
  """A noisy image in its class colour, of a random size and aspect; every 4th grayscale, every 3rd a JPEG."""
  h, w = rng.integers(12, 70, 2)
  image = np.clip(np.asarray(COLOURS[label]) + rng.normal(0, 30, (h, w, 3)), 0, 255).astype(np.uint8)
  if k % 4 == 0:
    image = image.mean(-1, keepdims=True).astype(np.uint8)
  return image, 'jpg' if k % 3 == 0 else 'png'


def make_folders(root, seed: int = 0) -> dict:
  """labeled/<class>/ (one nested sub-folder), unlabeled/ (flat and nested), test/<class>/; returns their paths."""
  rng = np.random.default_rng(seed)
  dirs = {name: os.path.join(root, name) for name in ('labeled', 'unlabeled', 'test')}
  for label, name in enumerate(CLASSES):
    for k in range(PER_CLASS):
      image, fmt = _image(rng, label, k)
      sub = 'nested' if k % 5 == 0 else ''
      _write(os.path.join(dirs['labeled'], name, sub, f'{name}_{k:02d}.{fmt}'), image, fmt)
    for k in range(TEST_PER_CLASS):
      image, fmt = _image(rng, label, k)
      _write(os.path.join(dirs['test'], name, f't{k}.{fmt}'), image, fmt)
  for k in range(UNLABELED):
    image, fmt = _image(rng, k % len(CLASSES), k)
    name = f'u{k:03d}_µm.{fmt.upper()}' if k % 9 == 0 else f'u{k:03d}.{fmt.upper()}'  # Not only ASCII.
    _write(os.path.join(dirs['unlabeled'], 'deep' if k % 7 == 0 else '', name), image, fmt)
  with open(os.path.join(dirs['unlabeled'], 'notes.txt'), 'w') as f:
    f.write('not an image')
  return dirs


def folder_config(dirs, test: bool = False, **overrides):
  c = folder.get_config()
  c.labeled_dir, c.unlabeled_dir = dirs['labeled'], dirs['unlabeled']
  if test:
    c.test_dir = dirs['test']
  c.image_size = 32
  c.model.update(patch_size=8, width=32, depth=1, num_heads=2, decoder_width=32, decoder_depth=1,
                 decoder_num_heads=2)
  c.val_fraction = 0.2  # 3 of 14 per class: 33 labeled -> 4 steps per epoch.
  c.labeled_batch_size = 8
  c.unlabeled_batch_size = 16
  c.eval_batch_size = 16
  c.num_steps = 10
  c.num_epochs = 0
  c.warmup_epochs = 0
  c.gate_threshold = 0.0
  c.tau = 0.35  # 3 classes: some pool images pass, some do not.
  c.optimizer.learning_rate = 3e-3
  c.test_every_epochs = 1
  c.log_every_steps = 5
  c.checkpoint_every_steps = 5
  c.update(overrides)
  return c


@pytest.fixture(scope='module')
def dirs(tmp_path_factory):
  return make_folders(str(tmp_path_factory.mktemp('folders')))


def _copy_folders(dirs, root) -> dict:
  return {name: shutil.copytree(path, os.path.join(root, name)) for name, path in dirs.items()}


@pytest.fixture(scope='module')
def folder_run(dirs, tmp_path_factory):
  """A run stopped at step 5 and resumed to its end at step 10 after its folders moved (same files, new place):
  (finished Run, workdir, results, memory at 5, memory restored by the resumed run)."""
  workdir, root = str(tmp_path_factory.mktemp('run')), tmp_path_factory.mktemp('data')
  before = folder_config(_copy_folders(dirs, str(root / 'before')))
  first = experiment.build(before, workdir)
  stopped, results = train.train_and_evaluate(before, workdir, experiment=first, preemption=train.StopAtStep(5))
  assert results is None
  at_stop = np.asarray(stopped.pseudo_labels)
  (root / 'before').rename(root / 'after')
  after = folder_config({name: str(root / 'after' / name) for name in dirs})
  run = experiment.build(after, workdir)
  restored, _ = run.checkpoints.restore_latest(run.state)
  run.state, results = train.train_and_evaluate(after, workdir, experiment=run)  # The finished run's last state.
  return run, workdir, results, at_stop, np.asarray(restored.pseudo_labels)


def _read_csv(path):
  with open(path, newline='', encoding='utf-8') as f:
    return list(csv.DictReader(f))


# Decoding and views.

def test_grayscale_png_and_jpeg_decode_to_three_equal_channels(tmp_path):
  gray = np.arange(20 * 30, dtype=np.uint8).reshape(20, 30, 1)
  for fmt in ('png', 'jpg'):
    path = str(tmp_path / f'g.{fmt}')
    _write(path, gray, fmt)
    image = folder_data.read(tf.constant(path)).numpy()
    assert image.shape == (20, 30, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image[..., 0], image[..., 1])
    np.testing.assert_array_equal(image[..., 0], image[..., 2])


def test_eval_view_is_the_central_square_not_a_squash():
  # Left, middle and right thirds differ: a centre crop keeps only the middle colour, a squash would keep all three.
  image = np.zeros((30, 90, 3), np.uint8)
  image[:, :30] = (255, 0, 0)
  image[:, 30:60] = (0, 255, 0)
  image[:, 60:] = (0, 0, 255)
  out = folder_data.center_crop(tf.constant(image), 16).numpy()
  assert out.shape == (16, 16, 3)
  np.testing.assert_array_equal(out, np.broadcast_to(np.uint8([0, 255, 0]), (16, 16, 3)))


@pytest.mark.parametrize('shape', [(40, 40), (12, 90), (90, 12), (7, 5)])
def test_random_resized_crop_shape_determinism_and_content(shape):
  h, w = shape
  pattern = (np.arange(h)[:, None] * 3 + np.arange(w)[None, :] * 2) % 256
  image = tf.constant(np.repeat(pattern[..., None], 3, -1).astype(np.uint8))
  crop = lambda s: folder_data.random_resized_crop(image, tf.constant([s, 1], tf.int64), 24).numpy()
  outs = [crop(s) for s in range(8)]
  for out in outs:
    assert out.shape == (24, 24, 3) and out.dtype == np.uint8
    assert pattern.min() <= out.min() and out.max() <= pattern.max()
  np.testing.assert_array_equal(crop(3), outs[3])
  assert len({o.tobytes() for o in outs}) > 1
  # Inside Dataset.map the same crop; eagerly the crop's shape is static and resize may take another, equivalent
  # path, so a pixel may round the other way.
  ds = tf.data.Dataset.from_tensors(tf.constant([3, 1], tf.int64)).map(
      lambda s: folder_data.random_resized_crop(image, s, 24))
  np.testing.assert_allclose(next(iter(ds)).numpy(), outs[3], atol=1)


def test_random_resized_crop_keeps_the_aspect_of_a_long_image():
  # 20 x 200, pixel value = column: a crop of aspect <= 4/3 and height <= 20 spans at most 27 columns; a squash of
  # the whole image would span 200.
  image = tf.constant(np.broadcast_to(np.arange(200, dtype=np.uint8)[None, :, None], (20, 200, 3)))
  starts = set()
  for s in range(20):
    out = folder_data.random_resized_crop(image, tf.constant([s, 0], tf.int64), 16).numpy().astype(int)
    assert out.max() - out.min() <= 27
    starts.add(out.min() // 20)
  assert len(starts) > 3  # The crop's position varies along the image.


# Listing and splits.

def test_splits_of_folders(dirs):
  config = folder_config(dirs, test=True)
  splits = input_pipeline.load_splits(config)
  assert splits.class_names == list(CLASSES) and splits.num_classes == 3
  assert splits.has_files
  n_labeled = len(CLASSES) * PER_CLASS
  paths = [str(p) for p in splits.source.paths]
  assert len(paths) == n_labeled + UNLABELED
  # Labels from folder names; nested sub-folders of a class folder count; the pool is the unlabeled folder, sorted.
  for i in range(n_labeled):
    assert os.path.relpath(paths[i], dirs['labeled']).split(os.sep)[0] == CLASSES[splits.train_labels[i]]
  pool = [paths[i] for i in splits.unlabeled_idx]
  assert pool == sorted(pool) and len(pool) == UNLABELED
  assert all(p.startswith(dirs['unlabeled']) for p in pool)
  assert not any(p.endswith('.txt') for p in pool)
  assert (splits.train_labels[splits.unlabeled_idx] == -1).all()
  # The same class-balanced carving as for TFDS data: 3 of 14 per class to validation.
  np.testing.assert_array_equal(np.bincount(splits.train_labels[splits.val_idx]), [3, 3, 3])
  np.testing.assert_array_equal(np.bincount(splits.train_labels[splits.labeled_idx]), [11, 11, 11])
  assert not set(splits.val_idx) & set(splits.labeled_idx)
  assert splits.test_images.shape == (len(CLASSES) * TEST_PER_CLASS, 32, 32, 3)
  np.testing.assert_array_equal(np.bincount(splits.test_labels), [TEST_PER_CLASS] * 3)
  # Stable: listing again gives the same indices.
  again = input_pipeline.load_splits(config)
  np.testing.assert_array_equal(again.source.paths, splits.source.paths)
  np.testing.assert_array_equal(again.val_idx, splits.val_idx)


def test_folder_streams_are_a_pure_function_of_seed_and_step(dirs):
  config = folder_config(dirs)
  splits = input_pipeline.load_splits(config)
  it = input_pipeline.train_iterator(splits, config, 0)
  batches = [next(it) for _ in range(6)]
  for key in ('labeled_image', 'unlabeled_weak', 'unlabeled_strong', 'unlabeled_mae'):
    assert batches[0][key].shape[1:] == (32, 32, 3) and batches[0][key].dtype == np.uint8
  assert ((batches[0]['labeled_label'] >= 0) & (batches[0]['labeled_label'] < 3)).all()
  resumed = input_pipeline.train_iterator(splits, config, 4)
  for want in batches[4:]:
    got = next(resumed)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key], err_msg=key)
  # The labeled view is a random crop of the file: two epochs of the same image differ.
  assert not np.array_equal(batches[0]['labeled_image'], batches[4]['labeled_image'])


# End to end.

def test_training_on_folders_writes_results_without_test_metrics(folder_run):
  _, workdir, *_ = folder_run
  with open(os.path.join(workdir, 'results.json')) as f:
    saved = json.load(f)
  assert saved['steps'] == 10 and saved['dataset'] == 'folder'
  for key in ('test_accuracy', 'high_conf_accuracy', 'test_accuracy_at_best_val', 'pseudo_label_precision'):
    assert saved[key] is None, key
  assert 0.0 <= saved['best_val_accuracy'] <= 1.0
  assert saved['pseudo_labels_total'] > 0
  assert all(r['test_accuracy'] is None and r['pseudo_label_precision'] is None for r in saved['history'])
  with open(os.path.join(workdir, 'history.json')) as f:
    assert json.load(f)['unlabeled_class_counts'] is None


def test_pseudo_labels_csv_covers_every_unlabeled_file_once(folder_run):
  run, workdir, *_ = folder_run
  rows = _read_csv(os.path.join(workdir, 'pseudo_labels.csv'))
  assert list(rows[0]) == list(predict.COLUMNS)
  paths = [r['path'] for r in rows]
  # Where the folder is now (it moved before the resume).
  on_disk = [str(p) for p in pathlib.Path(run.config.unlabeled_dir).rglob('*') if p.suffix.lower() in ('.png', '.jpg')]
  assert paths == sorted(on_disk) and len(set(paths)) == UNLABELED
  memory = np.asarray(run.state.pseudo_labels)
  pool = [str(run.splits.source.paths[i]) for i in run.splits.unlabeled_idx]
  sources = set()
  for row in rows:
    label = memory[pool.index(row['path'])]
    assert row['prediction'] in CLASSES
    confidence = float(row['confidence'])
    assert 1 / len(CLASSES) - 1e-6 <= confidence <= 1.0
    if label >= 0:
      assert (row['source'], row['pseudo_label']) == ('memory', CLASSES[label])
    elif confidence > run.config.tau:
      assert (row['source'], row['pseudo_label']) == ('model', row['prediction'])
    else:
      assert (row['source'], row['pseudo_label']) == ('', '')
    sources.add(row['source'])
  assert 'memory' in sources
  assert sum(r['source'] == 'memory' for r in rows) == int((memory >= 0).sum())


def test_predict_mode_rewrites_the_same_csv(folder_run):
  run, workdir, *_ = folder_run
  path = os.path.join(workdir, 'pseudo_labels.csv')
  before = _read_csv(path)
  os.remove(path)
  assert inference.predict_pool(run.config, workdir) == path
  assert _read_csv(path) == before


def test_resume_from_moved_folders_keeps_the_pseudo_label_memory(folder_run, dirs):
  run, workdir, _, at_stop, restored = folder_run
  assert os.path.basename(os.path.dirname(run.config.labeled_dir)) == 'after'
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['unlabeled_dir'] == run.config.unlabeled_dir  # Recorded without allow_config_change.
  # test_dir may change on resume too: it is never trained on.
  assert configuration.changed_fields(configuration.to_dict(folder_config(dirs)),
                                      configuration.to_dict(folder_config(dirs, test=True))) == []
  assert (at_stop >= 0).any()
  np.testing.assert_array_equal(restored, at_stop)
  assert int(run.state.step) == 10
  final = np.asarray(run.state.pseudo_labels)
  np.testing.assert_array_equal(final[at_stop >= 0], at_stop[at_stop >= 0])  # Sticky across the resume.


def test_predict_on_a_tfds_dataset_names_pool_examples_by_train_index(fake_tfds, folder_run, dirs, tmp_path):
  run, *_ = folder_run
  config = folder_config(dirs, dataset='cifar10', data_dir=fake_tfds('cifar10', num_train=60, num_test=10),
                         labeled_dir=None, unlabeled_dir=None, label_fraction=0.5, unlabeled_includes_labeled=True)
  splits = input_pipeline.load_splits(config)
  memory = np.full(len(splits.unlabeled_idx), -1, np.int32)
  memory[1] = 2
  # Any model of this image size will do: the folder run's (3 classes) labels these with 3 of CIFAR-10's names.
  path = predict.write_pseudo_labels(str(tmp_path), run.model, run.state.params, memory, splits, config, run.mesh)
  rows = _read_csv(path)
  assert [r['path'] for r in rows] == [str(i) for i in splits.unlabeled_idx]
  assert len(rows) == 60 - 10  # The pool is the train split minus the 10 validation examples.
  assert (rows[1]['pseudo_label'], rows[1]['source']) == (splits.class_names[2], 'memory')
  assert all(r['prediction'] in splits.class_names[:3] for r in rows)


def test_eval_without_a_test_folder_asks_for_test_dir(folder_run, dirs):
  _, workdir, *_ = folder_run
  with pytest.raises(UserError, match=r'config\.test_dir is not set.*--config\.test_dir=.*one sub-folder of images '
                                      'per class'):
    inference.evaluate(folder_config(dirs), workdir)


# Folders changed between a stop and a resume (moved ones: folder_run).

def test_resume_on_changed_folders_is_refused_before_building_anything(dirs, tmp_path, monkeypatch):
  data = _copy_folders(dirs, str(tmp_path / 'data'))
  workdir = str(tmp_path / 'run')
  first = experiment.build(folder_config(data, num_steps=4), workdir)
  first.checkpoints.save(first.state, {})  # What a stopped run leaves (at step 0 here: no step to compile).
  first.checkpoints.wait()
  first.checkpoints.close()
  with open(os.path.join(workdir, data_record.FILE_NAME)) as f:
    record = json.load(f)
  assert (record['num_labeled_files'], record['num_unlabeled_files']) == (len(CLASSES) * PER_CLASS, UNLABELED)
  assert 'deep/u000_µm.JPG' in record['unlabeled_files'] and 'alpha/nested/alpha_00.jpg' in record['labeled_files']

  def refused(match):
    # The check comes before the model is built: building it here would fail the test with another error.
    with monkeypatch.context() as m:
      m.setattr(experiment, 'init_state', lambda *a: pytest.fail('built the model before checking the data'))
      with pytest.raises(UserError, match=match) as e:
        experiment.build(folder_config(data, num_steps=4), workdir)
    assert 'shape' not in str(e.value)
    return str(e.value)

  unlabeled, labeled = pathlib.Path(data['unlabeled']), pathlib.Path(data['labeled'])
  _write(str(unlabeled / 'deep' / 'new.png'), np.zeros((9, 9, 3), np.uint8), 'png')
  refused(rf'^The data differs from what the run in --workdir={re.escape(workdir)} started on \(data\.json\): '
          rf'config\.unlabeled_dir={re.escape(data["unlabeled"])} has 41 images, 40 when the run started: '
          r'1 file\(s\) added \(e\.g\. deep/new\.png\); the pool indices.*restore the folders.*'
          r'or train in a new --workdir\.$')
  # As many files as before, but one is another: the memory would silently label the wrong file.
  (unlabeled / 'u001.PNG').rename(tmp_path / 'u001.PNG')
  message = refused(r'has 40 images, 40 when the run started: 1 file\(s\) added \(e\.g\. deep/new\.png\) and 1 '
                    r'removed \(e\.g\. u001\.PNG\)')
  assert 'labeled_dir' not in message.replace('unlabeled_dir', '')
  with pytest.raises(UserError, match='1 removed'):
    inference.predict_pool(folder_config(data, num_steps=4), workdir)  # Would write the wrong labels to the CSV.
  (unlabeled / 'deep' / 'new.png').unlink()
  (tmp_path / 'u001.PNG').rename(unlabeled / 'u001.PNG')
  # A labeled file moved to another class folder: its label changed.
  (labeled / 'alpha' / 'alpha_01.png').rename(labeled / 'beta' / 'alpha_01.png')
  refused(rf'config\.labeled_dir={re.escape(data["labeled"])} has 42 images, 42 when the run started: '
          r'1 file\(s\) added \(e\.g\. beta/alpha_01\.png\) and 1 removed \(e\.g\. alpha/alpha_01\.png\)')
  (labeled / 'beta' / 'alpha_01.png').rename(labeled / 'alpha' / 'alpha_01.png')
  # Restored as they were: the refusals recorded nothing, and the run resumes.
  with open(os.path.join(workdir, data_record.FILE_NAME)) as f:
    assert json.load(f) == record
  run = experiment.build(folder_config(data, num_steps=4), workdir)
  assert run.checkpoints.restore_latest(run.state) is not None
  run.checkpoints.close()


def test_data_record_rules(dirs, tmp_path):
  data = _copy_folders(dirs, str(tmp_path / 'data'))
  config, workdir = folder_config(data), str(tmp_path / 'run')
  os.makedirs(workdir)
  data_record.check(workdir, input_pipeline.load_splits(config), config, record=True)
  # No checkpoint yet, so nothing to resume: changed files are recorded afresh.
  os.remove(os.path.join(data['unlabeled'], 'u002.PNG'))
  data_record.check(workdir, input_pipeline.load_splits(config), config, record=True)
  with open(os.path.join(workdir, data_record.FILE_NAME)) as f:
    assert json.load(f)['num_unlabeled_files'] == UNLABELED - 1
  os.makedirs(os.path.join(workdir, 'checkpoints', '3'))
  _write(os.path.join(data['unlabeled'], 'u002.PNG'), np.zeros((9, 9, 3), np.uint8), 'png')
  with pytest.raises(UserError, match=r'1 file\(s\) added \(e\.g\. u002\.PNG\)'):
    data_record.check(workdir, input_pipeline.load_splits(config), config, record=False)
  # A TFDS dataset: its size and labels.
  tfds_config = folder_config(data, dataset='cifar10')
  in_memory = data_sources.InMemoryImages(np.zeros((4, 8, 8, 3), np.uint8))
  splits = types.SimpleNamespace(source=in_memory, train_labels=np.array([0, 1, 2, 1], np.int32), class_names=CLASSES)
  saved = data_record.describe(splits, tfds_config)
  assert data_record.difference(saved, data_record.describe(splits, tfds_config), splits, tfds_config) is None
  relabeled = types.SimpleNamespace(source=in_memory, train_labels=np.array([0, 1, 1, 2], np.int32),
                                    class_names=CLASSES)
  assert 'another version' in data_record.difference(saved, data_record.describe(relabeled, tfds_config), relabeled,
                                                     tfds_config)


# Bad data: one clear error naming the file or folder.

def _expect_error(config, match):
  with pytest.raises(UserError, match=match):
    input_pipeline.load_splits(config)


def test_missing_folders(dirs, tmp_path):
  missing = str(tmp_path / 'nowhere')
  _expect_error(folder_config(dirs, labeled_dir=missing), f'labeled_dir={missing} is not a folder')
  _expect_error(folder_config(dirs, unlabeled_dir=missing), f'unlabeled_dir={missing} is not a folder')
  _expect_error(folder_config(dirs, test_dir=missing), f'test_dir={missing} is not a folder')
  _expect_error(folder_config(dirs, labeled_dir=None), 'config.labeled_dir is not set')
  _expect_error(folder_config(dirs, unlabeled_dir=None), 'unlabeled_dir')


def test_fewer_than_two_classes(dirs, tmp_path):
  one = tmp_path / 'one'
  _write(str(one / 'only' / 'a.png'), np.zeros((8, 8, 3), np.uint8), 'png')
  _write(str(one / 'loose.png'), np.zeros((8, 8, 3), np.uint8), 'png')
  _expect_error(folder_config(dirs, labeled_dir=str(one)),
                f'labeled_dir={one} has 1 class folder.*1 images outside class folders.*at least 2 classes')


def test_class_without_images(dirs, tmp_path):
  labeled = tmp_path / 'labeled'
  _write(str(labeled / 'a' / 'x.png'), np.zeros((8, 8, 3), np.uint8), 'png')
  (labeled / 'b').mkdir()
  (labeled / 'b' / 'readme.txt').write_text('no images here')
  _expect_error(folder_config(dirs, labeled_dir=str(labeled)), f'Class folder {labeled / "b"} holds no image')


def test_empty_unlabeled_folder(dirs, tmp_path):
  empty = tmp_path / 'empty'
  (empty / 'sub').mkdir(parents=True)
  _expect_error(folder_config(dirs, unlabeled_dir=str(empty)), f'unlabeled_dir={empty} holds no image')


def test_test_class_unknown_to_the_labeled_folder(dirs, tmp_path):
  test = tmp_path / 'test'
  _write(str(test / 'delta' / 'x.png'), np.zeros((8, 8, 3), np.uint8), 'png')
  _expect_error(folder_config(dirs, test_dir=str(test)), f'Class folder {test / "delta"} is not a class')


def test_corrupt_image_is_named_or_skipped(dirs, tmp_path, caplog):
  unlabeled = tmp_path / 'unlabeled'
  for k in range(3):
    _write(str(unlabeled / f'ok{k}.png'), np.full((9, 9, 3), k, np.uint8), 'png')
  bad = unlabeled / 'sub' / 'broken.jpg'
  bad.parent.mkdir()
  bad.write_bytes(b'\xff\xd8\xff\xe0 this is not a JPEG')
  _expect_error(folder_config(dirs, unlabeled_dir=str(unlabeled)), f'Cannot read image {bad}.*skip_bad_images')
  with caplog.at_level('WARNING'):
    splits = input_pipeline.load_splits(folder_config(dirs, unlabeled_dir=str(unlabeled), skip_bad_images=True))
  assert [os.path.basename(str(splits.source.paths[i])) for i in splits.unlabeled_idx] == ['ok0.png', 'ok1.png',
                                                                                          'ok2.png']
  assert 'Skipped 1 unreadable image' in caplog.text
  # A labeled image is checked too, and a truncated PNG is as bad as garbage.
  labeled = tmp_path / 'labeled'
  for name in ('a', 'b'):
    _write(str(labeled / name / 'x.png'), np.zeros((8, 8, 3), np.uint8), 'png')
  truncated = labeled / 'b' / 'y.png'
  _write(str(truncated), np.full((40, 40, 3), 7, np.uint8), 'png')
  truncated.write_bytes(truncated.read_bytes()[:60])
  _expect_error(folder_config(dirs, labeled_dir=str(labeled)), f'Cannot read image {truncated}')


def test_image_size_not_divisible_by_patch_size(dirs, tmp_path):
  with pytest.raises(UserError, match='divisible'):
    experiment.build(folder_config(dirs, image_size=30), str(tmp_path))


def test_main_prints_bad_folder_data_in_one_line(dirs, tmp_path):
  missing = tmp_path / 'nowhere'
  proc = subprocess.run(
      [sys.executable, 'main.py', '--config=configs/folder.py', f'--config.labeled_dir={missing}',
       f'--config.unlabeled_dir={dirs["unlabeled"]}', f'--workdir={tmp_path / "w"}'],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2
  assert 'Traceback' not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1] == f'error: config.labeled_dir={missing} is not a folder (missing or ' \
      'misspelt?).'

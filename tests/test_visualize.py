"""Reconstruction grids, the jitted reconstruct, PNG writing and the history plots."""

import json
import os

import jax
import jax.numpy as jnp
import matplotlib.colors
import matplotlib.image
import numpy as np
import pytest

from ssmae_jax import masking, models, visualize
from ssmae_jax.errors import UserError
from ssmae_jax.methods.common import normalize

SIZE, PATCH = 16, 4
N = (SIZE // PATCH) ** 2


def _images(n: int = 3, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)


def _mask(n: int, seed: int = 0) -> np.ndarray:
  _, mask, _ = masking.random_masking(jax.random.key(seed), n, N, 0.5)
  return np.asarray(mask)


def _tile(grid: np.ndarray, row: int, col: int, tile: int, gap: int) -> np.ndarray:
  return grid[row * (tile + gap):row * (tile + gap) + tile, col * (tile + gap):col * (tile + gap) + tile]


def _pixel_mask(mask: np.ndarray) -> np.ndarray:
  """[n, N] patch mask -> [n, H, W] bool, True on removed pixels."""
  return np.asarray(masking.unpatchify(np.repeat(mask[..., None], PATCH * PATCH * 3, -1), PATCH))[..., 0] > 0.5


def _perfect_pred(images: np.ndarray) -> np.ndarray:
  return np.asarray(masking.patchify(normalize(jnp.asarray(images)), PATCH))


def test_grid_columns_show_original_masked_reconstruction_and_pasted():
  n, scale, gap = 3, 2, 3
  images, mask = _images(n), _mask(n)
  pred = np.random.default_rng(1).normal(size=(n, N, PATCH * PATCH * 3)).astype(np.float32)
  grid = visualize.reconstruction_grid(images, pred, mask, PATCH, scale=scale, gap=gap)
  tile = SIZE * scale
  assert grid.dtype == np.uint8
  assert grid.shape == (n * tile + (n - 1) * gap, 4 * tile + 3 * gap, 3)
  assert (grid[tile:tile + gap] == visualize.GAP_COLOUR).all()
  removed = _pixel_mask(mask)
  assert removed.any() and (~removed).any()
  for i in range(n):
    original, masked, recon, pasted = (_tile(grid, i, c, tile, gap) for c in range(4))
    np.testing.assert_array_equal(original, np.repeat(np.repeat(images[i], scale, 0), scale, 1))
    masked, recon, pasted = masked[::scale, ::scale], recon[::scale, ::scale], pasted[::scale, ::scale]
    assert (masked[removed[i]] == visualize.GREY).all()
    np.testing.assert_array_equal(masked[~removed[i]], images[i][~removed[i]])
    np.testing.assert_array_equal(pasted[~removed[i]], images[i][~removed[i]])
    np.testing.assert_array_equal(pasted[removed[i]], recon[removed[i]])
    assert np.abs(recon.astype(int) - images[i]).mean() > 10


@pytest.mark.parametrize('norm_pix_loss', [False, True])
def test_grid_reconstruction_of_a_perfect_prediction_is_the_original(norm_pix_loss):
  images, mask = _images(2), _mask(2)
  pred = _perfect_pred(images)
  if norm_pix_loss:
    pred = (pred - pred.mean(-1, keepdims=True)) / np.sqrt(pred.var(-1, keepdims=True, ddof=1) + 1e-6)
  grid = visualize.reconstruction_grid(images, pred, mask, PATCH, norm_pix_loss=norm_pix_loss, scale=1, gap=2)
  for i in range(2):
    recon = _tile(grid, i, 2, SIZE, 2)
    assert np.abs(recon.astype(int) - images[i]).max() <= 1


def test_grid_default_scale_makes_tiles_at_least_96_px():
  images = np.zeros((1, 32, 32, 3), np.uint8)
  grid = visualize.reconstruction_grid(images, np.zeros((1, 64, 48), np.float32), np.zeros((1, 64)), 4)
  assert grid.shape[0] == 96


@pytest.fixture(scope='module')
def tiny():
  model = models.SSMAE(num_classes=10, image_size=SIZE, patch_size=PATCH, width=32, depth=1, num_heads=2,
                       decoder_width=32, decoder_depth=1, decoder_num_heads=2)
  ids_keep, _, ids_restore = masking.random_masking(jax.random.key(0), 1, N, 0.75)
  # Random values in the init's shapes: the test needs some parameters, and model.init costs ~10 s on 2 cores.
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)), ids_keep, ids_restore)
  leaves, treedef = jax.tree.flatten(shapes['params'])
  rng = np.random.default_rng(0)
  params = jax.tree.unflatten(treedef, [0.1 * rng.standard_normal(x.shape, np.float32) for x in leaves])
  return model, params


def test_reconstruct_shapes_and_determinism(tiny):
  model, params = tiny
  images = _images(4)
  pred, mask = visualize.reconstruct(model, params, images, mask_ratio=0.75, seed=3)
  assert pred.shape == (4, N, PATCH * PATCH * 3) and mask.shape == (4, N)
  np.testing.assert_array_equal(mask.sum(1), N - masking.num_kept(N, 0.75))
  again_pred, again_mask = visualize.reconstruct(model, params, images, mask_ratio=0.75, seed=3)
  np.testing.assert_array_equal(again_pred, pred)
  np.testing.assert_array_equal(again_mask, mask)
  other_pred, other_mask = visualize.reconstruct(model, params, images, mask_ratio=0.75, seed=4)
  assert not np.array_equal(other_mask, mask)
  assert not np.allclose(other_pred, pred)


def test_save_png_round_trips_pixels_and_creates_directories(tmp_path):
  image = _images(1)[0]
  path = str(tmp_path / 'a' / 'b' / 'grid.png')
  visualize.save_png(path, image)
  back = matplotlib.image.imread(path)
  np.testing.assert_array_equal(np.rint(back[..., :3] * 255).astype(np.uint8), image)


def _record(epoch, *, gate_open, test=True, precision=True, num_classes=10):
  trained = epoch > 0
  return dict(
      epoch=epoch, step=epoch * 10, val_accuracy=0.2 + 0.1 * epoch, val_hca=0.3 + 0.15 * epoch,
      val_num_confident=5 * epoch, gate_open=gate_open, test_accuracy=0.18 + 0.1 * epoch if test else None,
      test_hca=0.5 if test else None, pseudo_labels_total=40 * max(epoch - 1, 0),
      pseudo_labels_new=40 if epoch > 1 else 0, pseudo_label_precision=0.8 if precision and epoch > 1 else None,
      pseudo_labels_per_class=[4 * max(epoch - 1, 0) + (c % 3) for c in range(num_classes)],
      train_loss=2.0 / epoch if trained else None, train_rec_loss=1.0 / epoch if trained else None,
      train_cls_loss=1.0 / epoch if trained else None, train_labeled_accuracy=0.1 * epoch if trained else None,
      train_unlabeled_used=0.5 * (epoch - 1) if trained else None, wall_seconds=10.0 * epoch)


def _history(hidden_labels: bool = True, num_classes: int = 10) -> dict:
  """Four epochs, the gate open during epochs 2 and 3, no test at epoch 1, then the final record."""
  records = [_record(e, gate_open=e >= 2, test=e != 1, precision=hidden_labels, num_classes=num_classes)
             for e in range(4)]
  records.append(_record(4, gate_open=False, precision=hidden_labels, num_classes=num_classes))
  return dict(dataset='cifar10', method='ssmae', class_names=[f'class{c}' for c in range(num_classes)],
              unlabeled_class_counts=[100 + c for c in range(num_classes)] if hidden_labels else None,
              gate_threshold=0.7, gate_confidence=0.95, gate_opened_at_epoch=2, steps_per_epoch=10,
              epochs=records)


@pytest.mark.parametrize('hidden_labels,num_classes', [(True, 10), (False, 100)])
def test_plot_history_writes_every_png(tmp_path, hidden_labels, num_classes):
  import matplotlib.pyplot as plt
  paths = visualize.plot_history(_history(hidden_labels, num_classes), str(tmp_path / 'plots'))
  sizes = {'accuracy.png': (500, 800), 'pseudo_labels.png': (500, 800), 'pseudo_label_classes.png': (500, 800),
           'hca.png': (500, 800), 'losses.png': (500, 800), 'diagnostics.png': (900, 1200)}
  assert sorted(os.path.basename(p) for p in paths) == sorted(sizes)
  for path in paths:
    image = matplotlib.image.imread(path)
    height, width = sizes[os.path.basename(path)]
    assert abs(image.shape[0] - height) <= 5 and abs(image.shape[1] - width) <= 5, (path, image.shape)
    assert image[..., :3].std() > 0.02, path
  assert plt.get_fignums() == []


def _with_correct_per_class(history: dict) -> dict:
  """Each class c's pseudo-labels: all right but c % 3 of them (its count is 4 (epoch - 1) + c % 3)."""
  epochs = [dict(r, pseudo_labels_correct_per_class=[n - c % 3 for c, n in enumerate(r['pseudo_labels_per_class'])])
            for r in history['epochs']]
  return dict(history, epochs=epochs)


def _panels(fig):
  """The diagnostics' four panels (colour bars and twin axes left out), in reading order."""
  used, coverage, precision, gate = [ax for ax in fig.axes if ax.get_label() != '<colorbar>'][:4]
  return used, coverage, precision, gate


def test_per_class_precision_is_correct_over_given_and_blank_for_a_class_without_pseudo_labels():
  epochs, precision = visualize.per_class_precision(_with_correct_per_class(_history())['epochs'])
  # Epochs 0 and 1 have no pseudo-labels (overall precision None), so they are left out.
  np.testing.assert_array_equal(epochs, [2, 3, 4])
  given = np.asarray([[4 * (e - 1) + c % 3 for c in range(10)] for e in (2, 3, 4)], np.float64)
  np.testing.assert_allclose(precision, (given - np.arange(10) % 3) / given)
  history = _with_correct_per_class(_history())
  history['epochs'][2]['pseudo_labels_per_class'][0] = 0
  history['epochs'][2]['pseudo_labels_correct_per_class'][0] = 0
  assert np.isnan(visualize.per_class_precision(history['epochs'])[1][0, 0])


def test_per_class_precision_is_empty_for_a_history_written_before_it_was_recorded():
  epochs, precision = visualize.per_class_precision(_history()['epochs'])
  assert epochs.shape == (0,) and precision.size == 0


def test_diagnostics_draw_per_class_precision_where_recorded():
  history = _with_correct_per_class(_history())
  used, coverage, precision, _ = _panels(visualize.diagnostics_figure(history))
  # Epoch means, drawn mid-epoch like the other train curves.
  series = used.get_lines()[0]
  np.testing.assert_array_equal(series.get_xdata(), [0.5, 1.5, 2.5, 3.5])
  np.testing.assert_array_equal(series.get_ydata(), [0.0, 0.5, 1.0, 1.5])
  drawn = np.ma.filled(precision.get_images()[0].get_array(), np.nan).T  # Back to [epoch, class].
  np.testing.assert_allclose(drawn, 100 * visualize.per_class_precision(history['epochs'])[1])
  # The memory as a share of each class's pool images: epoch 4's class c holds 12 + c % 3 of 100 + c.
  shares = coverage.get_images()[0].get_array().T
  np.testing.assert_allclose(shares[4], [100 * (12 + c % 3) / (100 + c) for c in range(10)])


def test_diagnostics_of_an_older_history_draw_the_overall_precision_and_say_why():
  _, coverage, precision, _ = _panels(visualize.diagnostics_figure(_history()))
  assert precision.get_images() == []
  (overall,) = precision.get_lines()
  np.testing.assert_array_equal(overall.get_ydata(), [80.0, 80.0, 80.0])
  assert any('pseudo_labels_correct_per_class' in t.get_text() for t in precision.texts)
  assert len(coverage.get_images()) == 1


def test_diagnostics_show_each_gate_decision_and_its_confident_count():
  history = _history()
  history['epochs'][-1]['step'] = 35  # The evaluation after a last step that ends inside epoch 4.
  _, _, _, gate = _panels(visualize.diagnostics_figure(history))
  bars = gate.patches
  assert [b.get_height() for b in bars] == [r['val_num_confident'] for r in history['epochs']]
  colours = [matplotlib.colors.to_hex(b.get_facecolor()) for b in bars]
  closed, opened, after_last = (matplotlib.colors.to_hex(c) for c in ('0.45', visualize.GATE_COLOUR, '0.8'))
  assert colours == [closed, closed, opened, opened, after_last]
  assert [t.get_text() for t in gate.texts] == ['0', '5', '10', '15', '20']


def test_diagnostics_of_a_run_without_pseudo_labels_say_so():
  """A supervised run: no unlabeled examples, an empty memory, no confident count yet."""
  records = [dict(r, train_unlabeled_used=None, pseudo_labels_total=0, pseudo_label_precision=None,
                  pseudo_labels_per_class=[0] * 10, gate_open=False) for r in _history()['epochs']]
  used, coverage, precision, _ = _panels(visualize.diagnostics_figure(dict(_history(), epochs=records)))
  assert any('train_unlabeled_used' in t.get_text() for t in used.texts)
  assert any('stayed empty' in t.get_text() for t in coverage.texts)
  assert any('no pseudo-label yet' in t.get_text() for t in precision.texts)


def test_gate_spans_cover_the_epoch_after_each_open_record():
  assert visualize._gate_spans(_history()['epochs']) == [(2, 4)]


def test_load_history_round_trips(tmp_path):
  (tmp_path / 'history.json').write_text(json.dumps(_history()))
  assert visualize.load_history(str(tmp_path)) == _history()


def test_load_history_errors_on_a_missing_file(tmp_path):
  with pytest.raises(UserError, match='no history.json in .*: train first') as e:
    visualize.load_history(str(tmp_path))
  assert '\n' not in str(e.value)


def test_load_history_errors_without_epoch_records(tmp_path):
  (tmp_path / 'history.json').write_text(json.dumps(dict(_history(), epochs=[])))
  with pytest.raises(UserError, match='no epoch records'):
    visualize.load_history(str(tmp_path))

"""Pictures of a run: MAE reconstruction grids and the curves of WORKDIR/history.json.

Figures are built with matplotlib's object API (`Figure` + Agg canvas), never pyplot: nothing global is registered,
so nothing leaks between calls, it runs headless, and importing this module does not switch the backend of a
notebook or script that also uses pyplot.
"""

import functools
import io
import json
import math
import textwrap
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import matplotlib
import matplotlib.image
import matplotlib.lines
import matplotlib.patches
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ssmae_jax import fileio, masking, registry
from ssmae_jax.errors import UserError
from ssmae_jax.methods.common import prepare_images
from ssmae_jax.normalization import IMAGENET_MEAN, IMAGENET_STD

GREY = 128
GAP_COLOUR = 255
MIN_TILE_PX = 96
FIG_SIZE_IN = (8.0, 5.0)
FIG_DPI = 100
DIAGNOSTICS_SIZE_IN = (12.0, 9.0)
CLASS_TICKS_MAX = 20  # More class names than this would overlap on a panel's y axis.
NOTE_WIDTH_CHARS = 60  # A panel's note, wrapped to stay inside its half of the figure.
ANNOTATE_MAX_BARS = 40  # Up to this many gate decisions, each bar carries its count (narrower bars: unreadable).
# losses.reconstruction_loss's norm_pix targets are (x - mean) / sqrt(var(ddof=1) + eps): undone exactly below.
NORM_PIX_EPS = 1e-6
# Gold: unlike the tab10 colours of the curves, so the shading never reads as part of a series.
GATE_COLOUR = '#e6a800'
# Train metrics are means over the epoch that ended at the record, so they sit at that epoch's middle.
TRAIN_SHIFT = -0.5
# A little above 100 so markers at 100% are not cut in half by the frame.
PERCENT_YLIM = (0, 104)

_MEAN = np.asarray(IMAGENET_MEAN)
_STD = np.asarray(IMAGENET_STD)


def _to_normalised(images: np.ndarray) -> np.ndarray:
  return (images.astype(np.float32) / 255.0 - _MEAN) / _STD


def _to_uint8(normalised: np.ndarray) -> np.ndarray:
  return np.clip(np.rint((normalised * _STD + _MEAN) * 255.0), 0, 255).astype(np.uint8)


def _upsample(image: np.ndarray, scale: int) -> np.ndarray:
  return np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)


def _tile_grid(tiles: Sequence[Sequence[np.ndarray]], gap: int) -> np.ndarray:
  """Rows of equally sized [h, w, 3] tiles -> one image, `gap` pixels of GAP_COLOUR between tiles."""
  h, w, c = tiles[0][0].shape
  rows, cols = len(tiles), len(tiles[0])
  out = np.full((rows * h + (rows - 1) * gap, cols * w + (cols - 1) * gap, c), GAP_COLOUR, np.uint8)
  for r, row in enumerate(tiles):
    for k, tile in enumerate(row):
      out[r * (h + gap):r * (h + gap) + h, k * (w + gap):k * (w + gap) + w] = tile
  return out


def reconstruction_grid(images: np.ndarray, pred: np.ndarray, mask: np.ndarray, patch_size: int, *,
                        norm_pix_loss: bool = False, scale: int | None = None, gap: int = 4) -> np.ndarray:
  """One row per image: original | masked input (removed patches grey) | reconstruction | visible patches pasted.

  Args:
    images: uint8 [n, H, W, 3], the originals.
    pred: float [n, N, p*p*3], the decoder output, in the space of `methods.common.normalize` (per-patch normalised when
      the model was trained with `norm_pix_loss`: each patch is then mapped back with its original's mean/std).
    mask: [n, N], 1 on removed patches.
    patch_size: p.
    scale: integer nearest-neighbour upsampling; by default the smallest making a tile at least MIN_TILE_PX tall.
    gap: pixels between tiles, after scaling.
  Returns:
    uint8 [n*H*scale + (n-1)*gap, 4*W*scale + 3*gap, 3].
  """
  images = np.asarray(images)
  pred = np.asarray(pred, np.float32)
  mask = np.asarray(mask)
  if scale is None:
    scale = max(1, math.ceil(MIN_TILE_PX / images.shape[1]))
  target = masking.patchify(_to_normalised(images), patch_size)
  if norm_pix_loss:
    mean = target.mean(axis=-1, keepdims=True)
    pred = pred * np.sqrt(target.var(axis=-1, keepdims=True, ddof=1) + NORM_PIX_EPS) + mean
  recon = _to_uint8(masking.unpatchify(pred, patch_size))
  removed = masking.unpatchify(np.broadcast_to(mask[..., None] > 0.5, pred.shape), patch_size)
  masked = np.where(removed, np.uint8(GREY), images)
  pasted = np.where(removed, recon, images)
  columns = [images, masked, recon, pasted]
  return _tile_grid([[_upsample(col[i], scale) for col in columns] for i in range(len(images))], gap)


@functools.partial(jax.jit, static_argnames=('model', 'mask_ratio', 'masking_name'))
def _reconstruct(model, params, images: jax.Array, seed: jax.Array, mask_ratio: float, masking_name: str):
  draw = registry.maskings.get(masking_name)
  ids_keep, mask, ids_restore = draw(jax.random.key(seed), images.shape[0], model.num_patches, mask_ratio)
  pred = model.apply({'params': params}, prepare_images(images, model.image_size), ids_keep, ids_restore,
                     method=model.reconstruct)
  return pred, mask


def reconstruct(model, params, images_uint8: np.ndarray, *, mask_ratio: float, seed: int = 0,
                masking_name: str = 'random') -> tuple[np.ndarray, np.ndarray]:
  """-> (pred float32 [n, N, p*p*3], mask float32 [n, N]) for `reconstruction_grid`, under the registered masking
  `masking_name` (config.masking).

  The masks depend only on `seed` and n, so a fixed set of images gives comparable grids across epochs.
  """
  pred, mask = _reconstruct(model, params, jnp.asarray(images_uint8), jnp.int32(seed), mask_ratio, masking_name)
  return np.asarray(jax.device_get(pred)), np.asarray(jax.device_get(mask))


def save_png(path, image_uint8: np.ndarray) -> None:
  png = io.BytesIO()
  matplotlib.image.imsave(png, np.asarray(image_uint8, np.uint8), format='png')
  fileio.write_bytes(path, png.getvalue())


def load_history(workdir) -> dict:
  path = fileio.path(workdir) / 'history.json'
  if not path.exists():
    raise UserError(f'no history.json in {workdir}: train first (--mode=train) or point --workdir at a run')
  try:
    history = fileio.read_json(path)
  except json.JSONDecodeError as e:
    raise UserError(f'{path} is not valid JSON ({e}): it was not written by the trainer') from None
  if not history.get('epochs'):
    raise UserError(f'{path} has no epoch records yet: let training reach its first evaluation')
  return history


def _new_figure() -> tuple[Figure, Any]:
  fig = Figure(figsize=FIG_SIZE_IN, dpi=FIG_DPI, layout='constrained')
  FigureCanvasAgg(fig)
  return fig, fig.add_subplot()


def _save(fig: Figure, out_dir, name: str) -> str:
  path = fileio.path(out_dir) / name
  png = io.BytesIO()
  fig.savefig(png, dpi=FIG_DPI, format='png')
  fileio.write_bytes(path, png.getvalue())
  return str(path)


def _series(records: list[dict], key: str, scale: float = 1.0, shift: float = 0.0) -> tuple[list, list]:
  """(x, y) of the records where `key` is not null; nulls are skipped so sparse evaluations still join up."""
  pts = [(r['epoch'] + shift, r[key] * scale) for r in records if r.get(key) is not None]
  return [p[0] for p in pts], [p[1] for p in pts]


def _gate_spans(records: list[dict]) -> list[tuple[int, int]]:
  """[start, end) epoch intervals with the gate open; a record's flag covers the epoch that follows it."""
  spans: list[tuple[int, int]] = []
  for r in records:
    if not r.get('gate_open'):
      continue
    if spans and spans[-1][1] == r['epoch']:
      spans[-1] = (spans[-1][0], r['epoch'] + 1)
    else:
      spans.append((r['epoch'], r['epoch'] + 1))
  return spans


def _shade_gate(ax, records: list[dict]) -> None:
  for i, (start, end) in enumerate(_gate_spans(records)):
    ax.axvspan(start, end, color=GATE_COLOUR, alpha=0.15, lw=0, label='gate open' if i == 0 else None)


def _mark_gate_opening(ax, history: dict) -> None:
  opened = history.get('gate_opened_at_epoch')
  if opened is not None:
    ax.axvline(opened, color=GATE_COLOUR, ls='--', lw=1.5, label=f'gate opened (epoch {opened})')


def _title(history: dict, what: str) -> str:
  return f'{history.get("dataset", "?")} / {history.get("method", "?")}: {what}'


def _legend(ax, handles=None, labels=None, **kwargs) -> None:
  if handles is None:
    handles, labels = ax.get_legend_handles_labels()
  if handles:
    ax.legend(handles, labels, **kwargs)


def _plot_accuracy(history: dict, out_dir: str) -> str:
  records = history['epochs']
  fig, ax = _new_figure()
  _shade_gate(ax, records)
  ax.plot(*_series(records, 'train_labeled_accuracy', 100, TRAIN_SHIFT), 'o-', color='0.5', ms=3,
          label='train, labeled (epoch mean)')
  ax.plot(*_series(records, 'val_accuracy', 100), 'o-', color='C0', ms=4, label='validation')
  ax.plot(*_series(records, 'test_accuracy', 100), 's-', color='C1', ms=4, label='test')
  _mark_gate_opening(ax, history)
  ax.set(title=_title(history, 'accuracy'), xlabel='epoch', ylabel='accuracy (%)', ylim=PERCENT_YLIM)
  _legend(ax, loc='best')
  return _save(fig, out_dir, 'accuracy.png')


def _plot_pseudo_labels(history: dict, out_dir: str) -> str:
  records = history['epochs']
  fig, ax = _new_figure()
  _shade_gate(ax, records)
  ax.plot(*_series(records, 'pseudo_labels_total'), 'o-', color='C2', ms=4, label='pseudo-labels (total)')
  _mark_gate_opening(ax, history)
  ax.set(title=_title(history, 'pseudo-labels'), xlabel='epoch', ylabel='pseudo-labelled examples')
  ax.set_ylim(bottom=0)
  handles, labels = ax.get_legend_handles_labels()
  xs, ys = _series(records, 'pseudo_label_precision', 100)
  if xs:
    twin = ax.twinx()
    twin.plot(xs, ys, 'd-', color='C3', ms=4, label='precision (hidden labels)')
    twin.set(ylabel='precision (%)', ylim=PERCENT_YLIM)
    more_handles, more_labels = twin.get_legend_handles_labels()
    handles, labels = handles + more_handles, labels + more_labels
  _legend(ax, handles, labels, loc='upper left')
  return _save(fig, out_dir, 'pseudo_labels.png')


def _plot_pseudo_label_classes(history: dict, out_dir: str) -> str:
  last = history['epochs'][-1]
  counts = np.asarray(last['pseudo_labels_per_class'], np.float64)
  num_classes = len(counts)
  names = list(history.get('class_names') or range(num_classes))
  x = np.arange(num_classes)
  fig, ax = _new_figure()
  tallest = counts.max(initial=1.0)
  true_counts = history.get('unlabeled_class_counts')
  if true_counts is not None:
    true_counts = np.asarray(true_counts, np.float64)
    expected = true_counts / max(true_counts.sum(), 1.0) * counts.sum()
    ax.bar(x - 0.2, counts, 0.4, color='C2', label='pseudo-labels')
    ax.bar(x + 0.2, expected, 0.4, color='0.6', label='true class balance of the unlabeled pool, same total')
    tallest = max(tallest, expected.max(initial=0.0))
  else:
    ax.bar(x, counts, 0.8, color='C2', label='pseudo-labels')
  if num_classes > 20:
    ax.set_xticks([])
    ax.set_xlabel(f'class ({num_classes} classes)')
  else:
    # Upright names collide from about six classes on (CIFAR-10's 'airplane' and 'automobile' already do).
    ax.set_xticks(x, [str(n) for n in names], rotation=30 if num_classes > 5 else 0,
                  ha='right' if num_classes > 5 else 'center', rotation_mode='anchor')
    ax.set_xlabel('class')
  # Headroom above the tallest bar keeps the legend off the bars.
  ax.set_ylim(0, 1.3 * tallest)
  ax.set(title=_title(history, f'pseudo-labels per class at epoch {last["epoch"]} (total {int(counts.sum())})'),
         ylabel='pseudo-labelled examples')
  _legend(ax, loc='best')
  return _save(fig, out_dir, 'pseudo_label_classes.png')


def _plot_hca(history: dict, out_dir: str) -> str:
  records = history['epochs']
  fig, ax = _new_figure()
  _shade_gate(ax, records)
  confidence = history.get('gate_confidence')
  what = f'confidence > {confidence}' if confidence is not None else 'confident examples'
  ax.plot(*_series(records, 'val_hca', 100), 'o-', color='C0', ms=4, label=f'validation HCA ({what})')
  threshold = history.get('gate_threshold')
  if threshold is not None:
    ax.axhline(threshold * 100, color='C3', ls=':', lw=1.5, label=f'gate threshold {threshold:g}')
  _mark_gate_opening(ax, history)
  ax.set(title=_title(history, 'high-confidence accuracy (opens the gate)'), xlabel='epoch', ylabel='HCA (%)',
         ylim=PERCENT_YLIM)
  _legend(ax, loc='best')
  return _save(fig, out_dir, 'hca.png')


def _plot_losses(history: dict, out_dir: str) -> str:
  records = history['epochs']
  fig, ax = _new_figure()
  _shade_gate(ax, records)
  for key, label, style in (('train_loss', 'total', 'o-'), ('train_rec_loss', 'reconstruction', 's-'),
                            ('train_cls_loss', 'classification', 'd-')):
    ax.plot(*_series(records, key, 1.0, TRAIN_SHIFT), style, ms=4, label=label)
  if not any(r.get('train_loss') is not None for r in records):
    ax.text(0.5, 0.5, 'no completed training epoch yet', transform=ax.transAxes, ha='center', va='center')
  ax.set(title=_title(history, 'training losses (epoch means)'), xlabel='epoch', ylabel='loss')
  _legend(ax, loc='best')
  return _save(fig, out_dir, 'losses.png')


def _per_class(records: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
  """(epochs [R], values [R, C]) of the records that have the per-class list `key`; ([], [0, 0]) when none has."""
  rows = [r for r in records if r.get(key) is not None]
  if not rows:
    return np.zeros(0), np.zeros((0, 0))
  return np.asarray([r['epoch'] for r in rows], np.float64), np.asarray([r[key] for r in rows], np.float64)


def per_class_precision(records: list[dict]) -> tuple[np.ndarray, np.ndarray]:
  """(epochs, [R, C] precision of the memory's pseudo-labels of each class), NaN where a class has none yet.

  Only records with `pseudo_labels_correct_per_class` count: histories written before it existed have no per-class
  precision (the empty arrays), only the overall `pseudo_label_precision`. Nor do records whose overall precision
  is None: no hidden label was known (folder files), so their zero correct counts say nothing.
  """
  rows = [r for r in records if r.get('pseudo_labels_correct_per_class') is not None and
          r.get('pseudo_labels_per_class') is not None and r.get('pseudo_label_precision') is not None]
  if not rows:
    return np.zeros(0), np.zeros((0, 0))
  correct = np.asarray([r['pseudo_labels_correct_per_class'] for r in rows], np.float64)
  given = np.asarray([r['pseudo_labels_per_class'] for r in rows], np.float64)
  with np.errstate(invalid='ignore', divide='ignore'):
    precision = np.where(given > 0, correct / given, np.nan)
  return np.asarray([r['epoch'] for r in rows], np.float64), precision


def _class_labels(history: dict, num_classes: int) -> list[str]:
  return [str(n) for n in (history.get('class_names') or range(num_classes))]


def _epoch_class_map(fig, ax, epochs: np.ndarray, values: np.ndarray, history: dict, cmap: str, vmax: float | None,
                     colour_label: str) -> None:
  """Epochs across, classes down, one coloured cell per (record, class); NaN cells stay blank."""
  num_classes = values.shape[1]
  half = 0.5 * (np.diff(epochs).min() if len(epochs) > 1 else 1.0)
  colours = matplotlib.colormaps[cmap].with_extremes(bad='0.92')
  image = ax.imshow(np.ma.masked_invalid(values.T), aspect='auto', origin='lower', interpolation='nearest',
                    cmap=colours, vmin=0, vmax=vmax,
                    extent=(epochs[0] - half, epochs[-1] + half, -0.5, num_classes - 0.5))
  if num_classes <= CLASS_TICKS_MAX:
    ax.set_yticks(np.arange(num_classes), _class_labels(history, num_classes), fontsize=8)
  fig.colorbar(image, ax=ax, label=colour_label)
  ax.set(xlabel='epoch', ylabel='pseudo-label class')


def _note(ax, text: str) -> None:
  ax.text(0.5, 0.5, textwrap.fill(text, NOTE_WIDTH_CHARS), transform=ax.transAxes, ha='center', va='center',
          fontsize=9, color='0.3')


def _diagnostics_unlabeled_used(ax, history: dict) -> None:
  records = history['epochs']
  _shade_gate(ax, records)
  xs, ys = _series(records, 'train_unlabeled_used', 1.0, TRAIN_SHIFT)
  ax.plot(xs, ys, 'o-', color='C2', ms=3, label='unlabeled examples in L_cls per step')
  _mark_gate_opening(ax, history)
  if not xs:
    _note(ax, 'no unlabeled examples recorded (train_unlabeled_used): this method reads none, or no epoch ended yet')
  ax.set(title='unlabeled examples used per step (epoch mean)', xlabel='epoch', ylabel='examples per step')
  ax.set_ylim(bottom=0)
  _legend(ax, loc='upper left', fontsize=8)


def _diagnostics_coverage(fig, ax, history: dict) -> None:
  epochs, counts = _per_class(history['epochs'], 'pseudo_labels_per_class')
  if not counts.any():
    _note(ax, 'the pseudo-label memory stayed empty')
    ax.set(title='pseudo-label memory per class', xticks=[], yticks=[])
    return
  pool = history.get('unlabeled_class_counts')
  if pool is not None and len(pool) == counts.shape[1] and min(pool) > 0:
    # A share above 100% is a class taking images of other classes: the confirmation bias the gate should prevent.
    _epoch_class_map(fig, ax, epochs, 100 * counts / np.asarray(pool, np.float64), history, 'viridis', None,
                     "% of the pool's images of that class")
  else:
    _epoch_class_map(fig, ax, epochs, counts, history, 'viridis', None, 'pseudo-labels in the memory')
  ax.set_title(f'pseudo-label memory per class ({int(counts[-1].sum()):,} at the last record)')


def _diagnostics_precision(fig, ax, history: dict) -> None:
  epochs, precision = per_class_precision(history['epochs'])
  if len(epochs) and not np.isnan(precision).all():
    _epoch_class_map(fig, ax, epochs, 100 * precision, history, 'RdYlGn', 100, 'precision (%, hidden labels)')
    ax.set_title('pseudo-label precision per class')
    return
  # What older histories (and the epochs before the first pseudo-label) can show: the memory's overall precision.
  xs, ys = _series(history['epochs'], 'pseudo_label_precision', 100)
  ax.plot(xs, ys, 'd-', color='C3', ms=4, label='all classes')
  ax.set(title='pseudo-label precision (all classes: no per-class record)' if not len(epochs) else
         'pseudo-label precision', xlabel='epoch', ylabel='precision (%, hidden labels)', ylim=PERCENT_YLIM)
  ax.set_xlim(min(r['epoch'] for r in history['epochs']) - 0.5, max(r['epoch'] for r in history['epochs']) + 0.5)
  if not len(epochs):
    ax.text(0.5, 0.04, textwrap.fill('per class cannot be drawn: these records have no '
                                     'pseudo_labels_correct_per_class (written before it was recorded)',
                                     NOTE_WIDTH_CHARS), transform=ax.transAxes, ha='center', va='bottom', fontsize=9,
            color='0.3')
  if not xs:
    _note(ax, 'no pseudo-label yet')
  _legend(ax, loc='upper right', fontsize=8)


def _diagnostics_gate(ax, history: dict) -> None:
  records = [r for r in history['epochs'] if r.get('val_num_confident') is not None]
  steps_per_epoch = history.get('steps_per_epoch')
  # The evaluation after the last step ends between epoch starts (or at one) and decides no gate.
  after_last = [steps_per_epoch is not None and r is records[-1] and r['step'] != r['epoch'] * steps_per_epoch
                for r in records]
  x = [r['epoch'] for r in records]
  counts = [r['val_num_confident'] for r in records]
  colours = ['0.8' if last else GATE_COLOUR if r.get('gate_open') else '0.45' for r, last in zip(records, after_last)]
  ax.bar(x, counts, 0.8, color=colours)
  if len(records) <= ANNOTATE_MAX_BARS:
    for xi, n in zip(x, counts):
      ax.annotate(str(n), (xi, n), xytext=(0, 2), textcoords='offset points', ha='center', va='bottom', fontsize=7,
                  rotation=90)
  confidence = history.get('gate_confidence')
  ax.set(title='gate decisions: confident validation examples behind HCA', xlabel='epoch',
         ylabel=f'validation examples, confidence > {confidence}' if confidence is not None else 'confident examples')
  ax.set_ylim(0, 1.15 * max(counts + [1]))
  twin = ax.twinx()
  twin.plot(*_series(records, 'val_hca', 100), 'o', color='C0', ms=4)
  threshold = history.get('gate_threshold')
  if threshold is not None:
    twin.axhline(threshold * 100, color='C3', ls=':', lw=1.5)
  twin.set(ylabel='validation HCA (%)', ylim=PERCENT_YLIM)
  patches = [matplotlib.patches.Patch(color=GATE_COLOUR, label='confident count, gate opened'),
             matplotlib.patches.Patch(color='0.45', label='confident count, gate closed')]
  if any(after_last):
    patches.append(matplotlib.patches.Patch(color='0.8', label='after the last step (no decision)'))
  lines = [matplotlib.lines.Line2D([], [], color='C0', marker='o', ls='', label='HCA')]
  if threshold is not None:
    lines.append(matplotlib.lines.Line2D([], [], color='C3', ls=':', label=f'gate threshold {threshold:g}'))
  # Below the axes: bars and HCA markers fill the panel from bottom to top.
  ax.legend(handles=patches + lines, loc='upper center', bbox_to_anchor=(0.5, -0.14), ncol=3, fontsize=8)


def diagnostics_figure(history: dict) -> Figure:
  """The pseudo-label stage at a glance, 2x2: unlabeled examples used per step; the memory per class (share of the
  pool's class when its true balance is known, else counts); each class's precision (only where the history
  records `pseudo_labels_correct_per_class`); the confident validation count and HCA behind each gate decision."""
  fig = Figure(figsize=DIAGNOSTICS_SIZE_IN, dpi=FIG_DPI, layout='constrained')
  FigureCanvasAgg(fig)
  used, coverage, precision, gate_ax = fig.subplots(2, 2).ravel()
  _diagnostics_unlabeled_used(used, history)
  _diagnostics_coverage(fig, coverage, history)
  _diagnostics_precision(fig, precision, history)
  _diagnostics_gate(gate_ax, history)
  fig.suptitle(_title(history, 'pseudo-label diagnostics'))
  return fig


def _plot_diagnostics(history: dict, out_dir: str) -> str:
  return _save(diagnostics_figure(history), out_dir, 'diagnostics.png')


def plot_history(history: dict, out_dir: str) -> list[str]:
  """Writes accuracy, pseudo-label, per-class, HCA and loss PNGs (about 800x500 px) and diagnostics.png (about
  1200x900 px) to `out_dir`; their paths."""
  return [plot(history, out_dir) for plot in (_plot_accuracy, _plot_pseudo_labels, _plot_pseudo_label_classes,
                                              _plot_hca, _plot_losses, _plot_diagnostics)]

"""Tests for ssmae_jax.augment: every op eagerly and inside tf.data, seeded, with its semantics."""

import itertools

import numpy as np
import pytest
import tensorflow as tf

from ssmae_jax.configs.default import get_config
from ssmae_jax import augment
from ssmae_jax.errors import UserError

SIZE = 16
AUG = get_config().augment

OPS = {
    'random_flip': augment.random_flip,
    'random_affine': lambda x, s: augment.random_affine(x, s, 30.0, 0.1),
    'color_jitter': lambda x, s: augment.color_jitter(x, s, 0.4, 0.4, 0.4, 0.2),
    'random_grayscale': lambda x, s: augment.random_grayscale(x, s, 0.5),
    'gaussian_blur': augment.gaussian_blur,
    'labeled_view': lambda x, s: augment.labeled_view(x, s, AUG),
    'weak_view': augment.weak_view,
    'strong_view': lambda x, s: augment.strong_view(x, s, AUG),
}


def _noise(seed: int = 0, size: int = SIZE) -> tf.Tensor:
  return tf.constant(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def _seed(i: int, dtype=tf.int64) -> tf.Tensor:
  return tf.constant([i, 7], dtype)


def _outputs(op, image, num_seeds: int = 16) -> list[np.ndarray]:
  return [op(image, _seed(i)).numpy() for i in range(num_seeds)]


def _num_distinct(arrays: list[np.ndarray]) -> int:
  return len({a.tobytes() for a in arrays})


def _max_diff(a, b) -> int:
  return int(np.abs(np.asarray(a, np.int32) - np.asarray(b, np.int32)).max())


@pytest.mark.parametrize('name', OPS)
def test_shape_dtype_eager_and_in_dataset_map(name):
  op = OPS[name]
  images = np.stack([_noise(i).numpy() for i in range(3)])
  seeds = np.array([[i, 7] for i in range(3)], np.int64)
  eager = [op(tf.constant(x), tf.constant(s)) for x, s in zip(images, seeds)]
  ds = tf.data.Dataset.from_tensor_slices((images, seeds)).map(op, num_parallel_calls=2, deterministic=True)
  assert ds.element_spec.shape == (SIZE, SIZE, 3) and ds.element_spec.dtype == tf.uint8
  for e, g in zip(eager, ds.as_numpy_iterator()):
    assert e.shape == (SIZE, SIZE, 3) and e.dtype == tf.uint8
    assert _max_diff(e, g) <= 1  # The same (image, seed) gives the same output in a graph.


@pytest.mark.parametrize('name', OPS)
def test_same_seed_same_output_different_seeds_differ(name):
  op, image = OPS[name], _noise()
  np.testing.assert_array_equal(op(image, _seed(3)), op(image, _seed(3)))
  np.testing.assert_array_equal(op(image, _seed(3, tf.int32)), op(image, _seed(3, tf.int32)))
  assert _num_distinct(_outputs(op, image)) > 1


def test_flip_mirrors_left_right():
  image = _noise().numpy()
  outputs = _outputs(augment.random_flip, tf.constant(image))
  flipped = [np.array_equal(o, image[:, ::-1]) for o in outputs]
  kept = [np.array_equal(o, image) for o in outputs]
  assert all(f or k for f, k in zip(flipped, kept))
  assert any(flipped) and any(kept)


def test_zero_affine_and_zero_jitter_are_identity():
  image = _noise()
  for i in range(4):
    assert _max_diff(augment.random_affine(image, _seed(i), 0.0, 0.0), image) <= 1
    assert _max_diff(augment.color_jitter(image, _seed(i), 0.0, 0.0, 0.0, 0.0), image) <= 1


@pytest.mark.parametrize('size', [32, 33])
def test_rotation_is_about_the_centre(size):
  # A blob centred on the image keeps its centre of mass under any rotation about the centre; rotated about a point
  # half a pixel off, its centre of mass moves by 0.15 to 1 pixel at these seeds. Nearest-neighbour sampling moves
  # single pixels, so the centre of mass is the measure, not the largest pixel difference.
  centre = (size - 1) / 2
  yy, xx = np.mgrid[:size, :size]
  blob = 255 * np.exp(-((yy - centre) ** 2 + (xx - centre) ** 2) / (2 * 5.0 ** 2))
  image = tf.constant(np.repeat(blob.round().astype(np.uint8)[..., None], 3, axis=-1))

  def centre_of_mass(x):
    w = np.asarray(x, np.float64)[..., 0]
    return np.array([(w * yy).sum(), (w * xx).sum()]) / w.sum()

  for i in range(6):
    out = augment.random_affine(image, _seed(i), 90.0, 0.0)
    assert np.abs(centre_of_mass(out) - centre).max() < 0.05
    assert _max_diff(out, image) <= 25
  noise = _noise(size=size)
  assert all(_max_diff(r, noise) > 50 for r in _outputs(lambda x, s: augment.random_affine(x, s, 90.0, 0.0), noise, 4))


def _few_colours(size: int = SIZE) -> np.ndarray:
  palette = np.array([[200, 30, 90], [10, 250, 120], [255, 255, 255], [60, 60, 180]], np.uint8)
  return palette[np.random.default_rng(0).integers(0, len(palette), (size, size))]


def _colours(image) -> set[tuple[int, ...]]:
  return {tuple(c) for c in np.asarray(image).reshape(-1, 3)}


def test_rotation_is_nearest_neighbour_eagerly_and_in_dataset_map():
  # torchvision's RandomRotation / RandomAffine default: no blended colours, only the input's and the 0 fill.
  image = _few_colours()
  allowed = _colours(image) | {(0, 0, 0)}
  op = lambda x, s: augment.random_affine(x, s, 30.0, 0.1)
  seeds = np.array([[i, 7] for i in range(8)], np.int64)
  eager = [op(tf.constant(image), tf.constant(s)).numpy() for s in seeds]
  mapped = list(tf.data.Dataset.from_tensor_slices(seeds).map(lambda s: op(tf.constant(image), s)).as_numpy_iterator())
  for out in eager + mapped:
    assert _colours(out) <= allowed
  assert all(_max_diff(o, image) > 0 for o in eager)


def test_translation_shifts_by_whole_pixels_within_bound_and_fills_zero():
  image = _noise().numpy()
  padded = np.pad(image, [(SIZE, SIZE), (SIZE, SIZE), (0, 0)])
  max_shift = round(0.25 * SIZE)
  shifts = set()
  for i in range(8):
    out = augment.random_affine(tf.constant(image), _seed(i), 0.0, 0.25).numpy()
    matches = [(dy, dx) for dy in range(-max_shift, max_shift + 1) for dx in range(-max_shift, max_shift + 1)
               if np.array_equal(out, padded[SIZE - dy:2 * SIZE - dy, SIZE - dx:2 * SIZE - dx])]
    assert len(matches) == 1
    shifts.add(matches[0])
  assert len(shifts) > 1


def test_brightness_scales_every_pixel_by_one_factor_in_range():
  image = tf.constant(np.full((SIZE, SIZE, 3), 100, np.uint8))
  values = [np.unique(augment.color_jitter(image, _seed(i), 0.4, 0.0, 0.0, 0.0).numpy()) for i in range(8)]
  assert all(len(v) == 1 and 60 - 1 <= v[0] <= 140 + 1 for v in values)
  assert len({int(v[0]) for v in values}) > 1


def test_contrast_blends_with_the_grayscale_mean():
  # Strongly red, so the grayscale mean is far from the mean over channels; no value clips at factors in [0.6, 1.4].
  rng = np.random.default_rng(0)
  image = np.concatenate([rng.integers(150, 200, (SIZE, SIZE, 1)), rng.integers(40, 70, (SIZE, SIZE, 2))], axis=-1)
  image = tf.constant(image.astype(np.uint8))
  gray_mean = lambda x: (np.asarray(x, np.float64) @ np.array([0.299, 0.587, 0.114])).mean()
  for i in range(4):
    out = augment.color_jitter(image, _seed(i), 0.0, 0.4, 0.0, 0.0)
    assert abs(gray_mean(out) - gray_mean(image)) < 0.25
    assert _max_diff(out, image) > 2


def test_saturation_and_hue_leave_gray_pixels_unchanged_and_change_colours():
  gray = tf.constant(np.repeat(np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 1), dtype=np.uint8), 3, -1))
  colour = _noise()
  for i in range(4):
    assert _max_diff(augment.color_jitter(gray, _seed(i), 0.0, 0.0, 0.4, 0.2), gray) <= 1
    assert _max_diff(augment.color_jitter(colour, _seed(i), 0.0, 0.0, 0.4, 0.0), colour) > 1
    assert _max_diff(augment.color_jitter(colour, _seed(i), 0.0, 0.0, 0.0, 0.2), colour) > 1


def test_jitter_order_matters_with_fixed_factors():
  x = tf.cast(_noise(), tf.float32) / 255.0
  adjustments = augment._jitter_adjustments(_seed(0), 0.4, 0.4, 0.4, 0.2)
  forward = augment._apply_in_order(x, adjustments, tf.constant([0, 1, 2, 3]))
  backward = augment._apply_in_order(x, adjustments, tf.constant([3, 2, 1, 0]))
  assert np.abs(forward.numpy() - backward.numpy()).max() > 2 / 255


def test_jitter_draws_its_order_per_seed_eagerly_and_in_dataset_map():
  image = _noise()
  x = tf.cast(image, tf.float32) / 255.0
  op = lambda im, s: augment.color_jitter(im, s, 0.4, 0.4, 0.4, 0.2)
  seeds = np.array([[i, 7] for i in range(8)], np.int64)
  mapped = list(tf.data.Dataset.from_tensor_slices(seeds).map(lambda s: op(image, s)).as_numpy_iterator())
  orders = set()
  for seed, m in zip(seeds, mapped):
    out = op(image, tf.constant(seed)).numpy()
    np.testing.assert_array_equal(out, op(image, tf.constant(seed)))
    assert out.dtype == np.uint8 and _max_diff(out, m) <= 1
    adjustments = augment._jitter_adjustments(augment._split(tf.constant(seed), 2)[1], 0.4, 0.4, 0.4, 0.2)
    matches = [order for order in itertools.permutations(range(4))
               if _max_diff(out, augment._to_uint8(augment._apply_in_order(x, adjustments, tf.constant(order)))) <= 1]
    assert matches
    orders.add(matches[0])
  assert len(orders) > 1


def test_grayscale_gives_equal_channels():
  image = _noise()
  out = augment.random_grayscale(image, _seed(0), 1.0).numpy()
  assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
  assert _max_diff(out, image) > 0
  np.testing.assert_array_equal(augment.random_grayscale(image, _seed(0), 0.0), image)


def test_blur_reduces_variance_of_noise():
  image = _noise()
  for i in range(4):
    out = augment.gaussian_blur(image, _seed(i), 3, (0.5, 2.0)).numpy()
    assert out.astype(np.float64).var() < 0.8 * image.numpy().astype(np.float64).var()
  # A tiny sigma puts all the kernel's weight on the centre tap.
  assert _max_diff(augment.gaussian_blur(image, _seed(0), 3, (0.1, 0.1)), image) <= 1


def test_blur_keeps_a_constant_image_at_the_borders():
  # Reflect padding: no dark frame from zero padding.
  image = tf.constant(np.full((SIZE, SIZE, 3), 200, np.uint8))
  assert _max_diff(augment.gaussian_blur(image, _seed(0), 3, (2.0, 2.0)), image) <= 1


def _zero_augment():
  zero = get_config().augment
  zero.labeled_rotation = zero.strong_rotation = zero.strong_translate = zero.strong_grayscale_p = 0.0
  zero.labeled_jitter = zero.strong_jitter = (0.0, 0.0, 0.0, 0.0)
  zero.strong_blur_sigma = (0.1, 0.1)
  return zero


def test_views_with_zero_strengths_only_flip():
  image = _noise().numpy()
  for view in (augment.labeled_view, augment.strong_view):
    for i in range(4):
      out = view(tf.constant(image), _seed(i), _zero_augment()).numpy()
      assert min(_max_diff(out, image), _max_diff(out, image[:, ::-1])) <= 1


@pytest.mark.parametrize('view, field, value', [
    (augment.labeled_view, 'labeled_rotation', 30.0),
    (augment.labeled_view, 'labeled_jitter', (0.4, 0.0, 0.0, 0.0)),
    (augment.strong_view, 'strong_rotation', 30.0),
    (augment.strong_view, 'strong_jitter', (0.4, 0.0, 0.0, 0.0)),
    (augment.strong_view, 'strong_grayscale_p', 1.0),
    (augment.strong_view, 'strong_blur_sigma', (2.0, 2.0)),
    (augment.strong_view, 'strong_translate', 0.25),
])
def test_views_apply_each_configured_op(view, field, value):
  aug = _zero_augment()
  aug[field] = value
  image = _noise().numpy()
  outputs = _outputs(lambda x, s: view(x, s, aug), tf.constant(image), 4)
  assert all(min(_max_diff(o, image), _max_diff(o, image[:, ::-1])) > 1 for o in outputs)


def test_weak_and_strong_views_differ():
  image = _noise()
  for i in range(4):
    weak, strong = augment.weak_view(image, _seed(i)), augment.strong_view(image, _seed(i), AUG)
    assert _max_diff(weak, strong) > 50


def test_resize():
  image = _noise()
  out = augment.resize(image, 40)
  assert out.shape == (40, 40, 3) and out.dtype == tf.uint8
  assert augment.resize(image, SIZE) is image
  assert augment.resize(tf.stack([image, image]), 8).shape == (2, 8, 8, 3)
  constant = tf.constant(np.full((SIZE, SIZE, 3), 77, np.uint8))
  np.testing.assert_array_equal(augment.resize(constant, 24), np.full((24, 24, 3), 77, np.uint8))


@pytest.mark.parametrize('size', [17, 40, 224])
def test_upsampling_resize_is_the_antialiased_resize(size):
  # resize skips antialiasing when upsampling, where its kernel is the bilinear one: the same function.
  image = _noise()
  antialiased = tf.image.resize(tf.cast(image, tf.float32), [size, size], 'bilinear', antialias=True).numpy()
  assert _max_diff(augment.resize(image, size), np.clip(np.round(antialiased), 0, 255)) <= 1


def test_bad_parameters_raise_user_error():
  image = _noise()
  with pytest.raises(UserError, match='hue'):
    augment.color_jitter(image, _seed(0), 0.4, 0.4, 0.4, 0.7)
  with pytest.raises(UserError, match='brightness'):
    augment.color_jitter(image, _seed(0), -0.1, 0.0, 0.0, 0.0)
  with pytest.raises(UserError, match='kernel'):
    augment.gaussian_blur(image, _seed(0), 4)
  with pytest.raises(UserError, match='sigma'):
    augment.gaussian_blur(image, _seed(0), 3, (2.0, 0.1))

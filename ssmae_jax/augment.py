"""Data augmentations (docs/method.md) as stateless TensorFlow ops for tf.data.

Every random op takes `seed`, an int32/int64 tensor of shape [2], and derives its sub-seeds from it, so the same
(image, seed) gives the same output whatever thread runs it. Images are uint8 [H, W, 3] (H == W) in and out; the ops
compute in float32 [0, 1]. Normalisation happens later, on the accelerator.

The views run per image: at the dataset's own size (32 px for CIFAR) with config.resize_on_device, else at up to
224 px (the paper's CIFAR resized first). Each op is written to touch the pixels as few times as it can: a flip or a
whole-pixel shift moves pixels (tf.cond / pad + slice) rather than selecting or resampling them, the colour jitter's
blends are one multiply-add and one clip each. These are the same functions as the plain forms (equal up to float
rounding), at about half the CPU time per 224 px step.
"""

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import tensorflow as tf

from ssmae_jax.errors import UserError

# ITU-R 601-2 luma, the weights of PIL's convert('L') that the reference's transforms use.
_GRAY_WEIGHTS = (0.299, 0.587, 0.114)


def plain(fn: Callable) -> Callable:
  """`fn` for tf.data (map, filter, flat_map) traced as written, without AutoGraph: branches on tensors here are
  explicit (tf.cond, tf.switch_case, tf.where) and Python `if`s test Python values, so AutoGraph's rewrite of the
  function and of everything it calls would build the same graph, at ~4 s of CPU per process start."""
  return tf.autograph.experimental.do_not_convert(fn)


def _check_uint8(image: tf.Tensor) -> tf.Tensor:
  if image.dtype != tf.uint8:
    raise ValueError(f'Augmentations take uint8 images, got {image.dtype.name}.')
  return image


def _to_float(image: tf.Tensor) -> tf.Tensor:
  return tf.cast(_check_uint8(image), tf.float32) / 255.0


def _to_uint8(x: tf.Tensor) -> tf.Tensor:
  return tf.cast(tf.clip_by_value(tf.round(x * 255.0), 0.0, 255.0), tf.uint8)


def _split(seed: tf.Tensor, num: int) -> tf.Tensor:
  return tf.random.experimental.stateless_split(seed, num=num)


def _uniform(seed: tf.Tensor, low: float, high: float, shape: Sequence[int] = ()) -> tf.Tensor:
  return tf.random.stateless_uniform(shape, seed, minval=low, maxval=high)


def _gray(x: tf.Tensor) -> tf.Tensor:
  """[..., 3] -> [..., 1] luma."""
  return tf.tensordot(x, tf.constant([[w] for w in _GRAY_WEIGHTS], tf.float32), axes=1)


def _clip01(x: tf.Tensor) -> tf.Tensor:
  # One kernel; tf.clip_by_value is a minimum and a maximum, two passes over the image.
  return tf.raw_ops.ClipByValue(t=x, clip_value_min=tf.constant(0.0), clip_value_max=tf.constant(1.0))


def _flip(x: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Works on any dtype."""
  # cond, not where: a select over every pixel costs more than the reverse itself.
  return tf.cond(_uniform(seed, 0.0, 1.0) < 0.5, lambda: tf.reverse(x, axis=[-2]), lambda: x)


def _shift(x: tf.Tensor, tx: tf.Tensor, ty: tf.Tensor, max_shift: tf.Tensor) -> tf.Tensor:
  """out[i, j] = x[i - ty, j - tx], 0 outside; |tx|, |ty| <= max_shift (whole pixels, int32)."""
  padded = tf.pad(x, [[max_shift, max_shift], [max_shift, max_shift], [0, 0]])
  return tf.ensure_shape(tf.slice(padded, tf.stack([max_shift - ty, max_shift - tx, 0]), tf.shape(x)), x.shape)


def _affine(x: tf.Tensor, seed: tf.Tensor, max_degrees: float, max_translate: float) -> tf.Tensor:
  """Rotation about the centre, then translation; nearest neighbour (torchvision's default), 0 outside."""
  rot_seed, shift_seed = tf.unstack(_split(seed, 2))
  angle = _uniform(rot_seed, -max_degrees, max_degrees) * (math.pi / 180.0)
  size = tf.cast(tf.shape(x)[-2], tf.float32)
  # Whole pixels, as torchvision's RandomAffine draws its translation.
  tx, ty = tf.unstack(tf.round(_uniform(shift_seed, -max_translate, max_translate, [2]) * size))
  if not max_degrees:
    # A shift by whole pixels samples every pixel at its own position: the transform would copy it.
    max_shift = tf.cast(tf.math.ceil(max_translate * size), tf.int32) + 1
    return _shift(x, tf.cast(tx, tf.int32), tf.cast(ty, tf.int32), max_shift)
  # The op maps each output pixel back to the input: inverse rotation of (out - centre - shift), plus centre.
  # Pixel centres sit at integer coordinates, so the centre of the image is (size - 1) / 2.
  centre = (size - 1.0) / 2.0
  cos, sin = tf.cos(angle), tf.sin(angle)
  transform = tf.stack([
      cos, sin, centre - cos * (centre + tx) - sin * (centre + ty),
      -sin, cos, centre + sin * (centre + tx) - cos * (centre + ty),
      0.0, 0.0,
  ])
  out = tf.raw_ops.ImageProjectiveTransformV3(
      images=x[None], transforms=transform[None], output_shape=tf.shape(x)[:2], fill_value=0.0,
      interpolation='NEAREST', fill_mode='CONSTANT')
  return tf.ensure_shape(out[0], x.shape)


def _factor(seed: tf.Tensor, strength: float) -> tf.Tensor:
  return _uniform(seed, max(0.0, 1.0 - strength), 1.0 + strength)


def _blend(x: tf.Tensor, other: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  return _clip01(x * factor + (1.0 - factor) * other)


def _jitter_adjustments(seed: tf.Tensor, brightness: float, contrast: float, saturation: float,
                        hue: float) -> list[Callable[[tf.Tensor], tf.Tensor]]:
  """The colour jitter's adjustments with their factors drawn, in torchvision's order; a strength of 0 skips one."""
  b_seed, c_seed, s_seed, h_seed = tf.unstack(_split(seed, 4))
  adjustments = []
  if brightness:
    adjustments.append(lambda x: _clip01(x * _factor(b_seed, brightness)))
  if contrast:
    # The mean of the luma, from the channel means: no luma image needed.
    adjustments.append(lambda x: _blend(x, _gray(tf.reduce_mean(x, axis=[0, 1])), _factor(c_seed, contrast)))
  if saturation:
    adjustments.append(lambda x: _blend(x, _gray(x), _factor(s_seed, saturation)))
  if hue:
    adjustments.append(lambda x: tf.image.adjust_hue(x, _uniform(h_seed, -hue, hue)))
  return adjustments


def _apply_in_order(x: tf.Tensor, adjustments: Sequence[Callable[[tf.Tensor], tf.Tensor]],
                    order: tf.Tensor) -> tf.Tensor:
  """Applies adjustments[order[0]], then adjustments[order[1]], ...; each round runs only the branch it picks."""
  for i in range(len(adjustments)):
    x = tf.switch_case(order[i], [functools.partial(f, x) for f in adjustments])
  return x


def _color_jitter(x: tf.Tensor, seed: tf.Tensor, brightness: float, contrast: float, saturation: float,
                  hue: float) -> tf.Tensor:
  for name, value in (('brightness', brightness), ('contrast', contrast), ('saturation', saturation)):
    if value < 0:
      raise UserError(f'Colour jitter {name} must be >= 0, got {value}: fix config.augment.*_jitter.')
  if not 0 <= hue <= 0.5:
    raise UserError(f'Colour jitter hue must be in [0, 0.5] turns, got {hue}: fix config.augment.*_jitter.')
  order_seed, factor_seed = tf.unstack(_split(seed, 2))
  adjustments = _jitter_adjustments(factor_seed, brightness, contrast, saturation, hue)
  if len(adjustments) < 2:
    return adjustments[0](x) if adjustments else x
  # torchvision applies the adjustments in a random order per image.
  return _apply_in_order(x, adjustments, tf.random.experimental.stateless_shuffle(tf.range(len(adjustments)),
                                                                                  order_seed))


def _grayscale(x: tf.Tensor, seed: tf.Tensor, p: float) -> tf.Tensor:
  # cond, not where: the luma of a large image is only worth computing for the fraction p that uses it.
  return tf.cond(_uniform(seed, 0.0, 1.0) < p, lambda: tf.broadcast_to(_gray(x), tf.shape(x)), lambda: x)


def _blur(x: tf.Tensor, seed: tf.Tensor, kernel_size: int, sigma_range: Sequence[float]) -> tf.Tensor:
  if kernel_size < 1 or kernel_size % 2 == 0:
    raise UserError(f'Gaussian blur kernel size must be odd and positive, got {kernel_size}.')
  low, high = sigma_range
  if not 0 < low <= high:
    raise UserError(f'Gaussian blur sigma range must satisfy 0 < low <= high, got {tuple(sigma_range)}: fix '
                    'config.augment.strong_blur_sigma.')
  sigma = _uniform(seed, low, high)
  radius = kernel_size // 2
  offsets = tf.range(-radius, radius + 1, dtype=tf.float32)
  weights = tf.exp(-0.5 * tf.square(offsets / sigma))
  weights /= tf.reduce_sum(weights)
  channels = x.shape[-1]
  padded = tf.pad(x[None], [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode='REFLECT')
  # Separable: a vertical then a horizontal pass, each channel on its own.
  vertical = tf.tile(tf.reshape(weights, [kernel_size, 1, 1, 1]), [1, 1, channels, 1])
  horizontal = tf.tile(tf.reshape(weights, [1, kernel_size, 1, 1]), [1, 1, channels, 1])
  out = tf.nn.depthwise_conv2d(padded, vertical, strides=[1, 1, 1, 1], padding='VALID')
  out = tf.nn.depthwise_conv2d(out, horizontal, strides=[1, 1, 1, 1], padding='VALID')
  return out[0]


def random_flip(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Mirrors left-right with probability 1/2."""
  # Moving pixels needs no arithmetic, so no round trip through float.
  return _flip(_check_uint8(image), seed)


def random_affine(image: tf.Tensor, seed: tf.Tensor, max_degrees: float, max_translate: float) -> tf.Tensor:
  """Rotates by U(-max_degrees, max_degrees) about the centre, then shifts by U(-t, t)·size in x and y."""
  return _to_uint8(_affine(_to_float(image), seed, max_degrees, max_translate))


def color_jitter(image: tf.Tensor, seed: tf.Tensor, brightness: float, contrast: float, saturation: float,
                 hue: float) -> tf.Tensor:
  """torchvision's ColorJitter: factors U(max(0, 1 - x), 1 + x), hue shift U(-hue, hue) turns, in a random order."""
  return _to_uint8(_color_jitter(_to_float(image), seed, brightness, contrast, saturation, hue))


def random_grayscale(image: tf.Tensor, seed: tf.Tensor, p: float) -> tf.Tensor:
  """With probability p, replaces every channel by the luma."""
  return _to_uint8(_grayscale(_to_float(image), seed, p))


def gaussian_blur(image: tf.Tensor, seed: tf.Tensor, kernel_size: int = 3,
                  sigma_range: Sequence[float] = (0.1, 2.0)) -> tf.Tensor:
  """Gaussian blur with sigma ~ U(sigma_range), reflect padding."""
  return _to_uint8(_blur(_to_float(image), seed, kernel_size, sigma_range))


def resize(image: tf.Tensor, size: int) -> tf.Tensor:
  """Bilinear, antialiased resize of uint8 [..., H, W, 3] to [..., size, size, 3]; a no-op at that size already."""
  if tuple(image.shape[-3:-1]) == (size, size):
    return image
  # Upsampling, the antialiasing kernel is the bilinear one: the plain op computes the same 3x faster.
  antialias = image.shape[-2] is None or image.shape[-2] > size
  x = tf.image.resize(tf.cast(image, tf.float32), [size, size], method='bilinear', antialias=antialias)
  return tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.uint8)


def labeled_view(image: tf.Tensor, seed: tf.Tensor, aug: Any) -> tf.Tensor:
  """Labeled (and MAE) view: flip, rotation ±aug.labeled_rotation, colour jitter aug.labeled_jitter."""
  flip_seed, rot_seed, jitter_seed = tf.unstack(_split(seed, 3))
  x = _to_float(_flip(_check_uint8(image), flip_seed))
  x = _affine(x, rot_seed, aug.labeled_rotation, 0.0)
  x = _color_jitter(x, jitter_seed, *aug.labeled_jitter)
  return _to_uint8(x)


def weak_view(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Weak view: flip only."""
  return random_flip(image, seed)


def strong_view(image: tf.Tensor, seed: tf.Tensor, aug: Any) -> tf.Tensor:
  """Strong view: flip, rotation, colour jitter, grayscale, Gaussian blur (k=3), translation (reference order)."""
  flip_seed, rot_seed, jitter_seed, gray_seed, blur_seed, shift_seed = tf.unstack(_split(seed, 6))
  x = _to_float(_flip(_check_uint8(image), flip_seed))
  x = _affine(x, rot_seed, aug.strong_rotation, 0.0)
  x = _color_jitter(x, jitter_seed, *aug.strong_jitter)
  x = _grayscale(x, gray_seed, aug.strong_grayscale_p)
  x = _blur(x, blur_seed, 3, aug.strong_blur_sigma)
  x = _affine(x, shift_seed, 0.0, aug.strong_translate)
  return _to_uint8(x)

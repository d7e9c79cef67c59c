"""ViT encoder, MAE decoder and linear head (docs/method.md), in Flax Linen.

The patch embedding is a Dense layer on patchified pixels: the same function as a stride-p convolution, and it lets
the reconstruction path embed only the kept patches. It keeps the reference's initialisation, PyTorch's default for
Conv2d (the reference re-initialises only its Linear and LayerNorm layers).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssmae_jax import masking

LN_EPS = 1e-5
xavier = nn.initializers.xavier_uniform()
pos_init = nn.initializers.normal(stddev=0.02)


def torch_conv_init(fan_in: int):
  """PyTorch's default Conv2d initialisation of weights and bias alike: U(±1/√fan_in).

  For the weights that is kaiming_uniform(a=√5): gain √(2 / (1 + 5)), bound gain·√(3 / fan_in) = 1/√fan_in. fan_in is
  an argument, not read from the shape, because the bias's shape does not carry it."""
  bound = fan_in ** -0.5

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def dense(features: int, dtype: Any, use_bias: bool = True, name: str | None = None) -> nn.Dense:
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, kernel_init=xavier,
                  bias_init=nn.initializers.zeros, name=name)


def layer_norm(dtype: Any, name: str | None = None) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=LN_EPS, dtype=dtype, name=name)


def tokenwise(layer, x):
  """A token-wise layer on [B, T, F] applied as one [B * T, F] matmul (see Block for why)."""
  b, t, f = x.shape
  return layer(x.reshape(b * t, f)).reshape(b, t, -1)


def gelu(x):
  """Exact GELU in PyTorch's erf form: the same function as jax.nn.gelu's erfc form, several times cheaper on CPU."""
  return 0.5 * x * (1.0 + jax.lax.erf(x * (2.0 ** -0.5)))


class Attention(nn.Module):
  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, batch: int, cls_only: bool = False):
    """x: [B * T, D], tokens of `batch` sequences -> [B * T, D]; with `cls_only`, each first token's, [B, D]."""
    bt, d = x.shape
    b, t, hd = batch, bt // batch, d // self.num_heads
    qkv = dense(3 * d, self.dtype, use_bias=False, name='qkv')(x)
    # One transpose to [3, B, heads, T, head_dim]: both attention products are then plain batched matmuls.
    q, k, v = qkv.reshape(b, t, 3, self.num_heads, hd).transpose(2, 0, 3, 1, 4)
    if cls_only:
      q = q[:, :, :1]
    logits = jnp.einsum('bhqd,bhkd->bhqk', q * (hd ** -0.5), k)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
    out = jnp.einsum('bhqk,bhkd->bhqd', weights, v)
    return dense(d, self.dtype, name='proj')(out.transpose(0, 2, 1, 3).reshape(b * q.shape[2], d))


class Block(nn.Module):
  """Pre-norm ViT block. Token-wise layers see [B * T, D]: then every weight gradient is a plain 2-D matmul,
  where [B, T, D] operands make XLA on CPU add transposed copies of the activations."""
  num_heads: int
  mlp_ratio: float = 4.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, cls_only: bool = False):
    """x: [B, T, D] -> [B, T, D]; with `cls_only`, only the first token's output, [B, 1, D]."""
    b, t, d = x.shape
    x = x.reshape(b * t, d)
    h = Attention(self.num_heads, self.dtype, name='attn')(layer_norm(self.dtype, 'norm1')(x), b, cls_only)
    x = (x.reshape(b, t, d)[:, 0] if cls_only else x) + h
    h = layer_norm(self.dtype, 'norm2')(x)
    h = dense(int(d * self.mlp_ratio), self.dtype, name='fc1')(h)
    h = gelu(h)
    h = dense(d, self.dtype, name='fc2')(h)
    return (x + h).reshape(b, -1, d)


class Encoder(nn.Module):
  """Patch embedding, class token, learned positions, pre-norm blocks, final LayerNorm."""
  num_patches: int
  patch_dim: int
  width: int
  depth: int
  num_heads: int
  mlp_ratio: float
  dtype: Any

  def setup(self):
    init = torch_conv_init(self.patch_dim)
    self.patch_embed = nn.Dense(self.width, dtype=self.dtype, kernel_init=init, bias_init=init)
    self.cls_token = self.param('cls_token', pos_init, (1, 1, self.width))
    self.pos_embed = self.param('pos_embed', pos_init, (1, self.num_patches + 1, self.width))
    self.blocks = [Block(self.num_heads, self.mlp_ratio, self.dtype) for _ in range(self.depth)]
    self.norm = layer_norm(self.dtype)

  def __call__(self, patches, ids_keep=None, cls_only: bool = False):
    """patches: [B, N, p*p*3] -> [B, 1 + N, D]. With ids_keep [B, K], only those patches are embedded and encoded.

    With `cls_only` the output is the class token's alone, [B, 1, D]: the last block runs attention and MLP for
    that token only, since no other token's output can reach it.
    """
    pos = self.pos_embed.astype(self.dtype)
    if ids_keep is not None:
      patches = jnp.take_along_axis(patches, ids_keep[..., None], axis=1)
      patch_pos = pos[0, 1:][ids_keep]
    else:
      patch_pos = pos[:, 1:]
    x = tokenwise(self.patch_embed, patches.astype(self.dtype)) + patch_pos
    cls = jnp.broadcast_to(self.cls_token.astype(self.dtype) + pos[:, :1], (x.shape[0], 1, self.width))
    x = jnp.concatenate([cls, x], axis=1)
    for i, block in enumerate(self.blocks):
      x = block(x, cls_only and i == len(self.blocks) - 1)
    return self.norm(x)


class Decoder(nn.Module):
  """MAE decoder: embed, insert mask tokens, unshuffle, learned positions, blocks, LN, linear to pixels."""
  num_patches: int
  patch_dim: int
  width: int
  depth: int
  num_heads: int
  mlp_ratio: float
  dtype: Any

  @nn.compact
  def __call__(self, latent, ids_restore):
    x = tokenwise(dense(self.width, self.dtype, name='embed'), latent)
    b, t, _ = x.shape
    mask_token = self.param('mask_token', pos_init, (1, 1, self.width))
    pos = self.param('pos_embed', pos_init, (1, self.num_patches + 1, self.width))
    fill = jnp.broadcast_to(mask_token.astype(self.dtype), (b, self.num_patches + 1 - t, self.width))
    patches = jnp.concatenate([x[:, 1:], fill], axis=1)
    patches = jnp.take_along_axis(patches, ids_restore[..., None], axis=1)
    x = jnp.concatenate([x[:, :1], patches], axis=1) + pos.astype(self.dtype)
    for i in range(self.depth):
      x = Block(self.num_heads, self.mlp_ratio, self.dtype, name=f'block_{i}')(x)
    x = layer_norm(self.dtype, 'norm')(x)
    return tokenwise(dense(self.patch_dim, self.dtype, name='pred'), x[:, 1:])


class SSMAE(nn.Module):
  """The whole model. `classify` sees all patches; `reconstruct` encodes the kept ones only."""
  num_classes: int
  image_size: int
  patch_size: int = 4
  width: int = 192
  depth: int = 12
  num_heads: int = 3
  mlp_ratio: float = 4.0
  decoder_width: int = 128
  decoder_depth: int = 2
  decoder_num_heads: int = 4
  dtype: Any = jnp.float32

  @property
  def num_patches(self) -> int:
    return (self.image_size // self.patch_size) ** 2

  def setup(self):
    patch_dim = self.patch_size ** 2 * 3
    self.encoder = Encoder(self.num_patches, patch_dim, self.width, self.depth, self.num_heads, self.mlp_ratio,
                           self.dtype)
    self.decoder = Decoder(self.num_patches, patch_dim, self.decoder_width, self.decoder_depth,
                           self.decoder_num_heads, self.mlp_ratio, self.dtype)
    self.head = dense(self.num_classes, self.dtype)

  def classify(self, images):
    """images: normalised [B, H, W, 3] -> float32 logits [B, num_classes]."""
    x = self.encoder(masking.patchify(images, self.patch_size), cls_only=True)
    return self.head(x[:, 0]).astype(jnp.float32)

  def reconstruct(self, images, ids_keep, ids_restore):
    """-> predicted pixels of every patch, float32 [B, N, p*p*3]."""
    latent = self.encoder(masking.patchify(images, self.patch_size), ids_keep)
    return self.decoder(latent, ids_restore).astype(jnp.float32)

  def __call__(self, images, ids_keep, ids_restore):
    """Both paths, so `init` creates every parameter."""
    return self.classify(images), self.reconstruct(images, ids_keep, ids_restore)


def compute_dtype(name: str, backend: str | None = None) -> jnp.dtype:
  """config.model.dtype as a dtype: 'auto' is bfloat16 on GPU/TPU and float32 on CPU (`backend`, by default JAX's).

  Accelerators run bfloat16 matmuls several times faster than float32 ones; a CPU has no such units and emulates
  bfloat16, so it would be slower there."""
  if name == 'auto':
    return jnp.dtype(jnp.float32 if (backend or jax.default_backend()) == 'cpu' else jnp.bfloat16)
  return jnp.dtype(name)


def from_config(config, num_classes: int, backend: str | None = None) -> SSMAE:
  """The model of config.model (every field but dtype is an SSMAE field of the same name); its parameters are
  float32 whatever the compute dtype. `backend`: the platform its steps are compiled for, when that is not this
  process's default (a TPU program compiled on a CPU host must still compute in bfloat16 under dtype 'auto')."""
  fields = dict(config.model)
  dtype = compute_dtype(fields.pop('dtype'), backend)
  return SSMAE(num_classes=num_classes, image_size=config.image_size, dtype=dtype, **fields)

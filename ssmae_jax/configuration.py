"""Checks on a resolved config, run before anything is loaded or compiled: one clear line per mistake."""

import json

import jax.numpy as jnp
import ml_collections

from ssmae_jax import gate, masking
from ssmae_jax.errors import UserError

METHODS = ('ssmae', 'supervised', 'mae_pretrain', 'finetune')
NAN_POLICIES = ('stop', 'skip')
# Fields a resumed run may change without --config.allow_config_change=True: they do not change what is learned.
# nan_policy: a run stopped by a non-finite step may be resumed with 'skip'. labeled_dir, unlabeled_dir: the folders may
# move, since WORKDIR/data.json (data_record) refuses other files by their relative paths; test_dir is never trained on.
RESUME_SAFE_FIELDS = ('allow_config_change', 'log_every_steps', 'checkpoint_every_steps', 'keep_checkpoints',
                      'test_every_epochs', 'eval_batch_size', 'data_dir', 'nan_policy',
                      'labeled_dir', 'unlabeled_dir', 'test_dir')


def validate(config: ml_collections.ConfigDict) -> None:
  if config.method not in METHODS:
    raise UserError(f'config.method={config.method!r} is unknown: use one of {", ".join(METHODS)}.')
  if config.method == 'finetune' and not config.init_from:
    raise UserError('config.method=finetune needs config.init_from: the workdir of the run to start from '
                    '(e.g. an mae_pretrain run).')
  if config.gate not in gate.GATE_MODES:
    raise UserError(f'config.gate={config.gate!r} is unknown: use one of {", ".join(gate.GATE_MODES)}.')
  p = config.model.patch_size
  if p <= 0 or config.image_size % p:
    raise UserError(f'config.image_size={config.image_size} is not divisible by config.model.patch_size={p}: '
                    'choose a patch size that divides the image size.')
  num_patches = (config.image_size // p) ** 2
  if not 0 <= config.mask_ratio < 1 or masking.num_kept(num_patches, config.mask_ratio) < 1:
    raise UserError(f'config.mask_ratio={config.mask_ratio} leaves no visible patch of {num_patches}: '
                    'use a ratio in [0, 1) that keeps at least one.')
  reconstructs = config.method == 'mae_pretrain' or (config.method == 'ssmae' and config.rec_weight)
  if reconstructs and masking.num_kept(num_patches, config.mask_ratio) == num_patches:
    # The loss is over removed patches only: with none removed it is 0 and reconstruction silently does nothing.
    raise UserError(f'config.mask_ratio={config.mask_ratio} removes none of the {num_patches} patches, so there is '
                    'nothing to reconstruct: raise it (the paper: 0.75), or set config.rec_weight=0 to drop the term.')
  if config.model.width % config.model.num_heads or config.model.decoder_width % config.model.decoder_num_heads:
    raise UserError('config.model.width (decoder_width) must be divisible by num_heads (decoder_num_heads).')
  for name in ('labeled_batch_size', 'unlabeled_batch_size', 'eval_batch_size'):
    if config[name] <= 0:
      raise UserError(f'config.{name}={config[name]} must be positive.')
  try:
    jnp.dtype(config.model.dtype)
  except TypeError:
    raise UserError(f'config.model.dtype={config.model.dtype!r} is not a dtype: use float32 or bfloat16.') from None
  if config.optimizer.schedule not in ('constant', 'cosine'):
    raise UserError(f'config.optimizer.schedule={config.optimizer.schedule!r}: use constant or cosine.')
  if config.nan_policy not in NAN_POLICIES:
    raise UserError(f'config.nan_policy={config.nan_policy!r} is unknown: use one of {", ".join(NAN_POLICIES)}.')
  if (config.num_steps or 0) < 0 or not (config.num_steps or config.num_epochs) > 0:
    raise UserError(f'config.num_steps={config.num_steps} with config.num_epochs={config.num_epochs} trains nothing: '
                    'set num_steps (or num_epochs, with num_steps None) to a positive number.')
  for name in ('log_every_steps', 'checkpoint_every_steps', 'keep_checkpoints'):
    if config[name] < 1:
      raise UserError(f'config.{name}={config[name]} must be at least 1.')


def to_dict(config: ml_collections.ConfigDict) -> dict:
  """The resolved config as plain JSON-able data."""
  return json.loads(config.to_json_best_effort())


def changed_fields(saved: dict, current: dict, prefix: str = '') -> list[str]:
  """Dotted names of the fields whose values differ between two resolved configs, resume-safe ones excluded."""
  out = []
  for key in sorted(set(saved) | set(current)):
    name = prefix + key
    a, b = saved.get(key), current.get(key)
    if isinstance(a, dict) and isinstance(b, dict):
      out += changed_fields(a, b, name + '.')
    elif a != b and name not in RESUME_SAFE_FIELDS:
      out.append(name)
  return out

"""Checks on a resolved config, run before anything is loaded or compiled: one clear line per mistake; and how a
saved config (an older run's config.json) compares with the current one.

Each field's allowed values are declared once, beside its default in ssmae_jax/configs/default.py (`c.tau =
Float(0.95, min=0, below=1)`), or by a plugin (`registry.config_field`); `validate` checks every field against its
declaration, then the rules that tie fields together.
"""

import json
from typing import Any

import ml_collections

from ssmae_jax import fields as fields_lib, masking, methods, sweep
from ssmae_jax.configs import default
from ssmae_jax.errors import UserError

# Fields a resumed run may change without --config.allow_config_change=True: they do not change what is learned.
# nan_policy: a run stopped by a non-finite step may be resumed with 'skip'. labeled_dir, unlabeled_dir: the folders may
# move, since WORKDIR/data.json (data_record) refuses other files by their relative paths; test_dir is never trained on.
RESUME_SAFE_FIELDS = ('allow_config_change', 'log_every_steps', 'checkpoint_every_steps', 'keep_checkpoints',
                      'test_every_epochs', 'eval_batch_size', 'data_dir', 'nan_policy',
                      'labeled_dir', 'unlabeled_dir', 'test_dir', 'tensorboard', 'compilation_cache_dir',
                      'profile_steps', 'cpu_config')
# Fields renamed since runs were saved: old name -> (new name, old value -> new value).
_RENAMED = {'gate': ('gate_rule', {'dynamic': 'hca'})}


def declarations() -> dict[str, fields_lib.Spec]:
  """Dotted field name -> its declaration: configs/default.py's and the registered plugins' (built anew, so a plugin
  imported since the last call counts)."""
  default.get_config()
  return dict(fields_lib.declared_fields())


def fields(config: ml_collections.ConfigDict, prefix: str = '',
           stop_at: tuple[str, ...] | None = None) -> list[tuple[str, Any]]:
  """(dotted name, value) of every leaf field of a config, references resolved; a mapping field (config.loss_terms:
  declared as fields.Weights, or named in `stop_at`) is one leaf, as a dict."""
  if stop_at is None:
    stop_at = tuple(n for n, spec in declarations().items() if isinstance(spec, (fields_lib.Weights, fields_lib.Sweep)))
  out = []
  for key in config.keys():
    value = config[key]
    if isinstance(value, ml_collections.ConfigDict) and prefix + key in stop_at:
      out.append((prefix + key, value.to_dict()))
    elif isinstance(value, ml_collections.ConfigDict):
      out += fields(value, prefix + key + '.', stop_at)
    else:
      out.append((prefix + key, value))
  return out


def _flag_value(value: Any) -> str:
  if isinstance(value, (tuple, list)):
    return '(' + ','.join(_flag_value(v) for v in value) + ')'
  return str(value)


def _check_field(name: str, value: Any, spec: fields_lib.Spec | None) -> None:
  if spec is None:
    raise UserError(f'config.{name} is not a declared field (ssmae_jax/configs/default.py, or a plugin\'s '
                    'registry.config_field): remove it (misspelt?), or declare it with its allowed values.')
  if spec.accepts(value):
    return
  default = ('' if spec.default is None or isinstance(spec, fields_lib.Weights) else
             f'; e.g. --config.{name}={_flag_value(spec.default)} (the default)')
  raise UserError(f'config.{name}={_flag_value(value)} is not allowed: it must be {spec.describe()}{default}.')


def validate(config: ml_collections.ConfigDict) -> None:
  """Every field against its declaration, then the rules between fields: the first mistake as a UserError."""
  specs = declarations()
  for name, value in fields(config):
    _check_field(name, value, specs.get(name))
  _check_rules(config)
  sweep.check(config, specs)
  for name, run in sweep.runs(config) if sweep.is_sweep(config) else ():
    try:
      _check_rules(run)  # The rules between fields hold in every run, not only at the values the sweep replaces.
    except UserError as e:
      raise UserError(f'config.sweep\'s run {name}: {e}') from None


def _check_rules(config: ml_collections.ConfigDict) -> None:
  method = methods.get(config.method)
  if config.pretrain_steps and not method.classifies:
    raise UserError(f'config.pretrain_steps={config.pretrain_steps} pre-trains the encoder of a classifier, and '
                    f'config.method={config.method} trains none: add --config.pretrain_steps=0.')
  if config.pretrain_steps and config.init_from:
    raise UserError(f'config.pretrain_steps={config.pretrain_steps} and config.init_from both give the run its '
                    'starting encoder: set one of them (--config.pretrain_steps=0 starts from init_from).')
  if method.needs_init_from and not (config.init_from or config.pretrain_steps):
    raise UserError(f'config.method={config.method} needs config.init_from (the workdir of the run to start from, '
                    'e.g. an mae_pretrain run) or config.pretrain_steps (pre-train in this run first).')
  if config.class_tau_drop > config.tau:
    raise UserError(f'config.class_tau_drop={config.class_tau_drop} is more than config.tau={config.tau}: a class\'s '
                    'threshold would fall below 0 and take every prediction; use a drop of at most tau.')
  m = config.model
  if config.image_size % m.patch_size:
    raise UserError(f'config.image_size={config.image_size} is not divisible by config.model.patch_size='
                    f'{m.patch_size}: choose a patch size that divides the image size.')
  num_patches = (config.image_size // m.patch_size) ** 2
  if masking.num_kept(num_patches, config.mask_ratio) < 1:
    raise UserError(f'config.mask_ratio={config.mask_ratio} leaves no visible patch of {num_patches}: '
                    'use a ratio in [0, 1) that keeps at least one.')
  if method.trains_reconstruction(config) and masking.num_kept(num_patches, config.mask_ratio) == num_patches:
    # The loss is over removed patches only: with none removed it is 0 and reconstruction silently does nothing.
    raise UserError(f'config.mask_ratio={config.mask_ratio} removes none of the {num_patches} patches, so there is '
                    'nothing to reconstruct: raise it (the paper: 0.75), or set config.rec_weight=0 to drop the term.')
  if method.weighs_terms and not (config.rec_weight or config.cls_weight):
    raise UserError(f'config.rec_weight=0 and config.cls_weight=0 leave config.method={config.method} no loss to '
                    'train: make one positive.')
  for width, heads in (('width', 'num_heads'), ('decoder_width', 'decoder_num_heads')):
    if m[width] % m[heads]:
      raise UserError(f'config.model.{width}={m[width]} is not divisible by config.model.{heads}={m[heads]}: '
                      'choose a head count that divides the width.')
    if int(m[width] * m.mlp_ratio) < 1:
      raise UserError(f'config.model.mlp_ratio={m.mlp_ratio} gives the MLP of config.model.{width}={m[width]} no '
                      'hidden unit: raise it (the paper: 4).')
  if config.unlabeled_cls_rows >= config.unlabeled_batch_size:
    raise UserError(f'config.unlabeled_cls_rows={config.unlabeled_cls_rows} is not below config.unlabeled_batch_size='
                    f'{config.unlabeled_batch_size}, so no step could take a narrower pass than the full one: set it '
                    'lower (e.g. a quarter of U), or 0 for the full pass always.')
  if not (config.num_steps or config.num_epochs):
    raise UserError(f'config.num_steps={config.num_steps} with config.num_epochs={config.num_epochs} trains nothing: '
                    'set num_steps (or num_epochs, with num_steps None) to a positive number.')


def to_dict(config: ml_collections.ConfigDict) -> dict:
  """The resolved config as plain JSON-able data; config.sweep as the swept fields alone (nested, {} for none)."""
  out = json.loads(config.to_json_best_effort())
  if 'sweep' in out:
    out['sweep'] = _swept_only(out['sweep'])
  return out


def _swept_only(node: dict) -> dict:
  out = {}
  for key, value in node.items():
    if isinstance(value, dict):
      value = _swept_only(value)
    if value not in (None, {}):
      out[key] = value
  return out


def _nested_set(d: dict, dotted: str, value: Any) -> None:
  *parents, leaf = dotted.split('.')
  for key in parents:
    d = d.setdefault(key, {})
  d[leaf] = value


def _has(d: dict, dotted: str) -> bool:
  for key in dotted.split('.'):
    if not isinstance(d, dict) or key not in d:
      return False
    d = d[key]
  return True


def upgrade(saved: dict) -> tuple[dict, list[str]]:
  """An older run's config (its config.json, or results.json's 'config') in today's fields -> (the config, the
  fields filled in at their defaults). A renamed field takes its new name; a field declared since that run was saved
  takes its default, since the run trained with what that default does (the code before the field existed)."""
  out = json.loads(json.dumps(saved))
  for old, (new, values) in _RENAMED.items():
    if old in out and new not in out:
      value = out.pop(old)
      out[new] = values.get(value, value)
  filled = []
  for name, spec in declarations().items():
    if not _has(out, name):
      value = spec.config_value()
      _nested_set(out, name, value.to_dict() if isinstance(value, ml_collections.ConfigDict) else
                  value.get() if isinstance(value, ml_collections.FieldReference) else value)
      filled.append(name)
  return out, filled


def changed_fields(saved: dict, current: dict, prefix: str = '') -> list[str]:
  """Dotted names of the fields whose values differ between a saved config (upgraded: a field it lacks is at its
  default) and the current one, resume-safe ones excluded."""
  if not prefix:
    saved = upgrade(saved)[0]
  out = []
  for key in sorted(set(saved) | set(current)):
    name = prefix + key
    a, b = saved.get(key), current.get(key)
    if isinstance(a, dict) and isinstance(b, dict):
      out += changed_fields(a, b, name + '.')
    elif a != b and name not in RESUME_SAFE_FIELDS:
      out.append(name)
  return out

"""Checks on a resolved config, run before anything is loaded or compiled: one clear line per mistake.

Each field's allowed values are declared once, beside its default in configs/default.py (`c.tau = Float(0.95,
min=0, below=1)`); `validate` checks every field against its declaration, then the rules that tie fields together.
"""

import importlib
import json
import math
from typing import Any

import ml_collections

from ssmae_jax import masking, methods
from ssmae_jax.errors import UserError

METHODS = tuple(methods.METHODS)
NAN_POLICIES = ('stop', 'skip')
SCHEDULES = ('constant', 'cosine')
DTYPES = ('auto', 'float32', 'bfloat16')
# Fields a resumed run may change without --config.allow_config_change=True: they do not change what is learned.
# nan_policy: a run stopped by a non-finite step may be resumed with 'skip'. labeled_dir, unlabeled_dir: the folders may
# move, since WORKDIR/data.json (data_record) refuses other files by their relative paths; test_dir is never trained on.
RESUME_SAFE_FIELDS = ('allow_config_change', 'log_every_steps', 'checkpoint_every_steps', 'keep_checkpoints',
                      'test_every_epochs', 'eval_batch_size', 'data_dir', 'nan_policy',
                      'labeled_dir', 'unlabeled_dir', 'test_dir', 'tensorboard', 'compilation_cache_dir',
                      'profile_steps', 'cpu_config')

# A tuple element has no default of its own: the tuple's default covers it.
_ELEMENT = object()


class Spec:
  """A field's default and the values it accepts. A default of None makes None acceptable too."""
  type: type

  def __init__(self, default: Any = _ELEMENT):
    self.default = default

  @property
  def optional(self) -> bool:
    return self.default is None

  def accepts(self, value: Any) -> bool:
    return (self.optional and value is None) or self._accepts(value)

  def describe(self) -> str:
    """The accepted values, e.g. 'a finite number in [0, 1)'."""
    return ('None or ' if self.optional else '') + self._describe()

  def config_value(self) -> Any:
    """The default as a ConfigDict stores it: None as a typed reference, so an override of another type is refused."""
    if self.default is None:
      return ml_collections.FieldReference(None, field_type=self.type)
    return self.default

  def _accepts(self, value: Any) -> bool:
    raise NotImplementedError

  def _describe(self) -> str:
    raise NotImplementedError


class _Number(Spec):
  """Bounds: min / max inclusive, above / below exclusive; None leaves that side open."""

  def __init__(self, default: Any = _ELEMENT, *, min: float | None = None, max: float | None = None,
               above: float | None = None, below: float | None = None):
    super().__init__(default)
    self.min, self.max, self.above, self.below = min, max, above, below

  def _in_bounds(self, value: float) -> bool:
    return ((self.min is None or value >= self.min) and (self.max is None or value <= self.max)
            and (self.above is None or value > self.above) and (self.below is None or value < self.below))

  def bounds(self) -> str:
    low = f'[{self.min}' if self.min is not None else f'({self.above}' if self.above is not None else None
    high = f'{self.max}]' if self.max is not None else f'{self.below})' if self.below is not None else None
    if low and high:
      return f' in {low}, {high}'
    if low:
      return f' >= {self.min}' if self.min is not None else f' > {self.above}'
    if high:
      return f' <= {self.max}' if self.max is not None else f' < {self.below}'
    return ''


class Int(_Number):
  type = int

  def _accepts(self, value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and self._in_bounds(value)

  def _describe(self) -> str:
    return 'an integer' + self.bounds()


class Float(_Number):
  type = float

  def config_value(self) -> Any:
    # An int default would make the field an int field, refusing --config.x=0.5.
    return super().config_value() if self.default is None else float(self.default)

  def _accepts(self, value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and self._in_bounds(value))

  def _describe(self) -> str:
    return 'a finite number' + self.bounds()


class Bool(Spec):
  type = bool

  def _accepts(self, value: Any) -> bool:
    return isinstance(value, bool)

  def _describe(self) -> str:
    return 'True or False'


class Text(Spec):
  """A string: a name or a path. `nonempty`: '' is refused."""
  type = str

  def __init__(self, default: Any = _ELEMENT, *, nonempty: bool = False):
    super().__init__(default)
    self.nonempty = nonempty

  def _accepts(self, value: Any) -> bool:
    return isinstance(value, str) and bool(value or not self.nonempty)

  def _describe(self) -> str:
    return 'a non-empty string' if self.nonempty else 'a string'


class OneOf(Spec):
  """A name from a registry."""
  type = str

  def __init__(self, default: Any, choices: tuple[str, ...]):
    super().__init__(default)
    self.choices = tuple(choices)

  def _accepts(self, value: Any) -> bool:
    return isinstance(value, str) and value in self.choices

  def _describe(self) -> str:
    return 'one of ' + ', '.join(self.choices)


class Tuple(Spec):
  """A fixed-length tuple; its elements are named and declared in order. `ordered`: each element <= the next."""
  type = tuple

  def __init__(self, default: tuple, *, ordered: bool = False, **elements: _Number):
    super().__init__(tuple(default))
    self.elements = elements
    self.ordered = ordered

  def _accepts(self, value: Any) -> bool:
    if not isinstance(value, (tuple, list)) or len(value) != len(self.elements):
      return False
    if not all(spec.accepts(v) for spec, v in zip(self.elements.values(), value)):
      return False
    return not self.ordered or all(a <= b for a, b in zip(value, value[1:]))

  def _describe(self) -> str:
    kinds = {type(spec) for spec in self.elements.values()}
    kind = 'integers' if kinds == {Int} else 'finite numbers'
    names = list(self.elements)
    order = f' with {" <= ".join(names)}' if self.ordered else ''
    return f'a tuple of {len(names)} {kind} ({", ".join(n + s.bounds() for n, s in self.elements.items())}){order}'


_declarations: dict[str, Spec] = {}


def declared(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` with each declaration replaced by its default; the declarations are kept for `validate`.

  configs/default.py ends with this. A field given a plain value there stays undeclared, and `validate` refuses it.
  """
  def plain(node: ml_collections.ConfigDict, prefix: str) -> dict:
    out = {}
    for key, value in node.items():
      path = prefix + key
      if isinstance(value, ml_collections.ConfigDict):
        out[key] = ml_collections.ConfigDict(plain(value, path + '.'))
      elif isinstance(value, Spec):
        _declarations[path] = value
        out[key] = value.config_value()
      else:
        out[key] = value
    return out

  return ml_collections.ConfigDict(plain(config, ''))


def declarations() -> dict[str, Spec]:
  """Dotted field name -> its declaration, from configs/default.py."""
  if not _declarations:
    importlib.import_module('ssmae_jax.configs.default').get_config()
  return _declarations


def fields(config: ml_collections.ConfigDict, prefix: str = '') -> list[tuple[str, Any]]:
  """(dotted name, value) of every leaf field of a config, references resolved."""
  out = []
  for key in config.keys():
    value = config[key]
    if isinstance(value, ml_collections.ConfigDict):
      out += fields(value, prefix + key + '.')
    else:
      out.append((prefix + key, value))
  return out


def _flag_value(value: Any) -> str:
  if isinstance(value, (tuple, list)):
    return '(' + ','.join(_flag_value(v) for v in value) + ')'
  return str(value)


def _check_field(name: str, value: Any, spec: Spec | None) -> None:
  if spec is None:
    raise UserError(f'config.{name} is not a field of configs/default.py, or has no declaration there: remove it '
                    '(misspelt?), or declare its allowed values beside its default.')
  if spec.accepts(value):
    return
  default = '' if spec.default is None else f'; e.g. --config.{name}={_flag_value(spec.default)} (the default)'
  raise UserError(f'config.{name}={_flag_value(value)} is not allowed: it must be {spec.describe()}{default}.')


def validate(config: ml_collections.ConfigDict) -> None:
  """Every field against its declaration, then the rules between fields: the first mistake as a UserError."""
  specs = declarations()
  for name, value in fields(config):
    _check_field(name, value, specs.get(name))
  _check_rules(config)


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

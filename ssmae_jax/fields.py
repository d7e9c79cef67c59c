"""Config field declarations: a field's default and the values it accepts (`Float(0.95, min=0, below=1)`).

ssmae_jax/configs/default.py declares every built-in field with these; a plugin declares its own with
`registry.config_field`. configuration.py checks a config against them.
"""

import math
from typing import Any

import ml_collections

# A tuple element has no default of its own: the tuple's default covers it.
_ELEMENT = object()


class Spec:
  """A field's default and the values it accepts. A default of None makes None acceptable too.

  `sweep`: the field may be swept (config.sweep, ssmae_jax/sweep.py): its value does not set an array shape or what
  the step program computes, only numbers in it (or host-side choices: the data a run sees, its gate rule).
  `zero_is_off`: a value of 0 removes a part of the step (a loss term, the teacher, clipping), so a sweep may not mix
  0 with other values: those runs need another program.
  `mae_ignores`: MAE pre-training (method mae_pretrain, config.pretrain_steps's stage) never reads the field (SSMAE's
  selection, gate and loss weights), so the runs of a sweep that differ only in such fields share one stage."""
  type: type

  def __init__(self, default: Any = _ELEMENT, *, sweep: bool = False, zero_is_off: bool = False,
               mae_ignores: bool = False):
    self.default = default
    self.sweep = sweep
    self.zero_is_off = zero_is_off
    self.mae_ignores = mae_ignores

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
               above: float | None = None, below: float | None = None, sweep: bool = False,
               zero_is_off: bool = False, mae_ignores: bool = False):
    super().__init__(default, sweep=sweep, zero_is_off=zero_is_off, mae_ignores=mae_ignores)
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
  """A name from a fixed tuple, or from a registry (registry.Registry: the names registered when it is checked)."""
  type = str

  def __init__(self, default: Any, choices, *, sweep: bool = False, mae_ignores: bool = False):
    super().__init__(default, sweep=sweep, mae_ignores=mae_ignores)
    self._choices = choices

  @property
  def choices(self) -> tuple[str, ...]:
    return tuple(self._choices.names() if hasattr(self._choices, 'names') else self._choices)

  def _accepts(self, value: Any) -> bool:
    return isinstance(value, str) and value in self.choices

  def _describe(self) -> str:
    return 'one of ' + ', '.join(self.choices)


class Weights(Spec):
  """A mapping from names in a registry to weights >= 0 (e.g. config.loss_terms): every name registered when the
  config is built is a field at weight 0, so `--config.loss_terms.NAME=W` sets one from the command line."""
  type = dict

  def __init__(self, registry):
    super().__init__({})
    self.registry = registry
    self.weight = Float(0.0, min=0, sweep=True, zero_is_off=True, mae_ignores=True)

  def config_value(self) -> Any:
    return ml_collections.ConfigDict({name: 0.0 for name in self.registry.names()})

  def _accepts(self, value: Any) -> bool:
    return all(name in self.registry.names() and self.weight.accepts(w) for name, w in dict(value).items())

  def _describe(self) -> str:
    names = ', '.join(self.registry.names()) or 'none yet'
    return (f'a mapping from registered {self.registry.kind}s ({names}; @registry.{self.registry.decorator} registers '
            'one) to numbers >= 0')


class Sweep(Spec):
  """config.sweep: swept field -> the tuple of its values; the runs are their product (ssmae_jax/sweep.py checks it).
  Built last: it mirrors every sweepable field (declared with sweep=True) as None, so `--config.sweep.tau='(0.9,0.95)'`
  sets one from the command line."""
  type = dict

  def __init__(self):
    super().__init__({})

  def mirror(self, declarations: dict[str, Spec]) -> ml_collections.ConfigDict:
    out = ml_collections.ConfigDict()
    for name, spec in declarations.items():
      names = ([f'{name}.{k}' for k in spec.registry.names()] if isinstance(spec, Weights) else
               [name] if spec.sweep else [])
      for swept in names:
        *parents, leaf = swept.split('.')
        node = out
        for key in parents:
          if key not in node:
            node[key] = ml_collections.ConfigDict()
          node = node[key]
        node[leaf] = ml_collections.FieldReference(None, field_type=tuple)
    return out

  def _accepts(self, value: Any) -> bool:
    return True  # sweep.check says what is wrong, field by field.

  def _describe(self) -> str:
    return 'a mapping from sweepable fields to tuples of values'


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
  """`config` with each declaration replaced by its default, plus the plugins' fields (registry.config_field); the
  declarations are kept for configuration.validate. configs/default.py ends with this. A field given a plain value
  there stays undeclared, and validation refuses it."""
  from ssmae_jax import registry  # Not at the top: registry's lookups import the modules that import this one.
  for name, spec in registry.config_fields.items():
    *parents, leaf = name.split('.')
    node = config
    for key in parents:
      if key not in node:
        node[key] = ml_collections.ConfigDict()
      node = node[key]
    node[leaf] = spec

  def plain(node: ml_collections.ConfigDict, prefix: str) -> dict:
    out = {}
    for key, value in node.items():
      path = prefix + key
      if isinstance(value, Sweep):
        sweeps.append((out, key, path, value))
      elif isinstance(value, ml_collections.ConfigDict):
        out[key] = ml_collections.ConfigDict(plain(value, path + '.'))
      elif isinstance(value, Spec):
        _declarations[path] = value
        out[key] = value.config_value()
      else:
        out[key] = value
    return out

  sweeps = []
  out = plain(config, '')
  for node, key, path, spec in sweeps:  # After every other field is declared: it mirrors them.
    _declarations[path] = spec
    node[key] = spec.mirror(_declarations)
  return ml_collections.ConfigDict(out)


def declared_fields() -> dict[str, Spec]:
  """The declarations recorded by the last `declared` calls."""
  return _declarations

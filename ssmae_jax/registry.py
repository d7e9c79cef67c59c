"""The method's parts, by name: a researcher adds one from their own module, without editing ssmae_jax/.

    from ssmae_jax import registry

    @registry.gate_rule('per_class')
    def per_class(stats, config) -> bool: ...

A config selects each part by a field (config.gate_rule, config.masking, config.loss_terms, config.method); a config
file is Python, so `import my_plugins` at its top registers them before the config is checked. docs/tinkering.md walks
through each kind. The built-in parts register themselves in their own modules (gate.py, masking.py, methods/); the
lookups here load those first, so every name is listed wherever one is asked for.
"""

import importlib
from typing import Any, Callable

from ssmae_jax.errors import UserError

# The modules whose import registers the built-in parts.
_BUILTIN_MODULES = ('ssmae_jax.gate', 'ssmae_jax.masking', 'ssmae_jax.methods')


class Registry:
  """Names of one kind of part (e.g. 'gate rule'), each selected by `config.<field>`."""

  def __init__(self, kind: str, field: str, decorator: str):
    self.kind, self.field, self.decorator = kind, field, decorator
    self._entries: dict[str, Any] = {}

  def register(self, name: str, entry: Any) -> Any:
    if not isinstance(name, str) or not name:
      raise UserError(f'@registry.{self.decorator}(name) needs a non-empty string name, not {name!r}.')
    if name in self._entries and _origin(self._entries[name]) != _origin(entry):
      # Two modules under one name: the second would silently replace the first (the paper's rule, say).
      raise UserError(f'{self.kind} {name!r} is registered already, by {_origin(self._entries[name])}: choose '
                      f'another name for the one in {_origin(entry)}.')
    self._entries[name] = entry  # The same module imported again (a notebook's re-run) replaces its own entry.
    return entry

  def names(self) -> tuple[str, ...]:
    _load_builtins()
    return tuple(self._entries)

  def get(self, name: str) -> Any:
    _load_builtins()
    if name not in self._entries:
      raise UserError(f'unknown {self.kind} {name!r} (config.{self.field}); registered: {", ".join(self._entries)}. '
                      f'A new one is registered with @ssmae_jax.registry.{self.decorator}({name!r}) in a module that '
                      'your config file imports.')
    return self._entries[name]


def _origin(entry: Any) -> str:
  """The module that registered `entry` (a function, or a method's record by its step's maker)."""
  return getattr(getattr(entry, 'make_step', entry), '__module__', '?')


gate_rules = Registry('gate rule', 'gate_rule', 'gate_rule')
maskings = Registry('masking', 'masking', 'masking')
loss_terms = Registry('loss term', 'loss_terms', 'loss_term')
methods = Registry('method', 'method', 'method')
# Dotted field name -> its declaration (a fields.Spec): plugins' own config fields, added to every config.
config_fields: dict[str, Any] = {}

_loaded = False


def _load_builtins() -> None:
  """Imports the built-in parts' modules, once (flagged first: those modules call back into this registry)."""
  global _loaded
  if _loaded:
    return
  _loaded = True
  for module in _BUILTIN_MODULES:
    importlib.import_module(module)


def gate_rule(name: str) -> Callable:
  """Registers `fn(stats, config) -> bool`: whether the gate is open for an epoch, from its validation pass.

  `stats` holds numpy values: epoch, accuracy, hca, confident (count), count, per_class_confident ([C]: confident
  validation examples per true class) and per_class_correct ([C]: correct among those)."""
  return lambda fn: gate_rules.register(name, fn)


def masking(name: str) -> Callable:
  """Registers `fn(rng, batch_size, num_patches, mask_ratio) -> (ids_keep, mask, ids_restore)`, as
  `masking.random_masking` returns them; shapes must depend on the arguments only (it runs inside jit)."""
  return lambda fn: maskings.register(name, fn)


def loss_term(name: str) -> Callable:
  """Registers `fn(ctx) -> (loss, metrics)`, added to SSMAE's objective with config.loss_terms[name]'s weight.

  `ctx` is a `methods.common.LossContext`: `ctx.classify(images) -> logits` is differentiable in the parameters being
  trained; its images are float, prepared at the model's size. `metrics` is a dict of scalars (or arrays) to log."""
  return lambda fn: loss_terms.register(name, fn)


def method(name: str, **record: Any) -> Callable:
  """Registers a whole train step, `make_step(model, tx, config, mesh, kind=None) -> jitted step(state, batch)`.

  `record` holds the fields of `methods.Method` that say what the method reads and trains (uses_labeled, ...)."""
  def register(make_step: Callable) -> Callable:
    from ssmae_jax.methods import Method  # Here, not at the top: methods/ registers its own built-ins through this.
    methods.register(name, Method(name=name, make_step=make_step, **record))
    return make_step
  return register


def config_field(name: str, spec: Any) -> None:
  """Declares a plugin's own config field `name` (dotted for a nested one), e.g.
  `registry.config_field('consistency_temperature', fields.Float(1.0, above=0))`: every config built after this has
  it at its default, and it is checked like every other field. Call it where the plugin registers its parts."""
  config_fields[name] = spec

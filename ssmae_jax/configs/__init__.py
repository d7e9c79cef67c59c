"""The shipped configs, importable from anywhere: `ssmae_jax.configs.get('cifar10_cpu')`.

Each module's docstring gives its command and what to expect. In the repository `configs/` is a link to this folder,
so `python main.py --config=configs/cifar10.py` names these same files.
"""

import importlib
import pkgutil

import ml_collections

from ssmae_jax.errors import UserError


def names() -> list[str]:
  """The shipped configs, e.g. 'cifar10_cpu', 'baselines.finetune' ('default' holds every field's declaration)."""
  prefix = __name__ + '.'
  return sorted(info.name[len(prefix):] for info in pkgutil.walk_packages(__path__, prefix) if not info.ispkg)


def get(name: str) -> ml_collections.ConfigDict:
  """The shipped config `name` (as `names()` lists it, e.g. 'smoke' or 'baselines.finetune'), resolved."""
  if name not in names():
    raise UserError(f'{name!r} is not a shipped config: choose one of {", ".join(names())}, or load your own file '
                    'with ml_collections.config_flags / importlib.')
  return importlib.import_module(f'{__name__}.{name}').get_config()

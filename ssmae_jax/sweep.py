"""A sweep: several runs of one config, differing in a few numbers, trained as one compiled program.

config.sweep maps fields to tuples of values (`c.sweep.seed = (0, 1, 2, 3)`, `--config.sweep.tau='(0.9,0.95)'`); the
runs are their product. Only fields declared with sweep=True can be swept (configs/default.py): they change numbers
in the step or what the host does for a run (its data, its gate), never an array shape or the program. Inside the
vmapped step a run's config is a `RunConfig`: its swept numbers are arrays (one element of the run axis), the rest is
the config. Two rules keep the program the same for every run:
- a Python `if` on a config value must not depend on the run: read it from `static(config)` (the first run's config),
  and a swept field whose 0 turns a part of the step off (declared zero_is_off=True) is 0 in every run or in none;
- where a step picks the cheaper of two programs (lax.switch / lax.cond), it picks by `agree(config, x)`, the largest
  index any run needs, so the runs still take one branch instead of all of them (vmap would compute every branch).

This module says what the runs are; sweep_train.py trains them.
"""

import itertools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ssmae_jax import fields as fields_lib, fileio
from ssmae_jax.errors import UserError

RUN_AXIS = 'sweep'  # The vmapped axis's name, for `agree`'s collective.
RUNS_DIR = 'runs'  # In a sweep's workdir: one folder per run, named by `run_name`.


def axes(config: ml_collections.ConfigDict) -> dict[str, tuple]:
  """config.sweep as dotted field name -> its values, in alphabetical order (a ConfigDict's); {} when nothing is
  swept."""
  out = {}

  def walk(node, prefix):
    for key in node.keys():
      value = node[key]
      if isinstance(value, (ml_collections.ConfigDict, dict)):
        walk(value, prefix + key + '.')
      elif value is not None:
        out[prefix + key] = value
  walk(config.get('sweep') or {}, '')
  return out


def is_sweep(config) -> bool:
  return bool(axes(config))


def check(config: ml_collections.ConfigDict, specs: dict[str, fields_lib.Spec]) -> None:
  """config.sweep's fields and values, one UserError line for the first mistake (before anything compiles)."""
  for name, values in axes(config).items():
    spec = _spec(name, specs)
    if spec is None:
      raise UserError(f'config.sweep.{name}: there is no field config.{name} to sweep (misspelt?).')
    if not spec.sweep:
      raise UserError(unsweepable(name, specs))
    if not isinstance(values, (tuple, list)) or not values:
      raise UserError(f'config.sweep.{name}={values!r} must be a non-empty tuple of values, e.g. '
                      f"--config.sweep.{name}='({spec.default},)'.")
    for v in values:
      if not spec.accepts(v):
        raise UserError(f'config.sweep.{name} holds {v!r}, which config.{name} does not allow: it must be '
                        f'{spec.describe()}.')
    if len(set(values)) != len(values):
      raise UserError(f'config.sweep.{name}={tuple(values)} repeats a value: list each once.')
    if spec.zero_is_off and len({v == 0 for v in values}) > 1:
      raise UserError(f'config.sweep.{name}={tuple(values)} mixes 0 with other values: 0 removes that part of the '
                      'step, so those runs need another program. Sweep the non-zero values, and run 0 apart.')
  lengths = {len(v) for v in axes(config).values() if isinstance(v, (tuple, list))}
  if config.get('sweep_zip') and len(lengths) > 1:
    raise UserError(f'config.sweep_zip=True pairs the swept values in order, but config.sweep holds tuples of lengths '
                    f'{sorted(lengths)}: give every swept field as many values, or set sweep_zip=False for their '
                    'product.')
  if is_sweep(config) and jax.process_count() > 1:
    raise UserError('config.sweep runs in one process: on several hosts, give each host its own sweep (e.g. one '
                    'seed each) or run without --distributed.')


def _spec(name: str, specs: dict[str, fields_lib.Spec]) -> fields_lib.Spec | None:
  """The declaration of swept field `name`; a `loss_terms.<term>` weight's is its Weights' `weight`."""
  weights = name.rpartition('.')[0]
  if name not in specs and isinstance(specs.get(weights), fields_lib.Weights):
    return specs[weights].weight
  return specs.get(name)


def shared_stages(config: ml_collections.ConfigDict,
                  specs: dict[str, fields_lib.Spec]) -> tuple[ml_collections.ConfigDict, list[list[int]]]:
  """The runs of a sweep's pre-training stage (config.pretrain_steps): runs that differ only in fields MAE
  pre-training never reads (declared mae_ignores, e.g. tau) would train the same stage, so they share one. -> (the
  config whose sweep trains each distinct stage once: config.sweep without those fields, maybe no sweep at all;
  for each of its runs, in order, the indices of config's runs that start from it)."""
  ax = axes(config)
  ignored = [name for name in ax if _spec(name, specs).mae_ignores]
  stage = config.copy_and_resolve_references()
  with stage.unlocked():
    for name in ignored:
      *parents, leaf = name.split('.')
      node = stage.sweep
      for key in parents:
        node = node[key]
      node[leaf] = None
  kept = [name for name in ax if name not in ignored]
  order = [run_name({name: values[name] for name in kept}) for values in
           (dict(zip(ax, combo)) for combo in combinations(config))]
  stage_names = [name for name, _ in runs(stage)] if is_sweep(stage) else ['']
  return stage, [[i for i, name in enumerate(order) if name == stage_name] for stage_name in stage_names]


def unsweepable(name: str, specs: dict[str, fields_lib.Spec]) -> str:
  """The error line for sweeping config.`name`, which sets shapes or the program."""
  sweepable = ', '.join(n for n, s in specs.items() if s.sweep)
  return (f'config.sweep.{name}: config.{name} cannot be swept: it sets array shapes or the program, which every '
          f'run of a sweep shares; run one sweep per value. Sweepable: {sweepable}, loss_terms.<name>.')


def run_name(values: dict[str, Any]) -> str:
  """A run's folder name: 'seed=0,tau=0.9' (the swept fields, alphabetically, and this run's values)."""
  return ','.join(f'{name}={_text(v)}' for name, v in values.items())


def _text(v) -> str:
  return repr(v) if isinstance(v, float) else str(v)


def combinations(config: ml_collections.ConfigDict) -> list[tuple]:
  """Each run's values of the swept fields (`axes`' order): their product, the first field slowest, or with
  config.sweep_zip the i-th value of each."""
  ax = axes(config)
  if config.get('sweep_zip'):
    return list(zip(*ax.values()))
  return list(itertools.product(*ax.values()))


def runs(config: ml_collections.ConfigDict) -> list[tuple[str, ml_collections.ConfigDict]]:
  """(name, config) of each run (`combinations`). A run's config is the sweep's with its values set and nothing
  swept: the config a lone run of it would have. Where config.init_from is a sweep's workdir, a run starts from the
  run of that sweep with its name (e.g. fine-tuning each seed from its own pre-training)."""
  ax = axes(config)
  out = []
  for combo in combinations(config):
    values = dict(zip(ax, combo))
    run = config.copy_and_resolve_references()
    with run.unlocked():
      for name, value in values.items():
        *parents, leaf = name.split('.')
        node = run
        for key in parents:
          node = node[key]
        node[leaf] = float(value) if isinstance(node[leaf], float) else value
      run.sweep = ml_collections.ConfigDict()
      run.sweep_zip = False
      name = run_name(values)
      if run.init_from and (fileio.path(run.init_from) / RUNS_DIR / name).is_dir():
        run.init_from = str(fileio.path(run.init_from) / RUNS_DIR / name)
    out.append((name, run))
  return out


def traced_values(config: ml_collections.ConfigDict, specs: dict[str, fields_lib.Spec]) -> dict[str, np.ndarray]:
  """The swept numbers, one array per field with one element per run (the runs' order): what the vmapped step reads
  in place of the config's value. Seeds are uint32 (they reach 2**32 - 1)."""
  ax = axes(config)
  combos = combinations(config)
  out = {}
  for i, name in enumerate(ax):
    column = [c[i] for c in combos]
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in column):
      spec = specs.get(name)
      is_int = isinstance(spec, fields_lib.Int)
      dtype = (np.uint32 if is_int and (spec.max or 0) >= 2**31 else np.int32) if is_int else np.float32
      out[name] = np.asarray(column, dtype)
  return out


class RunConfig:
  """One run's config inside the vmapped step: a swept number is that run's array element, any other field the
  config's (`template`: the first run's config). Reads like a ConfigDict: config.tau, config.optimizer.b1,
  config.get('loss_terms'), config.loss_terms.items()."""

  def __init__(self, template: ml_collections.ConfigDict, values: dict, prefix: str = ''):
    object.__setattr__(self, '_template', template)
    object.__setattr__(self, '_values', values)
    object.__setattr__(self, '_prefix', prefix)

  def __getattr__(self, name: str):
    if name.startswith('__'):
      raise AttributeError(name)
    full = self._prefix + name
    if full in self._values:
      return self._values[full]
    value = self._template[name]
    if isinstance(value, ml_collections.ConfigDict):
      return RunConfig(value, self._values, full + '.')
    return value

  def __setattr__(self, name, value):
    raise AttributeError('a run\'s config is read-only inside the step')

  __getitem__ = __getattr__

  def __contains__(self, name: str) -> bool:
    return name in self._template

  def keys(self):
    return self._template.keys()

  def items(self):
    return [(k, self[k]) for k in self._template.keys()]

  def get(self, name: str, default=None):
    return self[name] if name in self._template else default

  @property
  def static(self) -> ml_collections.ConfigDict:
    return self._template


def in_sweep(config) -> bool:
  """Whether `config` is a run's config inside a sweep's vmapped step."""
  return isinstance(config, RunConfig)


def static(config):
  """The config that fixes the program: `config` for a lone run; in a sweep, the first run's (whose zero weights and
  choices every run shares). Read Python-level choices (`if static(config).rec_weight:`) from it."""
  return config.static if isinstance(config, RunConfig) else config


def agree(config, x):
  """`x` (an index or a flag) made the same for every run of a sweep: the largest any run has (identity for a lone
  run). A branch index agreed this way keeps lax.switch a switch under vmap; each run must then mask what its own
  index did not ask for."""
  if isinstance(config, RunConfig):
    x = jnp.asarray(x)
    return jax.lax.pmax(x.astype(jnp.int32), RUN_AXIS).astype(x.dtype)
  return x

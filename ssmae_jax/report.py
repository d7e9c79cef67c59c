"""The paper's table from finished runs: `python -m ssmae_jax.report WORKDIR [WORKDIR ...] [--equal_compute]`.

Reads each WORKDIR/results.json (a directory is searched recursively), groups the runs by dataset, method and label
fraction, and prints a markdown table of test accuracy (mean ± std over seeds, n runs) beside the paper's numbers.
Runs of one group whose configs differ in more than the seed (another tau, another number of steps...) are not
averaged together: each variant gets its own row, named by the config fields that set it apart.
A WORKDIR may also be a results.json file itself (e.g. the copies in docs/results/). With --equal_compute a second
table gives each row's steps, wall time and training FLOPs, and its test accuracy at SSMAE's budget (`equal_compute`):
that of the SSMAE row with the most runs, named below the table where there are several, or with --budget=TEXT the
SSMAE row whose variant name contains TEXT (e.g. --budget=num_steps=8000).
"""

import collections
import json
import statistics
import sys

from ssmae_jax import configuration, fileio, flops
from ssmae_jax.configs import default
from ssmae_jax.errors import UserError

# Faysal et al., arXiv 2601.20072, ViT-B/16 at 224 px, 400 epochs (docs/method.md). Percent.
PAPER = {
    ('cifar10', 'ssmae'): {0.1: 56.80, 0.2: 66.4, 0.3: 71.83, 0.4: 74.67},
    ('cifar10', 'supervised'): {0.1: 47.56},
    ('cifar10', 'finetune'): {0.1: 54.84},
    ('cifar100', 'ssmae'): {0.1: 22.65, 0.2: 32.41, 0.3: 35.31, 0.4: 41.27},
    ('cifar100', 'supervised'): {0.1: 20.86},
    ('cifar100', 'finetune'): {0.1: 21.72},
}
# What a workdir holds besides its JSON files.
RUN_FOLDERS = ('checkpoints', 'best', 'figures', 'compilation_cache', 'profile')
METHOD_ORDER = ('supervised', 'mae_pretrain', 'finetune', 'ssmae')
BUDGET_METHOD = 'ssmae'  # The equal-compute view reads the other rows at this method's wall time and FLOPs.
# Fields that say where or how a run was kept, not what it learned; seeds and splits are what a row averages over.
# (init_from counts only as set or not: which run a row started from is a path.) unlabeled_cls_rows changes how fast
# a step runs, not what it computes (configs/default.py), so runs with and without it are one variant.
NOT_A_VARIANT = ('seed', 'split_seed', 'data_dir', 'labeled_dir', 'unlabeled_dir', 'test_dir', 'unlabeled_cls_rows',
                 *configuration.RESUME_SAFE_FIELDS)


def _flatten(d: dict, prefix: str = '') -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f'{prefix}{k}.'))
    else:
      out[prefix + k] = json.dumps(v) if isinstance(v, (list, tuple)) else v
  return out


def find_results(paths: list[str]) -> list[str]:
  """results.json files: the paths that are files, and those anywhere below the others (local or gs://)."""
  found = []
  for path in paths:
    if fileio.path(path).is_file():
      found.append(path)
      continue
    for directory, subdirectories, files in fileio.walk(fileio.path(path)):
      # A run's own folders hold no results.json; in a bucket each listing is a request.
      subdirectories[:] = sorted(d for d in subdirectories if d not in RUN_FOLDERS)
      if 'results.json' in files:
        found.append(str(directory / 'results.json'))
  return found


def _config(results: dict, defaults: dict) -> dict:
  """A run's flattened config, the fields that name no variant left out. A declared field missing from an older
  results.json did not exist when the run was made, so the run did what its default does (every field added since
  is off by default): it counts as that default, and a new field does not split old runs from new ones."""
  config = _flatten(configuration.upgrade(results['config'])[0] if results.get('config') else {})
  if config:
    config = {**defaults, **config}
  if 'init_from' in config:
    config['init_from'] = bool(config['init_from'])
  return {k: v for k, v in config.items() if k not in NOT_A_VARIANT}


def load(paths: list[str]) -> list[dict]:
  # configs/default.py's values, flattened (the names are dotted already: flattening only encodes tuples).
  defaults = _flatten(dict(configuration.fields(default.get_config())))
  runs = []
  for path in find_results(paths):
    r = fileio.read_json(path)
    if r.get('test_accuracy') is None:
      continue
    runs.append(dict(dataset=r['dataset'], method=r.get('method', 'ssmae'), label_fraction=r['label_fraction'],
                     seed=r.get('seed'), test_accuracy=100 * r['test_accuracy'], path=path,
                     config=_config(r, defaults), results=r))
  return runs


def _variants(runs: list[dict]) -> list[str]:
  """For runs of one (dataset, method, fraction) group: a name per run, from the config fields that differ."""
  keys = sorted({k for r in runs for k in r['config']})
  differing = [k for k in keys if len({json.dumps(r['config'].get(k)) for r in runs}) > 1]
  return [', '.join(f'{k}={r["config"].get(k)}' for k in differing) for r in runs]


def mean_std(values: list[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (0 for a single run)."""
  return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def grouped(runs: list[dict]) -> dict[tuple, list[dict]]:
  """Rows of the table, in its order: (dataset, method, label fraction, variant) -> the runs averaged in the row."""
  by_setting = collections.defaultdict(list)
  for r in runs:
    by_setting[(r['dataset'], r['method'], round(r['label_fraction'], 4))].append(r)
  groups = collections.defaultdict(list)
  for setting, members in by_setting.items():
    for run, variant in zip(members, _variants(members)):
      groups[(*setting, variant)].append(run)
  order = lambda k: (k[0], METHOD_ORDER.index(k[1]) if k[1] in METHOD_ORDER else len(METHOD_ORDER), k[1], k[2], k[3])
  return {key: groups[key] for key in sorted(groups, key=order)}


def table(runs: list[dict]) -> str:
  groups = grouped(runs)
  named = any(key[3] for key in groups)
  lines = ['| dataset | method | labels |' + (' variant |' if named else '') +
           ' test accuracy (%) | runs | paper (%) |',
           '|---|---|---|' + ('---|' if named else '') + '---|---|---|']
  for key, members in groups.items():
    dataset, method, fraction, variant = key
    mean, std = mean_std([r['test_accuracy'] for r in members])
    paper = PAPER.get((dataset, method), {}).get(fraction)
    lines.append(f'| {dataset} | {method} | {100 * fraction:g}% |' + (f' {variant or "—"} |' if named else '') +
                 f' {mean:.2f} ± {std:.2f} | {len(members)} | {"—" if paper is None else f"{paper:.2f}"} |')
  return '\n'.join(lines)


def at_budget(results: dict, spent: list[float], budget: float) -> float | None:
  """Test accuracy (%) of a run when it had spent `budget` (wall seconds or FLOPs, `spent` at each history record
  and at its end): its last test evaluation within the budget; its final one if it ended within it."""
  if spent[-1] <= budget:
    return 100 * results['test_accuracy']
  within = [r['test_accuracy'] for r, used in zip(results['history'], spent) if used <= budget
            and r['test_accuracy'] is not None]
  return 100 * within[-1] if within else None


def _budget_rows(groups: dict, budget_variant: str | None = None) -> dict:
  """(dataset, fraction) -> the BUDGET_METHOD row whose runs set the equal-compute budget: of several, the one whose
  variant name contains `budget_variant`, else the one with the most runs (the recipe run on every split; ties: the
  first). Each run is then read at the budget of that row's run of its seed (the same split), else at their mean."""
  rows = collections.defaultdict(list)
  for key in groups:
    if key[1] == BUDGET_METHOD:
      rows[(key[0], key[2])].append(key)
  chosen, matched = {}, False
  for setting, keys in rows.items():
    named = [k for k in keys if budget_variant is not None and budget_variant in k[3]]
    matched |= bool(named)
    if len(named) > 1:
      raise UserError(f'--budget={budget_variant} names {len(named)} SSMAE rows of {setting[0]} at '
                      f'{100 * setting[1]:g}% labels ({"; ".join(k[3] for k in named)}): give more of one name')
    chosen[setting] = named[0] if named else max(keys, key=lambda k: len(groups[k]))  # max: the first of a tie.
  if budget_variant is not None and not matched:
    raise UserError(f'--budget={budget_variant} names no SSMAE row: give part of a variant name from the table')
  return chosen


def wall_before(results: dict) -> float:
  """Wall seconds before a run's first step: its pre-training stage's, or the whole of the run it started from."""
  initialization = results.get('initialization')
  return (results.get('pretraining', {}).get('wall_seconds', 0.0) +
          (wall_before(initialization) + initialization['wall_seconds'] if initialization else 0.0))


def equal_compute(runs: list[dict], count_flops: bool = True, budget_variant: str | None = None) -> str:
  """Each row's compute (steps, wall time, training FLOPs by XLA's count) and its test accuracy at SSMAE's compute:
  for a run that went on longer than the SSMAE run of its seed (its split; without one, the SSMAE runs' mean wall
  time / FLOPs), its last test evaluation within that budget. A run's compute begins with what came before its first
  step: its pre-training stage, or the run it started from (results.json's 'initialization'). Wall times are only
  comparable between runs on equally loaded cores. `budget_variant`: the SSMAE row whose variant name contains it
  sets the budget."""
  groups = grouped(runs)
  for r in runs:
    before = wall_before(r['results'])  # Its pre-training stage, or the run it started from, comes first.
    r['wall'] = [before + rec['wall_seconds'] for rec in r['results']['history']] + [
        before + r['results']['wall_seconds']]
    r['flops'] = flops.run_flops(r['results']) if count_flops else None
  budget_rows = _budget_rows(groups, budget_variant)
  budgets = {}
  for setting, key in budget_rows.items():
    members = groups[key]
    spent = {r['seed']: (r['wall'][-1], r['flops'][-1] if count_flops else None) for r in members}
    spent[None] = (statistics.fmean(r['wall'][-1] for r in members),
                   statistics.fmean(r['flops'][-1] for r in members) if count_flops else None)
    budgets[setting] = spent

  def budget(run, which: int) -> float | None:
    spent = budgets.get((run['dataset'], round(run['label_fraction'], 4)))
    return None if spent is None else spent.get(run['seed'], spent[None])[which]

  named = any(key[3] for key in groups)
  lines = ['| dataset | method | labels |' + (' variant |' if named else '') + ' steps | wall (min) |' +
           (' PFLOP |' if count_flops else '') + ' test acc (%) | at SSMAE\'s wall time |' +
           (' at SSMAE\'s FLOPs |' if count_flops else '') + ' runs |',
           '|---|---|---|' + ('---|' if named else '') + '---|---|' + ('---|' if count_flops else '') + '---|---|' +
           ('---|' if count_flops else '') + '---|']

  def mean_of(values):
    values = [v for v in values if v is not None]
    return f'{statistics.fmean(values):.2f}' if values else '—'

  for key, members in groups.items():
    dataset, method, fraction, variant = key
    row = [dataset, method, f'{100 * fraction:g}%'] + ([variant or '—'] if named else [])
    row += [f'{statistics.fmean(r["results"]["steps"] for r in members):,.0f}',
            f'{statistics.fmean(r["wall"][-1] for r in members) / 60:.1f}']
    if count_flops:
      row.append(f'{statistics.fmean(r["flops"][-1] for r in members) / 1e15:.3f}')
    row.append(mean_of([r['test_accuracy'] for r in members]))
    row.append(mean_of([at_budget(r['results'], r['wall'], budget(r, 0)) for r in members if budget(r, 0)]))
    if count_flops:
      row.append(mean_of([at_budget(r['results'], r['flops'], budget(r, 1)) for r in members if budget(r, 1)]))
    row.append(str(len(members)))
    lines.append('| ' + ' | '.join(row) + ' |')
  for (dataset, fraction), key in budget_rows.items():
    if sum(k[:3] == key[:3] for k in groups) > 1:  # Say which of several rows is the budget.
      lines.append(f'\n{dataset}, {100 * fraction:g}% labels: SSMAE\'s budget is the row {key[3]}.')
  return '\n'.join(lines)


def main(argv: list[str]) -> int:
  paths = [a for a in argv if not a.startswith('--')]
  budget = next((a.split('=', 1)[1] for a in argv if a.startswith('--budget=')), None)
  unknown = [a for a in argv if a.startswith('--') and a not in ('--equal_compute', '--no_flops')
             and not a.startswith('--budget=')]
  if not paths or unknown:
    print('usage: python -m ssmae_jax.report WORKDIR [WORKDIR ...] [--equal_compute [--no_flops] '
          '[--budget=VARIANT]]', file=sys.stderr)
    return 2
  runs = load(paths)
  if not runs:
    print(f'error: no finished run (results.json with a test accuracy) under {" ".join(paths)}', file=sys.stderr)
    return 2
  try:
    _budget_rows(grouped(runs), budget)  # A --budget that names no row, or two, fails before any table.
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(table(runs))
  if '--equal_compute' in argv:
    print()
    print(equal_compute(runs, count_flops='--no_flops' not in argv, budget_variant=budget))
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))

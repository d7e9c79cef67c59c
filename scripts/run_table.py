"""Launches every run of the paper's table for one config, one after another, then prints the table.

  TFDS_DATA_DIR=../shared/tfds python scripts/run_table.py --config=configs/cifar10.py --root=/tmp/table \\
      --fractions=0.1,0.2,0.3,0.4 --seeds=0,1,2 --methods=supervised,mae_pretrain,finetune,ssmae [-- --config.x=y]

Each run is `main.py` in its own workdir ROOT/<dataset>/<method>/labels<fraction>/seed<seed>, so an interrupted
table resumes where it stopped (finished runs are skipped, a half-done one resumes from its checkpoint).
A seed is a fresh split and a fresh initialisation: it sets both `config.seed` and `config.split_seed`, so the
rows' ± is over different labeled / validation sets, as a new user would meet them.
`finetune` starts from the `mae_pretrain` run of the same seed. Pre-training reads no labels, so it runs once per
seed, leaving out the validation images of the config's label_fraction: at a larger fraction some of that fraction's
validation images (never their labels) were pre-training input (a split seed's validation sets are nested). Both
rows set `config.pretrain_steps=0`, since they are the two stages themselves (`configs/cifar10_cpu.py` pre-trains
inside its ssmae and supervised runs). Arguments after `--` go to every run.
Rows at another budget (supervised at SSMAE's wall time or FLOPs, MAE pre-training + fine-tuning at SSMAE's total)
take a --tag and their own arguments after --, e.g.
  ... --methods=supervised --tag=steps24000 -- --config.num_steps=24000
The report names such rows by the config fields that differ.
A twin from the same pre-training: --pretraining_from=ROW copies the finished stage (WORKDIR/pretrain, of a config
with config.pretrain_steps) of the run of the same fraction and seed in ROOT/DATASET/ROW into each run's workdir before
its first start, so the twin differs from that run only after the stage, e.g.
  ... --config=configs/cifar10_cpu.py --methods=ssmae,supervised --pretraining_from=ssmae
On a TPU/GPU host run it as it is: each run uses all local devices. To spread runs over several hosts, give each
host a different --seeds or --fractions.
--sweep: the seeds of each method and fraction train as one sweep (config.sweep over seed and split_seed together,
one compiled program, README "Sweeps") in ROOT/<dataset>/<method>/labels<fraction>/seeds<s1-s2-...>, each seed's run
in its runs/seed=S,split_seed=S/; finetune starts each seed from the run of the same name in the mae_pretrain sweep.
"""

import argparse
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ssmae_jax import fileio, registry, report  # noqa: E402

# experiment.PRETRAIN_DIR, where a run keeps its pre-training stage (not imported: that loads TensorFlow; a test keeps
# the two equal).
PRETRAIN_DIR = 'pretrain'


def runs(methods: list[str], fractions: list[float], seeds: list[int]):
  """(method, fraction or None, seed) in dependency order: pre-training (a method that trains no classifier: it reads
  no labels, so it runs once per seed) before the methods that start from it (`needs_init_from`)."""
  record = {name: registry.methods.get(name) for name in methods}
  for seed in seeds:
    if any(not r.classifies or r.needs_init_from for r in record.values()):
      yield 'mae_pretrain', None, seed
    for fraction in fractions:
      for method in methods:
        if record[method].classifies:
          yield method, fraction, seed


def workdir(root: str, dataset: str, method: str, fraction: float | None, seed: int, tag: str = '') -> str:
  labels = 'all' if fraction is None else f'labels{fraction:g}'
  # A bucket (gs://...) or a local folder: string joins, since os.path would make a URL local.
  return '/'.join([root.rstrip('/'), dataset, f'{method}_{tag}' if tag else method, labels, f'seed{seed}'])


def sweep_dir(root: str, dataset: str, method: str, fraction: float | None, seeds: list[int], tag: str = '') -> str:
  """The workdir of --sweep's sweep over `seeds`; each seed's run is in its runs/seed=S,split_seed=S/."""
  return workdir(root, dataset, method, fraction, 0, tag).rsplit('/', 1)[0] + '/seeds' + '-'.join(map(str, seeds))


def run_name(seed: int) -> str:
  """The folder of a seed's run in a --sweep sweep (sweep.run_name of seed and split_seed)."""
  return f'seed={seed},split_seed={seed}'


def copy_stages(args, fraction: float, group: list[int], stages: list[tuple[str | None, str]]) -> bool:
  """--pretraining_from: copies each (run name or None, stage folder) its finished stage from ROW's run of the same
  fraction and seed; False (after an error line) where ROW's stage is not finished."""
  for name, stage in stages:
    if (fileio.path(stage) / 'results.json').exists():
      continue
    seed = group[[run_name(s) for s in group].index(name)] if name else group[0]
    source = '/'.join([sweep_dir(args.root, args.dataset, args.pretraining_from, fraction, group) + '/runs/' + name
                       if name else workdir(args.root, args.dataset, args.pretraining_from, fraction, seed),
                       PRETRAIN_DIR])
    if source == stage:
      continue
    if not args.dry_run and not (fileio.path(source) / 'results.json').exists():
      print(f'run_table.py: error: --pretraining_from={args.pretraining_from}: {source} is not a finished '
            'pre-training stage (no results.json): run that row first (list it earlier in --methods), or drop '
            '--pretraining_from.', file=sys.stderr)
      return False
    print(f'+ copy {source} {stage}', flush=True)
    if not args.dry_run:
      fileio.copy_run(source, stage)
  return True


def launch_command(args, method: str, fraction: float | None, group: list[int], wd: str) -> list[str]:
  """main.py's command for `method` at `fraction`: one run of seed group[0], or with --sweep a sweep of `group`."""
  command = [sys.executable, os.path.join(ROOT, 'main.py'), f'--config={args.config}', f'--workdir={wd}',
             f'--config.method={method}', f'--config.dataset={args.dataset}']
  if args.sweep:
    values = '(' + ','.join(map(str, group)) + ',)'
    command += [f'--config.sweep.seed={values}', f'--config.sweep.split_seed={values}', '--config.sweep_zip=True']
  else:
    command += [f'--config.seed={group[0]}', f'--config.split_seed={group[0]}']
  if fraction is not None:
    command.append(f'--config.label_fraction={fraction}')
  record = registry.methods.get(method)
  # The paper's two stages, as separate runs: no stage of their own.
  if not record.classifies or record.needs_init_from:
    command.append('--config.pretrain_steps=0')
  if record.needs_init_from:  # The paper's fine-tuning recipe; arguments after -- still override it.
    source = (sweep_dir(args.root, args.dataset, 'mae_pretrain', None, group, args.tag) if args.sweep else
              workdir(args.root, args.dataset, 'mae_pretrain', None, group[0], args.tag))
    command += [f'--config.init_from={source}', '--config.labeled_batch_size=32', '--config.num_epochs=100',
                '--config.optimizer.schedule=cosine']
  return command


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--config', required=True)
  parser.add_argument('--root', required=True)
  parser.add_argument('--dataset', default='cifar10')
  parser.add_argument('--methods', default='supervised,mae_pretrain,finetune,ssmae',
                      help='registered methods (a plugin\'s too, where the config file imports it)')
  parser.add_argument('--fractions', default='0.1,0.2,0.3,0.4')
  parser.add_argument('--seeds', default='0')
  parser.add_argument('--tag', default='', help='a name for runs whose arguments after -- differ from the main rows\' '
                      '(e.g. steps24000 for supervised at the same wall time): their workdirs are METHOD_TAG/...')
  parser.add_argument('--pretraining_from', default='', metavar='ROW',
                      help='start each ssmae / supervised run from the finished pre-training stage of the run of the '
                      'same fraction and seed in ROOT/DATASET/ROW (e.g. ssmae, or ssmae_TAG), copied into its workdir')
  parser.add_argument('--sweep', action='store_true', help='train the seeds of each method and fraction as one sweep '
                      '(one compiled program) instead of one run after another')
  parser.add_argument('--dry_run', action='store_true', help='print the commands only')
  args, extra = parser.parse_known_args()
  extra = [a for a in extra if a != '--']
  methods = args.methods.split(',')
  unknown = set(methods) - set(registry.methods.names())
  if unknown:
    parser.error(f'unknown methods {sorted(unknown)}; registered: {", ".join(registry.methods.names())}')
  fractions = [float(f) for f in args.fractions.split(',')]
  seeds = [int(s) for s in args.seeds.split(',')]
  if args.pretraining_from and {'mae_pretrain', 'finetune'} & set(methods):
    parser.error('--pretraining_from gives ssmae and supervised runs a copied stage; mae_pretrain and finetune rows '
                 'have none (they set config.pretrain_steps=0): launch them without it')

  groups = ([(method, fraction, seeds) for method, fraction, _ in runs(methods, fractions, seeds[:1])] if args.sweep
            else [(method, fraction, [seed]) for method, fraction, seed in runs(methods, fractions, seeds)])
  for method, fraction, group in groups:
    if args.sweep:
      wd = sweep_dir(args.root, args.dataset, method, fraction, group, args.tag)
      done = fileio.path(wd) / 'sweep.json'
      stages = [(run_name(s), '/'.join([wd, 'runs', run_name(s), PRETRAIN_DIR])) for s in group]
    else:
      wd = workdir(args.root, args.dataset, method, fraction, group[0], args.tag)
      done = fileio.path(wd) / 'results.json'
      stages = [(None, '/'.join([wd, PRETRAIN_DIR]))]
    if done.exists():
      continue
    if args.pretraining_from and not copy_stages(args, fraction, group, stages):
      return 2
    command = launch_command(args, method, fraction, group, wd) + extra
    print('+ ' + ' '.join(command), flush=True)
    if not args.dry_run:
      subprocess.run(command, check=True)
  if args.dry_run:
    return 0
  if not report.load([args.root]):  # E.g. --methods=mae_pretrain alone: those runs have no test accuracy.
    print(f'No run under {args.root} has a test accuracy yet (mae_pretrain runs have none): no table.')
    return 0
  return report.main([args.root])


if __name__ == '__main__':
  sys.exit(main())

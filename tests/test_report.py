"""The table command on hand-made results.json files."""

import json
import statistics

import pytest

from ssmae_jax import report


def write(path, **fields):
  path.mkdir(parents=True)
  (path / 'results.json').write_text(json.dumps(fields))


def test_table_means_stds_and_paper_numbers(tmp_path, capsys):
  for seed, acc in enumerate([0.50, 0.54, 0.58]):
    write(tmp_path / f'ssmae_{seed}', dataset='cifar10', method='ssmae', label_fraction=0.1, seed=seed,
          test_accuracy=acc)
  write(tmp_path / 'sup', dataset='cifar10', method='supervised', label_fraction=0.1, seed=0, test_accuracy=0.4)
  write(tmp_path / 'c100', dataset='cifar100', method='ssmae', label_fraction=0.2, seed=0, test_accuracy=0.3)
  write(tmp_path / 'unfinished', dataset='cifar10', method='ssmae', label_fraction=0.1, seed=9, test_accuracy=None)

  assert report.main([str(tmp_path)]) == 0
  rows = [l for l in capsys.readouterr().out.splitlines() if l.startswith('| cifar')]
  assert len(rows) == 3
  sup, ssmae = rows[0], rows[1]
  assert sup.startswith('| cifar10 | supervised | 10% | 40.00 ± 0.00 | 1 | 47.56 |')
  std = statistics.stdev([50.0, 54.0, 58.0])
  assert ssmae.startswith(f'| cifar10 | ssmae | 10% | 54.00 ± {std:.2f} | 3 | 56.80 |')
  assert rows[2].startswith('| cifar100 | ssmae | 20% | 30.00 ± 0.00 | 1 | 32.41 |')


def test_runs_of_different_configs_are_rows_of_their_own(tmp_path, capsys):
  base = dict(dataset='cifar10', method='ssmae', label_fraction=0.1)
  # Seeds of one config, with a resume-safe field and a speed-only one (the same step, gathered) that may differ.
  for seed, acc in enumerate([0.50, 0.52]):
    write(tmp_path / f'a{seed}', **base, seed=seed, test_accuracy=acc,
          config=dict(seed=seed, split_seed=seed, tau=0.95, log_every_steps=10 + seed, unlabeled_cls_rows=8 * seed,
                      model=dict(width=128)))
  write(tmp_path / 'b', **base, seed=0, test_accuracy=0.60, config=dict(seed=0, tau=0.85, model=dict(width=128)))
  write(tmp_path / 'c', **base, seed=0, test_accuracy=0.70, config=dict(seed=0, tau=0.85, model=dict(width=64)))

  assert report.main([str(tmp_path)]) == 0
  rows = [l for l in capsys.readouterr().out.splitlines() if l.startswith('| cifar')]
  std = statistics.stdev([50.0, 52.0])
  assert rows == [
      '| cifar10 | ssmae | 10% | model.width=128, tau=0.85 | 60.00 ± 0.00 | 1 | 56.80 |',
      f'| cifar10 | ssmae | 10% | model.width=128, tau=0.95 | 51.00 ± {std:.2f} | 2 | 56.80 |',
      '| cifar10 | ssmae | 10% | model.width=64, tau=0.85 | 70.00 ± 0.00 | 1 | 56.80 |',
  ]  # Variants in the order of their names.


def test_a_field_missing_from_an_older_run_counts_as_its_default(tmp_path, capsys):
  base = dict(dataset='cifar10', method='ssmae', label_fraction=0.1)
  # Made before pretrain_steps and gate_min_confident existed, and after, with their defaults: one row of 2 runs.
  write(tmp_path / 'old', **base, seed=0, test_accuracy=0.50, config=dict(seed=0, tau=0.85, init_from=''))
  write(tmp_path / 'new', **base, seed=1, test_accuracy=0.52,
        config=dict(seed=1, tau=0.85, init_from='', pretrain_steps=0, gate_min_confident=0))
  write(tmp_path / 'staged', **base, seed=0, test_accuracy=0.60, config=dict(seed=0, tau=0.85, pretrain_steps=10))
  # Which run another started from is a path: it names a variant only as set or not.
  write(tmp_path / 'init', **base, seed=0, test_accuracy=0.70, config=dict(seed=0, tau=0.85, init_from='/runs/mae'))

  assert report.main([str(tmp_path)]) == 0
  rows = [l for l in capsys.readouterr().out.splitlines() if l.startswith('| cifar')]
  std = statistics.stdev([50.0, 52.0])
  assert rows == [
      f'| cifar10 | ssmae | 10% | init_from=False, pretrain_steps=0 | 51.00 ± {std:.2f} | 2 | 56.80 |',
      '| cifar10 | ssmae | 10% | init_from=False, pretrain_steps=10 | 60.00 ± 0.00 | 1 | 56.80 |',
      '| cifar10 | ssmae | 10% | init_from=True, pretrain_steps=0 | 70.00 ± 0.00 | 1 | 56.80 |',
  ]


def test_no_runs_is_a_clear_error(tmp_path, capsys):
  assert report.main([str(tmp_path)]) == 2
  assert 'no finished run' in capsys.readouterr().err


def test_table_launcher_orders_runs_and_feeds_finetune_the_pretrained_run(tmp_path):
  import os
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  done = tmp_path / 'cifar10' / 'ssmae' / 'labels0.2' / 'seed0'
  write(done, dataset='cifar10', method='ssmae', label_fraction=0.2, seed=0, test_accuracy=0.5)
  out = subprocess.run(
      [sys.executable, 'scripts/run_table.py', '--config=configs/smoke.py', f'--root={tmp_path}',
       '--fractions=0.1,0.2', '--seeds=0', '--methods=finetune,ssmae', '--dry_run', '--', '--config.num_steps=7'],
      cwd=root, capture_output=True, text=True, check=True).stdout.splitlines()
  assert [l.split('--config.method=')[1].split()[0] for l in out] == ['mae_pretrain', 'finetune', 'ssmae', 'finetune']
  pretrain_dir = str(tmp_path / 'cifar10' / 'mae_pretrain' / 'all' / 'seed0')
  assert f'--workdir={pretrain_dir}' in out[0]
  assert f'--config.init_from={pretrain_dir}' in out[1] and '--config.label_fraction=0.1' in out[1]
  # The reference's fine-tuning recipe (configs/baselines/finetune.py), before the extra arguments that may override it.
  for flag in ('--config.labeled_batch_size=32', '--config.num_epochs=100', '--config.optimizer.schedule=cosine'):
    assert flag in out[1] and flag not in out[2] and out[1].index(flag) < out[1].index('--config.num_steps=7')
  assert all(l.endswith('--config.num_steps=7') for l in out)  # Extra arguments reach every run, last.
  # The paper's two stages are runs of their own: a config's pre-training stage (cifar10_cpu.py's) is off for them.
  assert ['--config.pretrain_steps=0' in l for l in out] == [True, True, False, True]
  # A seed is a new split as well as a new initialisation.
  assert all('--config.seed=0' in l and '--config.split_seed=0' in l for l in out)


def test_table_launcher_of_pre_training_runs_alone_ends_without_an_error(tmp_path):
  """--methods=mae_pretrain alone (a stage for later runs) finishes with exit 0: its runs have no test accuracy to
  tabulate, which is not a failure (a queue chains on the exit status)."""
  import os
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  write(tmp_path / 'cifar10' / 'mae_pretrain' / 'all' / 'seed0', dataset='cifar10', method='mae_pretrain',
        label_fraction=None, seed=0, test_accuracy=None)  # Finished: the launcher skips it.
  out = subprocess.run([sys.executable, 'scripts/run_table.py', '--config=configs/smoke.py', f'--root={tmp_path}',
                        '--seeds=0', '--methods=mae_pretrain'], cwd=root, capture_output=True, text=True)
  assert out.returncode == 0, out.stderr
  assert 'has a test accuracy yet (mae_pretrain runs have none): no table' in out.stdout


def test_cost_estimate_counts_the_flops_of_a_step(tmp_path):
  import importlib.util
  import os
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  spec = importlib.util.spec_from_file_location('estimate_cost', os.path.join(root, 'scripts', 'estimate_cost.py'))
  estimate_cost = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(estimate_cost)
  small = estimate_cost.estimate(os.path.join(root, 'configs', 'smoke.py'), tflops=1.0)
  assert small['steps'] == 60 and small['params'] > 0 and small['gflops_per_step_gate_open'] > 0
  assert small['flop_bound_hours'] == pytest.approx(  # hours = GFLOP x steps / (TFLOP/s x 3600)
      small['gflops_per_step_gate_open'] * 1e9 * 60 / 1e12 / 3600, rel=0.01)
  # A wider model costs more per step.
  config = tmp_path / 'wide.py'
  config.write_text('from ssmae_jax.configs import smoke\n\ndef get_config():\n  c = smoke.get_config()\n'
                    '  c.model.width = 64\n  return c\n')
  assert estimate_cost.estimate(str(config), 1.0)['gflops_per_step_gate_open'] > small['gflops_per_step_gate_open']


def test_table_launcher_tags_runs_at_another_budget(tmp_path):
  import os
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run(
      [sys.executable, 'scripts/run_table.py', '--config=configs/smoke.py', f'--root={tmp_path}', '--fractions=0.1',
       '--seeds=1', '--methods=finetune', '--tag=steps24', '--dry_run', '--', '--config.num_steps=24'],
      cwd=root, capture_output=True, text=True, check=True).stdout.splitlines()
  pretrain_dir = str(tmp_path / 'cifar10' / 'mae_pretrain_steps24' / 'all' / 'seed1')
  assert f'--workdir={pretrain_dir}' in out[0]
  assert f'--workdir={tmp_path / "cifar10" / "finetune_steps24" / "labels0.1" / "seed1"}' in out[1]
  assert f'--config.init_from={pretrain_dir}' in out[1]  # The pre-trained run of the same tag.


def _run_table_module():
  import importlib.util
  import os
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  spec = importlib.util.spec_from_file_location('run_table', os.path.join(root, 'scripts', 'run_table.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_table_launcher_gives_a_twin_the_same_pretraining(tmp_path):
  """--pretraining_from=ROW: the stage of ROW's run of the same fraction and seed is copied before the twin starts."""
  import os
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  launch = lambda *args: subprocess.run(
      [sys.executable, 'scripts/run_table.py', '--config=configs/cifar10_cpu.py', f'--root={tmp_path}',
       '--fractions=0.1', '--seeds=3', *args], cwd=root, capture_output=True, text=True)
  out = launch('--methods=ssmae,supervised', '--pretraining_from=ssmae', '--dry_run').stdout.splitlines()
  runs = tmp_path / 'cifar10'
  assert len(out) == 3 and '--config.method=ssmae' in out[0] and '--config.method=supervised' in out[2]
  assert out[1] == f'+ copy {runs}/ssmae/labels0.1/seed3/pretrain {runs}/supervised/labels0.1/seed3/pretrain'
  # Without a finished stage to copy, nothing is launched: one line that names the fix.
  proc = launch('--methods=supervised', '--pretraining_from=ssmae')
  assert proc.returncode == 2 and proc.stdout == ''
  assert proc.stderr.count('\n') == 1 and 'is not a finished pre-training stage' in proc.stderr
  assert 'run that row first' in proc.stderr and not (runs / 'supervised').exists()
  proc = launch('--methods=finetune', '--pretraining_from=ssmae', '--dry_run')
  assert proc.returncode == 2 and 'mae_pretrain and finetune rows have none' in proc.stderr


def test_a_copied_stage_is_whole_before_it_counts_as_finished(tmp_path, monkeypatch):
  from etils import epath

  from ssmae_jax import experiment, fileio
  run_table = _run_table_module()
  assert run_table.PRETRAIN_DIR == experiment.PRETRAIN_DIR
  source = tmp_path / 'ssmae' / 'pretrain'
  for name, text in [('results.json', '{}'), ('history.json', '[]'), ('checkpoints/10/params', 'p'),
                     ('figures/a.png', 'x')]:
    (source / name).parent.mkdir(parents=True, exist_ok=True)
    (source / name).write_text(text)
  copied = []
  path_class = type(epath.Path(source))  # The concrete class local paths get.
  real_copy = path_class.copy
  monkeypatch.setattr(path_class, 'copy', lambda self, dst, overwrite=False: (copied.append(str(dst)),
                                                                             real_copy(self, dst, overwrite))[1])
  target = tmp_path / 'supervised' / 'pretrain'
  fileio.copy_run(str(source), str(target))
  assert sorted(str(p.relative_to(target)) for p in target.rglob('*') if p.is_file()) == [
      'checkpoints/10/params', 'figures/a.png', 'history.json', 'results.json']
  assert (target / 'checkpoints' / '10' / 'params').read_text() == 'p'
  # Last: a copy cut short is not a finished stage.
  assert len(copied) == 4 and copied[-1] == str(target / 'results.json')

"""The table command on hand-made results.json files."""

import json
import statistics

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
  assert all(l.endswith('--config.num_steps=7') for l in out)  # Extra arguments reach every run, last.

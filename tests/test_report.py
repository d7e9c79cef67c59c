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

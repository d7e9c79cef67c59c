"""examples/tinkering.ipynb runs: its code cells, in order, in a fresh process started outside the repository."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, needs_cifar10

pytestmark = [needs_cifar10, pytest.mark.slow]


def test_the_tinkering_notebook_runs(tmp_path):
  with open(os.path.join(ROOT, 'examples', 'tinkering.ipynb')) as f:
    notebook = json.load(f)
  cells = [''.join(c['source']) for c in notebook['cells'] if c['cell_type'] == 'code']
  assert len(cells) >= 5
  script = tmp_path / 'notebook.py'
  script.write_text('\n\n'.join(cells) + "\n\nprint('NOTEBOOK DONE', results['steps'])\n")
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}  # The installed package, as a user has it.
  run = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=900)
  assert run.returncode == 0, run.stderr[-3000:]
  assert 'NOTEBOOK DONE 20' in run.stdout
  assert 'gate closed' in run.stdout or 'gate open' in run.stdout

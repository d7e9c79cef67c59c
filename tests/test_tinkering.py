"""A researcher's one-idea changes, registered from a module outside the package (examples/my_plugins.py, copied to a
temporary folder), driven from another working directory: a gate rule, a masking, a loss term, a plugin's own field;
and a run saved before a field existed resumes."""

import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, needs_cifar10, small_config
from ssmae_jax import configuration, experiment, fileio, registry, train, visualize
from ssmae_jax.errors import UserError

pytestmark = needs_cifar10


@pytest.fixture(scope='module')
def plugins(tmp_path_factory):
  """examples/my_plugins.py imported from a folder outside the repository, as a user's own module."""
  folder = tmp_path_factory.mktemp('user_code')
  shutil.copy(os.path.join(ROOT, 'examples', 'my_plugins.py'), folder / 'my_plugins.py')
  sys.path.insert(0, str(folder))
  import my_plugins  # noqa: F401
  yield folder
  sys.path.remove(str(folder))


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
  """Runs from a working directory that is not the repository."""
  monkeypatch.chdir(tmp_path)
  return tmp_path


def _run(config, workdir):
  _, results = train.train_and_evaluate(config, str(workdir))
  history = fileio.read_json(workdir / 'history.json')
  return results, history


def _tiny(small_cifar10, **overrides):
  return small_config(small_cifar10, num_steps=6, log_every_steps=2, **overrides)


def test_plugins_are_registered_and_listed(plugins):
  assert 'per_class' in registry.gate_rules.names() and 'block' in registry.maskings.names()
  assert 'consistency' in registry.loss_terms.names()
  with pytest.raises(UserError, match=r"unknown masking 'blok' \(config.masking\); registered: .*block"):
    registry.maskings.get('blok')


def test_a_plugin_field_is_declared_and_checked(plugins, small_cifar10):
  config = _tiny(small_cifar10)
  assert config.per_class_min_confident == 1
  config.per_class_min_confident = -1
  with pytest.raises(UserError, match=r'config.per_class_min_confident=-1 is not allowed'):
    configuration.validate(config)


def test_the_gate_rule_decides_the_gate(plugins, small_cifar10, elsewhere):
  # small_config's gate opens from the first epoch under the paper's rule (threshold 0, no warm-up).
  _, paper = _run(_tiny(small_cifar10), elsewhere / 'hca')
  assert paper['epochs'][0]['gate_open']
  # No class can have a million confident validation examples: the plugin rule keeps it closed.
  _, history = _run(_tiny(small_cifar10, gate_rule='per_class', per_class_min_confident=10**6), elsewhere / 'rule')
  assert not any(r['gate_open'] for r in history['epochs'])
  assert history['epochs'][-1]['pseudo_labels_total'] == 0


def test_the_masking_reaches_the_step_and_the_figure(plugins, small_cifar10, elsewhere, monkeypatch):
  calls = []
  block = registry.maskings.get('block')

  def recording(rng, batch, num_patches, ratio):
    calls.append((batch, num_patches, ratio))
    return block(rng, batch, num_patches, ratio)

  monkeypatch.setitem(registry.maskings._entries, 'block', recording)
  config = _tiny(small_cifar10, masking='block')
  exp = experiment.build(config, str(elsewhere / 'block'))
  state, _ = train.train_and_evaluate(config, str(elsewhere / 'block'), experiment=exp)
  L, U = config.labeled_batch_size, config.unlabeled_batch_size
  assert (L + U, exp.model.num_patches, config.mask_ratio) in calls  # Traced into the train step's L_rec.
  images = np.zeros((2, config.image_size, config.image_size, 3), np.uint8)
  _, mask = visualize.reconstruct(exp.model, state.params, images, mask_ratio=config.mask_ratio,
                                  masking_name='block')
  for row in mask:  # One run of removed patches in raster order (wrapping around): two edges at most.
    assert np.sum(row != np.roll(row, 1)) <= 2 and 0 < row.sum() < len(row)
  assert os.listdir(elsewhere / 'block' / 'figures')


def test_the_loss_term_is_trained_logged_and_counted(plugins, small_cifar10, elsewhere):
  plain, _ = _run(_tiny(small_cifar10), elsewhere / 'plain')
  results, history = _run(_tiny(small_cifar10, loss_terms={'consistency': 0.5}), elsewhere / 'term')
  record = history['epochs'][-1]
  assert record['train_consistency_loss'] > 0 and 0 <= record['train_consistency_agreement'] <= 1
  # The term's two extra classifier passes are counted from the compiled steps, not assumed.
  assert results['flops'] > plain['flops'] > 0


def test_a_loss_term_at_weight_zero_changes_nothing(plugins, small_cifar10, elsewhere):
  plain, _ = _run(_tiny(small_cifar10), elsewhere / 'plain')
  off, _ = _run(_tiny(small_cifar10, loss_terms={'consistency': 0.0}), elsewhere / 'off')
  assert off['test_accuracy'] == plain['test_accuracy'] and off['history'][-1]['train_loss'] == \
      plain['history'][-1]['train_loss']


def test_a_run_saved_before_new_fields_existed_resumes(small_cifar10, elsewhere, capsys):
  config = _tiny(small_cifar10)
  workdir = elsewhere / 'old'
  train.train_and_evaluate(config, str(workdir), preemption=train.StopAtStep(2))
  saved = fileio.read_json(workdir / 'config.json')
  # As an older version wrote it: without masking and loss_terms, and with the gate under its old name.
  for name in ('masking', 'loss_terms'):
    saved.pop(name)
  saved['gate'] = {'hca': 'dynamic'}[saved.pop('gate_rule')]
  (workdir / 'config.json').write_text(json.dumps(saved))
  _, results = train.train_and_evaluate(config, str(workdir))
  assert results['steps'] == config.num_steps
  out = capsys.readouterr().out
  assert 'they take their defaults: ' in out and 'masking' in out and 'loss_terms' in out
  # A changed value is still a change.
  saved['tau'] = 0.5
  (workdir / 'config.json').write_text(json.dumps(saved))
  with pytest.raises(UserError, match='changed: tau'):
    experiment.build(config, str(workdir))


def _user_experiment(folder) -> str:
  """A user's config file and their plugins beside it, outside the repository -> the config's path."""
  shutil.copy(os.path.join(ROOT, 'examples', 'my_plugins.py'), folder / 'my_plugins.py')
  (folder / 'my_exp.py').write_text(
      'import my_plugins  # noqa: F401\n'
      'from ssmae_jax import configs\n\n\n'
      'def get_config():\n'
      "  c = configs.get('smoke')\n"
      "  c.update(num_steps=4, log_every_steps=2, loss_terms={'consistency': 1.0}, masking='block')\n"
      '  return c\n')
  return str(folder / 'my_exp.py')


@pytest.mark.slow
def test_main_takes_a_config_beside_its_plugins_from_any_directory_in_every_process(tmp_path):
  """main.py run from the user's folder, as two processes of one run: each imports the config's plugins."""
  config = _user_experiment(tmp_path)
  with socket.socket() as s:
    s.bind(('localhost', 0))
    port = s.getsockname()[1]
  procs = [subprocess.Popen([sys.executable, os.path.join(ROOT, 'main.py'), f'--config={config}',
                             f'--workdir={tmp_path / "w"}', '--config.per_class_min_confident=3',
                             '--config.gate_rule=per_class', f'--coordinator_address=localhost:{port}',
                             '--num_processes=2', f'--process_id={i}'], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for i in (0, 1)]
  try:
    outs = [p.communicate(timeout=600) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  assert [p.returncode for p in procs] == [0, 0], outs[0][1][-2000:] + outs[1][1][-2000:]
  assert '2 devices.' in outs[0][0]
  assert 'consistency_loss' in outs[0][0]  # A loss term's scalar reaches the console window line.
  saved = json.loads((tmp_path / 'w' / 'config.json').read_text())
  assert saved['gate_rule'] == 'per_class' and saved['per_class_min_confident'] == 3 and saved['masking'] == 'block'


@pytest.mark.slow
def test_a_plugin_error_during_a_checkpoint_save_ends_the_command(tmp_path):
  """The user's exception is the last thing printed, not orbax's background threads' (their save was in flight)."""
  (tmp_path / 'buggy.py').write_text(
      'from ssmae_jax import registry\n\n\n'
      "@registry.gate_rule('buggy')\n"
      'def buggy(stats, config):\n'
      "  if stats['epoch'] >= 1:\n"
      "    raise ValueError('a bug in my gate rule')\n"
      '  return False\n')
  (tmp_path / 'exp.py').write_text(
      'import buggy  # noqa: F401\n'
      'from ssmae_jax import configs\n\n\n'
      'def get_config():\n'
      "  c = configs.get('smoke')\n"
      "  c.update(gate_rule='buggy', checkpoint_every_steps=28)  # A save at step 56, the epoch-1 evaluation's step.\n"
      '  return c\n')
  run = subprocess.run([sys.executable, os.path.join(ROOT, 'main.py'), f'--config={tmp_path / "exp.py"}',
                        f'--workdir={tmp_path / "w"}'], cwd=tmp_path, capture_output=True, text=True, timeout=600)
  assert run.returncode == 1
  lines = run.stderr.strip().splitlines()
  assert lines[-1] == 'ValueError: a bug in my gate rule'
  assert sum(line.startswith('Traceback') for line in lines) == 1, run.stderr[-3000:]


def test_a_name_taken_by_another_module_is_refused(plugins):
  def my_hca(stats, config):
    return True

  with pytest.raises(UserError, match=r"gate rule 'hca' is registered already, by ssmae_jax.gate: choose another"):
    registry.gate_rule('hca')(my_hca)
  assert registry.gate_rules.get('hca').__module__ == 'ssmae_jax.gate'  # The paper's rule is still the one.

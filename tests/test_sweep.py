"""Sweeps (config.sweep, issue 27): several runs as one vmapped program, each run equal to the same run alone,
each with its own data; unsweepable fields refused; kill -9 / SIGTERM and resume; two devices.

The sweep here: conftest's SMALL_RUN (16 steps, 7 per epoch) over gate_rule ('hca', 'never') x seed (1, 2): four
runs whose gates differ (hca opens at epoch 0 under the smoke config's threshold 0; never stays closed), so the
runs disagree on the step's branch and the closed ones take the open branch's work with their selection masked off.
"""

import contextlib
import io
import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import SMALL_RUN, config_flags as _flags, needs_cifar10, small_config
from ssmae_jax import configuration, fields, input_pipeline, sweep, sweep_train, train
from ssmae_jax.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 900
OVERRIDES = {**SMALL_RUN, 'num_steps': 16, 'test_every_epochs': 0, 'log_every_steps': 1,
             'checkpoint_every_steps': 3, 'keep_checkpoints': 3}
SWEEP = {'seed': (1, 2), 'gate_rule': ('hca', 'never')}
SWEEP_FLAGS = ["--config.sweep.seed=(1,2)", "--config.sweep.gate_rule=('hca','never')"]
# Named and ordered by the swept fields in alphabetical order (a ConfigDict's), the first one slowest.
RUNS = ['gate_rule=hca,seed=1', 'gate_rule=hca,seed=2', 'gate_rule=never,seed=1', 'gate_rule=never,seed=2']


def sweep_config(**overrides):
  c = small_config(None, **{**OVERRIDES, **overrides})
  c.sweep = SWEEP
  return c


def _quiet(fn, *args, **kwargs):
  with contextlib.redirect_stdout(io.StringIO()) as out:
    result = fn(*args, **kwargs)
  return result, out.getvalue()


def _results(run_dir) -> dict:
  with open(os.path.join(run_dir, 'results.json')) as f:
    results = json.load(f)
  for key in ('wall_seconds', 'command_wall_seconds', 'commands_wall_seconds', 'sweep'):
    results.pop(key, None)
  for record in results['history']:
    record.pop('wall_seconds')
  return results


# What a step did, not what it computed: in a sweep whose runs need different branches every run does the most
# expensive one's work (sweep.agree), and counts it.
WORK = ('flops', 'flops_per_step', 'steps_per_kind', 'train_step_kind', 'train_full_cls_pass')


def _largest_difference(got, want, path='', skip=()) -> float:
  """Compares two results.json trees: every int, bool, string and None equal, floats up to the returned largest
  relative difference; keys in `skip` not compared."""
  if isinstance(want, dict):
    assert set(got) == set(want), path
    return max([_largest_difference(got[k], want[k], f'{path}.{k}', skip) for k in want if k not in skip] or [0.0])
  if isinstance(want, list):
    assert len(got) == len(want), path
    return max([_largest_difference(a, b, f'{path}[{i}]', skip) for i, (a, b) in enumerate(zip(got, want))]
               or [0.0])
  if isinstance(want, float) and not float(want).is_integer():
    return abs(got - want) / max(abs(want), 1e-12)
  assert got == want, path
  return 0.0


@pytest.fixture(scope='module')
def env(small_cifar10) -> dict:
  return dict(os.environ, JAX_PLATFORMS='cpu', TFDS_DATA_DIR=small_cifar10)


@pytest.fixture(scope='module')
def reference(tmp_path_factory, env):
  """The sweep uninterrupted, in this process: its workdir, and its printed lines."""
  workdir = tmp_path_factory.mktemp('sweeps') / 'reference'
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv('TFDS_DATA_DIR', env['TFDS_DATA_DIR'])
    (_, results), out = _quiet(sweep_train.train_and_evaluate, sweep_config(), str(workdir))
  assert len(results) == 4
  return workdir, out


@needs_cifar10
def test_each_run_of_a_sweep_ends_as_the_same_run_alone(reference, env, tmp_path):
  workdir, out = reference
  assert sorted(os.listdir(workdir / 'runs')) == sorted(RUNS)
  for name in RUNS:  # What a lone run's workdir holds.
    assert {'config.json', 'history.json', 'results.json', 'checkpoints', 'best', 'figures'} <= set(
        os.listdir(workdir / 'runs' / name))
  # One console line per window for the sweep, one line per run at each evaluation, a table at the end.
  assert 'step 16/16 |' in out and 'run-steps/s, 4 runs' in out
  assert out.count('  gate_rule=never,seed=2: epoch 1 |') == 1
  worst = 0.0
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv('TFDS_DATA_DIR', env['TFDS_DATA_DIR'])
    for name, seed, rule in (('gate_rule=hca,seed=1', 1, 'hca'), ('gate_rule=never,seed=2', 2, 'never')):
      alone = tmp_path / name
      _quiet(train.train_and_evaluate, small_config(None, **OVERRIDES, seed=seed, gate_rule=rule), str(alone))
      got, want = _results(workdir / 'runs' / name), _results(alone)
      # Its config is the lone run's: the sweep's values set, nothing swept.
      assert got['config'] == want['config'] and got['config']['sweep'] == {}
      # Gates, pseudo-label counts and accuracies exactly; losses up to float rounding.
      worst = max(worst, _largest_difference(got, want, skip=WORK))
      assert got['gate_opened_at_epoch'] == (0 if rule == 'hca' else None)
      if rule == 'hca':  # It needed the most expensive branch itself: the same work, the same FLOPs.
        assert got['flops'] == want['flops'] and got['steps_per_kind'] == want['steps_per_kind']
      else:  # Its gate stayed closed, but it took the gate-open branch of the runs beside it, and counts that.
        assert got['steps_per_kind']['gate_open'] > want['steps_per_kind'].get('gate_open', 0)
        assert got['flops'] > want['flops']
  assert _results(workdir / 'runs' / 'gate_rule=hca,seed=1')['pseudo_labels_total'] > 0
  print(f'largest relative difference from the runs alone: {worst:.2e}')
  assert worst < 1e-4


@needs_cifar10
def test_a_run_of_a_sweep_is_a_workdir_for_eval_and_init_from(reference, env, tmp_path):
  workdir, _ = reference
  run_dir = workdir / 'runs' / 'gate_rule=hca,seed=1'
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv('TFDS_DATA_DIR', env['TFDS_DATA_DIR'])
    finetune = tmp_path / 'finetune'
    (_, results), _ = _quiet(train.train_and_evaluate, small_config(
        None, **{**OVERRIDES, 'num_steps': 2}, method='finetune', init_from=str(run_dir)), str(finetune))
  assert results['initialization']['seed'] == 1
  command = [sys.executable, 'main.py', '--config=configs/smoke.py', f'--workdir={run_dir}', '--mode=eval',
             *_flags({**OVERRIDES, 'seed': 1, 'gate_rule': 'hca'})]
  done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT)
  assert done.returncode == 0, done.stderr[-3000:]
  assert 'test accuracy' in done.stdout.lower()


@needs_cifar10
def test_a_split_seed_sweep_gives_each_run_its_own_labeled_set_and_batches(env, tmp_path):
  config = small_config(None, **OVERRIDES)
  config.sweep = {'split_seed': (0, 1)}
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv('TFDS_DATA_DIR', env['TFDS_DATA_DIR'])
    sw = sweep_train.build(config, str(tmp_path / 'sweep'))
    stacked = next(sweep_train.stacked_batches(sw, 0))
    for i, (name, run_config) in enumerate(sweep.runs(config)):
      alone = input_pipeline.load_splits(run_config)
      np.testing.assert_array_equal(sw.runs[i].splits.labeled_idx, alone.labeled_idx)
      lone_batch = next(input_pipeline.train_iterator(alone, run_config, 0))
      for key, value in lone_batch.items():
        np.testing.assert_array_equal(stacked[key][i], value, err_msg=f'{name} {key}')
  assert set(sw.runs[0].splits.labeled_idx) != set(sw.runs[1].splits.labeled_idx)
  assert not np.array_equal(stacked['labeled_label'][0], stacked['labeled_label'][1])


@pytest.mark.parametrize('sweep_value, message', [
    ({'mask_ratio': (0.5, 0.75)}, 'config.mask_ratio cannot be swept'),
    ({'model': {'width': (32, 64)}}, 'config.model.width cannot be swept'),
    ({'tau': (0.5, 1.5)}, 'config.sweep.tau holds 1.5'),
    ({'rec_weight': (0.0, 1.0)}, 'mixes 0 with other values'),
    ({'class_tau_drop': (0.0, 0.1)}, 'mixes 0 with other values'),
    ({'seed': ()}, 'must be a non-empty tuple'),
    ({'taus': (0.5,)}, 'there is no field config.taus'),
    # A rule between fields holds in every run: the first run's tau (0.2) is below the drop the config sets (0.3).
    ({'tau': (0.2, 0.95)}, r"config.sweep's run tau=0.2: config.class_tau_drop=0.3 is more than config.tau=0.2"),
])
def test_a_bad_sweep_is_one_line_before_anything_compiles(sweep_value, message):
  config = small_config(None, tau=0.95, class_tau_drop=0.3)
  config.sweep = sweep_value
  with pytest.raises(UserError, match=message):
    configuration.validate(config)


def test_a_plugin_field_declared_zero_is_off_may_not_mix_zero_in_a_sweep():
  config = small_config(None)
  specs = dict(configuration.declarations(), my_weight=fields.Float(0.0, min=0, sweep=True, zero_is_off=True),
               my_number=fields.Float(0.0, min=0, sweep=True))
  config.sweep = {'my_number': (0.0, 1.0)}
  sweep.check(config, specs)  # 0 is a number like any other here.
  config.sweep = {'my_weight': (0.0, 1.0)}
  with pytest.raises(UserError, match=r'config.sweep.my_weight=\(0.0, 1.0\) mixes 0 with other values'):
    sweep.check(config, specs)


def test_an_unsweepable_field_on_the_command_line_is_one_line(tmp_path):
  done = subprocess.run([sys.executable, 'main.py', '--config=configs/smoke.py', f'--workdir={tmp_path}',
                         "--config.sweep.num_steps=(10,20)"], cwd=ROOT, capture_output=True, text=True,
                        timeout=TIMEOUT)
  assert done.returncode == 2
  assert done.stderr.strip().splitlines() == [done.stderr.strip()]
  assert 'config.num_steps cannot be swept' in done.stderr


def test_the_sweep_has_the_product_of_its_values_each_with_its_own_config():
  config = small_config(None)
  config.sweep.seed = (3, 4)
  config.sweep.optimizer.learning_rate = (1e-3, 3e-3, 1e-2)
  runs = sweep.runs(config)
  assert [name for name, _ in runs][:2] == ['optimizer.learning_rate=0.001,seed=3',
                                            'optimizer.learning_rate=0.001,seed=4']
  assert len(runs) == 6 and runs[5][1].seed == 4 and runs[5][1].optimizer.learning_rate == 0.01
  assert not sweep.is_sweep(runs[0][1]) and configuration.to_dict(runs[0][1])['sweep'] == {}
  values = sweep.traced_values(config, configuration.declarations())
  assert values['seed'].dtype == np.uint32 and values['seed'].tolist() == [3, 4, 3, 4, 3, 4]
  assert values['optimizer.learning_rate'].dtype == np.float32


def _start(workdir, env, *extra):
  command = [sys.executable, 'main.py', '--config=configs/smoke.py', f'--workdir={workdir}', *_flags(OVERRIDES),
             *SWEEP_FLAGS, *extra]
  stderr = open(f'{workdir}.stderr', 'a')
  return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True,
                          start_new_session=True)


def _stop_at(proc, prefix: str, how: int) -> str:
  lines = []
  try:
    for line in proc.stdout:
      lines.append(line)
      if line.startswith(prefix):
        os.killpg(proc.pid, how) if how == signal.SIGKILL else proc.send_signal(how)
        break
    rest, _ = proc.communicate(timeout=TIMEOUT)
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
  return ''.join(lines) + (rest or '')


@needs_cifar10
@pytest.mark.slow
def test_kill_9_and_sigterm_mid_sweep_then_the_same_command_ends_as_the_uninterrupted_sweep(reference, env, tmp_path):
  workdir = tmp_path / 'killed'
  _stop_at(_start(workdir, env), 'step 8/', signal.SIGKILL)  # After the epoch-1 evaluations and step 6's checkpoint.
  out = _stop_at(_start(workdir, env), 'step 11/', signal.SIGTERM)
  assert 'Resuming from step 6' in out and 'Preempted (SIGTERM) at step' in out
  assert not (workdir / 'sweep.json').exists()
  proc = _start(workdir, env)
  out, _ = proc.communicate(timeout=TIMEOUT)
  assert proc.returncode == 0, open(f'{workdir}.stderr').read()[-3000:]
  assert 'Resuming from step 1' in out
  for name in RUNS:  # Bit for bit: the same program on the same device resumes exactly.
    assert _results(workdir / 'runs' / name) == _results(reference[0] / 'runs' / name), name


@needs_cifar10
@pytest.mark.slow
def test_a_sweep_over_2_devices_splits_the_runs_and_ends_as_on_one(reference, env, tmp_path):
  workdir = tmp_path / 'two'
  flags = [f for f in env.get('XLA_FLAGS', '').split() if 'device_count' not in f]
  two = dict(env, XLA_FLAGS=' '.join(flags + ['--xla_force_host_platform_device_count=2']))
  proc = _start(workdir, two)
  out, _ = proc.communicate(timeout=TIMEOUT)
  assert proc.returncode == 0, open(f'{workdir}.stderr').read()[-3000:]
  assert 'on a 2 x 1 (runs x data) mesh' in out
  for name in RUNS:
    assert _largest_difference(_results(workdir / 'runs' / name), _results(reference[0] / 'runs' / name),
                               skip=('flops', 'flops_per_step')) < 1e-4


@needs_cifar10
def test_the_table_launcher_trains_each_methods_seeds_as_one_sweep(env, tmp_path):
  flags = _flags({**SMALL_RUN, 'num_steps': 2, 'test_every_epochs': 0})
  done = subprocess.run([sys.executable, 'scripts/run_table.py', '--config=configs/smoke.py', f'--root={tmp_path}',
                         '--fractions=0.5', '--seeds=0,1', '--methods=finetune', '--sweep', '--', *flags],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT)
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout.count('--config.sweep.seed=(0,1,)') == 2  # mae_pretrain, then finetune: two sweeps.
  pretrain = tmp_path / 'cifar10' / 'mae_pretrain' / 'all' / 'seeds0-1'
  finetune = tmp_path / 'cifar10' / 'finetune' / 'labels0.5' / 'seeds0-1'
  assert (pretrain / 'sweep.json').exists() and (finetune / 'sweep.json').exists()
  for seed in (0, 1):  # seed and split_seed together; each seed fine-tuned from its own pre-training.
    with open(finetune / 'runs' / f'seed={seed},split_seed={seed}' / 'results.json') as f:
      results = json.load(f)
    assert results['seed'] == seed and results['config']['split_seed'] == seed
    assert results['config']['init_from'] == str(pretrain / 'runs' / f'seed={seed},split_seed={seed}')
    assert results['initialization']['seed'] == seed
  assert '| cifar10 | finetune |' in done.stdout  # The report reads the sweeps' runs.


@needs_cifar10
def test_a_sweep_pre_trains_each_distinct_stage_once_into_each_runs_folder(env, tmp_path):
  # The stage sweeps the seeds, as the runs do; runs that differ only in tau (MAE pre-training never reads it) share.
  config = small_config(None, **{**OVERRIDES, 'num_steps': 2, 'pretrain_steps': 2})
  config.sweep.seed = (0, 1)
  config.sweep.tau = (0.9, 0.95)
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv('TFDS_DATA_DIR', env['TFDS_DATA_DIR'])
    results, out = _quiet(train.train, config, str(tmp_path))
  assert out.count('Sweep of 2 runs') == 1 and out.count('Sweep of 4 runs') == 1  # One stage per seed, not per tau.
  for seed in (0, 1):
    stages = [tmp_path / 'runs' / f'seed={seed},tau={tau}' / 'pretrain' for tau in (0.9, 0.95)]
    assert _results(stages[0])['method'] == 'mae_pretrain' and _results(stages[0])['seed'] == seed
    assert _results(stages[1]) == _results(stages[0])
    assert os.listdir(stages[1] / 'checkpoints') == os.listdir(stages[0] / 'checkpoints')
  assert all(r['pretraining']['steps'] == 2 for r in results)  # Counted with each run, as a lone run's stage.
  by_run = {(r['seed'], r['config']['tau']): r['pretraining'] for r in results}
  assert by_run[0, 0.9] == by_run[0, 0.95] != by_run[1, 0.9] == by_run[1, 0.95]


@needs_cifar10
def test_what_mae_ignores_is_never_read_by_mae_pretraining(env, tmp_path):
  # Every field declared mae_ignores=True, changed at once: the same stage, bit for bit. A field newly declared so must
  # join this list, which the test checks is all of them.
  changed = dict(cls_weight=0.5, rec_weight=0.5, tau=0.8, gate_rule='never', gate_threshold=0.5,
                 gate_confidence=0.9, warmup_epochs=3, gate_min_confident=2, label_smoothing=0.1,
                 class_tau_drop=0.1, teacher_ema=0.9)
  specs = configuration.declarations()
  assert {name for name, spec in specs.items() if spec.mae_ignores} == set(changed)
  assert specs['loss_terms'].weight.mae_ignores  # make_mae_step adds no loss term.
  got = []
  for name, overrides in (('paper', {}), ('changed', changed)):
    config = small_config(None, **{**OVERRIDES, 'num_steps': 4, 'method': 'mae_pretrain', **overrides})
    with pytest.MonkeyPatch.context() as mp:
      mp.setenv('TFDS_DATA_DIR', env['TFDS_DATA_DIR'])
      _quiet(train.train_and_evaluate, config, str(tmp_path / name))
    results = _results(tmp_path / name)
    results.pop('config')
    got.append(results)
  assert got[1] == got[0]

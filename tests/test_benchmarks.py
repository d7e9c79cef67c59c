"""The benchmarks run end to end with --json on a tiny config and report what they promise (no timing asserts).

They run at once as subprocesses (each one imports, decodes the first CIFAR-10 images (conftest's `small_cifar10`)
and compiles on its own: overlapping them halves the wall time on two cores); three of them on two fake devices.
`train_step_runs` is train_step's `--runs` (the vmapped step of a sweep against the lone step). Compiling dominates
their cost, so XLA optimises less here: the numbers are not the point.
"""

import json
import math
import os
import subprocess
import sys

import pytest

from conftest import ROOT, needs_cifar10

TINY_CONFIG = '''
from ssmae_jax.configs import smoke


def get_config():
  c = smoke.get_config()
  c.label_fraction = 0.5  # Of the 1,000 images of `small_cifar10`.
  c.labeled_batch_size = 4
  c.unlabeled_batch_size = 8
  c.model.update(depth=1, decoder_depth=1)
  return c
'''

BENCHMARKS = {
    'train_step': (['--steps', '2', '--unlabeled_cls_rows', '4'], 1, {
        'step_ms_gate_closed', 'step_ms_gate_open', 'compile_s', 'matmul_gflops', 'flops_gate_open',
        'gflops_achieved_gate_open', 'images_per_s', 'num_params', 'step_ms_gate_open_gathered',
        'flops_gate_open_gathered'}),
    'input_pipeline': (['--steps', '3', '--warmup', '2', '--step_steps', '2'], 2, {
        'steps_per_s', 'examples_per_s', 'images_per_s', 'step_consumes_steps_per_s', 'headroom', 'step_ms',
        'load_s', 'first_batch_s', 'examples_per_step', 'images_per_step', 'host_cpu_s_per_step',
        'steps_per_s_per_core'}),
    'epoch': (['--steps', '4', '--warmup', '2'], 2, {
        'total_s', 'startup_s', 'ms_per_step', 'steps_per_s', 'eval_s', 'shutdown_s', 'import_s', 'init_s',
        'steps_per_epoch', 'epoch_s'}),
    # Two devices: the sweep's 2 runs one on each ('runs' axis 2), the lone step over both.
    'train_step_runs': (['--runs', '2', '--steps', '2', '--warmup', '1'], 2, {
        'flops_gate_closed', 'flops_gate_open', 'matmul_gflops', 'matmul_cpu_per_wall', 'num_params'}),
}
MODULES = {'train_step_runs': 'train_step'}  # Benchmarks named apart from their module.


@pytest.fixture(scope='module')
def results(tmp_path_factory, small_cifar10):
  """name -> (JSON object, stderr) of each benchmark, all started together."""
  config = tmp_path_factory.mktemp('bench') / 'tiny.py'
  config.write_text(TINY_CONFIG)
  procs = {}
  for name, (args, devices, _) in BENCHMARKS.items():
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu', TFDS_DATA_DIR=small_cifar10,
               XLA_FLAGS=(os.environ.get('XLA_FLAGS', '') + ' --xla_backend_optimization_level=0'
                          f' --xla_force_host_platform_device_count={devices}').strip())
    procs[name] = subprocess.Popen([sys.executable, '-m', f'benchmarks.{MODULES.get(name, name)}', '--json',
                                    '--config', str(config), *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
  out = {}
  try:
    for name, proc in procs.items():
      stdout, stderr = proc.communicate(timeout=600)
      assert proc.returncode == 0, f'{name}: {stderr[-3000:]}'
      out[name] = json.loads(stdout.strip().splitlines()[-1])
  finally:
    for proc in procs.values():
      if proc.poll() is None:
        proc.kill()
        proc.communicate()
  return out


@needs_cifar10
@pytest.mark.slow
@pytest.mark.parametrize('name', BENCHMARKS)
def test_benchmark_json_has_positive_finite_numbers(results, name):
  _, devices, keys = BENCHMARKS[name]
  result = results[name]
  assert keys <= result.keys(), keys - result.keys()
  for key in keys:
    assert isinstance(result[key], (int, float)) and math.isfinite(result[key]) and result[key] > 0, (key, result[key])
  assert result['devices'] == devices


@needs_cifar10
@pytest.mark.slow
def test_benchmark_numbers_agree_with_each_other(results):
  step = results['train_step']
  assert step['flops_gate_open'] > 1e6 and step['step_ms_gate_closed_min'] <= step['step_ms_gate_closed']
  assert step['flops_gate_open_gathered'] < step['flops_gate_open']  # The tiny config: 4 gathered rows of U=8.
  if sys.platform.startswith('linux'):  # Re-executed with huge-page malloc, as main.py runs.
    assert 'glibc.malloc.hugetlb=1' in step['glibc_tunables']
  data = results['input_pipeline']
  # L + U examples, L + 3 U images per SSMAE step (the tiny config: L=4, U=8).
  assert (data['examples_per_step'], data['images_per_step']) == (12, 28)
  assert data['step_ms_source'] == 'measured'
  assert math.isclose(data['headroom'], data['steps_per_s'] / data['step_consumes_steps_per_s'], rel_tol=0.01)
  assert math.isclose(data['examples_per_s'], 12 * data['steps_per_s'], rel_tol=0.01)
  assert math.isclose(data['steps_per_s_per_core'] * data['host_cpu_s_per_step'], 1, rel_tol=0.02)
  epoch = results['epoch']
  parts = epoch['startup_s'] + epoch['eval_s'] + epoch['steps'] * epoch['ms_per_step'] / 1e3 + epoch['shutdown_s']
  assert math.isclose(parts, epoch['total_s'], rel_tol=0.01, abs_tol=0.05)
  assert epoch['import_s'] + epoch['init_s'] < epoch['startup_s']


@needs_cifar10
@pytest.mark.slow
def test_train_step_runs_times_the_lone_step_and_a_sweep_of_2_runs_as_one_program(results):
  result = results['train_step_runs']
  lone, sweep = result['rows']
  assert (lone['program'], lone['runs'], sweep['program'], sweep['runs']) == ('lone', 1, 'vmapped', 2)
  assert sweep['mesh'] == {'runs': 2, 'data': 1}  # sweep_train.make_mesh on 2 devices: one run on each.
  assert 0 < result['flops_gate_closed'] < result['flops_gate_open']
  for row in (lone, sweep):
    assert row['ops'] > 0 and row['compile_s'] > 0
    for gate in ('gate_closed', 'gate_open'):
      ms, steps_per_s = row[f'step_ms_{gate}'], row[f'steps_per_s_{gate}']
      for key in ('step_ms', 'steps_per_s', 'run_steps_per_s', 'ratio', 'gflops_achieved', 'cpu_per_wall'):
        value = row[f'{key}_{gate}']
        assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (row['runs'], key, gate)
      assert math.isclose(steps_per_s, 1e3 / ms, rel_tol=0.01)
      assert math.isclose(row[f'run_steps_per_s_{gate}'], row['runs'] * steps_per_s, rel_tol=0.01)
      assert math.isclose(row[f'gflops_achieved_{gate}'], row['runs'] * result[f'flops_{gate}'] / ms / 1e6,
                          rel_tol=0.02, abs_tol=0.1)
  assert lone['ratio_gate_closed'] == lone['ratio_gate_open'] == 1.0  # Each lone step against itself.

"""`main.py --mode=compile`: the run's programs compiled for a TPU slice on this CPU machine (libtpu, no TPU)."""

import importlib.util
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from conftest import ROOT, needs_cifar10
from ssmae_jax import models, sweep_train, tpu_compile
from ssmae_jax.configs import smoke
from ssmae_jax.errors import UserError


@pytest.fixture
def libtpu():
  """libtpu, the `tpu-compile` extra (Linux x86_64 wheels only): the tests that compile skip without it."""
  return pytest.importorskip('libtpu')


# What the Cloud TPU documentation lists for each slice: devices JAX shows (one per chip on v4 / v5p megacore) and
# hosts (TPU VMs).
EXPECTED = {'v4-8': (4, 1), 'v4-32': (16, 4), 'v5p-8': (4, 1), 'v5e-1': (1, 1), 'v5e-4': (4, 1), 'v5e-8': (8, 1),
            'v6e-1': (1, 1), 'v6e-8': (8, 1)}


def test_slice_names_count_tensorcores_on_v4_and_v5p_and_chips_on_v5e_and_v6e(libtpu):
  assert set(EXPECTED) <= set(tpu_compile.SLICES)
  for name in tpu_compile.SLICES:
    _, devices = tpu_compile.slice_devices(name)
    assert len(devices) == tpu_compile.slice_size(name), name
    assert tpu_compile.CHIPS[devices[0].device_kind].name == name.split('-')[0], name
    assert len({tuple(d.coords) for d in devices}) == len(devices), f'{name}: one device per chip'
    if name in EXPECTED:
      assert (len(devices), len({d.process_index for d in devices})) == EXPECTED[name], name


def test_a_libtpu_topology_name_passes_through(libtpu):
  tpu, devices = tpu_compile.slice_devices('v4:2x2x1')
  assert tpu.options == {} and len(devices) == 8  # Without megacore: one device per TensorCore, two per chip.
  assert len({tuple(d.coords) for d in devices}) == 4


@pytest.mark.parametrize('name', ['v4-7', 'tpu-8', 'v9:2x2'])
def test_a_slice_nobody_sells_is_a_user_error(libtpu, name):
  with pytest.raises(UserError, match='v5e-8'):
    tpu_compile.slice_devices(name)


def test_without_libtpu_the_error_names_the_install_line(monkeypatch):
  find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: None if name == 'libtpu' else find_spec(name, *a))
  with pytest.raises(UserError, match=r"pip install 'jax\[tpu\]==0\.10\.2'"):
    tpu_compile.slice_devices('v5e-8')


def test_a_batch_that_does_not_split_names_the_batch_and_the_slice_that_would():
  config = smoke.get_config()
  config.eval_batch_size = 500
  assert tpu_compile.batch_lines(config, 'v5e-8', 8) == [
      'config.eval_batch_size=500 does not divide by the 8 devices: set it to 504 or use v5e-4 (4 devices).']
  assert tpu_compile.batch_lines(config, 'v5e-4', 4) == []


def test_past_16_devices_the_paper_batch_says_how_to_use_the_slice():
  config = smoke.get_config()  # The paper's L=16, U=32.
  lines = tpu_compile.batch_lines(config, 'v4-64', 32)
  assert len(lines) == 1 and lines[0].startswith('config.labeled_batch_size=16 does not divide by the 32 devices')
  assert 'use v4-32 (16 devices), or to use all 32 set' in lines[0]
  assert 'labeled_batch_size=32 and unlabeled_batch_size=64' in lines[0] and 'deviation' in lines[0]


def test_auto_dtype_resolves_for_the_platform_compiled_for():
  config = smoke.get_config()
  assert jax.default_backend() == 'cpu'
  assert models.from_config(config, 10).dtype == jnp.float32
  assert models.from_config(config, 10, backend='tpu').dtype == jnp.bfloat16


def _tiny_report(fn, shape, dtype, mesh) -> dict:
  """The checks of a report of one program, `fn` of an array of `shape` and `dtype`, compiled for the mesh's TPU."""
  arg = jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, PartitionSpec()))
  program = tpu_compile.Program('train', None, jax.jit(fn), (arg,), 0)
  out = tpu_compile.compile_program(program)
  out.update(peak_bytes_per_chip=out['peak_bytes'], flops_per_step=out['flops'], roofline_step_ms=0.0)
  report = dict(programs={'train': out}, devices=4, hbm_bytes_per_chip=16 * tpu_compile.GIB, batch_errors=[],
                model_dtype='auto', out_of_memory={}, not_compiled=[])
  return {c['check']: c for c in tpu_compile.summarize(report)['checks']}


@pytest.fixture
def v5e_mesh(libtpu):
  return Mesh(np.asarray(tpu_compile.slice_devices('v5e-4')[1]), ('data',))


def test_a_host_callback_in_a_step_fails_its_check(v5e_mesh):
  def step(x):
    jax.debug.callback(print, x.sum())  # On a TPU: a send to the host and a receive, every step.
    return (x @ x.T).astype(jnp.bfloat16)

  checks = _tiny_report(step, (8, 8), jnp.bfloat16, v5e_mesh)
  assert not checks['host_callbacks']['ok'] and 'in train' in checks['host_callbacks']['line']
  assert checks['f64']['ok'] and checks['compute_dtype']['ok']


def test_f64_and_f32_matmuls_fail_their_checks(v5e_mesh):
  with jax.enable_x64(True):
    checks = _tiny_report(lambda x: x @ x.T, (8, 8), jnp.float64, v5e_mesh)
  assert not checks['f64']['ok'] and checks['host_callbacks']['ok']
  assert not checks['compute_dtype']['ok'] and "'auto' must compute in bf16" in checks['compute_dtype']['line']


def test_a_cpu_host_callback_is_counted_too():
  def step(x):
    jax.debug.callback(print, x.sum())
    return x

  hlo = jax.jit(step).lower(jax.ShapeDtypeStruct((2,), jnp.float32)).compile().as_text()
  assert tpu_compile.host_transfers(hlo) >= 1


def _main(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, 'main.py', '--mode=compile', *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=600, env=dict(os.environ, PYTHONPATH=ROOT))


def test_compile_mode_without_a_topology_is_one_error_line():
  proc = _main('--config=configs/smoke.py')
  assert proc.returncode == 2 and proc.stderr.count('\n') == 1 and '--topology' in proc.stderr, proc.stderr


@pytest.mark.slow  # Compiles smoke.py's train and eval steps for a TPU: ~30-50 s here.
@needs_cifar10  # Its sizes, from the TFDS metadata.
def test_smoke_compiles_for_v5e_with_every_check_passing(libtpu):
  proc = _main('--config=configs/smoke.py', '--topology=v5e-4')
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.splitlines()
  assert lines[0] == 'configs/smoke.py compiled for v5e-4 (libtpu v5e:2x2): 4 devices on 1 host(s), 1 per chip.'
  assert [line.split()[0] for line in lines if line.startswith(('train', 'eval'))] == ['train', 'eval']
  assert any(line.startswith('  ok   fits: peak 0.0') and 'of 16 GiB HBM per chip' in line for line in lines)
  assert '  ok   batches: every global batch splits over the 4 devices' in lines
  assert "  ok   compute dtype (matmuls): bf16 in train, bf16 in eval with model.dtype='auto'" in lines
  assert not proc.stderr.strip(), proc.stderr  # libtpu's start-up lines stay out of the user's terminal.


@pytest.mark.slow  # ~30-50 s.
@needs_cifar10
def test_smoke_compiles_for_a_v4_megacore_slice_as_json(libtpu):
  proc = _main('--config=configs/smoke.py', '--topology=v4-8', '--json')
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(proc.stdout)
  assert report['libtpu_topology'] == 'v4:2x2x1' and report['libtpu_options'] == {'chip_config_name': 'megacore'}
  assert (report['devices'], report['hosts'], report['devices_per_chip']) == (4, 1, 1)
  assert report['fits'] and 0 < report['peak_bytes_per_chip'] < report['hbm_bytes_per_chip'] == 32 * 2 ** 30
  assert report['compute_dtype'] == 'bf16' and report['flops_per_step'] > 0 and report['roofline_step_ms'] > 0
  assert set(report['programs']) == {'train', 'eval'} and all(c['ok'] for c in report['checks'])
  assert report['programs']['train']['fusions'] > report['programs']['eval']['fusions'] > 0


@pytest.mark.slow  # XLA refuses the train step after ~15 s.
@needs_cifar10
def test_a_config_that_does_not_fit_or_split_says_so_before_a_tpu_is_rented(libtpu):
  config = smoke.get_config()
  config.model.update(width=8192, num_heads=4)  # 1.6 B parameters: with AdamW's moments over 16 GiB per chip.
  config.eval_batch_size = 500  # Not a multiple of a v5e-8's 8 devices.
  report = tpu_compile.compile_config(config, 'v5e-8')
  checks = {c['check']: c for c in report['checks']}
  assert report['programs'] == {} and set(report['out_of_memory']) == {'train'}  # eval: its batch does not split.
  assert not report['fits'] and report['peak_bytes_per_chip'] is None
  assert checks['fits']['line'].startswith('does not fit (') and 'train: RESOURCE_EXHAUSTED' in checks['fits']['line']
  assert not checks['batch']['ok'] and 'set it to 504 or use v5e-4 (4 devices)' in checks['batch']['line']


@pytest.mark.slow  # Compiles one train step: ~30 s.
@needs_cifar10
def test_a_float32_program_under_auto_dtype_fails_its_check(libtpu, monkeypatch):
  config = smoke.get_config()
  config.eval_batch_size = 500  # The eval step is left out (its batch does not split over 8): one compile.
  # What the probe found before the fix: 'auto' resolved on the host, so a TPU program computed in float32.
  from_config = models.from_config
  monkeypatch.setattr(models, 'from_config', lambda config, n, backend=None: from_config(config, n))
  report = tpu_compile.compile_config(config, 'v5e-8')
  checks = {c['check']: c for c in report['checks']}
  assert set(report['programs']) == {'train'} and report['compute_dtype'] == 'f32'
  assert not checks['compute_dtype']['ok'] and "'auto' must compute in bf16" in checks['compute_dtype']['line']
  assert checks['fits']['ok'] and checks['fits']['line'].endswith('; eval not compiled')
  assert checks['f64']['ok'] and checks['host_callbacks']['ok']


def _tiny(runs: int | None = None):
  """smoke.py with one encoder block; with `runs`, a sweep over that many seeds."""
  config = smoke.get_config()
  config.model.depth = 1
  if runs:
    config.sweep.seed = tuple(range(runs))
  return config


TINY_SHAPE = tpu_compile.DataShape(num_classes=10, shipped_size=32, labeled_train=900, pool_size=49900)


def test_a_sweep_splits_its_runs_over_gcd_of_runs_and_devices(libtpu):
  devices = tpu_compile.slice_devices('v4-8')[1]  # 4 devices.
  meshes = {r: dict(sweep_train.runs_mesh(r, devices).shape) for r in (1, 2, 3, 4, 6, 8, 64)}
  assert meshes == {1: {'runs': 1, 'data': 4}, 2: {'runs': 2, 'data': 2}, 3: {'runs': 1, 'data': 4},
                    4: {'runs': 4, 'data': 1}, 6: {'runs': 2, 'data': 2}, 8: {'runs': 4, 'data': 1},
                    64: {'runs': 4, 'data': 1}}


def test_a_sweeps_batch_that_does_not_split_over_its_runs_devices_says_what_would():
  config = smoke.get_config()
  config.labeled_batch_size = 4  # U=32 splits over 8 devices, L=4 over 4 at most.
  assert tpu_compile.sweep_batch_lines(config, 1, 8) == [
      'config.labeled_batch_size=4 does not divide by the 8 devices each run of this sweep of 1 runs gets (the runs '
      'split over gcd(1, 8) = 1 of the 8): make it a multiple of 8, or sweep a multiple of 2 runs.']
  assert tpu_compile.sweep_batch_lines(config, 2, 8) == []  # Each run's batches over 4 devices.


def test_a_sweep_compiles_the_vmapped_step_of_its_runs_and_the_lone_eval_step(libtpu):
  """The programs for a v4-8, traced but not compiled (~5 s): the train step's arguments are the lone run's with a
  leading run axis, plus the swept values; eval takes one run's parameters beside the stacked state."""
  mesh = Mesh(np.asarray(tpu_compile.slice_devices('v4-8')[1]), ('data',))
  lone = {p.name: p for p in tpu_compile.programs(_tiny(), TINY_SHAPE, mesh)}
  swept = {p.name: p for p in tpu_compile.programs(_tiny(2), TINY_SHAPE, mesh)}
  assert list(swept) == ['train', 'eval']
  state, batch, values = swept['train'].args
  shapes = lambda tree: jax.tree.map(lambda x: (x.shape, x.dtype), tree)
  unstacked = lambda tree: jax.tree.map(lambda x: (x.shape[1:], x.dtype), tree)
  assert unstacked(state) == shapes(lone['train'].args[0]) and unstacked(batch) == shapes(lone['train'].args[1])
  assert all(x.shape[0] == 2 for x in jax.tree.leaves((state, batch)))
  assert shapes(values) == {'seed': ((2,), np.uint32)}
  assert tpu_compile._nbytes(swept['train'].args) == 2 * tpu_compile._nbytes(lone['train'].args) + 2 * 4
  # A 2 x 2 (runs x data) mesh: each run's batch over 2 of the 4 devices, each device holding one run's state.
  assert (swept['train'].batch_axis, swept['train'].batch_devices) == (1, 2)
  assert shapes(swept['eval'].args) == shapes(lone['eval'].args)
  assert swept['eval'].resident_bytes == tpu_compile._nbytes(state) // 2
  out_state, metrics = jax.eval_shape(swept['train'].jitted, *swept['train'].args)
  assert shapes(out_state) == shapes(state) and metrics['loss'].shape == (2,)


def test_a_sweeps_pretraining_stage_compiles_once_per_distinct_stage(libtpu):
  """Traced, not compiled: the stage's program is what sweep_train.pretrain trains, the runs MAE pre-training can
  tell apart (2 seeds of 2 x 2 runs), or one lone run where it can tell none apart (tau only)."""
  mesh = Mesh(np.asarray(tpu_compile.slice_devices('v4-8')[1]), ('data',))
  config = _tiny(2)
  config.pretrain_steps = 2
  config.sweep.tau = (0.9, 0.95)
  programs = {p.name: p for p in tpu_compile.programs(config, TINY_SHAPE, mesh)}
  assert list(programs) == ['pretrain', 'train', 'eval']
  assert programs['pretrain'].args[2] == {'seed': jax.ShapeDtypeStruct((2,), np.uint32)}
  assert jax.tree.leaves(programs['train'].args[0])[0].shape[0] == 4
  config.sweep.seed = None
  pretrain = tpu_compile.programs(config, TINY_SHAPE, mesh)[0]
  assert pretrain.name == 'pretrain' and len(pretrain.args) == 2  # A lone run's (state, batch): no run axis.


@pytest.mark.slow  # Compiles two train steps and two eval steps of a one-block model: ~1-2 min here.
@needs_cifar10
def test_a_sweep_of_2_runs_compiles_for_a_v5e_1_with_twice_the_arguments(libtpu):
  procs = [subprocess.Popen([sys.executable, 'main.py', '--mode=compile', '--config=configs/smoke.py',
                             '--config.model.depth=1', '--topology=v5e-1', '--json', *sweep], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=ROOT))
           for sweep in ([], ['--config.sweep.seed=(0,1)'])]
  (lone, stderr), (swept, stderr2) = [proc.communicate(timeout=600) for proc in procs]
  assert procs[0].returncode == procs[1].returncode == 0, stderr[-2000:] + stderr2[-2000:]
  lone, swept = json.loads(lone), json.loads(swept)
  assert (lone['runs'], lone['runs_mesh'], swept['runs'], swept['runs_mesh']) == (1, None, 2, {'runs': 1, 'data': 1})
  assert set(swept['programs']) == {'train', 'eval'} and swept['fits'] and all(c['ok'] for c in swept['checks'])
  train_bytes = [r['programs']['train']['argument_bytes'] for r in (lone, swept)]
  assert 1.9 < train_bytes[1] / train_bytes[0] < 2.1, train_bytes  # The stacked state and batches of 2 runs.
  assert swept['programs']['eval']['argument_bytes'] == lone['programs']['eval']['argument_bytes']  # One run's.
  assert swept['roofline_run_step_ms'] == swept['roofline_step_ms'] / 2
  assert any(line.startswith('Sweep of 2 runs (seed (0, 1)) as one program on a 1 x 1 (runs x data) mesh')
             for line in tpu_compile.format_report(swept, 'smoke.py'))

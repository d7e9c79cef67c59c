"""What a run reports about its machine, XLA's persistent compilation cache across processes, profiler traces."""

import glob
import os
import re
import subprocess
import sys

import jax
import ml_collections
import pytest

from conftest import needs_cifar10
from test_reliability import OVERRIDES, _flags
from ssmae_jax import runtime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_an_idle_accelerator_is_named_only_when_jax_runs_on_the_cpu():
  tpu = lambda patterns: '/dev/accel*' in patterns
  gpu = lambda patterns: '/dev/nvidia[0-9]*' in patterns
  assert runtime.idle_accelerator('cpu', present=tpu) == 'tpu'
  assert runtime.idle_accelerator('cpu', present=gpu) == 'gpu'
  assert runtime.idle_accelerator('cpu', present=lambda patterns: False) is None
  assert runtime.idle_accelerator('gpu', present=gpu) is None
  assert runtime.idle_accelerator('tpu', present=tpu) is None


def test_the_install_line_pins_the_running_jax():
  assert runtime.install_line('tpu') == f"pip install -r requirements.txt 'jax[tpu]=={jax.__version__}'"
  assert runtime.install_line('gpu') == f"pip install -r requirements.txt 'jax[cuda13]=={jax.__version__}'"
  with open(os.path.join(ROOT, 'pyproject.toml')) as f:
    assert f'"jax=={jax.__version__}"' in f.read()  # The version the README's install lines pin.


def test_start_up_names_the_backend_and_points_a_cpu_at_the_cpu_config(monkeypatch):
  monkeypatch.setattr(runtime, 'idle_accelerator', lambda backend: None)
  lines = runtime.describe(ml_collections.ConfigDict(dict(cpu_config='configs/cifar10_cpu.py')))
  assert lines[0].startswith(f'JAX {jax.__version__} on cpu: {jax.device_count()} device(s)')
  assert lines[1].startswith('note:') and '--config=configs/cifar10_cpu.py' in lines[1]
  assert len(runtime.describe(ml_collections.ConfigDict(dict(cpu_config=None)))) == 1
  monkeypatch.setattr(runtime, 'idle_accelerator', lambda backend: 'gpu')
  lines = runtime.describe(ml_collections.ConfigDict(dict(cpu_config='configs/cifar10_cpu.py')))
  assert len(lines) == 2 and lines[1].startswith('warning:') and runtime.install_line('gpu') in lines[1]


def _main(workdir, env, *extra) -> str:
  command = [sys.executable, 'main.py', '--config=configs/smoke.py', f'--workdir={workdir}', *_flags(OVERRIDES),
             '--config.num_steps=4', *extra]
  proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout


@needs_cifar10
@pytest.mark.slow
def test_a_second_process_loads_the_compiled_steps_and_a_profile_is_written(small_cifar10, tmp_path):
  env = {k: v for k, v in os.environ.items() if not k.startswith('JAX_COMPILATION_CACHE')}
  env.update(JAX_PLATFORMS='cpu', TFDS_DATA_DIR=small_cifar10)
  cache = tmp_path / 'xla_cache'
  first = _main(tmp_path / 'first', env, f'--config.compilation_cache_dir={cache}', '--config.profile_steps=(1, 2)')
  pattern = r'First step took [\d.]+ s including compilation \((\d+) compiled function\(s\) loaded from the cache, ' \
            r'(\d+) compiled and cached\)'
  loaded, compiled = (int(x) for x in re.search(pattern, first).groups())
  assert loaded == 0 and compiled > 0, first
  assert os.listdir(cache)
  assert 'Profiler trace of steps 1-2 in ' in first
  assert glob.glob(str(tmp_path / 'first' / 'profile' / 'plugins' / 'profile' / '*' / '*.xplane.pb'))

  second = _main(tmp_path / 'second', env, f'--config.compilation_cache_dir={cache}')
  loaded, compiled = (int(x) for x in re.search(pattern, second).groups())
  assert loaded > 0 and compiled == 0, second
  assert not (tmp_path / 'second' / 'profile').exists()  # profile_steps defaults to none.


@needs_cifar10
@pytest.mark.slow
def test_a_run_started_in_process_gets_the_runs_compilation_cache(small_cifar10, tmp_path):
  """A notebook or script (no main.py), after JAX compiled something else: the run's steps are cached in its workdir."""
  env = {k: v for k, v in os.environ.items() if not k.startswith('JAX_COMPILATION_CACHE')}
  code = ('import sys, jax, jax.numpy as jnp; from ssmae_jax import configs, train; '
          'jax.jit(jnp.sin)(1.0); '  # Something compiled before the run, as in a notebook.
          "config = configs.get('smoke'); config.update(data_dir=sys.argv[2], label_fraction=0.5, num_steps=2, "
          'log_every_steps=2); '
          'train.train_and_evaluate(config, sys.argv[1])')
  run = subprocess.run([sys.executable, '-c', code, str(tmp_path / 'run'), small_cifar10], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=900)
  assert run.returncode == 0, run.stderr[-3000:]
  assert len(os.listdir(tmp_path / 'run' / 'compilation_cache')) > 1


def test_the_cache_defaults_to_the_users_jax_setting_then_the_workdir_and_an_empty_path_turns_it_off():
  config = lambda path: ml_collections.ConfigDict(dict(compilation_cache_dir=path))
  assert runtime.compilation_cache_dir(config(None), 'gs://b/run', environ={}) == 'gs://b/run/compilation_cache'
  assert runtime.compilation_cache_dir(config(None), '/w', environ={'JAX_COMPILATION_CACHE_DIR': '/c'}) == '/c'
  assert runtime.compilation_cache_dir(config('gs://b/cache'), '/w', environ={}) == 'gs://b/cache'
  assert runtime.compilation_cache_dir(config(''), '/w', environ={'JAX_COMPILATION_CACHE_DIR': '/c'}) is None


def test_importing_the_library_keeps_jax_off_a_tpu_this_machine_lacks():
  """With libtpu installed (the tpu-compile extra) and no accelerator, any entry point stays on the CPU, quietly."""
  pytest.importorskip('libtpu')
  env = {k: v for k, v in os.environ.items() if k != 'JAX_PLATFORMS'}
  code = 'import os, ssmae_jax, jax; print(os.environ["JAX_PLATFORMS"], jax.default_backend())'
  run = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-2000:]
  assert run.stdout.split() == ['cpu', 'cpu']
  assert 'libtpu' not in run.stderr and 'TPU' not in run.stderr

"""Every config field is declared beside its default, and a value outside its declaration is one clear line."""

import glob
import importlib
import math
import os
import platform
import subprocess
import sys
import time

import ml_collections
import pytest

from ssmae_jax.configs import default
from ssmae_jax import configuration
from ssmae_jax.fields import Float, Int, OneOf, Text, Tuple
from ssmae_jax.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_MODULES = sorted(os.path.relpath(p, ROOT)[:-3].replace(os.sep, '.')
                        for p in glob.glob(os.path.join(ROOT, 'configs', '**', '*.py'), recursive=True)
                        if not p.endswith('__init__.py'))
DECLARED = configuration.declarations()
START_UP_NOISE = ('oneDNN', 'absl::InitializeLog', 'cpu_feature_guard', 'This TensorFlow binary is optimized')


def _set(config: ml_collections.ConfigDict, name: str, value) -> None:
  *parents, leaf = name.split('.')
  node = config
  for p in parents:
    node = node[p]
  node[leaf] = value


def _just_outside(spec) -> list:
  """Values of a number spec's type just past each of its bounds."""
  if isinstance(spec, Int):
    return [b for b in (None if spec.min is None else spec.min - 1, None if spec.max is None else spec.max + 1)
            if b is not None]
  out = [b for b in (spec.above, spec.below) if b is not None]  # Exclusive bounds: the bound itself is outside.
  for bound, sign in ((spec.min, -1), (spec.max, 1)):
    if bound is not None:
      out.append(bound + sign * max(abs(bound), 1) * 1e-6)
  return out


def _bad_values(spec) -> list:
  """Values that must be refused, as whole field values."""
  if isinstance(spec, Float):
    return _just_outside(spec) + [math.nan, math.inf, -math.inf]
  if isinstance(spec, Int):
    return _just_outside(spec)
  if isinstance(spec, OneOf):
    return [spec.default + '_misspelt', '']
  if isinstance(spec, Text) and spec.nonempty:
    return ['']
  if isinstance(spec, Tuple):
    out = [spec.default[:-1], spec.default + spec.default[-1:]]  # One element short, one too many.
    for i, element in enumerate(spec.elements.values()):
      for bad in _bad_values(element) + ([math.nan, math.inf] if isinstance(element, Int) else []):
        out.append(spec.default[:i] + (bad,) + spec.default[i + 1:])
    if spec.ordered:
      out.append(tuple(reversed(spec.default)))
    return out
  return []


@pytest.mark.parametrize('module', CONFIG_MODULES)
def test_every_field_of_every_config_is_declared_and_its_value_allowed(module):
  config = importlib.import_module(module).get_config()
  undeclared = [name for name, _ in configuration.fields(config) if name not in DECLARED]
  assert not undeclared, f'{module}: declare these beside their defaults in configs/default.py: {undeclared}'
  if config.method == 'finetune':
    config.init_from = '/the/pretrained/run'  # The user names it on the command line.
  configuration.validate(config)


def test_the_declarations_are_the_fields_of_default():
  assert sorted(DECLARED) == sorted(name for name, _ in configuration.fields(default.get_config()))


@pytest.mark.parametrize('name', sorted(DECLARED))
def test_values_outside_the_declaration_are_one_line_errors(name):
  spec = DECLARED[name]
  bad_values = _bad_values(spec)
  for value in bad_values:
    config = default.get_config()
    _set(config, name, value)
    with pytest.raises(UserError) as e:
      configuration.validate(config)
    message = str(e.value)
    assert '\n' not in message
    assert message.startswith(f'config.{name}=') and spec.describe() in message, message
    if spec.default is not None:
      assert f'--config.{name}=' in message, message
  if isinstance(spec, Int):  # NaN and infinity are not integers: the config refuses them when they are set.
    for value in (math.nan, math.inf):
      with pytest.raises(TypeError):
        _set(default.get_config(), name, value)
  numbers = list(spec.elements.values()) if isinstance(spec, Tuple) else [spec]
  for number in numbers:
    if isinstance(number, (Int, Float)):
      assert _just_outside(number), f'config.{name} is a number with no bound: declare its range'
  if spec.default is None:
    config = default.get_config()
    configuration.validate(config)  # None is allowed where it is the default.


def test_a_field_the_defaults_do_not_have_is_refused():
  config = default.get_config()
  config.tua = 0.9
  with pytest.raises(UserError, match=r'^config\.tua is not a declared field'):
    configuration.validate(config)


@pytest.mark.parametrize('overrides, message', [
    ({'model.width': 30, 'model.num_heads': 4}, 'config.model.width=30 is not divisible by config.model.num_heads=4'),
    ({'model.decoder_width': 30}, 'config.model.decoder_width=30 is not divisible'),
    ({'model.mlp_ratio': 0.001}, 'config.model.mlp_ratio=0.001 gives the MLP'),
    ({'rec_weight': 0.0, 'cls_weight': 0.0}, 'no loss to train'),
    ({'num_epochs': 0}, 'trains nothing'),
    ({'image_size': 30}, 'not divisible by config.model.patch_size=4'),
    ({'method': 'finetune'}, 'needs config.init_from'),
    ({'pretrain_steps': 5, 'init_from': '/runs/mae'},
     r'both give the run its starting encoder: set one of them \(--config.pretrain_steps=0 starts from init_from\)'),
    ({'pretrain_steps': 5, 'method': 'mae_pretrain'}, 'mae_pretrain trains none: add --config.pretrain_steps=0.'),
    ({'unlabeled_cls_rows': 32}, r'config.unlabeled_cls_rows=32 is not below config.unlabeled_batch_size=32'),
    ({'tau': 0.85, 'class_tau_drop': 0.9}, r'config.class_tau_drop=0.9 is more than config.tau=0.85: .* at most tau'),
])
def test_rules_between_fields(overrides, message):
  config = default.get_config()
  for name, value in overrides.items():
    _set(config, name, value)
  with pytest.raises(UserError, match=message) as e:
    configuration.validate(config)
  assert '\n' not in str(e.value)


def test_a_pretraining_stage_is_what_finetune_needs():
  config = default.get_config()
  config.method, config.pretrain_steps = 'finetune', 5
  configuration.validate(config)


def _main(args: list[str], env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, 'main.py', '--config=configs/smoke.py', *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


@pytest.mark.parametrize('arg, message', [
    ('--config.tau=nan', 'error: config.tau=nan is not allowed: it must be a finite number in [0, 1]; '
                         'e.g. --config.tau=0.95 (the default).'),
    ('--config.model.depth=nan', "error: flag --config.model.depth=nan: invalid literal for int()"),
])
def test_main_prints_a_bad_value_in_one_line(tmp_path, arg, message):
  proc = _main([f'--workdir={tmp_path / "w"}', arg])
  assert proc.returncode == 2
  assert proc.stderr.startswith(message) and proc.stderr.count('\n') == 1, proc.stderr
  assert not (tmp_path / 'w').exists()


@pytest.fixture
def no_network(tmp_path):
  """PYTHONPATH holding a sitecustomize that makes every socket connection fail, as on a machine offline."""
  site = tmp_path / 'offline'
  site.mkdir()
  (site / 'sitecustomize.py').write_text(
      'import socket\n\n'
      'def _refuse(*args, **kwargs):\n'
      '  raise OSError("network unreachable (test)")\n\n'
      'socket.create_connection = _refuse\n'
      'socket.socket.connect = _refuse\n')
  return os.pathsep.join(filter(None, [str(site), os.environ.get('PYTHONPATH')]))


@pytest.mark.slow  # Two starts of TensorFlow and JAX, ~7 s each.
def test_an_unprepared_dataset_offline_fails_fast_and_quietly(tmp_path, no_network):
  data_dir = tmp_path / 'tfds'  # cifar100 is registered in TFDS but not prepared here.
  data_dir.mkdir()
  args = [f'--workdir={tmp_path / "w"}', '--config.dataset=cifar100']
  env = dict(TFDS_DATA_DIR=str(data_dir), PYTHONPATH=no_network)
  start = time.monotonic()
  proc = _main(args, env, timeout=90)  # The unchecked download would retry for minutes.
  seconds = time.monotonic() - start
  assert proc.returncode == 2
  assert 'Traceback' not in proc.stderr
  errors = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
  assert errors == [proc.stderr.strip().splitlines()[-1]]
  assert errors[0].startswith(f"error: Dataset 'cifar100' is not prepared in {data_dir} and this machine cannot "
                              'download it (no connection to ')
  assert 'tfds build cifar100' in errors[0] and 'TFDS_DATA_DIR' in errors[0] and 'config.data_dir' in errors[0]
  assert not any(noise in proc.stderr for noise in START_UP_NOISE), proc.stderr
  print(f'unprepared dataset offline: error line after {seconds:.1f} s')
  verbose = _main(args + ['--verbosity=0'], env, timeout=90)
  assert verbose.returncode == 2 and verbose.stderr.strip().splitlines()[-1] == errors[0]
  if platform.machine() in ('x86_64', 'AMD64'):  # TensorFlow's oneDNN notice is for x86 CPUs.
    assert 'oneDNN' in verbose.stderr

"""Reliability and scale-out (issue 5): kill -9 or SIGTERM and resume, half-written and corrupt checkpoints, 1-8
devices, two processes, non-finite steps, bad input, determinism.

Runs go through `main.py` in subprocesses where a process matters, as a user's would: a kill must hit a real process,
and a device count or a second process must be set before JAX starts. The reference run and the resume from planted
checkpoints run in this process. They share one tiny config (conftest's SMALL_RUN) and the session's
persistent XLA compilation cache, so only the first run of each program compiles it.
"""

import contextlib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import SMALL_RUN, config_flags as _flags, needs_cifar10, small_config
from ssmae_jax import experiment, sharding, train
from ssmae_jax.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 900

# SMALL_RUN: 450 labeled images in batches of 64 -> 7 steps per epoch, so the 16 steps evaluate (gate, best
# checkpoint) at steps 0, 7, 14 and 16. Every step prints a line: the kills below are timed by them.
OVERRIDES = {
    **SMALL_RUN,
    'num_steps': 16,
    'test_every_epochs': 0,
    'log_every_steps': 1,
    'checkpoint_every_steps': 3,
    'keep_checkpoints': 3,
}


def tiny_config(**overrides):
  return small_config(None, **{**OVERRIDES, **overrides})


@pytest.fixture(scope='module')
def base_env(small_cifar10) -> dict:
  """The small data; the compilation cache is the session's (conftest)."""
  return dict(os.environ, JAX_PLATFORMS='cpu', TFDS_DATA_DIR=small_cifar10)


def _env(base_env: dict, devices: int | None = None, **extra: str) -> dict:
  flags = [f for f in base_env.get('XLA_FLAGS', '').split() if 'device_count' not in f]
  if devices:
    flags.append(f'--xla_force_host_platform_device_count={devices}')
  return dict(base_env, XLA_FLAGS=' '.join(flags), **extra)


def _start(workdir, env: dict, *extra: str) -> subprocess.Popen:
  """`python main.py` on the tiny config in its own process group; stderr goes to WORKDIR.stderr."""
  command = [sys.executable, 'main.py', '--config=configs/smoke.py', f'--workdir={workdir}', *_flags(OVERRIDES),
             *extra]
  with open(f'{workdir}.stderr', 'a') as stderr:
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True,
                            start_new_session=True)


def _stop(*procs: subprocess.Popen) -> None:
  """Kills whichever of `procs` still runs (a failed test must not leave a run or its partner process behind)."""
  for proc in procs:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
      proc.wait()


def _stderr(workdir) -> str:
  with open(f'{workdir}.stderr') as f:
    return f.read()


def _finish(proc: subprocess.Popen, workdir) -> str:
  """Waits for a run to end well -> its stdout."""
  try:
    out, _ = proc.communicate(timeout=TIMEOUT)
  finally:
    _stop(proc)
  assert proc.returncode == 0, _stderr(workdir)[-3000:]
  return out


def _run(workdir, env: dict, *extra: str) -> str:
  return _finish(_start(workdir, env, *extra), workdir)


def _kill_at(proc: subprocess.Popen, prefix: str, workdir) -> str:
  """kill -9 the run (its whole process group) as soon as it prints a line starting with `prefix` -> its output."""
  lines = []
  try:
    for line in proc.stdout:
      lines.append(line)
      if line.startswith(prefix):
        os.killpg(proc.pid, signal.SIGKILL)
        break
    proc.wait(timeout=TIMEOUT)
  finally:
    _stop(proc)
  assert proc.returncode == -signal.SIGKILL, f'ended before printing {prefix!r}: {_stderr(workdir)[-3000:]}'
  return ''.join(lines)


def _committed_steps(workdir) -> list[int]:
  """Checkpoint steps orbax has committed; a save in progress is a '<step>.orbax-checkpoint-tmp' directory."""
  return sorted(int(n) for n in os.listdir(os.path.join(workdir, 'checkpoints')) if n.isdigit())


def _state(workdir, step: int | None = None) -> dict:
  """A checkpoint's TrainState as a dict of numpy arrays (on any device count)."""
  step = _committed_steps(workdir)[-1] if step is None else step
  path = os.path.join(workdir, 'checkpoints', str(step), 'state')
  with ocp.PyTreeCheckpointer() as checkpointer:
    tree = checkpointer.metadata(path).item_metadata.tree
    args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    return checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=args))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _outputs_of(results: dict) -> dict:
  """results.json's content without the wall times (what must repeat exactly)."""
  results = dict(results, history=[{k: v for k, v in r.items() if k != 'wall_seconds'} for r in results['history']])
  results.pop('wall_seconds')
  results.pop('command_wall_seconds')
  results.pop('commands_wall_seconds')
  return results


def _outputs(workdir) -> tuple[dict, dict]:
  """results.json and history.json without the wall times (what must repeat exactly)."""
  with open(os.path.join(workdir, 'results.json')) as f:
    results = json.load(f)
  with open(os.path.join(workdir, 'history.json')) as f:
    history = json.load(f)
  for record in history['epochs']:
    record.pop('wall_seconds')
  return _outputs_of(results), history


def _assert_same_run(workdir, reference) -> None:
  """Bit-exact: results.json, history.json and the final state (params, optimizer, memory, gate)."""
  assert _outputs(workdir) == _outputs(reference)
  got, want = _state(workdir), _state(reference)
  assert int(got['step']) == int(want['step']) == OVERRIDES['num_steps']
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(got)[0], jax.tree.leaves(want), strict=True):
    np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))


def _step_metrics(out: str) -> list[list[float]]:
  """Step, loss, reconstruction loss, classification loss and train accuracy of every step line a run printed."""
  pattern = r'^step (\d+)/\d+ .*\| loss ([\d.]+) \(rec ([\d.]+), cls ([\d.]+)\) \| train acc ([\d.]+)%'
  return [[float(x) for x in m.groups()] for m in re.finditer(pattern, out, re.MULTILINE)]


def _assert_close_run(workdir, reference, out: str, **config_changes) -> None:
  """The same run up to float rounding (another device or process count sums in another order); its config
  differs from the reference's by `config_changes` (ones that must not change the numbers)."""
  want_steps = _step_metrics(reference.with_suffix('.stdout').read_text())
  assert len(want_steps) == OVERRIDES['num_steps']
  assert _step_metrics(out) == [pytest.approx(row, abs=2e-4) for row in want_steps]  # Printed with 4 decimals.
  (results, history), (want_results, want_history) = _outputs(workdir), _outputs(reference)
  want_results['config'].update(config_changes)
  for got, want in ((results, want_results), (history, want_history)):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(got)[0], jax.tree.leaves(want)):
      if isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-6), jax.tree_util.keystr(path)
      else:
        assert a == b, jax.tree_util.keystr(path)
  got, want = _state(workdir), _state(reference)
  np.testing.assert_array_equal(got['pseudo_labels'], want['pseudo_labels'])
  assert int(got['gate_open']) == int(want['gate_open'])
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(got['params'])[0], jax.tree.leaves(want['params'])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=jax.tree_util.keystr(path))
  assert results['pseudo_labels_total'] > 0  # The memory compared above is not empty.


@pytest.fixture(scope='module')
def reference(tmp_path_factory, base_env):
  """An uninterrupted run, in this process (what main.py runs, with its environment: the small data): the workdir
  every other run is compared with. The kill -9 run below starts from scratch in a process of its own and must end
  bit for bit as this one: a trainer that is not deterministic fails it."""
  workdir = tmp_path_factory.mktemp('runs') / 'reference'
  out = io.StringIO()
  with pytest.MonkeyPatch.context() as env, contextlib.redirect_stdout(out):
    env.setenv('TFDS_DATA_DIR', base_env['TFDS_DATA_DIR'])
    train.train_and_evaluate(tiny_config(), str(workdir))
  workdir.with_suffix('.stdout').write_text(out.getvalue())
  return workdir


# 1. Hard kill, and preemption.


def _sigterm_at(proc: subprocess.Popen, prefix: str, workdir) -> str:
  """SIGTERM the run (as a TPU VM's preemption notice) as soon as it prints a line starting with `prefix`; it must
  checkpoint and exit 0 -> its output."""
  lines = []
  try:
    for line in proc.stdout:
      lines.append(line)
      if line.startswith(prefix):
        proc.send_signal(signal.SIGTERM)
        break
    out, _ = proc.communicate(timeout=TIMEOUT)
  finally:
    _stop(proc)
  assert proc.returncode == 0, _stderr(workdir)[-3000:]
  return ''.join(lines) + out


@needs_cifar10
@pytest.mark.slow
def test_kill_9_or_sigterm_then_the_same_command_ends_as_an_uninterrupted_run(reference, base_env, tmp_path):
  workdir, env = tmp_path / 'killed', _env(base_env)
  # kill -9 right after the epoch-1 evaluation at step 7 saved a best checkpoint that no committed latest checkpoint
  # records yet (the rerun must redo that evaluation); then as the checkpoint of step 9 starts to be written; then a
  # SIGTERM at step 11, which checkpoints where it stops and exits 0. Each rerun resumes from the newest committed
  # checkpoint.
  resumed_from = []
  for stop, at in (('kill', 'epoch 1 '), ('kill', 'step 9/'), ('sigterm', 'step 11/'), (None, None)):
    committed = _committed_steps(workdir) if os.path.isdir(workdir / 'checkpoints') else []
    proc = _start(workdir, env)
    if stop == 'kill':
      out = _kill_at(proc, at, workdir)
    elif stop == 'sigterm':
      out = _sigterm_at(proc, at, workdir)
      preempted = [line for line in out.splitlines() if line.startswith('Preempted (SIGTERM)')]
      assert len(preempted) == 1, out
      stopped_at = int(preempted[0].split('at step ')[1].split(':')[0])
      assert 11 <= stopped_at < OVERRIDES['num_steps'] and stopped_at in _committed_steps(workdir)
      assert not (workdir / 'results.json').exists()
    else:
      out = _finish(proc, workdir)
    if committed:
      assert f'Resuming from step {committed[-1]} ' in out
      resumed_from.append(committed[-1])
    if stop == 'kill':
      print(f'killed after {at!r}: checkpoints/ holds {sorted(os.listdir(workdir / "checkpoints"))}, best/ '
            f'{sorted(os.listdir(workdir / "best"))}')
  assert len(resumed_from) == 3 and resumed_from[-1] == stopped_at
  _assert_same_run(workdir, reference)
  with open(workdir / 'results.json') as f:
    results = json.load(f)
  # The commands whose checkpoints the finishing run continues: the SIGTERM's and the last at least; each one's wall
  # time from its process's start, the last the command's own.
  commands = results['commands_wall_seconds']
  assert 2 <= len(commands) <= 4 and all(seconds > 0 for seconds in commands)
  assert commands[-1] <= results['command_wall_seconds']


@needs_cifar10
@pytest.mark.slow
def test_half_written_and_corrupt_checkpoints_are_skipped(reference, base_env, tmp_path):
  workdir = tmp_path / 'planted'
  shutil.copytree(reference, workdir)
  os.remove(workdir / 'results.json')
  checkpoints = workdir / 'checkpoints'
  assert _committed_steps(workdir) == [12, 15, 16]
  # Step 16 as a kill during its save leaves it: orbax's uncommitted temporary directory, half of its files cut.
  half = checkpoints / '16.orbax-checkpoint-tmp'
  os.rename(checkpoints / '16', half)
  for f in sorted(p for p in half.rglob('*') if p.is_file())[::2]:
    f.write_bytes(f.read_bytes()[:len(f.read_bytes()) // 2])
  # Step 15 committed but unreadable (a disk fault): its files are empty.
  for f in (checkpoints / '15' / 'state').rglob('*'):
    if f.is_file():
      f.write_bytes(b'')
  out = io.StringIO()
  with pytest.MonkeyPatch.context() as env, contextlib.redirect_stdout(out):  # In this process, as `reference`.
    env.setenv('TFDS_DATA_DIR', base_env['TFDS_DATA_DIR'])
    train.train_and_evaluate(tiny_config(), str(workdir))
  out = out.getvalue()
  unreadable = [line for line in out.splitlines() if 'unreadable' in line]
  assert len(unreadable) == 1 and unreadable[0].startswith('Checkpoint at step 15 ')
  assert 'Resuming from step 12 ' in out
  _assert_same_run(workdir, reference)


# 3. Devices.


@needs_cifar10
@pytest.mark.slow
def test_2_and_8_devices_train_as_1_device_and_an_indivisible_batch_fails_before_compiling(reference, base_env,
                                                                                            tmp_path):
  logged = _env(base_env, devices=3, JAX_LOG_COMPILES='1')
  three = subprocess.run([sys.executable, 'main.py', '--config=configs/smoke.py', f'--workdir={tmp_path / "three"}',
                          *_flags(OVERRIDES)], cwd=ROOT, env=logged, capture_output=True, text=True, timeout=TIMEOUT)
  assert three.returncode == 2 and 'Traceback' not in three.stderr
  assert three.stderr.strip().splitlines()[-1] == ('error: config.labeled_batch_size=64 does not divide by the 3 '
                                                   'devices: set it to a multiple of 3.')
  # Before the workdir, the data and any compilation (the runs below show these logs name what compiles).
  assert 'Compiling jit(' not in three.stderr
  assert not os.path.exists(tmp_path / 'three')

  # 2 devices: the even split; 8: more devices than this machine has cores, a per-device batch of 8.
  runs = {n: _start(tmp_path / str(n), _env(base_env, devices=n, JAX_LOG_COMPILES='1')) for n in (2, 8)}
  try:
    outs = {n: _finish(proc, tmp_path / str(n)) for n, proc in runs.items()}
  finally:
    _stop(*runs.values())
  for n, out in outs.items():
    assert f'{n} devices.' in out
    assert 'Compiling jit(train_step)' in _stderr(tmp_path / str(n))  # What the check above would have seen.
    _assert_close_run(tmp_path / str(n), reference, out)


# 4. Hosts.


@needs_cifar10
@pytest.mark.slow
def test_two_processes_train_as_one(reference, base_env, tmp_path):
  # The latest checkpoint every epoch (7 steps): both checkpoint managers save step 7 and step 14, at once on two
  # hosts (their cross-host barriers once collided there and the run hung).
  workdir = tmp_path / 'two'
  port = _free_port()
  procs = [_start(workdir, _env(base_env), f'--coordinator_address=localhost:{port}', '--num_processes=2',
                  f'--process_id={i}', '--config.checkpoint_every_steps=7') for i in (0, 1)]
  try:
    outs = [_finish(p, workdir) for p in procs]
  finally:
    _stop(*procs)
  assert '2 devices.' in outs[0] and 'Done: test accuracy' in outs[0]
  # Only process 0 prints and writes logs, results, history and figures (gloo itself greets on stdout).
  assert [line for line in outs[1].splitlines() if not line.startswith('[Gloo]')] == []
  assert len([n for n in os.listdir(workdir) if n.startswith('events.out.tfevents')]) == 1
  _assert_close_run(workdir, reference, outs[0], checkpoint_every_steps=7)


# 5. Non-finite values.


@needs_cifar10
@pytest.mark.slow
@pytest.mark.filterwarnings('ignore:invalid value encountered in cast')  # The end's figures of a 1e30 model.
def test_nonfinite_step_stops_keeping_the_last_good_checkpoint_then_skip_policy_resumes(base_env, tmp_path,
                                                                                       capsys):
  # At learning rate 1e30 the first update makes the weights ~1e30: the second step's loss overflows. In this process:
  # main.py's part, the one-line error and exit status 1, is test_train's.
  workdir = tmp_path / 'nan'
  huge = {**OVERRIDES, 'optimizer.learning_rate': 1e30, 'num_steps': 6, 'checkpoint_every_steps': 1,
          'keep_checkpoints': 10}
  with pytest.raises(FloatingPointError) as e:
    train.train_and_evaluate(small_config(base_env['TFDS_DATA_DIR'], **huge), str(workdir))
  message = str(e.value)
  assert message.startswith('The loss or gradient became non-finite at step 2; ') and 'nan_policy' in message
  assert '\n' not in message
  assert _committed_steps(workdir) == [1]  # Nothing of step 2 was saved.
  good = _state(workdir, 1)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(good['params']))

  # The same run resumed with nan_policy=skip: every later step is skipped, so the state stays that of step 1.
  capsys.readouterr()
  config = small_config(base_env['TFDS_DATA_DIR'], **huge, nan_policy='skip')
  train.train_and_evaluate(config, str(workdir))
  out = capsys.readouterr().out
  assert 'Resuming from step 1 ' in out and 'step 2/6 ' in out and '1 non-finite steps skipped' in out
  with open(workdir / 'results.json') as f:
    assert json.load(f)['nonfinite_steps_skipped'] == 5
  final = _state(workdir, 6)
  assert int(final['step']) == 6
  for key in ('params', 'opt_state', 'pseudo_labels'):
    for a, b in zip(jax.tree.leaves(final[key]), jax.tree.leaves(good[key]), strict=True):
      np.testing.assert_array_equal(a, b)


# 6. Bad input (the other cases are tested with the code that checks them: test_input_pipeline, test_methods,
# test_train).


@pytest.mark.parametrize('overrides, message', [
    (dict(nan_policy='ignore'), 'config.nan_policy'),
    (dict(num_steps=None, num_epochs=0), 'trains nothing'),
    (dict(num_steps=-3), r'config\.num_steps=-3 is not allowed: it must be None or an integer >= 1'),
    (dict(log_every_steps=0), 'config.log_every_steps=0'),
    (dict(checkpoint_every_steps=0), 'config.checkpoint_every_steps=0'),
])
def test_bad_config_is_one_line_before_loading_anything(tmp_path, overrides, message):
  with pytest.raises(UserError, match=message) as e:
    experiment.build(tiny_config(**overrides), str(tmp_path / 'run'))
  assert '\n' not in str(e.value)
  assert not os.path.exists(tmp_path / 'run')


def test_multi_process_flags_go_together():
  with pytest.raises(UserError, match='go together'):
    sharding.initialize_distributed('localhost:1234', None, None)
  with pytest.raises(UserError, match='process_id=2'):
    sharding.initialize_distributed('localhost:1234', 2, 2)


# 7. Determinism: no run of its own. The kill -9 run above starts from scratch in a process of its own, with the
# reference's config and seed, and must end bit for bit as the reference did in this process (as must the run resumed
# from planted checkpoints): a trainer that is not deterministic fails it.

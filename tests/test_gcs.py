"""Runs whose workdir (a lone run's or a sweep's), checkpoints, `init_from` and image folders live in a Cloud Storage
bucket (gs://).

A local Cloud Storage emulator (`gcp-storage-emulator`, in the test requirements; tests/storage_emulator.py) stands in
for the bucket. gcsfs (behind etils.epath with EPATH_USE_TF=false) and tensorstore (behind orbax's arrays) talk to it;
TensorFlow's own GCS client cannot be pointed at it, so these runs turn TensorBoard's event files off
(`config.tensorboard=False`), the one thing a real bucket gets that they don't.
Where a process matters (a run from scratch, a kill and its resume, two processes) a run is `main.py` in a
subprocess, as a user's; the others (eval / reconstruct / plots / predict, init_from, folders) call what main.py calls,
in this process, with the same environment (`in_process`). The subprocess runs share one compilation cache in the
bucket: the first compiles, the others load (the resume test checks that they do); the two-process run uses the
session's local cache, where test_reliability's two processes compiled the same programs.
"""

import importlib.util
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest
from etils.epath import gpath

from conftest import needs_cifar10, small_config
from test_reliability import OVERRIDES, _flags, _free_port, _outputs_of, _stop
from ssmae_jax.configs import folder
from ssmae_jax import fileio, inference, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 900
BUCKET = 'ssmae-test'

pytestmark = [
    needs_cifar10,
    pytest.mark.skipif(importlib.util.find_spec('gcp_storage_emulator') is None or
                       importlib.util.find_spec('gcsfs') is None,
                       reason='gcp-storage-emulator and gcsfs are not installed (pip install -r requirements.txt)'),
]


def _wait_for_port(port: int, proc: subprocess.Popen, log, timeout: float = 60) -> None:
  deadline = time.time() + timeout
  while time.time() < deadline:
    if proc.poll() is not None:
      raise RuntimeError(f'the storage emulator exited: {log.read_text()[-2000:]}')
    try:
      socket.create_connection(('127.0.0.1', port), timeout=1).close()
      return
    except OSError:
      time.sleep(0.2)
  raise RuntimeError(f'the storage emulator did not listen on port {port} within {timeout} s')


@pytest.fixture(scope='module')
def emulator(tmp_path_factory):
  """A Cloud Storage emulator on localhost holding bucket BUCKET, in memory; -> the environment that reaches it."""
  port = _free_port()
  log = tmp_path_factory.mktemp('emulator') / 'log.txt'
  # A file, not a pipe: nobody reads the emulator's log while it runs, and a full pipe would block it.
  with open(log, 'w') as f:
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, 'tests', 'storage_emulator.py'), 'start',
                             f'--port={port}', '--no-store-on-disk', f'--default-bucket={BUCKET}', '--quiet'],
                            stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
  try:
    _wait_for_port(port, proc, log)
    url = f'http://127.0.0.1:{port}'
    unreachable = '127.0.0.1:1'  # Credentials are never looked up on a metadata server: nothing leaves the machine.
    yield dict(STORAGE_EMULATOR_HOST=url, TENSORSTORE_GCS_HTTP_URL=url, EPATH_USE_TF='false',
               GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT='false', GOOGLE_AUTH_TOKEN_FOR_TESTING='emulator',
               GCE_METADATA_HOST=unreachable, GCE_METADATA_ROOT=unreachable, GCE_METADATA_IP=unreachable,
               NO_GCE_CHECK='True')
  finally:
    _stop(proc)


class Bucket:
  """The test's own view of the emulator's bucket, over Cloud Storage's JSON API (nothing of the code under test)."""

  def __init__(self, url: str):
    self.url = url

  def _get(self, path: str) -> bytes:
    with urllib.request.urlopen(f'{self.url}{path}', timeout=60) as response:
      return response.read()

  def ls(self, prefix: str) -> list[str]:
    """Names directly below gs://BUCKET/prefix: objects and 'folders', without the prefix."""
    prefix = prefix.rstrip('/') + '/'
    listing = json.loads(self._get(f'/storage/v1/b/{BUCKET}/o?' + urllib.parse.urlencode(
        dict(prefix=prefix, delimiter='/'))))
    names = [item['name'] for item in listing.get('items', [])] + listing.get('prefixes', [])
    return sorted(name[len(prefix):].rstrip('/') for name in names)

  def read(self, name: str) -> bytes:
    return self._get(f'/download/storage/v1/b/{BUCKET}/o/{urllib.parse.quote(name, safe="")}?alt=media')

  def write(self, name: str, data: bytes) -> None:
    request = urllib.request.Request(
        f'{self.url}/upload/storage/v1/b/{BUCKET}/o?' + urllib.parse.urlencode(dict(uploadType='media', name=name)),
        data=data, method='POST', headers={'Content-Type': 'application/octet-stream'})
    urllib.request.urlopen(request, timeout=60).close()


@pytest.fixture(scope='module')
def bucket(emulator) -> Bucket:
  return Bucket(emulator['STORAGE_EMULATOR_HOST'])


@pytest.fixture(scope='module')
def env(emulator, small_cifar10, tmp_path_factory) -> dict:
  env = {k: v for k, v in os.environ.items() if not k.startswith('JAX_COMPILATION_CACHE')}
  return dict(env, **emulator, JAX_PLATFORMS='cpu', TFDS_DATA_DIR=small_cifar10)


CACHE = f'gs://{BUCKET}/xla_cache'
BUCKET_FLAGS = ('--config.tensorboard=False', f'--config.compilation_cache_dir={CACHE}')


def _start(workdir: str, env: dict, *extra: str, overrides: dict | None = None) -> subprocess.Popen:
  command = [sys.executable, 'main.py', '--config=configs/smoke.py', f'--workdir={workdir}',
             *_flags({**OVERRIDES, **(overrides or {})}), *BUCKET_FLAGS, *extra]
  return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True)


def _run(workdir: str, env: dict, *extra: str, overrides: dict | None = None) -> str:
  proc = _start(workdir, env, *extra, overrides=overrides)
  try:
    out, err = proc.communicate(timeout=TIMEOUT)
  finally:
    _stop(proc)
  assert proc.returncode == 0, err[-3000:]
  return out


def _key(url: str) -> str:
  """gs://BUCKET/a/b -> a/b, the object name."""
  return url.removeprefix(f'gs://{BUCKET}/')


def _read_json(bucket: Bucket, url: str) -> dict:
  return json.loads(bucket.read(_key(url)))


@pytest.fixture(scope='module')
def finished(env, bucket) -> str:
  """An uninterrupted run in the bucket -> its gs:// workdir."""
  workdir = f'gs://{BUCKET}/runs/full'
  _run(workdir, env)
  return workdir


def test_a_bucket_workdir_holds_the_whole_run_and_nothing_is_local(finished, bucket):
  names = set(bucket.ls(_key(finished)))
  assert {'config.json', 'data.json', 'history.json', 'results.json', 'checkpoints', 'best', 'figures'} <= names
  assert str(OVERRIDES['num_steps']) in bucket.ls(f'{_key(finished)}/checkpoints')
  assert 'accuracy.png' in bucket.ls(f'{_key(finished)}/figures')
  assert _read_json(bucket, f'{finished}/results.json')['steps'] == OVERRIDES['num_steps']
  assert bucket.ls(_key(CACHE)), 'the compiled steps were not cached in the bucket'
  # os.path.abspath('gs://b/r') is CWD/gs:/b/r: nothing of the kind may appear where the run started.
  assert not os.path.exists(os.path.join(ROOT, 'gs:'))


@pytest.mark.slow
def test_a_run_killed_after_its_first_checkpoint_resumes_from_the_bucket(finished, env, bucket):
  workdir = f'gs://{BUCKET}/runs/killed'
  proc = _start(workdir, env)
  try:
    # Checkpoints every 3 steps. Orbax starts a save only once the previous one is committed, so by step 7's line
    # (after step 6's save began) step 3's checkpoint is complete in the bucket.
    for line in proc.stdout:
      if line.startswith('step 7/'):
        break
    else:
      pytest.fail(f'the run ended before step 7: {proc.stderr.read()[-3000:]}')
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
  finally:
    _stop(proc)
  out = _run(workdir, env)
  resumed = re.search(r'Resuming from step (\d+) in (\S+)\.', out)
  assert resumed and int(resumed.group(1)) >= 3 and resumed.group(2) == workdir, out
  hits = re.search(r'\((\d+) compiled function\(s\) loaded from the cache', out)
  assert hits and int(hits.group(1)) > 0, out
  assert _outputs_of(_read_json(bucket, f'{workdir}/results.json')) == \
      _outputs_of(_read_json(bucket, f'{finished}/results.json'))


@pytest.fixture
def in_process(emulator, env, monkeypatch):
  """This process reaches the emulator as the runs do (their environment: the emulator, the small data) -> the
  config main.py builds from `_start`'s flags."""
  for name in (*emulator, 'TFDS_DATA_DIR'):
    monkeypatch.setenv(name, env[name])
  # etils chooses between TensorFlow's GCS client and gcsfs once per process (EPATH_USE_TF), whichever test first
  # touched a gs:// path: have it choose again now, and again after, with the environment restored.
  gpath._is_tf_installed.cache_clear()
  yield small_config(None, **OVERRIDES, tensorboard=False, compilation_cache_dir=CACHE)
  gpath._is_tf_installed.cache_clear()


def test_eval_reconstruct_plots_and_predict_read_the_bucket(finished, in_process, bucket, capsys):
  # What main.py's --mode=eval / reconstruct / plots / predict call (test_train runs main.py's modes), in this process.
  inference.evaluate(in_process, finished, 'best')
  assert re.search(r'best checkpoint \(step \d+\): test accuracy [\d.]+%', capsys.readouterr().out)
  inference.reconstruct(in_process, finished)
  assert f'Wrote {finished}/figures/reconstruction_step_{OVERRIDES["num_steps"]}.png' in capsys.readouterr().out
  png = bucket.read(f'{_key(finished)}/figures/reconstruction_step_{OVERRIDES["num_steps"]}.png')
  assert png.startswith(b'\x89PNG\r\n\x1a\n')
  inference.plots(finished)
  assert f'{finished}/figures/accuracy.png' in capsys.readouterr().out
  inference.predict_pool(in_process, finished)
  rows = bucket.read(f'{_key(finished)}/pseudo_labels.csv').decode().splitlines()
  assert rows[0] == 'path,pseudo_label,prediction,confidence,source'
  assert len(rows) > 1


def test_init_from_a_bucket_run(finished, in_process, bucket, capsys):
  workdir = f'gs://{BUCKET}/runs/finetune'
  in_process.update(method='finetune', init_from=finished, num_steps=3)
  train.train_and_evaluate(in_process, workdir)
  assert 'Done:' in capsys.readouterr().out
  assert _read_json(bucket, f'{workdir}/config.json')['init_from'] == finished
  # The run it started from comes with it from the bucket: the report counts its compute first.
  source = _read_json(bucket, f'{finished}/results.json')
  assert _read_json(bucket, f'{workdir}/results.json')['initialization'] == source


def test_a_pretraining_stage_in_a_bucket_workdir(in_process, bucket, capsys):
  workdir = f'gs://{BUCKET}/runs/staged'
  in_process.update(pretrain_steps=3, num_steps=3)
  train.train(in_process, workdir)  # main.py's train mode: the MAE stage in WORKDIR/pretrain, then SSMAE from it.
  assert 'Done:' in capsys.readouterr().out
  assert _read_json(bucket, f'{workdir}/pretrain/results.json')['method'] == 'mae_pretrain'
  assert _read_json(bucket, f'{workdir}/results.json')['pretraining']['steps'] == 3
  assert not os.path.exists(os.path.join(ROOT, 'gs:'))
  # run_table.py --pretraining_from: a twin in the bucket starts from a copy of that stage and does not train its own.
  twin = f'gs://{BUCKET}/runs/staged_twin'
  fileio.copy_run(f'{workdir}/pretrain', f'{twin}/pretrain')
  assert bucket.ls('runs/staged_twin/pretrain') == bucket.ls('runs/staged/pretrain')
  assert 'results.json' in bucket.ls('runs/staged_twin/pretrain')
  in_process.update(method='supervised')
  train.train(in_process, twin)
  out = capsys.readouterr().out
  assert 'Done:' in out and 'Pre-training' not in out
  assert _read_json(bucket, f'{twin}/results.json')['pretraining'] == _read_json(
      bucket, f'{workdir}/results.json')['pretraining']


def test_a_sweep_in_a_bucket_workdir_shares_its_pre_training_stage(in_process, bucket, capsys):
  workdir = f'gs://{BUCKET}/runs/sweep'
  in_process.update(num_steps=4, pretrain_steps=2)
  in_process.sweep.tau = (0.9, 0.95)  # MAE pre-training never reads tau: one stage, copied in the bucket.
  train.train(in_process, workdir)  # main.py's train mode: the runs as one program.
  assert 'Done: 2 runs' in capsys.readouterr().out
  assert {'sweep.json', 'runs', 'checkpoints'} <= set(bucket.ls('runs/sweep'))
  names = ['tau=0.9', 'tau=0.95']
  assert bucket.ls('runs/sweep/runs') == names
  summary = _read_json(bucket, f'{workdir}/sweep.json')
  stages = [_read_json(bucket, f'{workdir}/runs/{name}/pretrain/results.json') for name in names]
  assert stages[0]['method'] == 'mae_pretrain' and stages[0]['steps'] == 2 and stages[1] == stages[0]
  assert bucket.ls(f'runs/sweep/runs/{names[1]}/pretrain/checkpoints') == \
      bucket.ls(f'runs/sweep/runs/{names[0]}/pretrain/checkpoints')
  for name, tau in zip(names, (0.9, 0.95)):
    run = f'{workdir}/runs/{name}'
    assert {'config.json', 'history.json', 'results.json', 'best', 'checkpoints'} <= set(bucket.ls(_key(run)))
    assert _read_json(bucket, f'{run}/config.json')['tau'] == tau
    results = _read_json(bucket, f'{run}/results.json')
    assert results['steps'] == 4 and results['sweep']['run'] == name and results['pretraining']['steps'] == 2
    assert summary['runs'][name]['test_accuracy'] == results['test_accuracy']
  # A run of the sweep is a workdir: --mode=eval reads its best checkpoint from the bucket.
  alone = in_process.copy_and_resolve_references()
  alone.sweep.tau = None
  inference.evaluate(alone, f'{workdir}/runs/{names[1]}', 'best')
  assert re.search(r'best checkpoint \(step \d+\): test accuracy [\d.]+%', capsys.readouterr().out)
  assert not os.path.exists(os.path.join(ROOT, 'gs:'))


def test_a_folder_dataset_in_the_bucket_trains(in_process, bucket):
  from PIL import Image
  rng = np.random.default_rng(0)
  root = 'folders'
  for i in range(24):
    part = f'labeled/class{i % 2}' if i < 12 else 'unlabeled/part'
    png = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (20 + i, 24, 3), np.uint8)).save(png, format='PNG')
    bucket.write(f'{root}/{part}/img{i:02d}.png', png.getvalue())
  workdir = f'gs://{BUCKET}/runs/folder'
  config = folder.get_config()
  config.update(labeled_dir=f'gs://{BUCKET}/{root}/labeled', unlabeled_dir=f'gs://{BUCKET}/{root}/unlabeled',
                image_size=16, val_fraction=0.2, labeled_batch_size=4, unlabeled_batch_size=4, eval_batch_size=8,
                num_steps=4, warmup_epochs=0, tensorboard=False, compilation_cache_dir=CACHE)
  config.model.update(patch_size=8, depth=1, width=32, num_heads=2, decoder_width=32, decoder_num_heads=2,
                      decoder_depth=1)
  train.train_and_evaluate(config, workdir)
  data = _read_json(bucket, f'{workdir}/data.json')
  assert data['num_labeled_files'] == 12 and data['num_unlabeled_files'] == 12
  assert data['labeled_files'][0] == 'class0/img00.png'  # Relative to the folder, as for local folders.
  rows = bucket.read(f'{_key(workdir)}/pseudo_labels.csv').decode().splitlines()
  assert len(rows) == 1 + 12 and rows[1].startswith(f'gs://{BUCKET}/{root}/unlabeled/part/img12.png,')


@pytest.mark.slow
def test_two_processes_share_one_bucket_workdir(finished, env, bucket):
  workdir = f'gs://{BUCKET}/runs/two'
  port = _free_port()
  # The session's local compilation cache, which test_reliability's two processes share: the bucket's was tested above.
  cache = f'--config.compilation_cache_dir={os.environ["SSMAE_TESTS_XLA_CACHE"]}'
  procs = [_start(workdir, env, f'--coordinator_address=localhost:{port}', '--num_processes=2',
                  f'--process_id={i}', cache) for i in range(2)]
  try:
    outs = [p.communicate(timeout=TIMEOUT) for p in procs]
  finally:
    _stop(*procs)
  assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
  # Process 0 alone prints (gloo itself greets on stdout).
  assert 'Done:' in outs[0][0]
  assert [line for line in outs[1][0].splitlines() if not line.startswith('[Gloo]')] == []
  got = _read_json(bucket, f'{workdir}/results.json')
  want = _read_json(bucket, f'{finished}/results.json')
  # Two processes sum in another order: the same run up to float rounding.
  assert got['steps'] == want['steps']
  assert got['test_accuracy'] == pytest.approx(want['test_accuracy'], abs=0.01)

"""The machine a run got: its backend and devices, XLA's persistent compilation cache, and profiler traces."""

import glob
import importlib.util
import os
import shutil
import tempfile
import time

import jax

from ssmae_jax import fileio

# Device files an accelerator's driver creates: TPU VMs (/dev/accel* up to v4, /dev/vfio/N from v5), NVIDIA GPUs.
_ACCELERATOR_DEVICES = {'tpu': ('/dev/accel*', '/dev/vfio/[0-9]*'), 'gpu': ('/dev/nvidia[0-9]*',)}
_JAX_EXTRA = {'tpu': 'tpu', 'gpu': 'cuda13'}


def skip_absent_tpu() -> None:
  """With libtpu installed (the tpu-compile extra) JAX tries a TPU backend in every process, which on a machine
  without a TPU fails, costing ~0.2 s, ~230 MB and five lines of libtpu errors on stderr. Where no accelerator's
  device files exist JAX can only run on the CPU: this says so before any backend starts, to this process and to
  the processes it starts. An explicit JAX_PLATFORMS is kept; slices for --mode=compile need no TPU backend.
  `import ssmae_jax` calls it, so every entry point (main.py, the report, scripts, benchmarks, notebooks) does."""
  if ('JAX_PLATFORMS' not in os.environ and importlib.util.find_spec('libtpu')
      and idle_accelerator('cpu') is None):
    os.environ['JAX_PLATFORMS'] = 'cpu'
    jax.config.update('jax_platforms', 'cpu')


def _process_start_time() -> float:
  """When this process started (epoch seconds): Linux's record of it, which an exec (main.py's re-exec) keeps; elsewhere
  when this module was imported."""
  try:
    with open('/proc/self/stat') as f:
      ticks = int(f.read().rsplit(')', 1)[1].split()[19])  # Field 22, starttime, in clock ticks after boot.
    with open('/proc/stat') as f:
      boot = next(int(line.split()[1]) for line in f if line.startswith('btime '))
    return boot + ticks / os.sysconf('SC_CLK_TCK')
  except (OSError, ValueError, IndexError, StopIteration):
    return time.time()


_PROCESS_START = _process_start_time()


def command_wall_seconds() -> float:
  """Wall seconds since this process (the command, e.g. `python main.py ...`) started: start-up and imports included."""
  return time.time() - _PROCESS_START


def install_line(platform: str) -> str:
  """The README's install line for `platform`, at the jax version this environment has."""
  return f"pip install -r requirements.txt 'jax[{_JAX_EXTRA[platform]}]=={jax.__version__}'"


def idle_accelerator(backend: str, present=None) -> str | None:
  """'tpu' or 'gpu' when this machine has one but JAX runs on the CPU (a CPU-only jaxlib was installed)."""
  if backend != 'cpu':
    return None
  present = present or (lambda patterns: any(glob.glob(p) for p in patterns))
  return next((kind for kind, patterns in _ACCELERATOR_DEVICES.items() if present(patterns)), None)


def describe(config) -> list[str]:
  """Start-up lines: what JAX got, and what to do when that is not what the machine has."""
  devices = jax.devices()
  kinds = sorted({d.device_kind for d in devices})
  lines = [f'JAX {jax.__version__} on {jax.default_backend()}: {len(devices)} device(s) ({", ".join(kinds)}) in '
           f'{jax.process_count()} process(es).']
  idle = idle_accelerator(jax.default_backend())
  if idle:
    lines.append(f'warning: this machine has a {idle.upper()} but JAX runs on the CPU (a CPU-only jaxlib is '
                 f'installed): install the {idle.upper()} build with `{install_line(idle)}`.')
  elif jax.default_backend() == 'cpu' and config.cpu_config:
    lines.append(f'note: this config is sized for an accelerator and takes days on a CPU; for a CPU run use '
                 f'--config={config.cpu_config}.')
  return lines


class _CacheCounter:
  """Counts the compilations XLA's persistent cache served (hits) and those it had to compile (misses)."""

  def __init__(self):
    self.hits = self.misses = 0
    jax.monitoring.register_event_listener(self._on_event)

  def _on_event(self, event: str, **kwargs) -> None:
    del kwargs
    if event == '/jax/compilation_cache/cache_hits':
      self.hits += 1
    elif event == '/jax/compilation_cache/cache_misses':
      self.misses += 1


# The cache is a setting of the whole process (jax.config), and so is its counter.
_cache_counter: _CacheCounter | None = None


def cache_stats() -> tuple[int, int] | None:
  """(compilations loaded from the persistent cache, compilations written to it) so far; None if it is off."""
  return None if _cache_counter is None else (_cache_counter.hits, _cache_counter.misses)


def compilation_cache_dir(config, workdir, environ=os.environ) -> str | None:
  """config.compilation_cache_dir; if None, $JAX_COMPILATION_CACHE_DIR where the user set it, else
  WORKDIR/compilation_cache: a resumed run then loads its compiled steps instead of compiling them again, and in a
  bucket workdir the cache survives a preempted VM with the checkpoints. None when '' turns the cache off."""
  directory = config.compilation_cache_dir
  if directory == '':
    return None
  directory = directory or environ.get('JAX_COMPILATION_CACHE_DIR')
  return str(fileio.path(directory) if directory else fileio.path(workdir) / 'compilation_cache')


def ensure_compilation_cache(config, workdir) -> str | None:
  """`enable_compilation_cache` unless this process already has a cache (main.py turns it on at start-up, or
  $JAX_COMPILATION_CACHE_DIR did): runs started in-process (a notebook, a script) get the run's cache too."""
  if jax.config.jax_compilation_cache_dir:
    return jax.config.jax_compilation_cache_dir
  return enable_compilation_cache(config, workdir)


def enable_compilation_cache(config, workdir) -> str | None:
  """Turns XLA's persistent compilation cache on at `compilation_cache_dir`. Call before anything compiles."""
  directory = compilation_cache_dir(config, workdir)
  if directory is None:
    return None
  jax.config.update('jax_compilation_cache_dir', directory)
  # Every compiled step is worth keeping: the evaluation and metric steps compile in under JAX's default second.
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  global _cache_counter
  _cache_counter = _cache_counter or _CacheCounter()
  return directory


class StepProfile:
  """A JAX profiler trace of config.profile_steps = (first step, count) into WORKDIR/profile, for TensorBoard.

  The profiler writes to local disk; for a bucket workdir the trace is copied there when it stops.
  """

  def __init__(self, profile_steps, workdir):
    self.first, count = (int(x) for x in profile_steps)
    self.last = self.first + count if count > 0 else -1
    self.target = fileio.path(workdir) / 'profile'
    self.local = None

  def before(self, step: int) -> None:
    if step == self.first and self.last > 0:
      self.local = tempfile.mkdtemp(prefix='ssmae_profile_') if fileio.is_remote(self.target) else str(self.target)
      jax.profiler.start_trace(self.local)

  def after(self, done: int, state) -> str | None:
    """Stops the trace once step `done` is its last; returns where it went."""
    if done != self.last or self.local is None:
      return None
    jax.block_until_ready(state)
    jax.profiler.stop_trace()
    if self.local != str(self.target):
      for root, _, files in os.walk(self.local):
        for name in files:
          source = os.path.join(root, name)
          with open(source, 'rb') as f:
            fileio.write_bytes(self.target / os.path.relpath(source, self.local), f.read())
      shutil.rmtree(self.local, ignore_errors=True)
    self.local = None
    return str(self.target)


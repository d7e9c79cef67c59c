"""Speed measurements: each prints one human line, or one JSON object with --json."""

import os
import sys

HUGEPAGE_TUNABLE = 'glibc.malloc.hugetlb=1'


def reexec_with_hugepage_malloc(module: str) -> None:
  """Restarts `python -m module` with GLIBC_TUNABLES=glibc.malloc.hugetlb=1, as main.py runs, unless it already is.

  XLA allocates each step's temporaries afresh; with 4 KiB pages the kernel spends 10-15% of a CPU step faulting
  them in. glibc reads its tunables only at process start, so call this before importing JAX or TensorFlow.
  `--no-hugepage-malloc` on the command line measures the environment as it is.
  """
  if not sys.platform.startswith('linux') or '--no-hugepage-malloc' in sys.argv[1:] \
      or HUGEPAGE_TUNABLE in os.environ.get('GLIBC_TUNABLES', ''):
    return
  os.environ['GLIBC_TUNABLES'] = ':'.join(filter(None, [os.environ.get('GLIBC_TUNABLES'), HUGEPAGE_TUNABLE]))
  os.execv(sys.executable, [sys.executable, '-m', module, *sys.argv[1:]])


def machine() -> dict:
  """Where a number was measured: CPUs, JAX devices and backend, and the load average (other jobs inflate times)."""
  import jax  # Not at import time: reexec_with_hugepage_malloc must run before JAX starts.
  return dict(cpu_count=os.cpu_count(), devices=jax.device_count(), backend=jax.default_backend(),
              load_average=[round(x, 2) for x in os.getloadavg()])

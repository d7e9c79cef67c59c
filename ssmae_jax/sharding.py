"""Data parallelism: one ('data',) mesh over every device; batches split along it, the state replicated."""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ssmae_jax.errors import UserError


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> None:
  """Joins a run of several processes (hosts); call before any other JAX call.

  TPU pod slices and SLURM / Open MPI GPU clusters: no arguments, jax.distributed.initialize() finds the others.
  Elsewhere (several CPU or GPU processes, also on one machine): all three, the same address in every process.
  """
  given = [x is not None for x in (coordinator_address, num_processes, process_id)]
  if any(given) and not all(given):
    raise UserError('--coordinator_address, --num_processes and --process_id go together: give all three, or none '
                    'on a TPU pod slice or a SLURM / Open MPI cluster.')
  if num_processes is not None and not 0 <= process_id < num_processes:
    raise UserError(f'--process_id={process_id} must be in [0, --num_processes={num_processes}).')
  # Collectives between CPU processes (gloo is JAX's default today; stated so a changed default cannot break it).
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  try:
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  except (RuntimeError, ValueError) as e:
    message = ' '.join(str(e).split())
    raise UserError(f'Could not join the multi-process run ({message}): on a TPU pod slice run the same command on '
                    'every host; elsewhere pass --coordinator_address=HOST:PORT, --num_processes and '
                    '--process_id.') from None


def make_mesh() -> Mesh:
  return Mesh(np.asarray(jax.devices()), ('data',))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P('data'))


def check_divisible(name: str, global_batch: int, mesh: Mesh) -> None:
  n = mesh.devices.size
  if global_batch % n:
    raise UserError(f'{name}={global_batch} does not divide by the {n} devices: set it to a multiple of {n}.')


def to_global(batch: dict, mesh: Mesh) -> dict:
  """Process-local numpy arrays (this process's rows) -> global arrays sharded along 'data'."""
  sharding = data_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}

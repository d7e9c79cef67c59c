"""Data parallelism: one ('data',) mesh over every device; batches split along it, the state replicated."""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ssmae_jax.errors import UserError


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

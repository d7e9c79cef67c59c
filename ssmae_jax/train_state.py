"""The train state: everything the method remembers, so one orbax save/restore covers it."""

import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar
  params: dict
  opt_state: optax.OptState
  pseudo_labels: jax.Array  # int32 [pool size], -1 = none
  gate_open: jax.Array  # bool scalar, for the current epoch


def create(params, tx: optax.GradientTransformation, pool_size: int) -> TrainState:
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      opt_state=tx.init(params),
      pseudo_labels=jnp.full((pool_size,), -1, jnp.int32),
      gate_open=jnp.zeros((), bool),
  )

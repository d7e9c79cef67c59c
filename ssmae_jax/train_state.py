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
  # config.teacher_ema's moving average of `params`, which picks the pseudo-labels; None (no leaves) without one.
  teacher: dict | None = None


def create(params, tx: optax.GradientTransformation, pool_size: int, teacher: bool = False) -> TrainState:
  """The state before the first step; with `teacher`, the teacher starts as a copy of `params`."""
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      opt_state=tx.init(params),
      pseudo_labels=jnp.full((pool_size,), -1, jnp.int32),
      gate_open=jnp.zeros((), bool),
      teacher=jax.tree.map(jnp.copy, params) if teacher else None,
  )


def with_params(state: TrainState, params) -> TrainState:
  """`state` starting from `params` (e.g. a pre-trained encoder), its teacher too if it has one."""
  return state.replace(params=params, teacher=None if state.teacher is None else jax.tree.map(jnp.copy, params))

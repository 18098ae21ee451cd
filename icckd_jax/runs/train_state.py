"""The train state: everything a resumed run needs, and nothing static."""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  """A pytree of arrays only, so Orbax saves and restores it as one item.

  The model and the optimiser are static and live outside the state; the
  randomness is keyed by (seed, step), so no RNG is carried either.
  """

  step: jax.Array  # [] int32: optimiser steps taken
  params: Any
  batch_stats: Any
  opt_state: optax.OptState
  # The step's other non-trainable state: a teacher's negative cache
  # (icckd_jax.objective.cache.Cache), a student's distiller buffers (CRD's
  # memory bank, a regressor's BatchNorm statistics: distillers/__init__.py),
  # or None. One field for both keeps the saved tree of every earlier run
  # (None here) restorable.
  cache: Any = None


def create_train_state(
  params, batch_stats, tx: optax.GradientTransformation, cache=None
) -> TrainState:
  """A fresh state at step 0 around initialised variables."""
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    batch_stats=batch_stats,
    opt_state=tx.init(params),
    cache=cache,
  )

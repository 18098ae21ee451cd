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
  # A teacher's negative cache (icckd_jax.objective.cache.Cache), or None.
  cache: Any = None
  # A student's distiller buffers (CRD's memory bank, a connector's
  # BatchNorm statistics: distillers/__init__.py), or None. Checkpoints
  # written before this field held them in `cache`; runs/compat.py reads
  # those into this layout.
  distiller_buffers: Any = None


def create_train_state(
  params,
  batch_stats,
  tx: optax.GradientTransformation,
  cache=None,
  distiller_buffers=None,
) -> TrainState:
  """A fresh state at step 0 around initialised variables."""
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    batch_stats=batch_stats,
    opt_state=tx.init(params),
    cache=cache,
    distiller_buffers=distiller_buffers,
  )

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
  # written before this field held them in `cache`; training/checkpoint.py
  # restores those into this layout.
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


def written_before_buffers(saved) -> bool:
  """Whether a saved state's tree (its Orbax metadata: a mapping of the
  fields) is of the layout without `distiller_buffers`, where a student's
  distiller buffers were saved under `cache`."""
  return 'cache' in saved and 'distiller_buffers' not in saved


def legacy_target(abstract: TrainState) -> dict:
  """The restore target, in the layout without `distiller_buffers`, of a
  state shaped as `abstract`: the distiller buffers (a student never holds
  a negative cache) stand under `cache`."""
  buffers = abstract.distiller_buffers
  return {
    'step': abstract.step,
    'params': abstract.params,
    'batch_stats': abstract.batch_stats,
    'opt_state': abstract.opt_state,
    'cache': abstract.cache if buffers is None else buffers,
  }


def from_legacy(abstract: TrainState, restored: dict) -> TrainState:
  """The TrainState of a `restored` tree (`legacy_target`'s layout) of a
  state shaped as `abstract`."""
  holds_buffers = abstract.distiller_buffers is not None
  return TrainState(
    step=restored['step'],
    params=restored['params'],
    batch_stats=restored['batch_stats'],
    opt_state=restored['opt_state'],
    cache=None if holds_buffers else restored['cache'],
    distiller_buffers=restored['cache'] if holds_buffers else None,
  )

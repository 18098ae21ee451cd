"""Divergence: a run stops, without saving, when its loss or state goes bad.

Nothing is saved before the whole new state and the step losses are
checked, so a diverged run leaves every checkpoint and config.json as they
were.
"""

import jax
import jax.numpy as jnp
import numpy as np

from icckd_jax.errors import UserError
from icckd_jax.training import checkpoint

# A run has diverged when a step's loss exceeds this many times the loss of
# its first step (computed before any update, so never itself diverged),
# even while it is finite: a healthy run's loss falls below its start, and
# a diverging one passes 100x within a few steps on its way to 1e30, inf or
# NaN, often with NaN already in its BatchNorm statistics.
LOSS_EXPLOSION_FACTOR = 100.0


class Diverged(UserError):
  """The loss or the state is not finite, or the loss has exploded."""


def _kept(ckpts: checkpoint.Checkpoints) -> str:
  epoch = ckpts.latest_epoch()
  return f'epoch {epoch}' if epoch is not None else 'none yet'


def check_losses(
  losses: np.ndarray,
  first_step: int,
  reference_loss: float,
  ckpts: checkpoint.Checkpoints,
) -> None:
  """Raises Diverged when a step loss of `losses` ([n], the steps from
  `first_step` on) is not finite or above LOSS_EXPLOSION_FACTOR times
  `reference_loss`, the run's first step loss."""
  limit = LOSS_EXPLOSION_FACTOR * abs(reference_loss)
  bad = np.flatnonzero(~np.isfinite(losses) | (losses > limit))
  if bad.size:
    loss = losses[bad[0]]
    why = (
      ''
      if not np.isfinite(loss)
      else f" (over {LOSS_EXPLOSION_FACTOR:g}x the first step's "
      f'{reference_loss:.4g})'
    )
    raise Diverged(
      f'training diverged: loss {loss:.4g} at step '
      f'{first_step + bad[0]}{why}; stopped without saving, every '
      f'checkpoint kept (last good: {_kept(ckpts)}). Lower '
      'config.learning_rate?'
    )


def check_window(
  window: list[dict], step: int, reference_loss: float | None, ckpts
) -> list[dict]:
  """The step metrics `window` (on the device) of the steps up to `step`
  (taken so far), on the host, their losses checked (`check_losses`)."""
  window = jax.device_get(window)
  if window:
    check_losses(
      np.array([m['loss'] for m in window]),
      step - len(window) + 1,
      reference_loss,
      ckpts,
    )
  return window


@jax.jit
def _all_finite(tree) -> jax.Array:
  """[] bool: every floating-point element of `tree` is finite."""
  leaves = [
    jnp.all(jnp.isfinite(x))
    for x in jax.tree.leaves(tree)
    if jnp.issubdtype(x.dtype, jnp.inexact)
  ]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def check_state(state, step: int, ckpts: checkpoint.Checkpoints) -> None:
  """Raises Diverged unless the parameters, BatchNorm statistics, optimiser
  state and cache of `state` are all finite: the losses can stay finite
  while BatchNorm statistics are already NaN."""
  if not bool(_all_finite(state)):
    bad = [
      jax.tree_util.keystr(path)
      for path, x in jax.tree_util.tree_leaves_with_path(state)
      if jnp.issubdtype(x.dtype, jnp.inexact)
      and not bool(jnp.all(jnp.isfinite(x)))
    ]
    raise Diverged(
      f'training diverged: non-finite values in {len(bad)} state '
      f'arrays at step {step} (first: {bad[0]}); stopped without '
      f'saving, every checkpoint kept (last good: {_kept(ckpts)}).'
      ' Lower config.learning_rate?'
    )

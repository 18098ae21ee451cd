"""Where a run stands (`Position`), restored from its newest intact
checkpoint or new, and what a checkpoint stores beside the state to
resume it exactly (`checkpoint_meta`).

A checkpoint's meta holds the step, the best top-1, the divergence guard's
reference loss, the input shape and the last evaluation: nothing that
grows with the run (WORKDIR/metrics.jsonl is the run's record). A
preempted run's meta also holds its epoch's step metrics so far, exactly,
so that the resumed epoch's record is identical.
"""

import dataclasses
from typing import Any

from absl import logging
import jax
import numpy as np

from icckd_jax.errors import UserError
from icckd_jax.runs import compat
from icckd_jax.training import checkpoint


def _no_best() -> dict[str, Any]:
  return {'top1': -1.0, 'epoch': 0}


@dataclasses.dataclass
class Position:
  """Where a run stands; the loop's phases move it on. Step counts are
  always *steps taken so far*."""

  state: Any  # the TrainState
  step: int = 0
  best: dict[str, Any] = dataclasses.field(default_factory=_no_best)
  # The test figures of the last evaluation ('test_top1', ...), or None.
  last_test: dict[str, float] | None = None
  # The first step's loss, the divergence guard's reference.
  reference_loss: float | None = None
  # This epoch's step metrics (on the device), and how many are logged.
  per_step: list[dict] = dataclasses.field(default_factory=list)
  logged: int = 0

  def new_epoch(self) -> None:
    self.per_step, self.logged = [], 0


def _restore(ckpts: checkpoint.Checkpoints, abstract_state, steps_per_epoch):
  """(state, meta) of the newest intact checkpoint, a preempted run's if it
  is newer than the last epoch's; None for a new run."""
  epochs = ckpts.latest_steps('last')
  preempted = ckpts.latest_steps('preempted')
  if preempted and (not epochs or preempted[-1] > epochs[-1] * steps_per_epoch):
    restored = ckpts.restore_newest_intact(abstract_state, 'preempted')
    if restored is not None:
      return restored[:2]
  restored = ckpts.restore_newest_intact(abstract_state, 'last')
  return None if restored is None else restored[:2]


def pack_partial(per_step: list[dict], logged: int) -> dict[str, Any]:
  """The metrics of an epoch's steps so far, exactly (float32 values are
  exact as JSON floats), so that a resumed epoch's record is identical."""
  per_step = jax.device_get(per_step)
  keys = list(per_step[0]) if per_step else []
  return {
    'logged': logged,
    'metrics': {k: [float(m[k]) for m in per_step] for k in keys},
    'dtypes': {k: str(np.asarray(per_step[0][k]).dtype) for k in keys},
  }


def _unpack_partial(partial: dict[str, Any]) -> tuple[list[dict], int]:
  metrics, dtypes = partial['metrics'], partial['dtypes']
  n = len(next(iter(metrics.values()))) if metrics else 0
  per_step = [
    {k: np.asarray(metrics[k][i], dtypes[k]) for k in metrics} for i in range(n)
  ]
  return per_step, partial['logged']


def restore_or_create(
  workdir: str,
  ckpts: checkpoint.Checkpoints,
  abstract_state,
  create_state,
  steps_per_epoch: int,
  total_steps: int,
  num_epochs: int,
) -> tuple[Position, bool]:
  """(where the run stands, whether it resumed): the newest intact
  checkpoint's, else a new run's at `create_state()`. A run already past
  `total_steps` (config.num_epochs lowered) is refused."""
  restored = _restore(ckpts, abstract_state, steps_per_epoch)
  if restored is None:
    return Position(create_state()), False
  state, meta = restored
  at = Position(
    state,
    step=meta.get('step', meta['epoch'] * steps_per_epoch),
    best=meta['best'],
    last_test=compat.last_test(meta),
    reference_loss=meta.get('reference_loss'),
  )
  if at.step > total_steps:
    raise UserError(
      f'the run in {workdir} is at step {at.step}, past the '
      f'{total_steps} steps of config.num_epochs={num_epochs}; resume it '
      'with a larger num_epochs, or choose another --workdir'
    )
  if meta.get('partial'):
    at.per_step, at.logged = _unpack_partial(meta['partial'])
  logging.info(
    'Resumed from %s at step %d (epoch %d).',
    workdir,
    at.step,
    meta['epoch'],
  )
  return at, True


def checkpoint_meta(
  at: Position, epoch: int, input_shape, **extra
) -> dict[str, Any]:
  """What a checkpoint stores beside the state, to resume exactly; of a
  size that does not grow with the run. 'test': the last evaluation's
  figures, the summary's when a finished run is rerun."""
  return {
    'epoch': epoch,
    'step': at.step,
    'best': at.best,
    'reference_loss': at.reference_loss,
    'input_shape': list(input_shape),
    'test': at.last_test,
    **extra,
  }

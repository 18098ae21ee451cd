"""Measured step times and the projected wall time of a run.

A run's clock (`RunClock`) times its step once compilation is over: it waits
for the first step (compilation included), then for `TIMED_STEPS` more, and
logs the step time and the projected wall time of what is left of the run.
After the first epoch it logs the projection again, now with the epoch's
evaluation and checkpointing in it. Both waits block on the device twice per
run, not per step. It is one of the loop's hooks (hooks.py); a process
that runs several runs adds its own clock of them as another.
"""

from __future__ import annotations

import time

from absl import logging
import jax

from icckd_jax.training import hooks

TIMED_STEPS = 10  # steps timed after compilation, in one block


def duration(seconds: float) -> str:
  """'1h02m', '3m05s', '42s'."""
  seconds = max(0, int(round(seconds)))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  if hours:
    return f'{hours}h{minutes:02d}m'
  if minutes:
    return f'{minutes}m{secs:02d}s'
  return f'{secs}s'


def time_steps(step, state, batches, step_args, steps: int = TIMED_STEPS):
  """Seconds per call of `step` after it is compiled, and the new state.

  step(state, batch, step_args) -> (state, metrics), as a run's train
  step; `batches` yields its `Batch`es. The first call compiles (if it has
  not been) and is not timed.
  """
  state, metrics = step(state, next(batches), step_args)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = step(state, next(batches), step_args)
  jax.block_until_ready(metrics)
  return (time.perf_counter() - start) / steps, state


class RunClock(hooks.Hook):
  """Times one run's step after compiling and projects the run's wall time.

  A hook of the run's loop: `on_step` after each step of this process,
  `on_epoch` after each epoch's evaluation (before its checkpoint).
  """

  def __init__(
    self,
    batch_size: int,
    steps_per_epoch: int,
    total_steps: int,
    start_step: int,
  ):
    self._batch = batch_size
    self._steps_per_epoch = steps_per_epoch
    self._total = total_steps
    self._start_step = start_step
    self._compiled_at: float | None = None
    self._step_seconds: float | None = None
    self._epochs_seen = 0
    self._epoch_start = time.perf_counter()

  def on_step(self, step: int, metrics) -> None:
    i = step - self._start_step - 1  # 0 after this process's first step
    if i == 0:
      jax.block_until_ready(metrics)
      self._compiled_at = time.perf_counter()
    elif i == TIMED_STEPS and self._compiled_at is not None:
      jax.block_until_ready(metrics)
      step_seconds = (time.perf_counter() - self._compiled_at) / TIMED_STEPS
      self._step_seconds = step_seconds
      left = self._total - self._start_step - TIMED_STEPS - 1
      logging.info(
        'Step time after compiling: %.1f ms (%.0f img/s, %d '
        'steps); this run projects %s more for its %d steps left '
        '(training steps only; the first epoch adds its '
        'evaluation).',
        1000 * step_seconds,
        self._batch / step_seconds,
        TIMED_STEPS,
        duration(left * step_seconds),
        left,
      )

  def on_epoch(self, epoch: int, record) -> None:
    """Logs, once, the projection from the first epoch's wall time (its
    steps, evaluation and checkpoint), less the first step's compilation."""
    del epoch, record
    now = time.perf_counter()
    self._epochs_seen += 1
    if self._epochs_seen == 1:
      epoch_seconds = now - self._epoch_start
      if self._compiled_at is not None and self._step_seconds is not None:
        epoch_seconds -= (
          self._compiled_at - self._epoch_start - self._step_seconds
        )
      epochs_left = (
        (self._total - self._start_step) // self._steps_per_epoch
      ) - 1
      logging.info(
        'First epoch took %s with evaluation and checkpoint '
        '(compilation left out); %d epochs left: this run projects '
        '%s more.',
        duration(epoch_seconds),
        epochs_left,
        duration(epochs_left * epoch_seconds),
      )
    self._epoch_start = now

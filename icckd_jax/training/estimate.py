"""Measured step times and the projected wall time of a run and of a sweep.

A run's clock (`RunClock`) times its step once compilation is over: it waits
for the first step (compilation included), then for `TIMED_STEPS` more, and
logs the step time and the projected wall time of what is left of the run.
After the first epoch it logs the projection again, now with the epoch's
evaluation and checkpointing in it. Both waits block on the device twice per
run, not per step.

A sweep's clock (`SweepClock`) holds the projected seconds of every stage
(teacher or student) of the sweep, measured before the work starts by
`probe` in sweep/probe.py; it turns what is left into the sweep's ETA, shown
on the progress line of every run it trains. The ETA is corrected by how fast
this process's finished stages actually went against their projection, so
workers that slow each other down (on one device) show up in it.
"""

from __future__ import annotations

import time

from absl import logging
import jax

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

  step(state, images, labels, step_args) -> (state, metrics), as a run's
  train step; `batches` yields (images, labels). The first call compiles (if
  it has not been) and is not timed.
  """
  images, labels = next(batches)
  state, metrics = step(state, images, labels, step_args)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(steps):
    images, labels = next(batches)
    state, metrics = step(state, images, labels, step_args)
  jax.block_until_ready(metrics)
  return (time.perf_counter() - start) / steps, state


class SweepClock:
  """The sweep's remaining work, in projected seconds, and its ETA.

  projected: {stage directory: projected seconds of that stage alone}.
  workers: how many processes share the work (the ETA divides by it).
  """

  def __init__(self, projected: dict[str, float], workers: int = 1):
    self.projected = dict(projected)
    self.workers = max(1, workers)
    self._remaining = set(projected)
    self._stage: str | None = None
    self._stage_fraction = 0.0
    self._stage_start = 0.0
    # Actual over projected seconds of the stages this process finished.
    self._actual = 0.0
    self._expected = 0.0

  def set_remaining(self, stages) -> None:
    """The stages not finished yet, by anyone (read from the workdirs)."""
    self._remaining = set(stages) & set(self.projected)

  def start_stage(self, stage: str) -> None:
    self._stage, self._stage_fraction = stage, 0.0
    self._stage_start = time.perf_counter()

  def stage_progress(self, fraction: float) -> None:
    self._stage_fraction = min(max(fraction, 0.0), 1.0)

  def end_stage(self, counted: bool = True) -> None:
    """Ends the stage; `counted`: it was trained here (not left to another
    worker), so its wall time measures this process's speed."""
    if self._stage is not None and counted:
      self._actual += time.perf_counter() - self._stage_start
      self._expected += self.projected.get(self._stage, 0.0)
      self._remaining.discard(self._stage)
    self._stage = None

  def speed_ratio(self) -> float:
    """How much slower than projected this process ran (1.0 before any
    stage finished)."""
    return self._actual / self._expected if self._expected > 0 else 1.0

  def eta_seconds(self) -> float:
    left = sum(self.projected[s] for s in self._remaining)
    if self._stage in self._remaining:
      left -= self._stage_fraction * self.projected[self._stage]
    return left * self.speed_ratio() / self.workers

  def total_seconds(self) -> float:
    return sum(self.projected.values()) / self.workers


class RunClock:
  """Times one run's step after compiling and projects the run's wall time.

  Call `after_step(i, metrics)` after the i-th step of this process (0 for
  the first) and `after_epoch()` after each epoch's evaluation and
  checkpoint. `note()` is the progress line's ETA text.
  """

  def __init__(
    self,
    batch_size: int,
    steps_per_epoch: int,
    total_steps: int,
    start_step: int,
    sweep: SweepClock | None = None,
  ):
    self._batch = batch_size
    self._steps_per_epoch = steps_per_epoch
    self._total = total_steps
    self._start_step = start_step
    self._sweep = sweep
    self._compiled_at: float | None = None
    self._step_seconds: float | None = None
    self._epochs_seen = 0
    self._epoch_start = time.perf_counter()

  def after_step(self, i: int, metrics) -> None:
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
    if self._sweep is not None:
      self._sweep.stage_progress(
        (i + 1) / max(1, self._total - self._start_step)
      )

  def after_epoch(self) -> None:
    """Logs, once, the projection from the first epoch's wall time (its
    steps, evaluation and checkpoint), less the first step's compilation."""
    now = time.perf_counter()
    self._epochs_seen += 1
    if self._epochs_seen == 1:
      epoch = now - self._epoch_start
      if self._compiled_at is not None and self._step_seconds is not None:
        epoch -= self._compiled_at - self._epoch_start - self._step_seconds
      epochs_left = (
        (self._total - self._start_step) // self._steps_per_epoch
      ) - 1
      logging.info(
        'First epoch took %s with evaluation and checkpoint '
        '(compilation left out); %d epochs left: this run projects '
        '%s more.',
        duration(epoch),
        epochs_left,
        duration(epochs_left * epoch),
      )
    self._epoch_start = now

  def note(self) -> str:
    """'' for a single run; the sweep's ETA for a run inside a sweep."""
    if self._sweep is None:
      return ''
    return f' | sweep ETA {duration(self._sweep.eta_seconds())}'

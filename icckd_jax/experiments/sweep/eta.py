"""The sweep's clock: its projected work left and its ETA, on every run's
progress line.

The clock holds the projected seconds of every stage (teacher or student)
of the sweep, measured before the work starts by `probe` (probe.py); it
turns what is left into the sweep's ETA. The ETA is corrected by how fast
this process's finished stages actually went against their projection, so
workers that slow each other down (on one device) show up in it.

The worker starts and ends each stage on the clock; the clock is a hook of
each stage's train loop (training/hooks.py: the worker hands it to each
stage it trains), which tells it how far the stage has come and shows its
ETA.
"""

from __future__ import annotations

import time

from icckd_jax.training import estimate
from icckd_jax.training import hooks


class SweepClock(hooks.Hook):
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
    # The running stage's steps: taken before this process, and in all.
    self._start_step = 0
    self._total_steps = 0

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

  # The hook of the running stage's loop.

  def on_start(self, start_step: int, total_steps: int) -> None:
    self._start_step, self._total_steps = start_step, total_steps

  def on_step(self, step: int, metrics) -> None:
    """The stage is as far as this process's share of its steps left."""
    del metrics
    self.stage_progress(
      (step - self._start_step) / max(1, self._total_steps - self._start_step)
    )

  def note(self) -> str:
    return f' | sweep ETA {estimate.duration(self.eta_seconds())}'

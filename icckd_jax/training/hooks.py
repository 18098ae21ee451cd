"""Hooks: what a run does beside its steps, called by the train loop.

The loop (loop.py) calls every hook it holds after each step and after each
epoch's evaluation, as flax's examples call CLU's periodic actions. The
run's own clock (`estimate.RunClock`) is one; a process that runs several
runs adds its own through `Reuse.hooks` (e.g. an ETA of all its runs), so
the loop knows nothing of what runs it.

A hook overrides only the calls it needs; every call here does nothing.
Hooks are called in order, on every process of a multi-host run, and must
not block on the device except where they mean to (timing).
"""

from typing import Any


class Hook:
  """Called by the train loop; the methods' defaults do nothing."""

  def on_start(self, start_step: int, total_steps: int) -> None:
    """Before this process's first step: the run resumes after
    `start_step` steps taken and ends after `total_steps`."""

  def on_step(self, step: int, metrics: dict[str, Any]) -> None:
    """After a step: `step` steps are taken so far (1 after a new run's
    first step); `metrics`: that step's, on the device (scalars)."""

  def on_epoch(self, epoch: int, record: dict[str, Any]) -> None:
    """After epoch `epoch` (1 for the first) is evaluated and recorded,
    before its checkpoint is saved; `record`: its metrics.jsonl record."""

  def note(self) -> str:
    """Text the progress line ends with ('' for none), e.g. ' | ETA 3m'."""
    return ''

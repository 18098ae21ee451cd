"""Hooks: what a run does beside its steps, called by the train loop.

The loop (loop.py) calls every hook it holds at the start, after each step
and after each epoch's evaluation, as flax's examples call CLU's periodic
actions: the run's own clock (`estimate.RunClock`) first, then those handed
to the run (`loop.fit(..., hooks=...)`, `train_teacher`, `train_student`,
`run_pipeline`, `main.run`), e.g. a sweep's ETA of all its runs or a user's
hook named on the command line (launch.py --hook=module:callable, `load`).

A hook overrides only the calls it needs; every call here does nothing.
Hooks are called in order, on every process of a multi-host run, and must
not block on the device except where they mean to (timing).
"""

import importlib
from typing import Any

from icckd_jax.errors import UserError


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


def load(name: str) -> Hook:
  """The hook `name` ('module:callable', e.g. 'my_hooks:Recorder') names:
  the callable, importable from the working directory or the Python path,
  called with no arguments (a Hook subclass is one)."""
  module_name, _, attribute = name.partition(':')
  if not module_name or not attribute:
    raise UserError(
      f'--hook={name!r} is not module:callable (e.g. my_hooks:Recorder)'
    )
  try:
    module = importlib.import_module(module_name)
  except ImportError as e:
    raise UserError(f'--hook={name!r}: cannot import {module_name}: {e}')
  factory = getattr(module, attribute, None)
  if not callable(factory):
    raise UserError(
      f'--hook={name!r}: {module_name} has no callable {attribute!r}'
    )
  hook = factory()
  if not isinstance(hook, Hook):
    raise UserError(
      f'--hook={name!r}: {attribute}() returned a {type(hook).__name__}, '
      'not an icckd_jax.training.hooks.Hook'
    )
  return hook

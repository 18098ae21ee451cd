"""What a process running this package's jobs logs: launch.py's, and that
of a worker training many runs."""

import logging
import os
import sys
import threading

from absl import logging as absl_logging


class OwnInfoOnly(logging.Filter):
  """Keeps this package's INFO lines (and those of the files `also_from`,
  e.g. the launcher), drops the libraries' (Orbax logs every file it writes);
  warnings and errors of every library still pass, except Orbax's note that
  a checkpoint opened read-only (a teacher, an evaluation) is read-only,
  which is the point."""

  def __init__(self, *also_from: str):
    super().__init__()
    self._also_from = frozenset(os.path.abspath(path) for path in also_from)

  def filter(self, record):
    if f'{os.sep}icckd_jax{os.sep}' in record.pathname:
      return True
    if record.pathname in self._also_from:
      return True
    if record.levelno < logging.WARNING:
      return False
    return not (
      'orbax' in record.pathname
      and 'read' in record.getMessage()
      and 'only' in record.getMessage()
    )


class NoBackgroundSaveTracebacks(logging.Filter):
  """Drops what Orbax's and asyncio's background threads log when a save
  fails (a full disk: dozens of tracebacks, one per thread and write): the
  failure reaches the run as an exception at the next save, at the end or
  at close (`training.checkpoint`), and is said there in one line."""

  def filter(self, record):
    if record.levelno < logging.ERROR:
      return True
    if f'{os.sep}orbax{os.sep}' in record.pathname:
      return not (
        record.exc_info or record.threadName != threading.main_thread().name
      )
    if (
      record.name == 'asyncio' or f'{os.sep}asyncio{os.sep}' in record.pathname
    ):
      return 'exception was never retrieved' not in record.getMessage()
    return True


def quiet_closed_event_loops() -> None:
  """Keeps, for the life of the process, the tracebacks TensorStore's
  callbacks leave when a failed save has already closed the event loop
  they report to (a RuntimeError with no object, through
  sys.unraisablehook); every other unraisable error still prints."""
  previous = sys.unraisablehook
  if getattr(previous, 'quiets_closed_event_loops', False):
    return

  def hook(unraisable):
    if (
      unraisable.object is None
      and isinstance(unraisable.exc_value, RuntimeError)
      and str(unraisable.exc_value) == 'Event loop is closed'
    ):
      return
    previous(unraisable)

  hook.quiets_closed_event_loops = True
  sys.unraisablehook = hook


def quiet_failed_saves() -> None:
  """Both of the above, for a process that runs jobs (launch.py's, a worker
  of many runs)."""
  handler = absl_logging.get_absl_handler()
  if not any(
    isinstance(f, NoBackgroundSaveTracebacks) for f in handler.filters
  ):
    handler.addFilter(NoBackgroundSaveTracebacks())
  quiet_closed_event_loops()

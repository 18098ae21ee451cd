"""What the run's logs leave out (icckd_jax/logs.py): Orbax's and asyncio's
reports of a failed background save, and closed event loops' reports.
"""

import logging
import os
import sys

from icckd_jax import logs


def test_background_save_tracebacks_are_dropped_and_others_kept():
  """Orbax's and asyncio's reports of a failed background save are
  dropped (the run says it once); other libraries' errors and Orbax's
  warnings pass."""
  quiet = logs.NoBackgroundSaveTracebacks()

  def record(level, path, message, exc=False, thread='save_finalize'):
    made = logging.LogRecord(
      'absl',
      level,
      path,
      1,
      message,
      None,
      (OSError, OSError(), None) if exc else None,
    )
    made.threadName = thread
    return made

  orbax = f'{os.sep}site-packages{os.sep}orbax{os.sep}checkpoint{os.sep}x.py'
  assert not quiet.filter(record(logging.ERROR, orbax, 'commit failed'))
  assert not quiet.filter(
    record(logging.ERROR, orbax, 'failed', exc=True, thread='MainThread')
  )
  asyncio = f'{os.sep}lib{os.sep}asyncio{os.sep}base_events.py'
  assert not quiet.filter(
    record(logging.ERROR, asyncio, 'Future exception was never retrieved')
  )
  assert quiet.filter(record(logging.WARNING, orbax, 'slow save'))
  assert quiet.filter(record(logging.ERROR, '/x/jax/y.py', 'other error'))


def test_closed_event_loop_reports_are_dropped_and_others_kept(monkeypatch):
  seen = []
  monkeypatch.setattr(sys, 'unraisablehook', seen.append)
  logs.quiet_closed_event_loops()

  class Unraisable:
    def __init__(self, error, obj=None):
      self.exc_value, self.object = error, obj

  sys.unraisablehook(Unraisable(RuntimeError('Event loop is closed')))
  other = Unraisable(ValueError('x'))
  sys.unraisablehook(other)
  assert seen == [other]

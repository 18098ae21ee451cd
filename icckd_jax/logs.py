"""What a process running this package's jobs logs: launch.py's and each
sweep worker's."""

import logging
import os


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

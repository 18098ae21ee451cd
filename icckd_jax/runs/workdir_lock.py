"""One run per workdir: an exclusive lock that dies with its holder.

The lock is `fcntl.flock` on WORKDIR/.lock. The kernel drops a flock when
the process that holds it exits, however it exits (SIGKILL included), so a
crashed run never leaves a workdir locked; no stale-lock timeouts are
needed. On Linux, flock over NFSv4 is mapped to POSIX byte-range locks and
so also excludes processes on other machines sharing the filesystem.

The holder writes its process id, host and start time into the file, so a
second command can say who holds the workdir. Readers (evaluation) do not
take the lock.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket

from icckd_jax.errors import UserError
from icckd_jax.runs import layout


class WorkdirBusy(UserError):
  """Another live process holds the workdir's lock."""


class WorkdirLock:
  """An exclusive, non-blocking lock on a workdir; a context manager.

  `acquire()` raises `WorkdirBusy` at once when another process holds it.
  The workdir must exist.
  """

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.path = os.path.join(workdir, layout.LOCK_FILE)
    self._fd: int | None = None

  def acquire(self) -> WorkdirLock:
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      os.close(fd)
      if e.errno not in (errno.EWOULDBLOCK, errno.EACCES):
        raise
      raise WorkdirBusy(
        f'workdir {self.workdir} is in use by '
        f'{describe_holder(self.path)}; wait for it to '
        'finish, stop it, or choose another --workdir'
      ) from None
    holder = {
      'pid': os.getpid(),
      'host': socket.gethostname(),
      'started': datetime.datetime.now().isoformat(timespec='seconds'),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(holder).encode(), 0)
    self._fd = fd
    return self

  def release(self) -> None:
    if self._fd is not None:
      # Unlock before closing: another process may take it at once.
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None

  @property
  def held(self) -> bool:
    return self._fd is not None

  def __enter__(self) -> WorkdirLock:
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


def try_lock(workdir: str) -> WorkdirLock | None:
  """The workdir's lock if it is free now, else None (for claiming work)."""
  try:
    return WorkdirLock(workdir).acquire()
  except WorkdirBusy:
    return None


def describe_holder(path: str) -> str:
  """'process 123 on host h since 2026-01-01T10:00:00', as far as known."""
  try:
    with open(path) as f:
      holder = json.loads(f.read() or '{}')
  except (OSError, ValueError):
    holder = {}
  if not holder:
    return 'another process'
  return (
    f'process {holder.get("pid", "?")} on host {holder.get("host", "?")} '
    f'since {holder.get("started", "?")}'
  )

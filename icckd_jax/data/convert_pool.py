"""The conversion's processes (`convert.py`): shards written by a pool of
spawned workers, ended in order by a stop signal."""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import threading

from icckd_jax.data import shard_writer


def write_all(tasks, workers: int, record) -> None:
  """Writes the shards of `tasks`, `workers` processes at a time, calling
  `record(done, task)` as each one ends."""
  if workers == 1 or len(tasks) == 1:
    for task in tasks:
      record(shard_writer.write_shard(task), task)
    return
  # Spawned, not forked: the parent has started JAX's threads. Leaving the
  # `with` (an error, a signal) terminates the workers.
  with multiprocessing.get_context('spawn').Pool(
    workers, initializer=shard_writer.ignore_interrupts
  ) as pool:
    for task, done in zip(tasks, pool.imap(shard_writer.write_shard, tasks)):
      record(done, task)


# What stops a conversion: SLURM's and the cloud's preemption, a closed
# terminal, Ctrl-C.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


class Signalled(Exception):
  """One of `STOP_SIGNALS` arrived."""

  def __init__(self, signum: int):
    super().__init__(signum)
    self.signum = signum


def _raise_signalled(signum, frame) -> None:
  del frame
  # Later signals are ignored while the workers are stopped and the
  # temporaries removed (a moment): a second one would cut that short.
  for s in STOP_SIGNALS:
    signal.signal(s, signal.SIG_IGN)
  raise Signalled(signum)


@contextlib.contextmanager
def signals_stop():
  """Within: a stop signal raises `Signalled` in this (the main) thread,
  so that the pool is ended in order: without it SIGTERM would kill this
  process at once, its workers would print tracebacks of the broken pipe
  and its semaphores would be left behind."""
  if threading.current_thread() is not threading.main_thread():
    yield  # Python delivers signals to the main thread only.
    return
  before = {s: signal.signal(s, _raise_signalled) for s in STOP_SIGNALS}
  try:
    yield
  finally:
    for s, handler in before.items():
      signal.signal(s, handler)

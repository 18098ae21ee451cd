"""Grain's decode worker processes and what they share with the training
process (`stream`): a signal sent to the process group, and the
shared-memory segments that carry batches between them.

A cluster's SIGTERM, Ctrl-C's SIGINT and a closed terminal's SIGHUP reach
the whole process group: the training process, its decode workers and
multiprocessing's resource tracker, the process that unlinks the workers'
segments in /dev/shm should the others die. Only the training process
decides when to stop: it saves the state at the next step, then closes the
workers. A worker that died at the signal would fail the steps before
that; a tracker that died (it ignores SIGINT and SIGTERM of itself, not
SIGHUP) would leave every segment it held in /dev/shm for good, and the
one started in its place would print a traceback for each segment it was
never told of.
"""

import gc
from multiprocessing import resource_tracker
import signal
from typing import Any

import numpy as np

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def ignore_stop_signals(worker_index: int, worker_count: int) -> None:
  """Grain's `worker_init_fn`: a worker ignores the stop signals, which are
  the training process's to act on."""
  del worker_index, worker_count
  for sig in STOP_SIGNALS:
    signal.signal(sig, signal.SIG_IGN)


def start_resource_tracker() -> None:
  """Starts multiprocessing's resource tracker, if it is not running yet,
  with SIGHUP blocked: it inherits the mask, keeps it (it unblocks only
  the SIGINT and SIGTERM it ignores) and so outlives a closed terminal,
  unlinking at the end what the processes left. A tracker already running
  (started by other code of this process) is left as it is."""
  blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
  try:
    resource_tracker.ensure_running()
  finally:
    signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def detached(element: dict[str, Any]) -> dict[str, Any]:
  """`element` with each array copied out of its shared-memory segment.

  XLA's CPU client adopts a host array it is handed without copying it, so
  a batch on CPU devices would hold its segment for as long as the batch
  lives: the last ones until the interpreter's shutdown, after Grain's
  thread that unlinks segments has stopped (the tracker then unlinks them,
  warning of leaks). Copied (a transfer to another device is a copy
  anyway), each segment is unlinked by Grain at once.
  """
  return {
    k: np.array(v) if isinstance(v, np.ndarray) else v
    for k, v in element.items()
  }


def release_last_elements() -> None:
  """Frees what a closed or exhausted Grain pipeline still holds: each
  worker's last element, shared-memory segments included.

  Grain's prefetch thread ends by passing on the exception that stopped it
  (an exhausted pipeline's StopIteration, a closed one's error), whose
  traceback keeps the thread's frame, and with it the last element that
  frame read, in a reference cycle. Only the garbage collector frees a
  cycle, at a time of its own choosing: the segments of an evaluation
  pass's last batches, or of the batch in flight when training stops,
  would stay in /dev/shm (the tracker unlinks them at exit, warning of
  leaks). A pipeline lives for seconds to days, so one collection at its
  end costs nothing that shows.
  """
  gc.collect()

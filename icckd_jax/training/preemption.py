"""Preemption: SIGTERM (what SLURM and cloud preemption send) or SIGINT stop
a run at the next step boundary, after it saved its state.

On several processes a signal reaches some of them, and all must stop at
the same step: they agree on it with a collective every `every` steps (one
small allgather, a blocking round trip between the hosts), not at every
step, so a stop comes within `every` steps of the signal."""

import signal
import threading

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np


class Preempted(Exception):
  """SIGTERM or SIGINT arrived; the run saved its state and stopped."""

  def __init__(self, signum: int, message: str):
    super().__init__(message)
    self.signum = signum


class StopRequest:
  """Turns SIGTERM and SIGINT into a request to stop at the next step
  boundary; a context manager.

  A second signal interrupts at once (KeyboardInterrupt), for a user who
  will not wait for the step. Off the main thread (where Python delivers
  signals) it does nothing.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self, every: int = 1):
    """`every`: on several processes, the steps between two agreements."""
    self.signum = 0
    self.every = every
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    if self.signum:
      raise KeyboardInterrupt
    self.signum = signum
    logging.warning(
      '%s received: saving at the next step boundary.',
      signal.Signals(signum).name,
    )

  def __enter__(self) -> 'StopRequest':
    if threading.current_thread() is threading.main_thread():
      for sig in self.SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()

  def requested(self, step: int) -> int:
    """The signal to stop for before `step` (steps taken so far), or 0. On
    several processes, any process's signal stops all of them at the same
    step, the first multiple of `every` after it arrived; every process
    must call this at every step."""
    if jax.process_count() == 1:
      return self.signum
    if step % self.every:
      return 0
    return int(np.max(multihost_utils.process_allgather(np.int32(self.signum))))

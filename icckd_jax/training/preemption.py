"""Preemption: SIGTERM (what SLURM and cloud preemption send), SIGINT or
SIGHUP (a closed terminal or ssh session) stop a run at the next step
boundary, after it saved its state.

A job of several runs (a pipeline, a worker of many stages) holds a StopRequest of
its own around them: a run's request inherits a signal that came before it
and hands on one that came after its last step, so the job stops before
its next run instead of forgetting the signal.

On several processes a signal reaches some of them, and all must stop at
the same step: they agree on it with a collective every `every` steps (one
small allgather, a blocking round trip between the hosts), not at every
step, so a stop comes within `every` steps of the signal."""

import signal
import threading
import time

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np

from icckd_jax.errors import Preempted


class StopRequest:
  """Turns SIGTERM, SIGINT and SIGHUP into a request to stop at the next
  step boundary; a context manager, which nests: entered inside another,
  it starts with the outer one's signal and hands its own back on exit.

  A second signal interrupts at once (KeyboardInterrupt), for a user who
  will not wait for the step; the same signal again within ECHO_SECONDS is
  the same stop sent two ways (to the process directly and through the
  supervisor of a --multihost run, icckd_jax/supervisor.py, as SLURM
  signals every process of a step), not a second one. Off the main thread
  (where Python delivers signals) it does nothing.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
  ECHO_SECONDS = 1.0

  def __init__(self, every: int = 1):
    """`every`: on several processes, the steps between two agreements."""
    self.signum = 0
    self.every = every
    self._received = -float('inf')
    self._previous = {}
    self._outer = None

  def _handle(self, signum, frame):
    del frame
    now, received = time.monotonic(), self._received
    self._received = now
    if self.signum == signum and now - received < self.ECHO_SECONDS:
      return
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
      outer = getattr(self._previous[signal.SIGTERM], '__self__', None)
      if isinstance(outer, StopRequest):
        self._outer = outer
        self.signum = self.signum or outer.signum
        self._received = outer._received
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()
    if self._outer is not None:
      self._outer.signum = self._outer.signum or self.signum
      self._outer = None

  def agreed(self) -> int:
    """The signal any process received so far, or 0: on several processes a
    collective, which every process must call at the same point."""
    if jax.process_count() == 1:
      return self.signum
    return int(np.max(multihost_utils.process_allgather(np.int32(self.signum))))

  def stop_if_requested(self, before: str) -> None:
    """Raises Preempted if a stop was requested (agreed as in `agreed`);
    `before`: what would have come next, for the message."""
    signum = self.agreed()
    if signum:
      raise Preempted(
        signum,
        f'stopped by {signal.Signals(signum).name} before {before}; '
        'everything finished so far is saved. Rerun the same command to '
        'carry on.',
      )

  def requested(self, step: int) -> int:
    """The signal to stop for before `step` (steps taken so far), or 0. On
    several processes, any process's signal stops all of them at the same
    step, the first multiple of `every` after it arrived; every process
    must call this at every step."""
    if jax.process_count() == 1:
      return self.signum
    if step % self.every:
      return 0
    return self.agreed()

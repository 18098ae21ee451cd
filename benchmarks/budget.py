"""What the GPU commands share: a wall-time budget, a command run until it is
spent, and the refusals that come before anything is written.

benchmarks/gpu_check.py and benchmarks/on_gpu.py import it (beside them);
it imports nothing heavier than the standard library, so that a refusal
costs no JAX start-up.
"""

import math
import os
import pathlib
import signal
import subprocess
import sys
import time

# Seconds a study stopped with SIGTERM gets to save and exit before it is
# killed: a preempted step's checkpoint is written at the next step.
STOP_GRACE_S = 60.0


class Refused(Exception):
  """A request refused before anything ran or was written: one line, exit
  code 2 (`exit_refused`)."""


def exit_refused(error: Refused) -> int:
  print(f'error: {error}', file=sys.stderr)
  return 2


def seconds(text: str, flag: str = '--budget_s') -> float:
  """`text` as a positive finite number of seconds, else Refused."""
  try:
    value = float(text)
  except (TypeError, ValueError):
    value = math.nan
  if not (math.isfinite(value) and value > 0):
    raise Refused(f'{flag}={text!r} is not a positive finite number of seconds')
  return value


def refuse_existing(paths) -> None:
  """Refused if any of `paths` exists: an earlier report or records are
  never overwritten."""
  found = [str(p) for p in paths if pathlib.Path(p).exists()]
  if found:
    raise Refused(
      f"{found[0]} exists (an earlier run's); give an empty output folder"
    )


class Budget:
  """Seconds left of a budget; a unit of work starts only while some are
  left."""

  def __init__(self, total: float):
    self.end = time.perf_counter() + total

  def left(self) -> float:
    return self.end - time.perf_counter()


def _group_alive(group: int) -> bool:
  try:
    os.killpg(group, 0)
  except ProcessLookupError:
    return False
  return True


def run_until(command, seconds_left: float, log_path, cwd, env=None) -> dict:
  """Runs `command` (its output to `log_path`) for at most `seconds_left`,
  then stops it with SIGTERM (a study saves and exits), killing it only
  after STOP_GRACE_S more: {'stopped': bool, 'exit_code', 'seconds'}.

  The command runs in a process group of its own and the signal goes to the
  whole group: a sweep's worker processes, not only their parent, must save.
  Returns once every process of the group has ended, so that what they
  saved is whole before anyone reads it.
  """
  start = time.perf_counter()
  with open(log_path, 'w') as log:
    proc = subprocess.Popen(
      command,
      cwd=cwd,
      stdout=log,
      stderr=subprocess.STDOUT,
      env=env,
      start_new_session=True,
    )
    try:
      proc.wait(timeout=max(seconds_left, 1))
      stopped = False
    except subprocess.TimeoutExpired:
      os.killpg(proc.pid, signal.SIGTERM)
      stopped = True
    deadline = time.perf_counter() + STOP_GRACE_S
    while proc.poll() is None or _group_alive(proc.pid):
      if time.perf_counter() > deadline:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        break
      time.sleep(0.5)
  return {
    'stopped': stopped,
    'exit_code': proc.returncode,
    'seconds': time.perf_counter() - start,
  }

"""launch.py --multihost as a child of a thin supervisor, which turns the
coordinator's death into one line (docs/robustness.md).

Process 0 of several holds JAX's coordination service. When it dies, the
native client of every other process ends that process from a thread of its
own within a second (a check failure: `... detected fatal errors ...`, a
native stack, SIGABRT), which nothing in the process can catch. So under
--multihost launch.py runs the same command in a child and only watches it:
this module imports no JAX and holds no state of the run. It

* forwards every stop signal it receives (SIGTERM, SIGINT, SIGHUP, and
  SLURM's time-limit signals SIGUSR1/SIGUSR2) to the child, which stops as
  it would alone; the child has a process group of its own, so a terminal's
  Ctrl-C or a signal to the supervisor's group reaches it once, forwarded;
  should the supervisor itself be killed, the child gets SIGTERM (it saves
  and stops);
* passes the child's stderr through line by line (stdout is the child's
  own), holding back what follows the client's fatal error;
* ends as the child ended (its exit code, or the signal that killed it),
  except after that fatal error: one line naming the peer that failed, the
  checkpoints kept, exit code 2.
"""

from collections.abc import Callable, Mapping, Sequence
import ctypes
import os
import re
import resource
import signal
import subprocess
import sys
import threading

# Set in the child's environment: it runs the job instead of supervising.
MARKER = 'ICCKD_JAX_SUPERVISED'
# What a supervisor forwards to its child: the stop signals of a run
# (training/preemption.py) and SLURM's time-limit signals.
FORWARDED = (
  signal.SIGTERM,
  signal.SIGINT,
  signal.SIGHUP,
  signal.SIGUSR1,
  signal.SIGUSR2,
)
# The coordination service's and the native client's last words when the
# service reports an error (its own or another process's): logged just
# before the check failure's stack.
_FATAL = re.compile(
  rb'Use error polling to propagate|Polled an error from coordination '
  rb'service|detected fatal errors'
)
# How the fatal error names the processes that failed: the leader (process
# 0, the coordination service's host), or the tasks the service found
# unhealthy (their indices on the next line, or task names).
_LEADER = re.compile(rb'leader task|Failed to send RPC to coordination service')
_UNHEALTHY = re.compile(rb'stopped sending heartbeats\):\s*([\d, ]+)\n')
_TASK = re.compile(rb'/task:(\d+)')
_STATUS = re.compile(rb'absl::Status: ([^.\n]*)')
# Seconds the supervisor waits for the rest of the child's stderr after the
# child ended (a process the child started may still hold the pipe open).
_DRAIN_SECONDS = 5.0
_PR_SET_PDEATHSIG = 1


def _flag(argv: Sequence[str], name: str, boolean: bool = False) -> str | None:
  """The last value absl would read for flag `name` from `argv`
  (--name=value, or --name value unless `boolean`, one dash or two; a
  boolean's --name and --noname as 'true' and 'false'), or None where it is
  not given."""
  value = None
  for i, arg in enumerate(argv):
    if arg == '--':
      break
    if not arg.startswith('-'):
      continue
    key, eq, given = arg.lstrip('-').partition('=')
    if key == name and eq:
      value = given
    elif key == name and boolean:
      value = 'true'
    elif key == name and i + 1 < len(argv):
      value = argv[i + 1]
    elif key == f'no{name}' and boolean and not eq:
      value = 'false'
  return value


def wanted(argv: Sequence[str], environ: Mapping[str, str]) -> bool:
  """Whether the process launched with `argv` should supervise its run:
  under --multihost, unless it is the supervised child itself."""
  multihost = (_flag(argv[1:], 'multihost', boolean=True) or '').lower()
  return multihost in ('true', 't', '1') and MARKER not in environ


def lost_peer_line(
  lost: Sequence[int], count: object, me: object, cause: str
) -> str:
  """The one line a --multihost process ends with when peers stopped
  answering mid-run: `lost` (their indices), of `count` processes, while
  process `me` was running; `cause` is what failed."""
  of = f' of {count}' if count is not None else ''
  coordinator = ' (the coordinator)' if list(lost) == [0] else ''
  running = f' while process {me} was running' if me is not None else ''
  return (
    f'error: --multihost: process {", ".join(map(str, lost))}{of}'
    f'{coordinator} stopped answering (killed, or its host failed)'
    f'{running}; the checkpoints written so far are kept: rerun the same '
    f'command on every process to resume ({cause})'
  )


class _Stderr:
  """The child's stderr, written through line by line until the native
  client's fatal error; from there on held back (the native stack that
  follows is of no use to a user)."""

  def __init__(self, out):
    self._out = out
    self._lock = threading.Lock()
    self.held: list[bytes] = []

  def write(self, line: bytes) -> None:
    with self._lock:
      if self.held or _FATAL.search(line):
        self.held.append(line)
        return
      self._out.write(line)
      self._out.flush()

  def release(self) -> list[bytes]:
    """What was held back, from then on written through."""
    with self._lock:
      held, self.held = self.held, []
      for line in held:
        self._out.write(line)
      self._out.flush()
      return held

  def fatal_error(self) -> bytes:
    with self._lock:
      return b''.join(self.held)


def coordinator_line(fatal: bytes, count: object, me: object) -> str | None:
  """The line for the native client's fatal error `fatal` (the held-back
  stderr), or None where it is not one."""
  if not _FATAL.search(fatal):
    return None
  status = _STATUS.search(fatal)
  cause = (
    status.group(1).decode(errors='replace').rstrip(': ') if status else ''
  ) or 'unknown'
  unhealthy = _UNHEALTHY.search(fatal)
  named = unhealthy.group(1).replace(b',', b' ').split() if unhealthy else []
  tasks = sorted({int(t) for t in [*named, *_TASK.findall(fatal)]})
  if not tasks and _LEADER.search(fatal):
    tasks = [0]
  if not tasks:
    return (
      'error: --multihost: the distributed service reported that another '
      'process failed; the checkpoints written so far are kept: rerun the '
      f'same command on every process to resume ({cause})'
    )
  return lost_peer_line(tasks, count, me, f"JAX's distributed client: {cause}")


def _die_with_parent() -> None:
  """In the child, before exec: SIGTERM when the supervisor dies (Linux),
  so that the run saves and stops instead of running on unwatched."""
  try:
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
  except (AttributeError, OSError):
    pass


def end_as(returncode: int) -> int:
  """Ends this process as the child ended: by the same signal (without a
  second core dump), else returns its exit code."""
  if returncode >= 0:
    return returncode
  signum = -returncode
  resource.setrlimit(
    resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1])
  )
  signal.signal(signum, signal.SIG_DFL)
  os.kill(os.getpid(), signum)
  return 128 + signum  # A signal this process cannot be killed by.


def _forwarding(start: Callable[[], subprocess.Popen]) -> int:
  """The exit status of the child `start()` starts (negative: the signal
  that killed it), while the stop signals this process receives are
  forwarded to it; this process's own handlers are restored after."""
  child = None
  early = []

  def forward(signum, frame):
    del frame
    if child is None:
      early.append(signum)
    elif child.returncode is None:
      child.send_signal(signum)

  previous = {signum: signal.signal(signum, forward) for signum in FORWARDED}
  try:
    child = start()
    for signum in early:
      child.send_signal(signum)
    return child.wait()
  finally:
    for signum, handler in previous.items():
      signal.signal(signum, handler)


def supervise(
  command: Sequence[str],
  environ: Mapping[str, str],
  count: object = None,
  me: object = None,
) -> int:
  """Runs `command` in a child with `environ` and the marker. Returns 2
  after the native client's fatal error, else the child's exit status
  (negative: the signal that killed it). `count` and `me`: the processes of
  the run and this one's index, where known, for the line that names a
  failed peer."""
  stderr = _Stderr(sys.stderr.buffer)
  reader = None

  def start() -> subprocess.Popen:
    nonlocal reader
    child = subprocess.Popen(
      list(command),
      env={**environ, MARKER: '1'},
      stderr=subprocess.PIPE,
      process_group=0,
      preexec_fn=_die_with_parent,
    )
    reader = threading.Thread(
      target=lambda: [stderr.write(line) for line in child.stderr],
      daemon=True,
    )
    reader.start()
    return child

  returncode = _forwarding(start)
  reader.join(_DRAIN_SECONDS)
  line = coordinator_line(stderr.fatal_error(), count, me)
  if returncode == -signal.SIGABRT and line:
    print(line, file=sys.stderr, flush=True)
    return 2
  stderr.release()
  return returncode


def run(argv: Sequence[str], environ: Mapping[str, str]) -> int:
  """Supervises the interpreter's own command line `argv` (sys.orig_argv),
  the run's process count and index read from its flags or environment as
  launch.py's flags read them; returns the exit code to end with, or ends
  by the signal that killed the child."""
  count = (
    _flag(argv, 'num_processes')
    or environ.get('JAX_NUM_PROCESSES')
    or environ.get('SLURM_NTASKS')
  )
  me = (
    _flag(argv, 'process_id')
    or environ.get('JAX_PROCESS_ID')
    or environ.get('SLURM_PROCID')
  )
  return end_as(supervise([sys.executable, *argv[1:]], environ, count, me))

"""The supervisor of a --multihost process (icckd_jax/supervisor.py), on fake
children: stop signals forwarded, the native client's abort after process
0's death turned into one line and exit code 2, every other ending passed
through. (Whole runs: tests/test_multiprocess_failures.py.)"""

import signal
import subprocess
import sys
import textwrap

import pytest

from icckd_jax import supervisor

# What process 1's native client printed when process 0 was SIGKILLed
# mid-run (jaxlib 0.10.2), shortened.
CLIENT_ABORT = textwrap.dedent("""\
  E1206 01:15:01.063888   21274 coordination_service_agent.cc:289] Polled an error from coordination service (this can be an error from this or another task).
  F1206 01:15:01.064413   21274 client.h:80] Terminating process because the JAX distributed service detected fatal errors. This most likely indicates that another task died; see the other task logs for more details. absl::Status: UNAVAILABLE: Failed to send RPC to coordination service. Either the leader task was preempted/died/restarted unexpectedly or this task is experiencing network issues.
  *** Check failure stack trace: ***
      @     0x7f7caca40634  absl::lts_20260107::log_internal::LogMessage::SendToLog()
  Fatal Python error: Aborted
  """)


def _child(code: str) -> list[str]:
  return [sys.executable, '-c', textwrap.dedent(code)]


def _supervise(capfd, code: str, **kwargs) -> tuple[int, str]:
  returncode = supervisor.supervise(_child(code), {}, **kwargs)
  return returncode, capfd.readouterr().err


def test_the_client_abort_after_the_coordinators_death_is_one_line(capfd):
  """A child that prints what it printed before, then the client's fatal
  error and native stack, then aborts: what came before passes through,
  the rest is one line naming process 0 of 2, exit code 2."""
  code, err = _supervise(
    capfd,
    f"""
    import os, sys
    sys.stderr.write('I epoch 1/50: test top-1 0.13\\n')
    sys.stderr.write({CLIENT_ABORT!r})
    sys.stderr.flush()
    os.abort()
    """,
    count='2',
    me='1',
  )
  assert code == 2
  lines = err.splitlines()
  assert lines[0] == 'I epoch 1/50: test top-1 0.13'
  assert len(lines) == 2, err
  assert lines[1].startswith(
    'error: --multihost: process 0 of 2 (the coordinator) stopped answering'
  ), err
  assert 'while process 1 was running' in lines[1]
  assert 'checkpoints written so far are kept' in lines[1]
  assert 'rerun the same command on every process' in lines[1]


@pytest.mark.parametrize(
  'ending, expected',
  [
    ('sys.exit(3)', 3),
    ('os.kill(os.getpid(), signal.SIGKILL)', -signal.SIGKILL),
    ('os.abort()', -signal.SIGABRT),
  ],
)
def test_every_other_ending_passes_through(capfd, ending, expected):
  """An exit code, a kill, an abort without the client's fatal error: the
  same status, and all of stderr as the child wrote it."""
  code, err = _supervise(
    capfd,
    f"""
    import os, signal, sys
    sys.stderr.write('a line\\nanother\\n')
    sys.stderr.flush()
    {ending}
    """,
  )
  assert code == expected
  assert err.startswith('a line\nanother\n'), err


def test_a_fatal_error_without_the_abort_is_passed_through(capfd):
  """The client's fatal error held back, but the child then exits by
  itself: what was held is written after all, the exit code unchanged."""
  code, err = _supervise(
    capfd,
    f"""
    import sys
    sys.stderr.write({CLIENT_ABORT!r})
    sys.exit(1)
    """,
  )
  assert code == 1
  assert err == CLIENT_ABORT


def test_stop_signals_reach_the_child_and_handlers_are_restored(capfd):
  """Each forwarded signal the supervisor receives (the child sends it to
  its parent, here this test) reaches the child once; afterwards this
  process's own handlers are back."""
  before = {s: signal.getsignal(s) for s in supervisor.FORWARDED}
  code, err = _supervise(
    capfd,
    f"""
    import os, signal, sys, time
    got = []
    for signum in {[int(s) for s in supervisor.FORWARDED]}:
      signal.signal(signum, lambda s, f: got.append(s))
      os.kill(os.getppid(), signum)
      deadline = time.monotonic() + 30
      while signum not in got and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)
    print(*got, file=sys.stderr)
    """,
  )
  assert code == 0, err
  assert err.split() == [str(int(s)) for s in supervisor.FORWARDED]
  assert {s: signal.getsignal(s) for s in supervisor.FORWARDED} == before


def test_a_child_killed_by_a_signal_ends_the_supervisor_by_it():
  """The supervisor's own exit status is the child's: killed by SIGUSR2
  (SLURM's time-limit signal, which launch.py does not handle), it dies by
  SIGUSR2 too."""
  proc = subprocess.run(
    _child("""
    import signal
    from icckd_jax import supervisor
    supervisor.end_as(-signal.SIGUSR2)
    """),
    check=False,
  )
  assert proc.returncode == -signal.SIGUSR2


@pytest.mark.parametrize(
  'argv, environ, expected',
  [
    (['launch.py', '--multihost'], {}, True),
    (['launch.py', '-multihost=true', '--workdir', 'w'], {}, True),
    (['launch.py', '--multihost', '--nomultihost'], {}, False),
    (['launch.py', '--multihost=false'], {}, False),
    (['launch.py', '--workdir=w'], {}, False),
    (['launch.py', '--', '--multihost'], {}, False),
    (['launch.py', '--multihost'], {supervisor.MARKER: '1'}, False),
  ],
)
def test_only_a_multihost_launch_is_supervised(argv, environ, expected):
  assert supervisor.wanted(argv, environ) is expected


def test_the_line_names_the_tasks_the_service_names():
  """Process 0's own service and client, when a peer stopped sending
  heartbeats (a survivor waiting at a save's barrier learns it no other
  way): the line names that process, not the coordinator."""
  fatal = textwrap.dedent("""\
    E1206 01:23:08.745807   28177 coordination_service.cc:1549] [1762] Use error polling to propagate the following error to all tasks: UNAVAILABLE: The following tasks are unhealthy (stopped sending heartbeats):
    1
    The tasks have crashed. Check the task logs for an earlier error.
    F1206 01:23:08.801113   28181 client.h:80] Terminating process because the JAX distributed service detected fatal errors. absl::Status: UNAVAILABLE: The following tasks are unhealthy (stopped sending heartbeats):
    1
    The tasks have crashed.
    """).encode()
  line = supervisor.coordinator_line(fatal, 2, 0)
  assert line.startswith(
    'error: --multihost: process 1 of 2 stopped answering'
  ), line
  assert 'while process 0 was running' in line, line
  assert 'stopped sending heartbeats)' in line, line
  assert supervisor.coordinator_line(b'Segmentation fault\n', 2, 0) is None

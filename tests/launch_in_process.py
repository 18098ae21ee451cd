"""launch.py's `main` in the test's own process.

A `python launch.py` subprocess costs seconds of imports and compiling per
case on the 2-core CI machine, so the tests call the command in-process; only
what needs a process boundary (SIGKILL or SIGTERM mid-run, two processes,
the real interpreter's exit code and stderr) starts one.

In-process runs see conftest's 4 emulated CPU devices, like the subprocesses
the tests start by default (`--config.num_devices=1` for one).
"""

import dataclasses
import io
import logging
import os
import sys


@dataclasses.dataclass
class Result:
  """What `python launch.py ...` leaves: its exit code and its stderr."""

  returncode: int
  stderr: str


class _Lines(logging.Handler):
  """Collects what the run logs, one line per record, as stderr shows it."""

  def __init__(self):
    super().__init__(logging.INFO)
    self.lines = []

  def emit(self, record):
    self.lines.append(f'{record.levelname[0]} {record.getMessage()}')


def _exit_as_system_exit(code: int) -> None:
  raise SystemExit(code)


def launch(*args, check: bool = True) -> Result:
  """Runs `launch.py *args` in this process.

  Args:
    *args: the command line after `launch.py`.
    check: raise AssertionError, with the end of stderr, on a non-zero exit.

  Returns:
    The exit code (SystemExit's, else 0) and stderr: what the command
    printed there, then what it logged at INFO and above (absl logs to
    stderr), one line per record.
  """
  import launch as launch_py  # pylint: disable=g-import-not-at-top

  argv = ['launch.py', *args]
  err, lines = io.StringIO(), _Lines()
  absl_logger = logging.getLogger('absl')
  old_level = absl_logger.level
  old_argv, old_err = sys.argv, sys.stderr
  # ml_collections reads the --config.* overrides from sys.argv.
  sys.argv, sys.stderr = argv, err
  # absl's logger level follows --verbosity, which an earlier in-process
  # run may have left above INFO.
  absl_logger.setLevel(logging.INFO)
  absl_logger.addHandler(lines)
  code = 0
  # A command that leaves its process at once (os._exit, past stranded
  # threads) ends only itself here.
  old_exit = os._exit
  os._exit = _exit_as_system_exit
  try:
    launch_py.parse_flags(argv)
    launch_py.main(['launch.py'])
  except SystemExit as e:
    code = e.code
  finally:
    os._exit = old_exit
    sys.argv, sys.stderr = old_argv, old_err
    absl_logger.removeHandler(lines)
    absl_logger.setLevel(old_level)
    launch_py.FLAGS.unparse_flags()
    # config_flags defines a flag per --config.* override at parse time;
    # the next argv may name the same fields.
    for name in [n for n in launch_py.FLAGS if n.startswith('config.')]:
      delattr(launch_py.FLAGS, name)
  result = Result(
    code, err.getvalue() + ''.join(f'{line}\n' for line in lines.lines)
  )
  if check and result.returncode:
    raise AssertionError(
      f'launch.py {args} exited {result.returncode}:\n{result.stderr[-3000:]}'
    )
  return result


def run_launcher(*args) -> tuple[int, str]:
  """launch.py in this process: (exit code, stderr)."""
  result = launch(*args, check=False)
  return result.returncode, result.stderr


def error_line(code: int, stderr: str) -> str:
  """The single `error:` line of a rejected run, asserting exit code 2."""
  assert code == 2, stderr[-2000:]
  assert 'Traceback' not in stderr, stderr[-2000:]
  errors = [l for l in stderr.splitlines() if l.startswith('error: ')]
  assert len(errors) == 1, stderr[-2000:]
  assert '\\n' not in errors[0] and "\\'" not in errors[0], errors[0]
  return errors[0]


def refusal(workdir, *args) -> str:
  """The one error line of launch.py given `args` and a WORKDIR that does not
  exist yet (exit code 2), checking that the refusal left it unwritten."""
  code, stderr = run_launcher(*args, f'--workdir={workdir}')
  line = error_line(code, stderr)
  assert not os.path.exists(workdir), f'{workdir} was written'
  return line

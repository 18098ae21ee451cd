"""The one exception type for mistakes a user can make and fix, and the
one for a job stopped by a signal.

`launch.py` turns a `UserError` into a single line on stderr and exit code 2,
a `Preempted` into one line and exit code 128 + the signal's number;
anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
  """A bad config value, a missing data set or checkpoint, a diverged run.

  The message is one line that names the field or path at fault and what
  would be valid, e.g. "config.model='resnet9' is unknown; choose one of ...".
  """


class Preempted(Exception):
  """SIGTERM, SIGINT or SIGHUP arrived; the job (a run, which saved its
  state; a conversion, which keeps its finished shards) stopped, and
  rerunning the same command carries on."""

  def __init__(self, signum: int, message: str):
    super().__init__(message)
    self.signum = signum


def one_line(error: BaseException) -> str:
  """The first line of an error's message, for one-line UserErrors."""
  lines = str(error).strip().splitlines()
  return lines[0] if lines else type(error).__name__

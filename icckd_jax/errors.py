"""The one exception type for mistakes a user can make and fix.

`launch.py` turns a `UserError` into a single line on stderr and exit code 2;
anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
  """A bad config value, a missing data set or checkpoint, a diverged run.

  The message is one line that names the field or path at fault and what
  would be valid, e.g. "config.model='resnet9' is unknown; choose one of ...".
  """


def one_line(error: BaseException) -> str:
  """The first line of an error's message, for one-line UserErrors."""
  lines = str(error).strip().splitlines()
  return lines[0] if lines else type(error).__name__

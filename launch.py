r"""Runs a config: train a teacher, evaluate a checkpoint, ...

  python launch.py --config=configs/teacher.py --workdir=workdirs/teacher
  python launch.py --config=configs/teacher.py:smoke --workdir=/tmp/smoke
  python launch.py --config=configs/eval.py --config.workdir=workdirs/teacher

Any config field can be overridden: --config.num_epochs=10. On several hosts
add --multihost to each process (jax.distributed.initialize()).
"""

import logging as py_logging
import os
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from icckd_jax import main as icckd_main
from icckd_jax.errors import UserError

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints and metrics.')
flags.DEFINE_bool('multihost', False,
                  'Call jax.distributed.initialize() first (several hosts).')
config_flags.DEFINE_config_file('config', None, 'The job config file.',
                                lock_config=True)
flags.mark_flags_as_required(['config'])


class _OwnInfoOnly(py_logging.Filter):
  """Keeps our INFO lines, drops the libraries' (Orbax logs every file it
  writes); warnings and errors of every library still pass, except Orbax's
  note that a checkpoint opened read-only (a teacher, an evaluation) is
  read-only, which is the point."""

  def filter(self, record):
    if f'{os.sep}icckd_jax{os.sep}' in record.pathname:
      return True
    if record.pathname == os.path.abspath(__file__):
      return True
    if record.levelno < py_logging.WARNING:
      return False
    return not ('orbax' in record.pathname and
                'read' in record.getMessage() and
                'only' in record.getMessage())


def _fail(message) -> None:
  """A user's mistake: one line on stderr, exit code 2.

  A message that carries a traceback (ml_collections wraps the config
  file's own exception in one) is cut to its first and last lines.
  """
  lines = [l.strip() for l in str(message).strip().splitlines() if l.strip()]
  if len(lines) > 1:
    lines = [lines[0].split(' Traceback')[0].rstrip(':'), lines[-1]]
  print(f"error: {': '.join(lines)}", file=sys.stderr)
  sys.exit(2)


def parse_flags(argv):
  """absl's parsing, with a bad flag, config file, config argument or
  override reported as one line and exit code 2 instead of a traceback."""
  try:
    return FLAGS(argv)
  except (AttributeError, KeyError) as e:
    _fail(f"no such config field: {str(e).strip(chr(34) + chr(39))}")
  except (flags.Error, TypeError, ValueError) as e:
    _fail(e)


def main(argv):
  logging.get_absl_handler().addFilter(_OwnInfoOnly())
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if FLAGS.multihost:
    jax.distributed.initialize()
  logging.info('JAX devices: %s', jax.devices())
  try:
    config = FLAGS.config
    config.get('mode')  # Touches the config, which loads it.
  except OSError as e:  # ml_collections defers a config file's load errors.
    _fail(e)
  try:
    icckd_main.run(config, FLAGS.workdir)
  except UserError as e:
    _fail(e)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)

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


def main(argv):
  logging.get_absl_handler().addFilter(_OwnInfoOnly())
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if FLAGS.multihost:
    jax.distributed.initialize()
  logging.info('JAX devices: %s', jax.devices())
  try:
    icckd_main.run(FLAGS.config, FLAGS.workdir)
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main)

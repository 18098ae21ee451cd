r"""Runs a config: train a teacher, evaluate a checkpoint, ...

  python launch.py --config=configs/teacher.py --workdir=workdirs/teacher
  python launch.py --config=configs/teacher.py:smoke --workdir=/tmp/smoke
  python launch.py --config=configs/eval.py --config.workdir=workdirs/teacher

Any config field can be overridden: --config.num_epochs=10. A hook of the
train loop (icckd_jax/training/hooks.py; docs/running.md) is named by
--hook=module:callable, importable from the Python path (repeat the flag
for several). On several hosts
add --multihost to each process; where no cluster manager (SLURM, Cloud TPU)
describes the job, also say where the coordinator is and who each process is:

  python launch.py ... --multihost --coordinator_address=host0:1234 \
      --num_processes=2 --process_id=0     # and --process_id=1 on the other

(or the environment variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
JAX_PROCESS_ID). SIGTERM, SIGHUP or Ctrl-C saves at the next step and exits
with 128 + the signal's number; rerunning the command resumes there.
Under --multihost the run is a child of a supervisor that imports no JAX
(icckd_jax/supervisor.py): it forwards stop signals, and turns the death of
process 0, the coordinator, into one line.
"""

import os
import sys

from icckd_jax import supervisor

if __name__ == '__main__' and supervisor.wanted(sys.argv, os.environ):
  sys.exit(supervisor.run(sys.orig_argv, os.environ))

# What follows is the run's, which the supervisor above never imports.
import atexit
import re
import threading
import time

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from icckd_jax import logs
from icckd_jax import errors
from icckd_jax import main as icckd_main
from icckd_jax import parallel
from icckd_jax.runs import validate
from icckd_jax.training import checkpoint
from icckd_jax.training import hooks as hooks_lib
from icckd_jax.training.preemption import Preempted

FLAGS = flags.FLAGS
# Seconds Orbax's threads get to end after a failed save.
STRANDED_GRACE_SECONDS = 5.0
# How a collective of several processes fails when a peer is gone.
PEER_ERROR = re.compile('gloo|nccl|peer|connection|socket', re.IGNORECASE)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints and metrics.')
flags.DEFINE_multi_string(
  'hook',
  [],
  'module:callable returning a training.hooks.Hook that the train loop '
  'calls (modes teacher, student, pipeline); repeat for several.',
)
flags.DEFINE_bool(
  'multihost', False, 'Call jax.distributed.initialize() first (several hosts).'
)
flags.DEFINE_string(
  'coordinator_address',
  os.environ.get('JAX_COORDINATOR_ADDRESS'),
  'With --multihost: host:port of process 0 (default: '
  "$JAX_COORDINATOR_ADDRESS, else the cluster manager's).",
)
flags.DEFINE_integer(
  'num_processes',
  int(os.environ['JAX_NUM_PROCESSES'])
  if os.environ.get('JAX_NUM_PROCESSES')
  else None,
  'With --multihost: the number of processes (default: $JAX_NUM_PROCESSES).',
  lower_bound=1,
)
flags.DEFINE_integer(
  'process_id',
  int(os.environ['JAX_PROCESS_ID'])
  if os.environ.get('JAX_PROCESS_ID')
  else None,
  "With --multihost: this process's index, from 0 (default: $JAX_PROCESS_ID).",
  lower_bound=0,
)
flags.DEFINE_integer(
  'multihost_timeout',
  300,
  'With --multihost: seconds to wait for every process to '
  'connect before giving up with an error.',
  lower_bound=1,
)
flags.DEFINE_integer(
  'multihost_heartbeat',
  30,
  'With --multihost: seconds of silence after which the coordination '
  'service counts a process as dead, and every process stops with one '
  'line naming it (a survivor waiting at a barrier, as in a save, learns it '
  'no other way).',
  lower_bound=1,
)
config_flags.DEFINE_config_file(
  'config', None, 'The job config file.', lock_config=True
)
flags.mark_flags_as_required(['config'])


def _fail(message) -> None:
  """A user's mistake: one line on stderr, exit code 2.

  A message that carries a traceback (ml_collections wraps the config
  file's own exception in one) is cut to its first and last lines.
  """
  lines = [l.strip() for l in str(message).strip().splitlines() if l.strip()]
  if len(lines) > 1:
    lines = [lines[0].split(' Traceback')[0].rstrip(':'), lines[-1]]
  line = ': '.join(lines)
  if FLAGS.is_parsed() and FLAGS.multihost:
    if not isinstance(message, parallel.PeerFailed):
      # The other processes wait for this one before writing.
      parallel.announce_failure(line, FLAGS.multihost_timeout)
    line = f'{line} (process {jax.process_index()})'
  print(f'error: {line}', file=sys.stderr)
  sys.exit(2)


def _exit_if_a_peer_is_lost(error: Exception) -> None:
  """If `error` is a collective of a --multihost run that failed because a
  peer is gone (killed, its host down): one line naming it, exit code 2, at
  once (the shutdown at exit would wait for the peer until the coordination
  service's heartbeat timeout, then abort natively); otherwise returns."""
  if not FLAGS.multihost or not PEER_ERROR.search(str(error)):
    return
  lost = parallel.lost_peers()
  if not lost:
    return
  print(
    supervisor.lost_peer_line(
      lost, jax.process_count(), jax.process_index(), errors.one_line(error)
    ),
    file=sys.stderr,
    flush=True,
  )
  sys.stdout.flush()
  os._exit(2)


def _fail_after_failed_save(error: checkpoint.SaveFailed) -> None:
  """`_fail`, for a save that failed in Orbax's background threads: some of
  them may still wait, up to Orbax's timeout (minutes), for signals the
  failed steps will never send, and the interpreter would wait for them
  at exit. Nothing is left to write, so after a short grace the process
  leaves without them."""
  print(f'error: {error}', file=sys.stderr, flush=True)
  deadline = time.monotonic() + STRANDED_GRACE_SECONDS
  for thread in threading.enumerate():
    if thread.daemon or thread is threading.current_thread():
      continue
    thread.join(max(0.0, deadline - time.monotonic()))
    if thread.is_alive():
      sys.stdout.flush()
      os._exit(2)
  sys.exit(2)


def _missing_field(error: Exception) -> str:
  """ "name" or "name (did you mean ...?)" from ml_collections' KeyError,
  which may come wrapped in an AttributeError and carry a suggestion on a
  second line."""
  while error.args and isinstance(error.args[0], Exception):
    error = error.args[0]
  text = (
    error.args[0]
    if error.args and isinstance(error.args[0], str)
    else str(error)
  )
  name, _, hint = text.partition('\n')
  name = name.strip(chr(34) + chr(39))
  return (
    f'{name} ({hint.strip()[0].lower()}{hint.strip()[1:]})' if hint else name
  )


CLUSTER_FLAGS = (
  'coordinator_address',
  'num_processes',
  'process_id',
  'multihost_timeout',
  'multihost_heartbeat',
)


def _check_cluster_flags() -> None:
  """Cluster flags without --multihost would train one lone process."""
  given = [f'--{name}' for name in CLUSTER_FLAGS if FLAGS[name].present]
  if given and not FLAGS.multihost:
    _fail(
      f'{", ".join(given)} given without --multihost; add --multihost to '
      'run several processes, or drop them to run one'
    )


def _cluster() -> tuple[str, object, object, str]:
  """The cluster --multihost joins, as the log and errors name it: the
  coordinator's address, the number of processes, this one's index, and
  how to start them all; from the flags, else from SLURM's job step."""
  try:
    slurm = parallel.slurm_process(os.environ)
  except errors.UserError as e:
    _fail(e)
  if slurm and not FLAGS.coordinator_address:
    address = "SLURM's coordinator (the job step's first node)"
    how = (
      'start them with one srun (srun -n N python launch.py ... --multihost)'
    )
  else:
    address = FLAGS.coordinator_address or "the cluster manager's coordinator"
    how = (
      'start every process with the same --coordinator_address and '
      '--num_processes'
    )
  processes = FLAGS.num_processes or (slurm[0] if slurm else "the cluster's")
  process_id = FLAGS.process_id
  if process_id is None:
    process_id = slurm[1] if slurm else 'unknown'
  return address, processes, process_id, how


def _initialize_distributed() -> None:
  """jax.distributed with the flags' (or environment's) cluster, where given.

  The CPU backend needs gloo for collectives across processes (GPUs and TPUs
  use their own); it must be chosen before any backend starts. Waiting for
  peers that never come ends after --multihost_timeout seconds with one
  error line: XLA's own timeout aborts the process with a native stack
  trace, so a watchdog exits first (nothing has been written yet).
  """
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  timeout = FLAGS.multihost_timeout
  address, processes, process_id, how = _cluster()
  logging.info(
    'Waiting up to %d s for %s processes at %s (process %s).',
    timeout,
    processes,
    address,
    process_id,
  )
  connected = threading.Event()

  def give_up():
    if not connected.is_set():
      print(
        f'error: --multihost: {processes} processes did not all connect '
        f'to {address} within {timeout} s (--multihost_timeout); {how}',
        file=sys.stderr,
        flush=True,
      )
      os._exit(2)  # The native client holds the main thread.

  watchdog = threading.Timer(timeout, give_up)
  watchdog.daemon = True
  watchdog.start()
  try:
    jax.distributed.initialize(
      coordinator_address=FLAGS.coordinator_address,
      num_processes=FLAGS.num_processes,
      process_id=FLAGS.process_id,
      initialization_timeout=timeout + 60,
      heartbeat_timeout_seconds=FLAGS.multihost_heartbeat,
    )
  except (ValueError, TypeError) as e:
    _fail(
      f'--multihost: {str(e).splitlines()[0]} (pass --coordinator_address, '
      '--num_processes and --process_id, or run under SLURM)'
    )
  finally:
    connected.set()
    watchdog.cancel()


def _check_repeated_sequences(argv) -> None:
  """A sequence override given twice is refused: ml_collections joins the
  two (--config.seeds=(0,1) ... --config.seeds=(0,) gives [0, 1, 0]),
  where a scalar's last value wins."""
  names = [
    a.split('=', 1)[0].removeprefix('--config.')
    for a in argv[1:]
    if a.startswith('--config.') and '=' in a
  ]
  repeated = sorted({n for n in names if names.count(n) > 1})
  if not repeated:
    return
  try:
    config = FLAGS.config
  except Exception:  # pylint: disable=broad-except
    return  # A config file that fails to load: main says so in one line.
  for name in repeated:
    node = config
    for part in name.split('.'):
      node = node.get(part) if hasattr(node, 'get') else None
    if isinstance(node, (list, tuple)):
      _fail(
        f'--config.{name} is given {names.count(name)} times, which '
        f'ml_collections would join into {tuple(node)}; give it once'
      )


def parse_flags(argv):
  """absl's parsing, with a bad flag, config file, config argument or
  override reported as one line and exit code 2 instead of a traceback."""
  try:
    parsed = FLAGS(argv)
  except (AttributeError, KeyError) as e:
    _fail(f'no such config field: {_missing_field(e)}')
  except (flags.Error, TypeError, ValueError) as e:
    _fail(e)
  _check_repeated_sequences(argv)
  return parsed


def _given_fields() -> list[str]:
  """The config fields set on the command line (--config.a.b=...), as
  dotted paths below the config."""
  prefix = 'config.'
  return [
    name[len(prefix) :]
    for name in FLAGS
    if name.startswith(prefix) and FLAGS[name].present
  ]


def main(argv):
  logging.get_absl_handler().addFilter(logs.OwnInfoOnly(__file__))
  logs.quiet_failed_saves()
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  _check_cluster_flags()
  if FLAGS.multihost:
    _initialize_distributed()
    atexit.register(parallel.mark_done)
  logging.info('JAX devices: %s', jax.devices())
  try:
    config = FLAGS.config
    config.get('mode')  # Touches the config, which loads it.
  except OSError as e:  # ml_collections defers a config file's load errors.
    _fail(e)
  try:
    validate.check_given_fields(config, _given_fields())
    hooks = [hooks_lib.load(name) for name in FLAGS.hook]
    icckd_main.run(config, FLAGS.workdir, hooks)
  except checkpoint.SaveFailed as e:
    _exit_if_a_peer_is_lost(e)
    _fail_after_failed_save(e)
  except errors.UserError as e:
    _fail(e)
  except Preempted as e:
    print(f'preempted: {e}', file=sys.stderr)
    sys.exit(128 + e.signum)
  except (jax.errors.JaxRuntimeError, ValueError) as e:
    _exit_if_a_peer_is_lost(e)
    raise
  except KeyboardInterrupt:
    # Ctrl-C outside the train loop (loading data, compiling), or a second
    # one inside it: nothing half-written to keep, so no traceback.
    print('interrupted', file=sys.stderr)
    sys.exit(130)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)

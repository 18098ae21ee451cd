"""The sweep's worker processes: `config.workers` of them, each on its own
GPU while there are several, else all on the one device."""

import glob
import multiprocessing
import os
import signal
import sys

from absl import logging
import ml_collections

from icckd_jax import logs
from icckd_jax.errors import UserError
from icckd_jax.experiments.sweep import worker as sweep_worker
from icckd_jax.training.preemption import Preempted, StopRequest
from icckd_jax.training import compilation_cache


# A worker that stopped for a signal exits 128 + its number.
_STOP_SIGNALS = tuple(int(sig) for sig in StopRequest.SIGNALS)


def _visible_gpus() -> list[str]:
  """The GPU ids CUDA would show a child process (none on a CPU machine)."""
  visible = os.environ.get('CUDA_VISIBLE_DEVICES')
  if visible is not None:
    return [d for d in visible.split(',') if d.strip()]
  return [str(i) for i in range(len(glob.glob('/proc/driver/nvidia/gpus/*')))]


def set_up_process(config_dict: dict, verbosity: int) -> None:
  """A worker process's device set-up and logging, as launch.py's: for the
  processes of this pool and for the tasks of a SLURM array."""
  # Processes sharing a GPU must not each take most of its memory up front.
  os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
  logging.set_verbosity(verbosity)
  logging.use_absl_handler()
  logging.get_absl_handler().addFilter(logs.OwnInfoOnly())
  logs.quiet_failed_saves()
  compilation_cache.enable(
    config_dict.get('compilation_cache', compilation_cache.DEFAULT_DIR)
  )


def _worker_main(
  config_dict: dict, workdir: str, worker: int, gpu: str | None, verbosity: int
) -> None:
  """A worker process: its own device set-up and logging, then `work`."""
  if gpu is not None:
    os.environ['CUDA_VISIBLE_DEVICES'] = gpu
  set_up_process(config_dict, verbosity)
  try:
    sweep_worker.work(ml_collections.ConfigDict(config_dict), workdir, worker)
  except UserError as e:
    logging.error('[worker %d] %s', worker, e)
    sys.exit(2)
  except Preempted as e:
    logging.warning('[worker %d] %s', worker, e)
    sys.exit(128 + e.signum)


def run_workers(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Starts config.workers processes and waits for them all."""
  gpus = _visible_gpus()
  context = multiprocessing.get_context('spawn')
  processes = []
  for worker in range(config.workers):
    gpu = gpus[worker % len(gpus)] if len(gpus) > 1 else None
    process = context.Process(
      target=_worker_main,
      name=f'sweep-worker-{worker}',
      args=(config.to_dict(), workdir, worker, gpu, logging.get_verbosity()),
    )
    process.start()
    processes.append(process)
  for process in processes:
    process.join()
  failed = [(i, p.exitcode) for i, p in enumerate(processes) if p.exitcode]
  stopped = [code - 128 for _, code in failed if code - 128 in _STOP_SIGNALS]
  if failed and len(stopped) == len(failed):
    raise Preempted(
      stopped[0],
      f'{len(stopped)} sweep worker(s) stopped by '
      f'{signal.Signals(stopped[0]).name}; finished runs and the stopped '
      'ones are saved, run the same command again to resume',
    )
  if failed:
    raise UserError(
      'sweep worker(s) failed (worker, exit code): '
      f'{failed}; finished runs are kept, run the same command '
      'again to resume the rest'
    )

"""A sweep on a SLURM cluster: its workers as the tasks of a job array,
submitted through submitit (`config.executor='slurm'`, `config.slurm.*`).

Each task is one worker of the run store (sweep/worker.py), as a local
worker is: it claims stages by their workdir locks, trains them, writes each
finished run's result and the report, and ends when every run has finished.
The workdir must be on a filesystem every node sees.

What is submitted is what is missing: as many tasks as there are unfinished
runs, at most `config.slurm.array_parallelism`, less the tasks of this
workdir's earlier arrays still queued or running (squeue, by the job name
the workdir gives them). Their logs go to WORKDIR/slurm/.

Time limits and preemption: tasks ask SLURM for submitit's signal (USR2)
`signal_delay_s` seconds before their time limit. A task that receives it
stops as on SIGTERM (training/preemption.py): its run saves at the next step
boundary; then submitit requeues it, and the requeued task resumes that run
from its checkpoint, bit for bit. SIGTERM itself (scancel, or `scontrol
requeue`, which SLURM requeues on its own) saves and stops the same way.
"""

import dataclasses
import getpass
import hashlib
import os
import shutil
import signal
import subprocess

from absl import logging
import ml_collections

try:  # A machine without submitit (the GPU one) runs its sweeps locally.
  import submitit
except ImportError:
  submitit = None

from icckd_jax.errors import UserError
from icckd_jax.experiments.sweep import plan as sweep_plan
from icckd_jax.experiments.sweep import pool as sweep_pool
from icckd_jax.experiments.sweep import runner
from icckd_jax.experiments.sweep import worker as sweep_worker
from icckd_jax.training.preemption import Preempted, StopRequest

EXECUTORS = ('local', 'slurm')
# WORKDIR/slurm/: submitit's files, the tasks' logs among them.
JOBS_DIR = 'slurm'
# The signal submitit asks SLURM for before the time limit.
TIME_LIMIT_SIGNAL = signal.SIGUSR2  # submitit's SlurmJobEnvironment.USR_SIG
# config.slurm's fields that must be integers, and their least value.
_LEAST = {
  'gpus_per_task': 0,
  'cpus_per_task': 1,
  'time_min': 1,
  'signal_delay_s': 1,
  'array_parallelism': 1,
  'max_requeues': 0,
}


def executor(config: ml_collections.ConfigDict) -> str:
  """config.executor, checked: 'local' (where absent) or 'slurm'."""
  name = config.get('executor', 'local')
  if name not in EXECUTORS:
    raise UserError(
      f'config.executor={name!r} is unknown; choose one of: '
      + ', '.join(EXECUTORS)
    )
  return name


def check(config: ml_collections.ConfigDict) -> None:
  """Refuses a config.slurm that SLURM or submitit would refuse later, and
  a machine without sbatch, before anything is written."""
  slurm = config.get('slurm')
  if slurm is None:
    raise UserError(
      "config.executor='slurm' needs config.slurm (configs/study.py's "
      'fields: partition, time_min, ...)'
    )
  for field, least in _LEAST.items():
    value = slurm.get(field)
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
      raise UserError(
        f'config.slurm.{field}={value!r} must be an integer >= {least}'
      )
  if slurm.signal_delay_s >= 60 * slurm.time_min:
    raise UserError(
      f'config.slurm.signal_delay_s={slurm.signal_delay_s} must be less '
      f'than config.slurm.time_min={slurm.time_min} minutes: the signal to '
      'save comes that many seconds before the time limit'
    )
  if config.get('workers', 1) != 1:
    raise UserError(
      f"config.workers={config.workers} with config.executor='slurm': each "
      'task of the array is one worker; set '
      'config.slurm.array_parallelism instead'
    )
  if submitit is None:
    raise UserError(
      "config.executor='slurm' needs submitit (pip install submitit), "
      'which this Python lacks'
    )
  if shutil.which('sbatch') is None:
    raise UserError(
      "config.executor='slurm' but sbatch is not on PATH; submit from a "
      "SLURM login node, or run the workers here with config.executor='local'"
    )


def job_name(workdir: str) -> str:
  """The name of every array of this workdir, by which squeue finds its
  tasks still queued or running."""
  digest = hashlib.sha256(os.path.abspath(workdir).encode()).hexdigest()
  return f'icckd-{digest[:12]}'


def tasks_to_submit(unfinished: int, live: int, parallelism: int) -> int:
  """How many tasks a submission adds: one per unfinished run, at most
  `parallelism` at once, less the `live` ones (queued or running) that
  earlier submissions left."""
  return max(0, min(unfinished, parallelism) - live)


def live_tasks(name: str) -> int:
  """This user's array tasks named `name` that are queued or running."""
  listed = subprocess.run(
    ['squeue', '--noheader', '--array', f'--name={name}', '--format=%i']
    + [f'--user={getpass.getuser()}'],
    capture_output=True,
    text=True,
    check=False,
  )
  if listed.returncode:
    raise UserError(
      f'squeue failed ({listed.stderr.strip()}); the tasks already '
      'submitted for this workdir cannot be counted'
    )
  return len(listed.stdout.split())


class ArrayTask(submitit.helpers.Checkpointable if submitit else object):
  """One task of the array: a worker of the sweep. On the time-limit
  signal its run saves at the next step boundary, and only then does
  submitit checkpoint it (`checkpoint`: this same call) and requeue it."""

  def __call__(self, config_dict: dict, workdir: str, worker: int) -> int:
    sweep_pool.set_up_process(config_dict, logging.INFO)
    requeue = signal.getsignal(TIME_LIMIT_SIGNAL)
    received = []

    def save_then_requeue(signum, frame):
      received.append(signum)
      logging.warning(
        '[worker %d] %s: the time limit is near; saving at the next step, '
        'then requeued.',
        worker,
        signal.Signals(signum).name,
      )
      stop = signal.getsignal(signal.SIGTERM)  # The StopRequest's.
      stop(signal.SIGTERM, frame)

    # Around the whole worker, so that a signal before its first stage
    # (while it measures steps) is not lost.
    with StopRequest():
      signal.signal(TIME_LIMIT_SIGNAL, save_then_requeue)
      try:
        return sweep_worker.work(
          ml_collections.ConfigDict(config_dict), workdir, worker
        )
      except Preempted as e:
        logging.warning('[worker %d] %s', worker, e)
        if received and callable(requeue):
          requeue(received[0], None)  # submitit's: requeues, then exits.
        raise


@dataclasses.dataclass(frozen=True)
class Submission:
  """What a submission did: the array's job id (None when nothing was
  submitted), its task count, and what a user reads."""

  job_id: str | None
  tasks: int
  message: str


def _executor(
  config: ml_collections.ConfigDict, workdir: str, tasks: int
) -> 'submitit.SlurmExecutor':
  slurm = config.slurm
  executor = submitit.SlurmExecutor(
    folder=os.path.join(workdir, JOBS_DIR), max_num_timeout=slurm.max_requeues
  )
  optional = {
    'partition': slurm.get('partition'),
    'account': slurm.get('account'),
    'gpus_per_task': slurm.gpus_per_task or None,
    'mem': f'{slurm.mem_gb}G' if slurm.get('mem_gb') else None,
  }
  executor.update_parameters(
    job_name=job_name(workdir),
    time=slurm.time_min,
    cpus_per_task=slurm.cpus_per_task,
    signal_delay_s=slurm.signal_delay_s,
    array_parallelism=min(tasks, slurm.array_parallelism),
    **{k: v for k, v in optional.items() if v is not None},
  )
  return executor


def submit(config: ml_collections.ConfigDict, workdir: str) -> Submission:
  """Submits the workers this sweep is missing as one job array."""
  check(config)
  config = runner.prepared(config, workdir)
  workdir = os.path.abspath(workdir)
  unfinished = [
    run
    for run in sweep_plan.plan(config, workdir)
    if not sweep_worker.has_result(run)
  ]
  if not unfinished:
    return Submission(
      None, 0, f'Nothing to submit: every run of {workdir} has finished.'
    )
  live = live_tasks(job_name(workdir))
  tasks = tasks_to_submit(len(unfinished), live, config.slurm.array_parallelism)
  follow = f'squeue --name={job_name(workdir)}'
  if not tasks:
    return Submission(
      None,
      0,
      f'Nothing to submit: {live} task(s) already queued or running '
      f'cover the {len(unfinished)} unfinished run(s); follow them with '
      f'`{follow}`.',
    )
  jobs = _executor(config, workdir, tasks).map_array(
    ArrayTask(),
    [config.to_dict()] * tasks,
    [workdir] * tasks,
    list(range(tasks)),
  )
  job_id = jobs[0].job_id.split('_')[0]
  logs = os.path.join(workdir, JOBS_DIR, f'{job_id}_*_log.err')
  return Submission(
    job_id,
    tasks,
    f'Submitted job array {job_id}: {tasks} worker task(s) for '
    f'{len(unfinished)} unfinished run(s)'
    + (f' ({live} earlier task(s) still queued or running)' if live else '')
    + f'. Follow: `{follow}`, `tail -f {logs}`; the report: '
    f'{workdir}/summary.md, rewritten after each run. Cancel: '
    f'`scancel {job_id}` (what has trained is kept; rerun this command to '
    'submit what is missing).',
  )

"""A sweep on SLURM (experiments/sweep/slurm.py) and --multihost under srun:
what is submitted, the refusals, SLURM's step environment; then, on a real
one-node SLURM (tests/slurm_cluster.py), a 2-task array ending with one
local worker's records, a task signalled before its time limit requeued and
resumed exactly, and `srun -n 2` training equal to one process with two
devices."""

import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import study
from conftest import QUICK_COMPILE, ROOT
import helpers
from icckd_jax import parallel
from icckd_jax.errors import UserError
from icckd_jax.experiments.sweep import slurm
from icckd_jax.training import preemption
from launch_in_process import refusal, run_launcher

# Two runs sharing one teacher (its claim makes one task wait for the
# other), 16x16 synthetic images, 8 steps an epoch: a teacher of 6 epochs
# leaves time to signal its task mid-run.
SWEEP = (
  '--config=configs/ablation_margin.py:smoke',
  '--config.base.teacher.dataset.image_size=16',
  '--config.base.teacher.num_epochs=6',
  '--config.base.student.num_epochs=1',
  '--config.base.teacher.log_every_steps=8',
  '--config.base.student.log_every_steps=8',
  '--config.settings=("kd: student.distill.method=\'kd\'",'
  '"kd_rkd: student.distill.method=\'kd_rkd\'")',
  '--config.seeds=(0,)',
)
# What the local cluster's 2 CPUs hold: one CPU a task.
ON_SLURM = (
  '--config.executor=slurm',
  '--config.slurm.cpus_per_task=1',
  '--config.slurm.time_min=30',
  '--config.slurm.signal_delay_s=60',
)


@pytest.mark.parametrize(
  'unfinished, live, parallelism, submitted',
  [(5, 0, 8, 5), (5, 0, 2, 2), (5, 2, 2, 0), (5, 1, 3, 2), (0, 0, 8, 0)],
)
def test_a_submission_adds_only_the_missing_tasks(
  unfinished, live, parallelism, submitted
):
  assert slurm.tasks_to_submit(unfinished, live, parallelism) == submitted


def test_a_workdir_names_its_arrays_however_spelt(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  name = slurm.job_name('study')
  assert name == slurm.job_name(str(tmp_path / 'study'))
  assert name != slurm.job_name(str(tmp_path / 'other'))


def _study(**slurm_fields):
  config = study.get_config('smoke')
  config.executor = 'slurm'
  config.slurm.update(slurm_fields)
  return config


@pytest.mark.parametrize(
  'fields, said',
  [
    ({'time_min': 0}, 'config.slurm.time_min=0 must be an integer >= 1'),
    ({'array_parallelism': 0}, 'config.slurm.array_parallelism=0'),
    ({'gpus_per_task': -1}, 'config.slurm.gpus_per_task=-1'),
    ({'max_requeues': -1}, 'config.slurm.max_requeues=-1'),
    (
      {'time_min': 2, 'signal_delay_s': 120},
      'signal_delay_s=120 must be less than config.slurm.time_min=2',
    ),
  ],
)
def test_a_slurm_setting_slurm_would_refuse_is_refused(fields, said):
  with pytest.raises(UserError, match='.*'.join(map(_escaped, said.split()))):
    slurm.check(_study(**fields))


def _escaped(word: str) -> str:
  return ''.join('\\' + c if c in '.()[]+*?' else c for c in word)


def test_workers_with_slurm_are_refused():
  config = _study()
  config.workers = 2
  with pytest.raises(UserError, match='array_parallelism instead'):
    slurm.check(config)


def test_an_unknown_executor_is_refused_before_anything_is_written(tmp_path):
  line = refusal(
    tmp_path / 'new', '--config=configs/study.py:smoke', '--config.executor=k8s'
  )
  assert "config.executor='k8s' is unknown; choose one of: local, slurm" in line


def test_without_submitit_runs_are_local_and_slurm_is_refused_in_one_line():
  """A machine without submitit (the GPU one) imports the launcher and runs
  studies locally; config.executor='slurm' says what is missing."""
  code = (
    'import sys; sys.modules["submitit"] = None\n'
    'import launch, icckd_jax.main\n'
    'from configs import study\n'
    'from icckd_jax.experiments.sweep import slurm\n'
    'from icckd_jax.errors import UserError\n'
    'config = study.get_config("smoke"); config.executor = "slurm"\n'
    'try:\n'
    '  slurm.check(config)\n'
    'except UserError as e:\n'
    '  print(e)\n'
  )
  done = subprocess.run(
    [sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True
  )
  assert done.returncode == 0, done.stderr[-2000:]
  assert done.stdout.strip() == (
    "config.executor='slurm' needs submitit (pip install submitit), which "
    'this Python lacks'
  )


def test_the_time_limit_signal_is_submitits():
  from submitit.slurm import slurm as submitit_slurm  # pylint: disable=g-import-not-at-top

  assert slurm.TIME_LIMIT_SIGNAL == getattr(
    signal, 'SIG' + submitit_slurm.SlurmJobEnvironment.USR_SIG
  )


def test_slurm_without_sbatch_is_refused_before_anything_is_written(
  tmp_path, monkeypatch
):
  monkeypatch.setenv('PATH', str(tmp_path / 'empty'))
  line = refusal(
    tmp_path / 'new',
    '--config=configs/study.py:smoke',
    '--config.executor=slurm',
  )
  assert 'sbatch is not on PATH' in line and "executor='local'" in line


@pytest.mark.parametrize(
  'sent, handed_over',
  [(slurm.TIME_LIMIT_SIGNAL, ['step', 'requeue']), (signal.SIGTERM, ['step'])],
)
def test_a_task_saves_at_the_step_boundary_before_submitit_requeues_it(
  monkeypatch, sent, handed_over
):
  """The time-limit signal stops the worker at its next step boundary (as
  SIGTERM does) and only then reaches submitit's handler, which requeues;
  SIGTERM alone (scancel) stops without a requeue."""
  calls = []

  def work(config, workdir, worker):
    with preemption.StopRequest() as stop:
      os.kill(os.getpid(), sent)
      calls.append('step')
      stop.stop_if_requested('the next step')

  monkeypatch.setattr(slurm.sweep_worker, 'work', work)
  monkeypatch.setattr(slurm.sweep_pool, 'set_up_process', lambda *a: None)
  submitits = signal.signal(
    slurm.TIME_LIMIT_SIGNAL, lambda *a: calls.append('requeue')
  )
  try:
    with pytest.raises(preemption.Preempted):
      slurm.ArrayTask()({}, 'unused', 0)
  finally:
    signal.signal(slurm.TIME_LIMIT_SIGNAL, submitits)
  assert calls == handed_over


STEP = {
  'SLURM_JOB_ID': '12',
  'SLURM_STEP_NODELIST': 'node[3-4]',
  'SLURM_NTASKS': '2',
  'SLURM_PROCID': '1',
  'SLURM_LOCALID': '0',
}


def test_slurm_step_environment_is_read_as_jax_reads_it():
  assert parallel.slurm_process(STEP) == (2, 1)
  # sbatch's own shell, outside any srun step: no cluster to join.
  outside = {k: v for k, v in STEP.items() if k != 'SLURM_STEP_NODELIST'}
  assert parallel.slurm_process(outside) is None
  assert parallel.slurm_process({}) is None
  with pytest.raises(UserError, match="SLURM_NTASKS='two'"):
    parallel.slurm_process(dict(STEP, SLURM_NTASKS='two'))


def _succeeded(command: list[str], env) -> subprocess.CompletedProcess:
  """`command` run from the repository's root; fails with its stderr's end
  on a non-zero exit."""
  done = subprocess.run(
    command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
  )
  assert done.returncode == 0, done.stderr[-3000:]
  return done


def _launch(env, *args) -> str:
  """launch.py's stdout."""
  return _succeeded(
    [sys.executable, str(ROOT / 'launch.py'), *args], env
  ).stdout


def _wait_for_array(env, workdir: pathlib.Path, seconds: float = 540) -> None:
  """Until no task of `workdir`'s arrays is queued or running."""
  name = slurm.job_name(str(workdir))
  deadline = time.monotonic() + seconds
  while time.monotonic() < deadline:
    listed = subprocess.run(
      ['squeue', '--noheader', '--array', f'--name={name}', '--format=%i'],
      env=env,
      capture_output=True,
      text=True,
      check=True,
    )
    if not listed.stdout.strip():
      return
    time.sleep(1)
  pytest.fail(f'the array of {workdir} did not end in {seconds} s')


def _text(path: pathlib.Path) -> str:
  return path.read_text() if path.exists() else ''


def _logs(workdir: pathlib.Path) -> str:
  return ''.join(
    p.read_text() for p in sorted((workdir / slurm.JOBS_DIR).glob('*_log.*'))
  )


@pytest.fixture(scope='module')
def local_sweep(tmp_path_factory):
  """SWEEP by one local worker."""
  workdir = tmp_path_factory.mktemp('local') / 'sweep'
  code, stderr = run_launcher(*SWEEP, f'--workdir={workdir}')
  assert code == 0, stderr[-3000:]
  return workdir


@pytest.mark.slow
def test_a_two_task_array_ends_with_one_local_workers_records(
  slurm, local_sweep, tmp_path
):
  """Submitted as a 2-task array, the sweep returns at once with the job id;
  a second submission while the tasks run adds none; the tasks end with
  every run's records equal to one local worker's, the report written, and
  a third submission finds nothing missing."""
  workdir = tmp_path / 'sweep'
  out = _launch(slurm, *SWEEP, *ON_SLURM, f'--workdir={workdir}')
  assert 'Submitted job array' in out and '2 worker task(s)' in out
  again = _launch(slurm, *SWEEP, *ON_SLURM, f'--workdir={workdir}')
  assert 'Nothing to submit: 2 task(s) already queued or running' in again
  _wait_for_array(slurm, workdir)
  assert helpers.run_numbers(workdir) == helpers.run_numbers(local_sweep)
  for run in ('kd', 'kd_rkd'):
    assert (workdir / run / 'seed_0' / 'result.json').exists(), _logs(workdir)
  assert (workdir / 'summary.md').exists()
  assert '[worker 1]' in _logs(workdir)  # the second task worked too
  last = _launch(slurm, *SWEEP, *ON_SLURM, f'--workdir={workdir}')
  assert 'Nothing to submit: every run' in last


@pytest.mark.slow
def test_a_task_signalled_before_its_time_limit_is_requeued_and_resumes_exactly(
  slurm, local_sweep, tmp_path
):
  """One task; the time-limit signal (submitit's USR2, as `--signal` sends
  it) mid-teacher: the task saves at the next step, submitit requeues it,
  and the requeued task resumes there and ends with one local worker's
  records and parameters."""
  workdir = tmp_path / 'sweep'
  out = _launch(
    slurm,
    *SWEEP,
    *ON_SLURM,
    '--config.slurm.array_parallelism=1',
    f'--workdir={workdir}',
  )
  job = out.split('Submitted job array ')[1].split(':')[0]
  deadline = time.monotonic() + 300
  teachers = workdir / 'teachers'
  # The teacher's first epoch is recorded: five are left to signal in.
  while not any(
    '"kind": "epoch"' in _text(d / 'metrics.jsonl')
    for d in (teachers.iterdir() if teachers.exists() else ())
  ):
    assert time.monotonic() < deadline, _logs(workdir)
    time.sleep(0.2)
  subprocess.run(
    ['scancel', f'--signal={slurm_signal()}', job], env=slurm, check=True
  )
  _wait_for_array(slurm, workdir)
  logs = _logs(workdir)
  assert 'Requeued job' in logs and 'Resumed from' in logs, logs[-3000:]
  assert helpers.run_numbers(workdir) == helpers.run_numbers(local_sweep)
  for kind in ('teachers', 'students'):
    for run in (workdir / kind).iterdir():
      helpers.assert_same_run(local_sweep / kind / run.name, run)


def slurm_signal() -> str:
  return slurm.TIME_LIMIT_SIGNAL.name.removeprefix('SIG')


@pytest.mark.slow
def test_srun_two_processes_train_like_one_process_with_two_devices(
  slurm, tmp_path
):
  """`srun -n 2 python launch.py ... --multihost`, no coordinator flags:
  jax.distributed reads SLURM's step; one CPU device a process; the
  checkpoint equals one process's with two devices."""
  args = ('--config=configs/teacher.py:smoke', *helpers.TINY)
  single = tmp_path / 'single'
  code, stderr = run_launcher(
    *args, '--config.num_devices=2', f'--workdir={single}'
  )
  assert code == 0, stderr[-2000:]
  env = dict(
    slurm,
    XLA_FLAGS='--xla_force_host_platform_device_count=1 '
    + f'--xla_cpu_collective_timeout_seconds=900 {QUICK_COMPILE}',
  )
  srun = tmp_path / 'srun'
  done = _succeeded(
    ['srun', '-n', '2', '--cpus-per-task=1', sys.executable]
    + [str(ROOT / 'launch.py'), *args, f'--workdir={srun}', '--multihost'],
    env,
  )
  assert 'for 2 processes at SLURM' in done.stderr
  assert '2 cpu device(s) in 2 process(es)' in done.stderr
  state_a, meta_a = helpers.restore_state(single)
  state_b, meta_b = helpers.restore_state(srun)
  jax.tree.map(np.testing.assert_array_equal, state_a, state_b)
  assert meta_a['epoch'] == meta_b['epoch']
  assert os.path.exists(srun / 'metrics.jsonl')

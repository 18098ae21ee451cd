"""Sweeps shared by workers: runs named by config (one teacher trained once
for every setting that needs it), two workers reproducing one worker bit for
bit, a killed worker's half-trained run resumed by another, and a stop
pending when a worker's stage ends stopping it before the next stage."""

import json
import os
import signal
import subprocess
import sys
import time

import ml_collections
import pytest

from conftest import ROOT
from configs import ablation_cache
from configs import ablation_margin
from icckd_jax.experiments.sweep import report
from icckd_jax.experiments.sweep import run_store
from icckd_jax.experiments.sweep import settings as settings_lib
from icckd_jax.experiments.sweep import runner as sweep
from icckd_jax.experiments.sweep import plan as sweep_plan
from icckd_jax.experiments.sweep import worker as sweep_worker
from icckd_jax.runs import workdir_lock
from icckd_jax.runs.reuse import Reuse
from icckd_jax.stages import preflight
from icckd_jax.stages import student as student_lib
from icckd_jax.stages import teacher as teacher_lib
from icckd_jax.training import checkpoint
from icckd_jax.training import preemption
from icckd_jax.runs import layout
from helpers import run_numbers


def tiny_sweep(
  workers=1, settings=('kd: student.distill.method="kd"',), seeds=(0, 1)
):
  """A teacher and its KD student per seed: resnet8 on 16x16 synthetic
  images, 8 steps an epoch."""
  config = ablation_margin.get_config('smoke')
  for stage in (config.base.teacher, config.base.student):
    stage.log_every_steps = 8
  config.base.teacher.dataset.image_size = 16
  config.base.teacher.num_epochs = 4
  config.base.student.num_epochs = 1
  config.settings = settings
  config.seeds = seeds
  config.workers = workers
  config.estimate = False
  return config


def test_runs_are_named_by_config_not_by_setting(tmp_path):
  margin = ablation_margin.get_config('cpu')
  cache = ablation_cache.get_config('cpu')
  margin.store = cache.store = str(tmp_path / 'store')
  runs = {
    (r.setting, r.seed): r
    for r in sweep_plan.plan(margin, str(tmp_path / 'margin'))
    + sweep_plan.plan(cache, str(tmp_path / 'cache'))
  }
  for seed in margin.seeds:
    features, delta = runs['features', seed], runs['delta=0.4', seed]
    # The cache ablation's feature-cache runs are the δ = 0.4 runs.
    assert features.teacher_dir == delta.teacher_dir
    assert features.student_dir == delta.student_dir
    assert features.run_dir != delta.run_dir
    assert features.teacher_dir.startswith(str(tmp_path / 'store'))
  teachers = {r.teacher_dir for r in runs.values()}
  # 9 distinct teachers (7 margin settings, no_cache, images) x 3 seeds.
  assert len(teachers) == 27

  # Student methods share their teacher, not their student.
  kd, rkd = sweep_plan.plan(
    tiny_sweep(
      settings=(
        'kd: student.distill.method="kd"',
        'rkd: student.distill.method="kd_rkd"',
      ),
      seeds=(0,),
    ),
    str(tmp_path / 'kd'),
  )
  assert kd.teacher_dir == rkd.teacher_dir
  assert kd.student_dir != rkd.student_dir
  assert kd.teacher_dir.startswith(str(tmp_path / 'kd' / 'teachers'))

  # What changes a result changes the key; bookkeeping does not.
  base = tiny_sweep().base.teacher
  key = run_store.teacher_key(base)
  for field, value, same in (
    ('log_every_steps', 3, True),
    ('checkpoint_every_epochs', 5, True),
    ('workdir', 'elsewhere', True),
    ('seed', 1, False),
    ('num_epochs', 9, False),
    ('icc.delta', 0.5, False),
    ('dtype', 'bfloat16', False),
  ):
    changed = settings_lib.apply_overrides(base, {field: value})
    assert (run_store.teacher_key(changed) == key) == same, field
  student = kd.student
  moved = settings_lib.apply_overrides(
    student, {'teacher.workdir': 'elsewhere'}
  )
  assert run_store.student_key(moved, key) == run_store.student_key(
    student, key
  )
  assert run_store.student_key(student, key) != run_store.student_key(
    student, 'another teacher'
  )


HOLD = """
import fcntl, os, sys, time
fd = os.open(os.path.join(sys.argv[1], '.lock'), os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
print('held', flush=True)
time.sleep(120)
"""


def test_a_stage_held_by_another_process_is_skipped_unbuilt(
  tmp_path, monkeypatch
):
  """A worker claims a stage by its lock before loading or building
  anything: a stage whose lock another process holds costs it one try."""
  config = tiny_sweep(seeds=(0,))
  (run,) = sweep_plan.plan(config, str(tmp_path / 'sweep'))
  os.makedirs(run.teacher_dir)
  holder = subprocess.Popen(
    [sys.executable, '-c', HOLD, run.teacher_dir],
    stdout=subprocess.PIPE,
    text=True,
  )
  try:
    assert holder.stdout.readline() == 'held\n'

    def never(*args, **kwargs):
      raise AssertionError('a busy stage loaded its data')

    monkeypatch.setattr(teacher_lib, 'load_dataset', never)
    monkeypatch.setattr(student_lib, 'load_dataset', never)
    monkeypatch.setattr(preflight, 'checked_mesh', never)
    held = set()
    with preemption.StopRequest() as stop:
      trained, claimed_all = sweep_worker._train_stages(  # pylint: disable=protected-access
        run, '[1/1]', [run], 0, None, Reuse(), held, stop
      )
    assert (trained, claimed_all) == (0, False)
    assert held == {run.teacher_dir}
  finally:
    holder.kill()
    holder.wait()
  # The worker left the lock as it found it: free once the holder is gone.
  lock = workdir_lock.try_lock(run.teacher_dir)
  assert lock is not None
  lock.release()


@pytest.fixture(scope='module')
def one_worker(tmp_path_factory):
  """The reference: the tiny sweep in this process, one worker."""
  workdir = tmp_path_factory.mktemp('one') / 'sweep'
  config = tiny_sweep()
  config.estimate = True  # Also runs the step probe once.
  sweep.run_sweep(config, str(workdir))
  return workdir


@pytest.mark.slow
def test_two_workers_give_the_one_worker_results(one_worker, tmp_path):
  workdir = tmp_path / 'two'
  sweep.run_sweep(tiny_sweep(workers=2), str(workdir))
  reference = run_numbers(one_worker)
  assert len(reference) == 2 + 2  # a teacher and a student per seed
  assert run_numbers(workdir) == reference
  for name in ('kd',):
    for seed in (0, 1):
      mine = json.loads(
        (workdir / name / f'seed_{seed}' / layout.RESULT_FILE).read_text()
      )['row']
      theirs = json.loads(
        (one_worker / name / f'seed_{seed}' / layout.RESULT_FILE).read_text()
      )['row']
      for column in (
        'teacher_top1_last',
        'student_top1_last',
        'teacher_ce_variance',
      ):
        assert mine[column] == theirs[column]
  assert (workdir / report.SUMMARY_MD).exists()


WORKER = """
import json, sys
import ml_collections
from icckd_jax.experiments.sweep import worker as sweep_worker
sweep_worker.work(ml_collections.ConfigDict(json.loads(sys.argv[1])),
                  sys.argv[2])
"""


@pytest.mark.slow
def test_a_killed_workers_run_is_resumed_by_another(
  one_worker, tmp_path, monkeypatch
):
  config = tiny_sweep(settings=('kd: student.distill.method="kd"',), seeds=(0,))
  workdir = tmp_path / 'killed'
  (run,) = sweep_plan.plan(config, str(workdir))
  sweep.write_sweep_file(config, str(workdir))  # as the command does first
  proc = subprocess.Popen(
    [sys.executable, '-c', WORKER, config.to_json(), str(workdir)],
    cwd=ROOT,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  first = os.path.join(run.teacher_dir, 'checkpoints', '1')
  deadline = time.time() + 300
  while not os.path.exists(first):
    assert proc.poll() is None and time.time() < deadline, 'no checkpoint 1'
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  ckpts = checkpoint.Checkpoints(run.teacher_dir, read_only=True)
  killed_at = ckpts.latest_epoch()
  ckpts.close()
  assert killed_at < config.base.teacher.num_epochs, (
    'the teacher finished before it could be killed: lengthen its epochs'
  )
  # The dead worker's claim died with it.
  lock = workdir_lock.try_lock(run.teacher_dir)
  assert lock is not None
  lock.release()

  restored = []
  restore = checkpoint.Checkpoints.restore_newest_intact

  def spy(self, abstract_state=None, *args, **kwargs):
    # A run resuming passes its state's shapes and gets a checkpoint back; a
    # student reading its teacher passes none.
    result = restore(self, abstract_state, *args, **kwargs)
    if abstract_state is not None and result is not None:
      restored.append(str(self.workdir))
    return result

  monkeypatch.setattr(checkpoint.Checkpoints, 'restore_newest_intact', spy)
  assert sweep_worker.work(config, str(workdir), poll_seconds=0.1) == 2
  # The teacher resumed from the dead worker's checkpoint, not from scratch.
  assert restored == [run.teacher_dir]
  teacher_key = os.path.basename(run.teacher_dir)
  student_key = os.path.basename(run.student_dir)
  reference = run_numbers(one_worker)
  resumed = run_numbers(workdir)
  for key in (f'teachers/{teacher_key}', f'students/{student_key}'):
    assert resumed[key] == reference[key]
  assert (workdir / 'kd' / 'seed_0' / layout.RESULT_FILE).exists()


def test_a_stop_in_a_sweep_workers_stage_ends_it_before_the_next(
  tmp_path, monkeypatch
):
  """A worker's teacher stage ends (finished and saved) while a SIGTERM is
  pending: the worker stops with it before the student stage starts."""
  trained = []

  def train_fn(name):
    def train(config, workdir, reuse, claim, hooks):
      del config, reuse
      assert claim.held  # The worker claimed the stage before calling it.
      assert hooks == ()  # No sweep clock: this worker projects nothing.
      trained.append(name)
      os.kill(os.getpid(), signal.SIGTERM)  # Arrives after its last step.
      open(os.path.join(workdir, 'finished'), 'w').close()

    return train

  stages = [
    (name, str(tmp_path / name), ml_collections.ConfigDict(), train_fn(name))
    for name in ('teacher', 'student')
  ]
  monkeypatch.setattr(sweep_worker.sweep_plan, 'stages', lambda run: stages)
  monkeypatch.setattr(
    sweep_worker.sweep_plan,
    'finished',
    lambda d, c: os.path.exists(os.path.join(d, 'finished')),
  )
  run = ml_collections.ConfigDict({'setting': 'a', 'seed': 0})
  with preemption.StopRequest() as stop:
    with pytest.raises(preemption.Preempted) as stopped:
      sweep_worker._train_stages(  # pylint: disable=protected-access
        run, '[1/1]', [run], 0, None, Reuse(), set(), stop
      )
  assert stopped.value.signum == signal.SIGTERM
  assert trained == ['teacher']

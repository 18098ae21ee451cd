"""Hostile cases, second round: runs that reported success without their
checkpoint, stops forgotten between stages, teachers swapped under a
student, distillers on pairs they cannot serve, damaged sweep definitions
and results. Each must be one `error:` line and exit code 2 (or the stop's
exit code), with nothing good moved, deleted or overwritten.

In process wherever the behaviour allows it; what needs a real interpreter
(its exit, its stderr from background threads) is slow-marked.
"""

import errno
import json
import logging
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
import pytest

from conftest import ROOT
from launch_in_process import error_line, run_launcher
from configs import student as student_config
from icckd_jax import distillers
from icckd_jax import logs
from icckd_jax import models
from icckd_jax import parallel
from icckd_jax.data import datasets
from icckd_jax.errors import UserError
from icckd_jax.input_pipeline.source import Batch
from icckd_jax.experiments.sweep import plan as sweep_plan
from icckd_jax.training import checkpoint
from icckd_jax.stages import student
from icckd_jax.training import loop as loop_lib
from icckd_jax.training import preemption
from icckd_jax.stages import preflight
from icckd_jax.runs import spec

TINY = ('--config.dataset.num_train=64', '--config.dataset.num_test=64')
# A cross-entropy teacher (the cheapest step to compile), 2 steps per epoch.
TEACHER = (
  '--config=configs/teacher.py:smoke',
  *TINY,
  '--config.icc.lam=0',
  '--config.num_devices=1',
)
PIPELINE = (
  '--config=configs/pipeline.py:smoke',
  '--config.teacher.dataset.num_train=64',
  '--config.teacher.dataset.num_test=64',
  '--config.teacher.icc.lam=0',
  '--config.teacher.num_epochs=1',
  '--config.teacher.num_devices=1',
  '--config.student.num_epochs=1',
  '--config.student.num_devices=1',
)


# Signals.


@pytest.mark.parametrize(
  'signum', [signal.SIGTERM, signal.SIGINT, signal.SIGHUP]
)
def test_every_signal_a_terminal_sends_is_a_stop_request(signum):
  """SIGHUP (a closed ssh session) is a stop request like SIGTERM and
  Ctrl-C, not the end of the process without a save."""
  previous = signal.getsignal(signum)
  with preemption.StopRequest() as stop:
    handler = signal.getsignal(signum)
    assert getattr(handler, '__self__', None) is stop
    os.kill(os.getpid(), signum)
    assert stop.requested(0) == signum
  assert signal.getsignal(signum) == previous


def test_a_stop_request_nested_in_another_hands_its_signal_on():
  """A run's request inherits its job's signal and hands on one that came
  after the run's last check: a pipeline or a worker cannot forget it."""
  with preemption.StopRequest() as job:
    with preemption.StopRequest() as run:
      os.kill(os.getpid(), signal.SIGTERM)
    assert job.signum == signal.SIGTERM
    with preemption.StopRequest() as next_run:
      assert next_run.requested(0) == signal.SIGTERM
    with pytest.raises(preemption.Preempted) as stopped:
      job.stop_if_requested('the student stage')
    assert stopped.value.signum == signal.SIGTERM
  del run


def _signal_after_last_epoch(monkeypatch, stage_dir: str, signum: int):
  """Sends `signum` to this process once the run in a workdir ending with
  `stage_dir` has ended its last epoch: after the loop's last stop check."""
  end_epoch = loop_lib.end_epoch

  def then_signal(r, at, tally, evaluate_fn, test_split, epoch, epoch_time):
    end_epoch(r, at, tally, evaluate_fn, test_split, epoch, epoch_time)
    last = epoch + 1 == r.spec.recipe.num_epochs
    if r.workdir.endswith(stage_dir) and last:
      os.kill(os.getpid(), signum)

  monkeypatch.setattr(loop_lib, 'end_epoch', then_signal)


def test_a_stop_after_the_teachers_last_step_stops_the_pipeline(
  tmp_path, monkeypatch
):
  """SIGTERM after the teacher's last step: the teacher finishes and
  commits, the student does not start, exit 128 + 15; the rerun carries on
  with the student without retraining the teacher."""
  workdir = tmp_path / 'pipe'
  with monkeypatch.context() as patch:
    _signal_after_last_epoch(patch, 'teacher', signal.SIGTERM)
    code, stderr = run_launcher(*PIPELINE, f'--workdir={workdir}')
  assert code == 128 + signal.SIGTERM, stderr[-2000:]
  assert 'Traceback' not in stderr
  assert (workdir / 'teacher' / 'summary.json').exists()
  assert os.listdir(workdir / 'teacher' / 'checkpoints') == ['1']
  assert not (workdir / 'student').exists()
  code, stderr = run_launcher(*PIPELINE, f'--workdir={workdir}')
  assert code == 0, stderr[-2000:]
  assert 'not retraining' in stderr
  assert (workdir / 'student' / 'summary.json').exists()


def test_a_stop_after_a_runs_last_step_is_not_exit_0(tmp_path, monkeypatch):
  """SIGHUP after a lone run's last step: its summary and final checkpoint
  are written, and the process says it was stopped (exit 128 + 1)."""
  workdir = tmp_path / 'run'
  with monkeypatch.context() as patch:
    _signal_after_last_epoch(patch, 'run', signal.SIGHUP)
    code, stderr = run_launcher(
      *TEACHER, '--config.num_epochs=1', f'--workdir={workdir}'
    )
  assert code == 128 + signal.SIGHUP, stderr[-2000:]
  assert json.loads((workdir / 'summary.json').read_text())['epochs'] == 1
  assert os.listdir(workdir / 'checkpoints') == ['1']


# Saves that fail in Orbax's background threads.


def _fail_meta_save(monkeypatch, epoch: int, error: OSError) -> None:
  """Makes the background write of the `meta` item of `epoch`'s checkpoint
  raise `error`, as a full disk or a path the system refuses would."""
  save_fn = ocp.JsonCheckpointHandler._save_fn  # pylint: disable=protected-access

  async def failing(self, x, directory):
    if isinstance(x, dict) and x.get('epoch') == epoch and 'best' in x:
      raise error
    await save_fn(self, x, directory)

  monkeypatch.setattr(ocp.JsonCheckpointHandler, '_save_fn', failing)


@pytest.mark.parametrize('epoch', [1, 2])
def test_a_failed_async_save_is_one_line_and_leaves_no_summary(
  tmp_path, monkeypatch, epoch
):
  """The save of epoch 1 (found at epoch 2's save) or of the last epoch
  (found before the summary) fails in the background: one line naming the
  checkpoints, exit 2, no summary.json beside a missing checkpoint."""
  workdir = tmp_path / 'run'
  with monkeypatch.context() as patch:
    _fail_meta_save(patch, epoch, OSError(errno.EIO, 'Input/output error'))
    code, stderr = run_launcher(
      *TEACHER, '--config.num_epochs=2', f'--workdir={workdir}'
    )
  line = error_line(code, stderr)
  assert 'saving a checkpoint in' in line and 'Input/output error' in line
  assert not (workdir / 'summary.json').exists()


def test_a_full_disk_in_a_background_save_is_one_line(tmp_path, monkeypatch):
  """ENOSPC in the background write of the last checkpoint: the disk's
  line, exit 2, epoch 1's checkpoint intact, no half-written one left."""
  workdir = tmp_path / 'run'
  with monkeypatch.context() as patch:
    _fail_meta_save(patch, 2, OSError(errno.ENOSPC, 'No space left on device'))
    code, stderr = run_launcher(
      *TEACHER, '--config.num_epochs=2', f'--workdir={workdir}'
    )
  assert 'disk holding' in error_line(code, stderr)
  assert not (workdir / 'summary.json').exists()
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['1']


def test_background_save_tracebacks_are_dropped_and_others_kept():
  """Orbax's and asyncio's reports of a failed background save are
  dropped (the run says it once); other libraries' errors and Orbax's
  warnings pass."""
  quiet = logs.NoBackgroundSaveTracebacks()

  def record(level, path, message, exc=False, thread='save_finalize'):
    made = logging.LogRecord(
      'absl',
      level,
      path,
      1,
      message,
      None,
      (OSError, OSError(), None) if exc else None,
    )
    made.threadName = thread
    return made

  orbax = f'{os.sep}site-packages{os.sep}orbax{os.sep}checkpoint{os.sep}x.py'
  assert not quiet.filter(record(logging.ERROR, orbax, 'commit failed'))
  assert not quiet.filter(
    record(logging.ERROR, orbax, 'failed', exc=True, thread='MainThread')
  )
  asyncio = f'{os.sep}lib{os.sep}asyncio{os.sep}base_events.py'
  assert not quiet.filter(
    record(logging.ERROR, asyncio, 'Future exception was never retrieved')
  )
  assert quiet.filter(record(logging.WARNING, orbax, 'slow save'))
  assert quiet.filter(record(logging.ERROR, '/x/jax/y.py', 'other error'))


def test_closed_event_loop_reports_are_dropped_and_others_kept(monkeypatch):
  seen = []
  monkeypatch.setattr(sys, 'unraisablehook', seen.append)
  logs.quiet_closed_event_loops()

  class Unraisable:
    def __init__(self, error, obj=None):
      self.exc_value, self.object = error, obj

  sys.unraisablehook(Unraisable(RuntimeError('Event loop is closed')))
  other = Unraisable(ValueError('x'))
  sys.unraisablehook(other)
  assert seen == [other]


@pytest.mark.slow
def test_a_full_disk_mid_run_prints_no_traceback(tmp_path):
  """A real process whose epoch 2 save runs out of space in Orbax's
  background threads: one line, exit 2, no traceback from any thread."""
  wrapper = tmp_path / 'full_disk.py'
  wrapper.write_text(
    'import errno, sys\n'
    f'sys.path.insert(0, {str(ROOT)!r})\n'
    'import orbax.checkpoint as ocp\n'
    'save_fn = ocp.JsonCheckpointHandler._save_fn\n'
    'async def failing(self, x, directory):\n'
    "  if isinstance(x, dict) and x.get('epoch') == 2:\n"
    "    raise OSError(errno.ENOSPC, 'No space left on device')\n"
    '  await save_fn(self, x, directory)\n'
    'ocp.JsonCheckpointHandler._save_fn = failing\n'
    'import launch\n'
    'from absl import app\n'
    'sys.argv[0] = "launch.py"\n'
    'app.run(launch.main, flags_parser=launch.parse_flags)\n'
  )
  result = subprocess.run(
    [
      sys.executable,
      str(wrapper),
      *TEACHER,
      '--config.num_epochs=3',
      f'--workdir={tmp_path / "run"}',
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )
  assert 'disk holding' in error_line(result.returncode, result.stderr)
  assert not (tmp_path / 'run' / 'summary.json').exists()


# Paths the system refuses.


def test_a_workdir_with_no_room_for_its_checkpoints_paths_is_refused(tmp_path):
  """About 4,000 bytes of path, each name under 255: the write probe would
  pass, every save would fail. Refused before anything is written."""
  parts = ['d' * 250] * 16
  workdir = tmp_path.joinpath(*parts)
  code, stderr = run_launcher(*TEACHER, f'--workdir={workdir}')
  line = error_line(code, stderr)
  assert 'bytes long' in line and 'shorter --workdir' in line
  assert not (tmp_path / parts[0]).exists()


def test_a_workdir_name_over_the_name_limit_is_refused(tmp_path):
  workdir = tmp_path / ('n' * 300) / 'run'
  with pytest.raises(preflight.UserError, match='300 bytes, over the'):
    preflight.prepare_workdir(str(workdir))
  assert not list(tmp_path.iterdir())


# Resume.


def test_resuming_past_the_new_end_is_refused(tmp_path):
  """A finished 2-epoch run resumed with num_epochs=1 is refused, its
  summary and checkpoints unchanged."""
  workdir = tmp_path / 'run'
  code, stderr = run_launcher(
    *TEACHER, '--config.num_epochs=2', f'--workdir={workdir}'
  )
  assert code == 0, stderr[-2000:]
  summary = (workdir / 'summary.json').read_bytes()
  code, stderr = run_launcher(
    *TEACHER, '--config.num_epochs=1', f'--workdir={workdir}'
  )
  assert 'past the 2 steps of config.num_epochs=1' in error_line(code, stderr)
  assert (workdir / 'summary.json').read_bytes() == summary


# Teachers that are not what the student thinks.

STUDENT = (
  '--config=configs/student.py:smoke',
  *TINY,
  '--config.num_devices=1',
  '--config.num_epochs=2',
)


def _stop_before_step(monkeypatch, stop_at: int) -> None:
  """SIGTERM, as the loop's stop check sees it, before step `stop_at`."""

  def requested(self, step):
    del self
    return signal.SIGTERM if step == stop_at else 0

  monkeypatch.setattr(preemption.StopRequest, 'requested', requested)


def _teacher(workdir, *args, stop_at=None, monkeypatch=None):
  if stop_at is None:
    code, stderr = run_launcher(*TEACHER, *args, f'--workdir={workdir}')
    assert code == 0, stderr[-2000:]
    return
  with monkeypatch.context() as patch:
    _stop_before_step(patch, stop_at)
    code, stderr = run_launcher(*TEACHER, *args, f'--workdir={workdir}')
  assert code == 128 + signal.SIGTERM, stderr[-2000:]


def test_an_unfinished_teacher_is_refused_unless_allowed(tmp_path, monkeypatch):
  """A teacher stopped after epoch 1 of 2: a student is refused with one
  line; with teacher.allow_unfinished it trains and records the epoch."""
  teacher = tmp_path / 'teacher'
  _teacher(teacher, '--config.num_epochs=2', stop_at=2, monkeypatch=monkeypatch)
  student = tmp_path / 'student'
  args = (
    *STUDENT,
    f'--config.teacher.workdir={teacher}',
    f'--workdir={student}',
  )
  code, stderr = run_launcher(*args)
  line = error_line(code, stderr)
  assert 'unfinished teacher (epoch 1 of 2)' in line
  assert 'allow_unfinished' in line
  assert not student.exists()
  code, stderr = run_launcher(*args, '--config.teacher.allow_unfinished=True')
  assert code == 0, stderr[-2000:]
  summary = json.loads((student / 'summary.json').read_text())
  assert summary['teacher_epoch'] == 1
  assert summary['teacher_fingerprint']['step'] == 2


@pytest.mark.slow
def test_a_student_resumes_only_from_the_teacher_it_started_from(
  tmp_path, monkeypatch
):
  """The teacher workdir is replaced by another teacher between a
  student's start and its resume: the resume is refused, naming both
  fingerprints; put back, the same teacher resumes."""
  teacher, other = tmp_path / 'teacher', tmp_path / 'other'
  _teacher(teacher, '--config.num_epochs=1')
  _teacher(other, '--config.num_epochs=1', '--config.seed=3')
  student = tmp_path / 'student'
  args = (
    *STUDENT,
    f'--config.teacher.workdir={teacher}',
    f'--workdir={student}',
  )
  with monkeypatch.context() as patch:
    _stop_before_step(patch, 3)
    code, stderr = run_launcher(*args)
  assert code == 128 + signal.SIGTERM, stderr[-2000:]
  teacher.rename(tmp_path / 'kept')
  other.rename(teacher)
  before = sorted(p.name for p in student.rglob('*'))
  code, stderr = run_launcher(*args)
  line = error_line(code, stderr)
  assert 'started from the teacher' in line and 'same teacher' in line
  assert sorted(p.name for p in student.rglob('*')) == before
  teacher.rename(other)
  (tmp_path / 'kept').rename(teacher)
  code, stderr = run_launcher(*args)
  assert code == 0, stderr[-2000:]


# Distillers on pairs they cannot serve.


def _build(method: str, teacher_name: str, student_name: str):
  """build_student for `method` from an untrained `teacher_name` (the
  pairing depends on shapes alone), and the preflight's lowering of its
  step (tracing, not compiling: shapes are all that can fail here)."""
  config = student_config.get_config('smoke')
  config.model, config.distill.method = student_name, method
  config.distill.update(crd_negatives=16, crd_dim=8)
  config.dataset.update(num_train=64, num_test=64)
  dataset = datasets.load(spec.data_request(config.dataset))
  mesh = parallel.make_mesh(1)
  teacher_model = models.create_model(teacher_name, dataset.num_classes)
  variables = teacher_model.init(
    jax.random.key(0),
    jnp.zeros((1, *dataset.train_images.shape[1:])),
    train=False,
  )
  setup = student.build_student(
    spec.from_config(config),
    dataset,
    mesh,
    ml_collections.ConfigDict({'model': teacher_name}),
    parallel.put_replicated(variables, mesh),
  )
  state = checkpoint.abstract_like(jax.eval_shape(setup.init_state), mesh)
  images = jax.ShapeDtypeStruct(
    (1, config.batch_size, *dataset.train_images.shape[1:]), jnp.uint8
  )
  labels = jax.ShapeDtypeStruct((config.batch_size,), jnp.int32)
  batch = Batch(images, labels, labels if setup.with_indices else None)
  setup.train_step.lower(state, batch, setup.step_args)


@pytest.mark.parametrize(
  'method,mismatch',
  [
    ('reviewkd', 'stage 1 is 32x32 in the student but 16x16 in the teacher'),
    ('kdsvd', 'stage 1 has 16 channels in the student but 128'),
    ('ofd', 'needs a ResNet teacher'),
  ],
)
def test_a_distiller_refuses_a_pair_it_cannot_serve_before_compiling(
  method, mismatch
):
  """vgg8 teacher, resnet8 student: reviewkd (which died in the preflight
  compile with a broadcasting TypeError), kdsvd and ofd refuse with one
  line naming the method, both models and the mismatch."""
  with pytest.raises(UserError) as refused:
    _build(method, 'vgg8', 'resnet8')
  line = str(refused.value)
  assert '\n' not in line
  assert f"config.distill.method='{method}'" in line
  assert 'teacher vgg8' in line and 'student resnet8' in line
  assert mismatch in line


# Unusual pairs: other families, other stage counts, sizes and widths.
PAIRS = [
  ('vgg8', 'resnet8'),
  ('resnet8', 'vgg8'),
  ('wrn_16_1', 'ShuffleV1'),
  ('MobileNetV2', 'resnet8'),
  ('resnet8', 'MobileNetV2'),
  ('ResNet50', 'resnet8'),
  ('resnet8x4', 'ShuffleV2'),
]


@pytest.mark.slow
@pytest.mark.parametrize('teacher_name,student_name', PAIRS)
@pytest.mark.parametrize('method', sorted(distillers.DISTILLERS))
def test_every_distiller_serves_or_refuses_an_unusual_pair(
  method, teacher_name, student_name
):
  """Every method on every unusual pair: its step traces, or it refuses
  with one line naming it and both models; nothing else escapes."""
  try:
    _build(method, teacher_name, student_name)
  except UserError as e:
    line = str(e)
    assert '\n' not in line
    assert f"config.distill.method='{method}'" in line
    assert f'teacher {teacher_name}' in line
    assert f'student {student_name}' in line


# Sweep definitions.


@pytest.mark.parametrize('name', ['..', '.', 'a\\b'])
def test_a_setting_named_to_leave_the_sweep_is_refused(tmp_path, name):
  """A setting's name is a directory under the sweep's workdir: '..' (or
  '.', or a backslash) would put runs outside it, or over each other."""
  from configs import study  # pylint: disable=g-import-not-at-top

  config = study.get_config('cpu')
  config.settings = (f'{name}: teacher.icc.delta=0.2',)
  with pytest.raises(UserError, match='directory name of its own'):
    sweep_plan.plan(config, str(tmp_path / 'sweep'))
  assert not list(tmp_path.iterdir())


@pytest.mark.parametrize('field', ['seeds', 'primary_seeds'])
def test_repeated_seeds_are_refused(tmp_path, field):
  from configs import study  # pylint: disable=g-import-not-at-top

  config = study.get_config('cpu')
  config[field] = (0, 0)
  with pytest.raises(UserError, match=f'config.{field}=.0, 0. repeats'):
    sweep_plan.plan(config, str(tmp_path))


def test_a_sequence_override_given_twice_is_refused(tmp_path):
  """ml_collections joins a tuple given twice ((0, 1) then (0,): [0, 1,
  0]); a scalar given twice keeps its last value, as absl does."""
  code, stderr = run_launcher(
    *TEACHER,
    '--config.lr_decay_epochs=(1,)',
    '--config.lr_decay_epochs=(2,)',
    f'--workdir={tmp_path / "run"}',
  )
  assert 'config.lr_decay_epochs is given 2 times' in error_line(code, stderr)
  assert not (tmp_path / 'run').exists()


# Finished pipelines.


def test_a_finished_pipeline_refuses_another_teacher_config(tmp_path):
  """A finished pipeline rerun with another teacher seed is refused as the
  same change on configs/teacher.py is, not answered with the old run."""
  workdir = tmp_path / 'pipe'
  code, stderr = run_launcher(*PIPELINE, f'--workdir={workdir}')
  assert code == 0, stderr[-2000:]
  summary = (workdir / 'student' / 'summary.json').read_bytes()
  code, stderr = run_launcher(
    *PIPELINE, '--config.teacher.seed=3', f'--workdir={workdir}'
  )
  line = error_line(code, stderr)
  assert line.startswith('error: config.teacher: ') and 'seed=0 (now 3)' in line
  assert (workdir / 'student' / 'summary.json').read_bytes() == summary


@pytest.mark.slow
def test_a_finished_pipelines_damaged_teacher_checkpoint_is_retrained(
  tmp_path,
):
  """The teacher's last checkpoint of a finished pipeline is damaged: the
  rerun retrains the teacher's last epoch from the intact one (moving the
  damaged one aside), instead of distilling from an older checkpoint."""
  args = (*PIPELINE, '--config.teacher.num_epochs=2')
  workdir = tmp_path / 'pipe'
  code, stderr = run_launcher(*args, f'--workdir={workdir}')
  assert code == 0, stderr[-2000:]
  last = workdir / 'teacher' / 'checkpoints' / '2'
  largest = max(
    (p for p in last.rglob('*') if p.is_file()), key=lambda p: p.stat().st_size
  )
  largest.write_bytes(largest.read_bytes()[:10])
  code, stderr = run_launcher(*args, f'--workdir={workdir}')
  assert code == 0, stderr[-2000:]
  assert 'not retraining' not in stderr
  assert (workdir / 'teacher' / 'damaged').exists()
  assert sorted(os.listdir(workdir / 'teacher' / 'checkpoints')) == ['1', '2']


def test_a_stop_in_a_sweep_workers_stage_ends_it_before_the_next(
  tmp_path, monkeypatch
):
  """A worker's teacher stage ends (finished and saved) while a SIGTERM is
  pending: the worker stops with it before the student stage starts."""
  from icckd_jax.experiments.sweep import worker as sweep_worker  # pylint: disable=g-import-not-at-top
  from icckd_jax.runs.reuse import Reuse  # pylint: disable=g-import-not-at-top

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

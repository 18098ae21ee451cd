"""The teacher a student reads (stages/teacher_source.py): an unfinished
teacher is refused unless allowed, its epoch and fingerprint recorded; a
student resumes only from the teacher it started from.
"""

import json
import signal

import pytest

from icckd_jax.training import preemption
from helpers import TEACHER, TINY
from launch_in_process import error_line, run_launcher
import os
from icckd_jax.data import datasets
from icckd_jax.errors import UserError
from icckd_jax.stages import teacher_source


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


_FOLDER = dict(name='image_folder', image_size=32, channels=3)


@pytest.mark.parametrize('spelling', ['trailing slash', 'relative', 'link'])
def test_the_teachers_folder_however_named_is_the_same_folder(
  tmp_path, monkeypatch, spelling
):
  """A student naming the teacher's data folder with a trailing slash,
  relative to the working directory, or through a link is accepted."""
  folder = tmp_path / 'data'
  folder.mkdir()
  os.symlink(folder, tmp_path / 'link')
  monkeypatch.chdir(tmp_path)
  path = {
    'trailing slash': f'{folder}/',
    'relative': 'data',
    'link': str(tmp_path / 'link'),
  }[spelling]
  student = datasets.DataRequest.from_fields(dict(_FOLDER, path=path))
  teacher_source.check_same_data(student, dict(_FOLDER, path=str(folder)))


def test_another_folder_is_refused(tmp_path):
  (tmp_path / 'a').mkdir()
  (tmp_path / 'b').mkdir()
  student = datasets.DataRequest.from_fields(
    dict(_FOLDER, path=str(tmp_path / 'a'))
  )
  with pytest.raises(UserError, match='config.dataset.path='):
    teacher_source.check_same_data(
      student, dict(_FOLDER, path=str(tmp_path / 'b'))
    )

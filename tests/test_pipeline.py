"""The teacher-then-student pipeline (experiments/pipeline.py): every stage
of a pipeline or a sweep checked before the first starts, a stop after the
teacher's last step ending it before the student, and a finished pipeline
that owns its teacher (another teacher config refused, a damaged last
checkpoint retrained).
"""

import os
import signal

import pytest

from helpers import signal_after_last_epoch
from launch_in_process import error_line, run_launcher


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


@pytest.mark.parametrize(
  'args,expected',
  [
    (
      ['--config=configs/pipeline.py:smoke', '--config.student.model=resnet9'],
      "config.student.model='resnet9' is unknown",
    ),
    (
      [
        '--config=configs/ablation_margin.py:smoke',
        '--config.base.student.model=resnet9',
      ],
      "setting 'delta=0.2' seed 0: config.student.model='resnet9' is unknown",
    ),
    (
      [
        '--config=configs/ablation_margin.py:smoke',
        '--config.base.teacher.icc.margin_kind=rank',
      ],
      "config.teacher.icc.margin_kind='rank' is unknown",
    ),
  ],
)
def test_every_stage_is_checked_before_the_first_starts(
  tmp_path, args, expected
):
  """Cases 14 and 15: a bad student field of a pipeline or a sweep is found
  before any teacher trains, named with its stage (and setting)."""
  new = tmp_path / 'new'
  code, stderr = run_launcher(*args, f'--workdir={new}')
  assert expected in error_line(code, stderr)
  assert not new.exists()


def test_a_stop_after_the_teachers_last_step_stops_the_pipeline(
  tmp_path, monkeypatch
):
  """SIGTERM after the teacher's last step: the teacher finishes and
  commits, the student does not start, exit 128 + 15; the rerun carries on
  with the student without retraining the teacher."""
  workdir = tmp_path / 'pipe'
  with monkeypatch.context() as patch:
    signal_after_last_epoch(patch, 'teacher', signal.SIGTERM)
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

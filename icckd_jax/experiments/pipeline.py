"""The whole method in one run: a teacher, then a student distilled from it.

WORKDIR/teacher holds the teacher's run, WORKDIR/student the student's. Each
stage resumes from its own checkpoints, and a teacher that has finished is
not touched again, so restarting an interrupted pipeline carries on where it
stopped.
"""

from collections.abc import Sequence
import json
import os
from typing import Any

from absl import logging
import ml_collections

from icckd_jax import distillers
from icckd_jax import models
from icckd_jax import parallel
from icckd_jax.errors import UserError
from icckd_jax.training import checkpoint
from icckd_jax.training import hooks as hooks_lib
from icckd_jax.stages import student
from icckd_jax.stages import preflight
from icckd_jax.stages import teacher as teacher_lib
from icckd_jax.runs import layout
from icckd_jax.runs import spec
from icckd_jax.runs import validate
from icckd_jax.training.preemption import StopRequest
from icckd_jax.runs.reuse import Reuse


def finished(workdir: str, num_epochs: int) -> dict[str, Any] | None:
  """The summary of a finished run in `workdir`, else None."""
  path = os.path.join(workdir, layout.SUMMARY_FILE)
  if not os.path.exists(path):
    return None
  with checkpoint.Checkpoints(workdir, read_only=True) as ckpts:
    latest = ckpts.latest_epoch()
  if latest != num_epochs:
    return None
  with open(path) as f:
    return json.load(f)


def student_config(
  config: ml_collections.ConfigDict, teacher_dir: str
) -> ml_collections.ConfigDict:
  """config.student, distilled from the teacher in `teacher_dir`."""
  result = ml_collections.ConfigDict(config.student.to_dict())
  result.teacher.workdir = teacher_dir
  # The student learns from the teacher's data: the same data set config.
  result.dataset = ml_collections.ConfigDict(config.teacher.dataset.to_dict())
  return result


def check_stages(
  teacher: ml_collections.ConfigDict,
  student_stage: ml_collections.ConfigDict,
  where: str = '',
) -> None:
  """Every check of both stages that needs no data and no teacher, before
  the first stage starts: a bad student field is found before a whole
  teacher has trained. The message names the stage (and `where`, e.g. a
  sweep's setting and seed)."""
  for stage, config in (('teacher', teacher), ('student', student_stage)):
    try:
      validate.check_config(config, f'{stage}.')
      models.create_model(config.model, 2)  # Unknown names raise here.
      if stage == 'student':  # Also refuses a switch the method lacks.
        distillers.build(spec.part(spec.Distillation, config.distill))
    except UserError as e:
      message = str(e)
      if not message.startswith(f'config.{stage}.'):
        message = message.replace('config.', f'config.{stage}.', 1)
      raise UserError(f'{where}{message}') from None


def finished_teacher(
  config: ml_collections.ConfigDict, workdir: str
) -> dict[str, Any] | None:
  """The summary of the finished teacher run `config` describes in
  `workdir`, else None (train it: it resumes). The pipeline owns its
  teacher: a stored run of another config is refused as a teacher run
  refuses it, and "finished" means that the last epoch's checkpoint
  restores (a damaged one is retrained from the newest intact one, not
  skipped)."""
  if finished(workdir, config.num_epochs) is None:
    return None
  validate.check_resumable(config, workdir)
  try:
    with checkpoint.Checkpoints(workdir, read_only=True) as ckpts:
      # Read-only: a damaged checkpoint is skipped here; the teacher run
      # that retrains moves it aside, holding the workdir's lock.
      restored = ckpts.restore_newest_intact(None, mesh=parallel.make_mesh(1))
  except UserError:  # None restores: the teacher run says what it does.
    return None
  if restored is None or restored[1]['epoch'] != config.num_epochs:
    return None
  return finished(workdir, config.num_epochs)


def _teacher_if_finished(config, workdir):
  """`finished_teacher`, with a stored run of another config named as the
  pipeline's teacher stage."""
  try:
    return finished_teacher(config, workdir)
  except UserError as e:
    raise UserError(f'config.teacher: {e}') from None


def run_pipeline(
  config: ml_collections.ConfigDict,
  workdir: str,
  reuse: Reuse | None = None,
  hooks: Sequence[hooks_lib.Hook] = (),
) -> dict[str, Any]:
  """Trains config.teacher, then config.student from it; returns both
  summaries: {'teacher': ..., 'student': ...}. `hooks`: called by both
  stages' loops."""
  preflight.require_workdir(workdir)
  check_stages(config.teacher, config.student)
  # Each stage creates its own directory (and WORKDIR with it) only once
  # its config has passed every check.
  workdir = os.path.abspath(workdir)
  teacher_dir = os.path.join(workdir, layout.TEACHER_DIR)
  # A stop requested while one stage runs (or between them) ends the
  # pipeline before the next stage starts.
  with StopRequest() as stop:
    teacher_summary = _teacher_if_finished(config.teacher, teacher_dir)
    if teacher_summary is None:
      teacher_summary = teacher_lib.train_teacher(
        config.teacher, teacher_dir, reuse, hooks=hooks
      )
    else:
      logging.info(
        'Teacher in %s has finished (top-1 %.4f); not retraining.',
        teacher_dir,
        teacher_summary['final_top1'],
      )
    stop.stop_if_requested('the student stage')
    student_summary = student.train_student(
      student_config(config, teacher_dir),
      os.path.join(workdir, layout.STUDENT_DIR),
      reuse,
      hooks=hooks,
    )
  logging.info(
    'Pipeline done: teacher top-1 %.4f, student top-1 %.4f.',
    teacher_summary['final_top1'],
    student_summary['final_top1'],
  )
  return {'teacher': teacher_summary, 'student': student_summary}

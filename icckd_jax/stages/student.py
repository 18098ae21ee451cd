"""The student: distilled from a restored, read-only teacher (docs/method.md
§4), built for the loop.

`train_student(config, workdir)` checks the config and turns it into typed
parts (`spec.RunSpec`), loads the teacher (`teacher_source`), checks
everything else that can reject the run, builds the model, optimiser and
jitted step (`build_student`), evaluates the teacher once, and runs the
loop (`loop.fit`); the teacher's module mirrors it. The teacher's variables
are an argument of the step and are never written anywhere.
"""

from collections.abc import Sequence
import functools
import json
import os
from typing import Any, NamedTuple

from absl import logging
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
import ml_collections

from icckd_jax import distillers
from icckd_jax import models
from icckd_jax import parallel
from icckd_jax.input_pipeline import rand_augment
from icckd_jax.input_pipeline.source import InputSource
from icckd_jax.errors import UserError
from icckd_jax.objective import cache as cache_lib
from icckd_jax.runs import compat
from icckd_jax.runs import layout
from icckd_jax.training import checkpoint
from icckd_jax.stages import distill_pair
from icckd_jax.training import evaluate
from icckd_jax.training import hooks as hooks_lib
from icckd_jax.training import loop
from icckd_jax.training import metric_writer
from icckd_jax.training import records
from icckd_jax.training import optim
from icckd_jax.stages import preflight
from icckd_jax.runs import data_identity
from icckd_jax.runs import reuse as reuse_lib
from icckd_jax.runs import workdir_lock
from icckd_jax.stages import student_step
from icckd_jax.stages import teacher_source
from icckd_jax.runs.reuse import Reuse
from icckd_jax.runs.run_setup import (
  RunSetup,
  check_steps_per_epoch,
  compute_dtype,
  load_dataset,
  mesh_key,
)
from icckd_jax.runs.spec import RunSpec
from icckd_jax.runs.train_state import create_train_state


def _teacher_model(
  teacher_config: ml_collections.ConfigDict,
  teacher_variables,
  dataset: InputSource,
  dtype,
):
  """The teacher's module (inference only, no BatchNorm sync)."""
  classes = models.num_classes(teacher_variables['params'])
  if classes != dataset.num_classes:
    raise UserError(
      f'the teacher predicts {classes} classes but the '
      f'student data set has {dataset.num_classes}'
    )
  return models.create_model(teacher_config.model, classes, dtype=dtype)


class _TeacherParts(NamedTuple):
  """The teacher's module, the reference of the agreement metric (the
  module, renormalised for a teacher of other statistics) and those
  statistics ([C] each, None: the data set's)."""

  model: Any
  reference: Any
  mean: Any
  std: Any


def _teacher_parts(
  teacher_config, teacher_variables, dataset, dtype
) -> _TeacherParts:
  """The teacher's `_TeacherParts`: a teacher trained with other statistics
  than the data set's (a PyTorch one) gets its own normalisation in the
  step and in the metric."""
  model = _teacher_model(teacher_config, teacher_variables, dataset, dtype)
  if teacher_config.get('input_mean') is None:
    return _TeacherParts(model, model, None, None)
  mean, std = teacher_source.teacher_normalization(teacher_config, dataset)
  reference = teacher_source.Renormalized(
    model,
    tuple(dataset.mean.tolist()),
    tuple(dataset.std.tolist()),
    tuple(mean.tolist()),
    tuple(std.tolist()),
  )
  return _TeacherParts(model, reference, mean, std)


def _checked_pair(
  run: RunSpec,
  dataset: InputSource,
  dtype,
  teacher_config: ml_collections.ConfigDict,
  teacher_variables,
) -> tuple[Any, _TeacherParts, distillers.Distiller]:
  """(the student's module, the teacher's parts, the distiller), refused
  with one UserError if the method cannot serve the pair
  (`distill_pair.check_pair`)."""
  teacher = _teacher_parts(teacher_config, teacher_variables, dataset, dtype)
  student_model = models.create_model(
    run.recipe.model,
    dataset.num_classes,
    dtype=dtype,
    bn_axis_name=parallel.DATA,
  )
  distiller = distillers.build(run.distillation)
  channels = dataset.image_shape[-1]
  if distiller.reads.strong_view and channels not in rand_augment.CHANNELS:
    raise UserError(
      f'config.distill.method={run.distillation.method!r} trains on a '
      f'strong view (RandAugment), defined on images of 1 or 3 channels, '
      f'not on {dataset.name!r} of {channels}'
    )
  distill_pair.check_pair(
    run.distillation,
    (run.recipe.model, teacher_config.model),
    (student_model, teacher.model),
    teacher_variables,
    distiller,
    dataset.image_shape,
    dataset.train_labels,
  )
  return student_model, teacher, distiller


def build_student(
  run: RunSpec,
  dataset: InputSource,
  mesh: Mesh,
  teacher_config: ml_collections.ConfigDict,
  teacher_variables,
  reuse: Reuse | None = None,
) -> RunSetup:
  """The student's model, optimiser and jitted step around a loaded teacher.

  With `reuse`, students of same-architecture teachers share one step: the
  teacher's weights and the distillation weights are arguments.
  """
  recipe, distillation = run.recipe, run.distillation
  dtype = compute_dtype(recipe.dtype)
  parallel.check_batch_size(recipe.batch_size, mesh, 'config.batch_size')
  steps_per_epoch = check_steps_per_epoch(recipe.batch_size, dataset)
  student_model, teacher, distiller = _checked_pair(
    run, dataset, dtype, teacher_config, teacher_variables
  )
  learning_rate_fn = optim.create_learning_rate_fn(recipe, steps_per_epoch)
  tx = optim.create_optimizer(recipe, learning_rate_fn)
  train_step = reuse_lib.get(
    reuse,
    'student_step',
    run.step_key(str(teacher.model), mesh_key(mesh)),
    lambda: _make_step(
      (student_model, teacher),
      distiller,
      tx,
      mesh,
      steps_per_epoch,
      dataset,
      dtype,
      optim.splits_gradients(recipe),
    ),
  )
  return RunSetup(
    model=student_model,
    tx=tx,
    learning_rate_fn=learning_rate_fn,
    steps_per_epoch=steps_per_epoch,
    num_views=1 + distiller.reads.strong_view,  # MLKD's weak, strong views
    strong_view=distiller.reads.strong_view,
    init_state=_init_fn(
      recipe.seed,
      (student_model, teacher.model),
      teacher_variables,
      distiller,
      tx,
      dataset,
    ),
    train_step=train_step,
    step_args={
      'teacher': teacher_variables,
      'hp': student_step.hyperparameters(distillation.weights),
    },
    reference=(teacher.reference, teacher_variables),
    with_indices=distiller.trainable,
  )


def _make_step(
  networks: tuple[Any, _TeacherParts],
  distiller: distillers.Distiller,
  tx,
  mesh: Mesh,
  steps_per_epoch: int,
  dataset: InputSource,
  dtype,
  split_gradients: bool,
):
  """The student's jitted step (`student_step.make_train_step`):
  `networks` the student's module and the teacher's parts; with
  `split_gradients`, `tx` (DOT's) takes the task and distillation
  gradients apart."""
  student_model, teacher = networks
  return student_step.make_train_step(
    student_model,
    teacher.model,
    distiller,
    tx,
    mesh,
    steps_per_epoch=steps_per_epoch,
    mean=dataset.mean,
    std=dataset.std,
    dtype=dtype,
    teacher_mean=teacher.mean,
    teacher_std=teacher.std,
    split_gradients=split_gradients,
  )


def _init_fn(
  seed: int,
  networks: tuple[Any, Any],
  teacher_variables,
  distiller: distillers.Distiller,
  tx,
  dataset: InputSource,
):
  """The student's initial-state function: the model from the seed's key,
  and a trainable distiller's params and buffers from the same key (it
  folds in its own streams), sized by the two networks' output shapes.
  `networks`: the (student, teacher) modules."""
  student_model, teacher_model = networks
  train_labels = dataset.train_labels
  x = jnp.zeros((1, *dataset.image_shape))
  shapes = None
  if distiller.trainable:
    # Shapes only: the teacher's weights are never part of the student.
    shapes = jax.eval_shape(
      lambda s_vars, t_vars: tuple(
        student_step.apply_model(model, v, x, train=False, stages=True)[0]
        for model, v in ((student_model, s_vars), (teacher_model, t_vars))
      ),
      jax.eval_shape(
        functools.partial(student_model.init, train=False), jax.random.key(0), x
      ),
      teacher_variables,
    )

  def init_state():
    key = jax.random.key(seed)
    variables = student_model.init(key, x, train=False)
    if shapes is None:
      return create_train_state(
        {'model': variables['params']}, variables['batch_stats'], tx
      )
    # The teacher's parameters are read, never written (OFD's margins).
    params, buffers = distiller.init(
      key, *shapes, train_labels, teacher_variables['params']
    )
    return create_train_state(
      {'model': variables['params'], 'distiller': params},
      variables['batch_stats'],
      tx,
      distiller_buffers=buffers,
    )

  return init_state


def train_student(
  config: ml_collections.ConfigDict,
  workdir: str,
  reuse: Reuse | None = None,
  claim: workdir_lock.WorkdirLock | None = None,
  hooks: Sequence[hooks_lib.Hook] = (),
) -> dict[str, Any]:
  """Distils the teacher of config.teacher.workdir (or .pth) into a student
  in `workdir`, resuming if it can; returns the summary. `claim`: the
  workdir's lock, when the caller took it first
  (`preflight.hold_workdir`); `hooks`: called by the loop
  (training/hooks.py)."""
  run, mesh = preflight.checked_run(config, workdir)
  teacher = teacher_source.load_teacher_checked(run.teacher, mesh)
  if teacher.is_run:
    # The config fields first: a mismatch is refused before any data loads.
    teacher_source.check_same_data(run.data, teacher.config.dataset)
  dataset = load_dataset(
    run.data, data_identity.resumed_inputs(run.inputs, workdir), reuse
  )
  data_identity.check(workdir, data_identity.of(run.data, dataset))
  if teacher.is_run:
    with checkpoint.Checkpoints(run.teacher.workdir, read_only=True) as ckpts:
      teacher_shape = ckpts.input_shape(run.teacher.checkpoint)
    teacher_source.check_same_data(
      run.data,
      teacher.config.dataset,
      dataset.image_shape,
      teacher_shape,
    )
  setup = build_student(
    run, dataset, mesh, teacher.config, teacher.variables, reuse
  )
  memory = preflight.check_step_memory(run.recipe, setup, dataset, mesh)
  workdir = preflight.prepare_workdir(workdir)
  with preflight.hold_workdir(workdir, claim):
    teacher_eval = _teacher_eval(run, workdir, dataset, mesh, teacher)
    return loop.fit(
      run,
      workdir,
      setup,
      dataset,
      mesh,
      stage=_records(
        {
          'teacher_top1': teacher_eval['top1'],
          'teacher_epoch': teacher.fingerprint['epoch'],
          'teacher_fingerprint': teacher.fingerprint,
        }
      ),
      hooks=hooks,
      reuse=reuse,
      step_memory=memory,
    )


def _records(summary: dict[str, Any]) -> records.StageRecords:
  """The student's records: its distiller buffers' bytes, each step's CE
  alone, the agreement with its teacher, and `summary` (its teacher's)."""
  return records.StageRecords(
    state_bytes=lambda state: cache_lib.nbytes(state.distiller_buffers),
    epoch_metrics=records.step_series('ce'),
    test_note=lambda test: (
      f', agreement with teacher {test["agreement"]:.4f}'
      if 'agreement' in test
      else ''
    ),
    summary=summary,
  )


def _check_same_teacher(path: str, teacher_print: dict, source: str) -> None:
  """A resumed student must distil from the teacher it started from: the
  fingerprint recorded in its teacher_eval.json (students from before it
  was recorded are not checked)."""
  with open(path) as f:
    recorded = compat.teacher_fingerprint(json.load(f))
  if recorded is not None and recorded != teacher_print:
    raise UserError(
      f'this student started from the teacher in {source} at epoch '
      f'{recorded["epoch"]}, step {recorded["step"]} (digest '
      f'{recorded["digest"]}); it now holds epoch {teacher_print["epoch"]}, '
      f'step {teacher_print["step"]} (digest {teacher_print["digest"]}). A '
      'resume needs the same teacher: put it back, or choose another '
      '--workdir for a student of this one'
    )


def _teacher_eval(
  run: RunSpec, workdir, dataset, mesh, teacher: teacher_source.Teacher
) -> dict[str, Any]:
  """The teacher's test figures and fingerprint, computed once per student
  workdir (a resumed student reads them back from WORKDIR/teacher_eval.json
  after checking that its teacher is the same)."""
  path = os.path.join(workdir, layout.TEACHER_EVAL_FILE)
  source = run.teacher.pth or run.teacher.workdir
  if os.path.exists(path):
    _check_same_teacher(path, teacher.fingerprint, source)
  else:
    # Normalised as configs/eval.py does, so the two print the same top-1.
    mean, std = teacher_source.teacher_normalization(teacher.config, dataset)
    dtype = compute_dtype(run.recipe.dtype)
    evaluate_fn = evaluate.make_eval_fn(
      _teacher_model(teacher.config, teacher.variables, dataset, dtype),
      mesh,
      mean=mean,
      std=std,
      dtype=dtype,
    )
    teacher_eval = evaluate_fn(
      teacher.variables,
      dataset.eval_batches(mesh, run.bookkeeping.eval_batch_size),
    )
    teacher_eval.update(
      model=teacher.config.model,
      source=source,
      workdir=run.teacher.workdir,
      fingerprint=teacher.fingerprint,
    )
    logging.info(
      'Teacher %s from %s: test top-1 %.4f',
      teacher.config.model,
      source,
      teacher_eval['top1'],
    )
    metric_writer.write_json_from_process_0(path, teacher_eval)
  with open(path) as f:
    return json.load(f)

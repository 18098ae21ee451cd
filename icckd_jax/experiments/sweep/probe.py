"""The sweep's projection: each distinct step (and evaluation) its
unfinished stages use, measured before the work starts, makes the projected
seconds of every stage (eta.SweepClock turns them into the ETA)."""

import time

from absl import logging
import ml_collections

from icckd_jax import parallel
from icckd_jax.experiments.sweep import plan as sweep_plan
from icckd_jax.training import estimate
from icckd_jax.training import evaluate
from icckd_jax.runs import run_setup
from icckd_jax.runs import spec
from icckd_jax.stages import student as student_lib
from icckd_jax.stages import teacher as teacher_lib
from icckd_jax.runs.reuse import Reuse


def probe(runs: list[sweep_plan.Run], reuse: Reuse) -> dict[str, float]:
  """Measures each distinct step (and evaluation) the unfinished stages use
  and projects each stage's seconds: {stage workdir: seconds}.

  A step is built exactly as its run builds it, through `reuse`, so its
  compilation is the one the run will use; students are timed against a
  freshly initialised teacher of the right architecture (their step takes
  the teacher's weights as an argument).
  """
  step_seconds: dict[int, float] = {}
  eval_seconds: dict[str, float] = {}
  projected: dict[str, float] = {}
  teacher_states: dict[str, object] = {}
  for run in runs:
    for name, workdir, config, _ in sweep_plan.stages(run):
      if workdir in projected or sweep_plan.finished(workdir, config):
        continue
      mesh = parallel.make_mesh(config.get('num_devices'))
      parts = spec.from_config(config)
      dataset = run_setup.load_dataset(parts.data, parts.inputs, reuse)
      setup = _stage_setup(
        run, name, parts, dataset, mesh, reuse, teacher_states
      )
      if id(setup.train_step) not in step_seconds:
        state = setup.create_state(mesh)
        batches = setup.batches(parts.recipe, dataset, mesh, 0)
        seconds, _ = estimate.time_steps(
          setup.train_step, state, batches, setup.step_args
        )
        batches.close()  # a streamed set's decode workers
        step_seconds[id(setup.train_step)] = seconds
        logging.info(
          'Measured %s step (%s, batch %d): %.1f ms, %.0f img/s.',
          name,
          config.model,
          config.batch_size,
          1000 * seconds,
          config.batch_size / seconds,
        )
      eval_key = f'{name}|{config.model}|{run.teacher.model}'
      if eval_key not in eval_seconds:
        eval_seconds[eval_key] = _time_evaluation(setup, config, dataset, mesh)
        logging.info(
          'Measured %s evaluation (%s, %d test images): %s.',
          name,
          config.model,
          len(dataset.test_labels),
          estimate.duration(eval_seconds[eval_key]),
        )
      projected[workdir] = _projected_seconds(
        name,
        config,
        setup,
        step_seconds[id(setup.train_step)],
        eval_seconds[eval_key],
      )
  return projected


def _stage_setup(run, name, parts, dataset, mesh, reuse, teacher_states):
  """The RunSetup of stage `name` of `run` (`parts`: its `spec.RunSpec`),
  built as the run builds it."""
  teacher = spec.from_config(run.teacher)
  teacher_setup = teacher_lib.build_teacher(teacher, dataset, mesh, reuse)
  if name == 'teacher':
    return teacher_setup
  # Any teacher of the right architecture will do for timing: one
  # state per architecture, not one compilation per student.
  if run.teacher.model not in teacher_states:
    teacher_states[run.teacher.model] = teacher_setup.create_state(mesh)
  variables = teacher_states[run.teacher.model]
  return student_lib.build_student(
    parts,
    dataset,
    mesh,
    # The teacher's config as a student reads it back from the checkpoint.
    ml_collections.ConfigDict(teacher.saved),
    {
      'params': variables.params['model'],
      'batch_stats': variables.batch_stats,
    },
    reuse,
  )


def _projected_seconds(name, config, setup, step_seconds, eval_seconds):
  """A stage's projected wall time: its steps and its evaluations (every
  `eval_every_epochs` and the last epoch, plus a student's evaluation of
  its teacher before it starts)."""
  every = config.get('eval_every_epochs', 1)
  evaluations = (
    config.num_epochs // every
    + (config.num_epochs % every != 0)
    + (name == 'student')
  )
  return (
    config.num_epochs * setup.steps_per_epoch * step_seconds
    + evaluations * eval_seconds
  )


def _time_evaluation(setup: run_setup.RunSetup, config, dataset, mesh) -> float:
  """Seconds of one whole test-split evaluation, after compiling."""
  reference = setup.reference[0] if setup.reference else None
  evaluate_fn = evaluate.make_eval_fn(
    setup.model,
    mesh,
    mean=dataset.mean,
    std=dataset.std,
    dtype=run_setup.compute_dtype(config.dtype),
    reference=reference,
  )
  test_split = dataset.eval_batches(mesh, config.eval_batch_size)
  state = setup.create_state(mesh)
  variables = {
    'params': state.params['model'],
    'batch_stats': state.batch_stats,
  }
  reference_variables = setup.reference[1] if setup.reference else None
  evaluate_fn(variables, test_split, reference_variables)
  start = time.perf_counter()
  evaluate_fn(variables, test_split, reference_variables)
  return time.perf_counter() - start

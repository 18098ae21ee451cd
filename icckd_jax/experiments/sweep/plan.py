"""A sweep's plan: every (setting, seed) as a Run, its two stages and where
they train in the shared store (sweep/runner.py describes the layout)."""

import dataclasses
import os

import ml_collections

from icckd_jax.errors import UserError
from icckd_jax.experiments import pipeline
from icckd_jax.experiments.sweep import results
from icckd_jax.experiments.sweep import run_store
from icckd_jax.runs import layout
from icckd_jax.experiments.sweep.settings import (
  Setting,
  apply_overrides,
  parse_setting,
  seeds_of,
)
from icckd_jax.stages import student as student_lib
from icckd_jax.stages import teacher as teacher_lib


def run_config(
  base: ml_collections.ConfigDict, setting: Setting, seed: int
) -> ml_collections.ConfigDict:
  config = apply_overrides(base, setting.overrides)
  config.teacher.seed = seed
  config.student.seed = seed
  return config


@dataclasses.dataclass
class Run:
  """One (setting, seed): its teacher's and student's configs and homes."""

  setting: str
  seed: int
  run_dir: str  # WORKDIR/<setting>/seed_<seed>
  teacher: ml_collections.ConfigDict
  student: ml_collections.ConfigDict  # its teacher.workdir is teacher_dir
  teacher_dir: str
  student_dir: str

  @property
  def result_path(self) -> str:
    return os.path.join(self.run_dir, layout.RESULT_FILE)


def plan(config: ml_collections.ConfigDict, workdir: str) -> list[Run]:
  """Every (setting, seed) of the sweep, seed by seed (so that a sweep cut
  short holds whole seeds of every setting); checks the settings."""
  settings = [parse_setting(s) for s in config.settings]
  names = [s.name for s in settings]
  if len(set(names)) != len(names):
    raise UserError(f'config.settings has repeated names: {names}')
  if not config.seeds:
    raise UserError('config.seeds is empty')
  for field in ('seeds', 'primary_seeds'):
    seeds = list(config.get(field) or ())
    if len(set(seeds)) != len(seeds):
      raise UserError(
        f'config.{field}={tuple(seeds)} repeats a seed; each seed is one '
        'run, and a repeated one would count twice in the statistics'
      )
  unknown = set(config.get('primary_settings') or ()) - set(names)
  if unknown:
    raise UserError(
      f'config.primary_settings names no setting: {sorted(unknown)}'
    )
  if config.get('primary_settings') and not config.get('primary_seeds'):
    raise UserError('config.primary_seeds is empty')
  workers = config.get('workers', 1)
  if not isinstance(workers, int) or workers < 1:
    raise UserError(f'config.workers={workers!r} must be an integer >= 1')
  store = os.path.abspath(config.get('store') or workdir)
  runs = []
  for seed, index in sorted(
    (seed, index)
    for index, setting in enumerate(settings)
    for seed in seeds_of(config, setting.name)
  ):
    setting = settings[index]
    both = run_config(config.base, setting, seed)
    teacher_dir = run_store.teacher_dir(store, both.teacher)
    student = pipeline.student_config(both, teacher_dir)
    runs.append(
      Run(
        setting=setting.name,
        seed=seed,
        run_dir=results.run_dir(workdir, setting.name, seed),
        teacher=both.teacher,
        student=student,
        teacher_dir=teacher_dir,
        student_dir=run_store.student_dir(
          store, student, run_store.teacher_key(both.teacher)
        ),
      )
    )
  return runs


def stages(run: Run):
  """(name, workdir, config, train function) of the run's two stages."""
  return (
    (
      layout.TEACHER_DIR,
      run.teacher_dir,
      run.teacher,
      teacher_lib.train_teacher,
    ),
    (
      layout.STUDENT_DIR,
      run.student_dir,
      run.student,
      student_lib.train_student,
    ),
  )


def finished(workdir: str, config: ml_collections.ConfigDict) -> bool:
  """Whether the stage in `workdir` has trained all its epochs."""
  return pipeline.finished(workdir, config.num_epochs) is not None


def unfinished_stages(runs: list[Run]) -> list[str]:
  """The workdirs of the runs' stages still to train."""
  return [
    directory
    for run in runs
    for _, directory, config, _ in stages(run)
    if not finished(directory, config)
  ]

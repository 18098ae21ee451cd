"""Dispatches a config to its job by `config.mode`."""

from collections.abc import Sequence
import json
import os
from typing import Any

import ml_collections

from icckd_jax.data import convert
from icckd_jax.experiments import pipeline
from icckd_jax.experiments.sweep import report
from icckd_jax.training import compilation_cache
from icckd_jax.training import hooks as hooks_lib
from icckd_jax.stages import evaluate_checkpoint
from icckd_jax.stages import evaluate_pth
from icckd_jax.stages import student
from icckd_jax.experiments.sweep import runner as sweep
from icckd_jax.experiments.sweep import slurm
from icckd_jax.stages import teacher
from icckd_jax.runs import spec
from icckd_jax.runs import validate
from icckd_jax.errors import UserError

MODES = (
  'teacher',
  'student',
  'pipeline',
  'sweep',
  'report',
  'eval',
  'convert',
)


def _printed(result: dict[str, Any]) -> dict[str, Any]:
  """An evaluation's result, also printed as one JSON line on stdout (what
  scripts read)."""
  print(json.dumps(result))
  return result


def _sweep_printed(rows: list[dict], workdir: str) -> list[dict]:
  """A sweep's result rows; its headline table (each setting's top-1) and
  where every other figure is, printed on stdout."""
  print(report.headline(rows))
  print(
    'Every metric: '
    f'{os.path.join(os.path.abspath(workdir), report.SUMMARY_MD)}, '
    f'{report.RESULTS_CSV} and the plots beside it.'
  )
  return rows


def _submitted(submission: slurm.Submission) -> slurm.Submission:
  """A sweep's submission to SLURM; its job id and how to follow and
  cancel it, printed on stdout."""
  print(submission.message)
  return submission


# The modes that train one run's loop, or a pipeline's two: those a hook
# can be handed to.
TRAINERS = {
  'teacher': teacher.train_teacher,
  'student': student.train_student,
  'pipeline': pipeline.run_pipeline,
}


def run(
  config: ml_collections.ConfigDict,
  workdir: str | None,
  hooks: Sequence[hooks_lib.Hook] = (),
) -> Any:
  """Runs the job `config` describes; `workdir` overrides config.workdir.
  `hooks` (training/hooks.py): called by the train loop of a teacher's or
  student's run, or of both stages of a pipeline."""
  mode = config.get('mode', 'teacher')
  workdir = workdir or config.get('workdir')
  if hooks and mode not in TRAINERS:
    raise UserError(
      f'a hook is given to config.mode={mode!r}; hooks are for the modes '
      + ', '.join(TRAINERS)
    )
  compilation_cache.enable(
    config.get('compilation_cache', compilation_cache.DEFAULT_DIR)
  )
  if mode in TRAINERS:
    return TRAINERS[mode](config, workdir, hooks=hooks)
  if mode == 'sweep' and slurm.executor(config) == 'slurm':
    return _submitted(slurm.submit(config, workdir))
  if mode == 'sweep':
    return _sweep_printed(sweep.run_sweep(config, workdir), workdir)
  if mode == 'report':
    return report.write_report(
      workdir, config.get('output_dir'), config.get('comparisons')
    )
  if mode == 'convert':
    return convert.convert(config)
  if mode == 'eval' and config.get('pth'):
    if workdir:
      raise UserError(
        f'config.pth={config.pth!r} and config.workdir='
        f'{workdir!r} are both set; evaluate one or the other'
      )
    return _printed(
      evaluate_pth.evaluate_pytorch(
        config.pth,
        config.get('model'),
        spec.data_request(config.dataset),
        num_devices=config.get('num_devices'),
        batch_size=config.eval_batch_size,
        export=config.get('export'),
      )
    )
  if mode == 'eval':
    validate.check_config(config)
    return _printed(
      evaluate_checkpoint.evaluate_checkpoint(
        workdir,
        which=config.checkpoint,
        num_devices=config.get('num_devices'),
        batch_size=config.eval_batch_size,
        export=config.get('export'),
      )
    )
  raise UserError(
    f'config.mode={mode!r} is unknown; choose one of: ' + ', '.join(MODES)
  )

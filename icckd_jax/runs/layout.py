"""A run's workdir: the name of every file and directory in it, spelled once.

One stage's run (a teacher or a student) writes, in WORKDIR:

  config.json        the validated config, beside its newest checkpoint
  data.json          the data the run started on and its input path, beside
                     config.json (runs/data_identity.py)
  summary.json       written last: a finished run is recognised by it
  metrics.jsonl      the run's record, one JSON object a line
  tensorboard/       the same numbers as TensorBoard events
  checkpoints/<epoch>/, best/<epoch>/, preempted/<step>/
                     Orbax's checkpoints (training/checkpoint.py)
  damaged/           checkpoints that failed to restore, moved aside
  teacher_eval.json  a student's teacher, evaluated once
  .lock              the lock of the process training it (workdir_lock.py)

A run of both stages (a pipeline's WORKDIR, a sweep's RUN_DIR) holds the
stages' workdirs as teacher/ and student/, and a sweep's run its figures
in result.json.

The names are those older versions wrote: runs they left keep resuming.
"""

import json
import os
from typing import Any, Callable

from icckd_jax.errors import UserError, one_line

CONFIG_FILE = 'config.json'
DATA_FILE = 'data.json'
SUMMARY_FILE = 'summary.json'
METRICS_FILE = 'metrics.jsonl'
TENSORBOARD_DIR = 'tensorboard'
TEACHER_EVAL_FILE = 'teacher_eval.json'
LOCK_FILE = '.lock'
DAMAGED_DIR = 'damaged'

# The directory of each kind of checkpoint: the rolling ones a run resumes
# from ('last'), the single best one, the one a preempted run saved.
CHECKPOINT_DIRS = {
  'last': 'checkpoints',
  'best': 'best',
  'preempted': 'preempted',
}

TEACHER_DIR = 'teacher'
STUDENT_DIR = 'student'
RESULT_FILE = 'result.json'


def read_json(
  path: str, advice: str, valid: Callable[[Any], bool] = lambda _: True
) -> Any:
  """The JSON record at PATH, or None where there is none. One that cannot
  be read, or that `valid` rejects, is one line (UserError) ending in
  `advice`: a run's records are never guessed at."""
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      found = json.load(f)
    if not valid(found):
      raise ValueError('not the record of a run')
  except (OSError, ValueError) as e:
    raise UserError(
      f'{path} cannot be read ({one_line(e)}); {advice}'
    ) from None
  return found

"""Runs named by their config, so that equal runs are trained once.

A sweep's teachers live in STORE/teachers/<key>/ and its students in
STORE/students/<key>/, where <key> is a hash of every config field that can
change what the run computes. The sweep setting that asked for a run is not
part of it: the cache ablation's `features` teacher is the margin sweep's
δ = 0.4 teacher whenever their configs agree, and the KD and KD+RKD students
of one setting learn from one teacher. A student's key includes its
teacher's key, not the teacher's directory, so two sweeps pointing at one
store (`config.store`) share students too.

Left out of the key (runs/config_schema.py): sections added since
stores were first written, where at their added defaults (runs/compat.py),
so that older stores keep their keys; bookkeeping that cannot
change a result (where the run is written, how often it logs and checkpoints,
how many checkpoints it keeps), the fields a stage does not use (a
cross-entropy teacher's gate and cache), and for a student the path of its
teacher (its key stands in).
"""

import hashlib
import os

import ml_collections

from icckd_jax.runs import compat
from icckd_jax.runs import config_schema
from icckd_jax.runs import reuse as reuse_lib

TEACHERS = 'teachers'
STUDENTS = 'students'
KEY_LENGTH = 16  # hex digits of sha256: collisions need ~2^32 runs


def _digest(text: str) -> str:
  return hashlib.sha256(text.encode()).hexdigest()[:KEY_LENGTH]


def teacher_key(config: ml_collections.ConfigDict) -> str:
  """The key of a teacher config (configs/teacher.py's fields)."""
  return _digest(
    reuse_lib.config_key(
      config,
      config_schema.bookkeeping()
      + config_schema.unused(config)
      + compat.at_added_default(config),
      compat.ADDED_SECTIONS,
    )
  )


def student_key(config: ml_collections.ConfigDict, teacher: str) -> str:
  """The key of a student config distilled from the teacher keyed `teacher`."""
  own = reuse_lib.config_key(
    config,
    config_schema.bookkeeping()
    + config_schema.unused(config)
    + compat.at_added_default(config)
    + ('teacher.workdir',),
    compat.ADDED_SECTIONS,
  )
  return _digest(f'{own}|teacher={teacher}')


def teacher_dir(store: str, config: ml_collections.ConfigDict) -> str:
  return os.path.join(store, TEACHERS, teacher_key(config))


def student_dir(
  store: str, config: ml_collections.ConfigDict, teacher: str
) -> str:
  return os.path.join(store, STUDENTS, student_key(config, teacher))

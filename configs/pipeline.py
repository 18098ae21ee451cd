r"""The whole method in one command: a teacher, then a student from it.

  python launch.py --config=configs/pipeline.py --workdir=workdirs/pipeline
  python launch.py --config=configs/pipeline.py:smoke --workdir=/tmp/pipe

The teacher trains in WORKDIR/teacher, the student in WORKDIR/student, on the
teacher's data set. Restarting the same command resumes whichever stage was
interrupted; a finished teacher is not trained again. Override either stage:
--config.teacher.icc.lam=0 (a CE teacher), --config.student.distill.method=kd_rkd.
"""

import ml_collections
from ml_collections import config_dict

from configs import student as student_config
from configs import teacher as teacher_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.mode = 'pipeline'
  c.workdir = config_dict.placeholder(str)  # or --workdir
  c.teacher = teacher_config.get_config(arg)
  c.student = student_config.get_config(arg)
  # The process's (the stages' own fields are not read).
  c.compilation_cache = c.teacher.compilation_cache
  return c

r"""The student: distilled from a trained teacher (docs/method.md §4, §5).

Defaults: the CIFAR-100 benchmark recipe, resnet8x4 from a resnet32x4 teacher,
KD with T = 4, γ = 0.1, α = 0.9:

  python launch.py --config=configs/student.py --workdir=workdirs/student \
      --config.teacher.workdir=workdirs/teacher
  # "Ours+RKD": KD plus relational KD on penultimate features (β = 1)
  python launch.py --config=configs/student.py --workdir=workdirs/student_rkd \
      --config.teacher.workdir=workdirs/teacher --config.distill.method=kd_rkd
  # a published method with its CIFAR-100 recipe (docs/distillers.md): dkd,
  # dist, at, nst, pkt, sp or rkd
  python launch.py --config=configs/student.py --workdir=workdirs/student_dkd \
      --config.teacher.workdir=workdirs/teacher --config.distill.method=dkd
  # a few steps from a smoke teacher, offline, < 1 min on CPU
  python launch.py --config=configs/student.py:smoke --workdir=/tmp/smoke_s \
      --config.teacher.workdir=/tmp/smoke

The teacher's architecture comes from the config saved with its checkpoint;
the student's data set must be the one the teacher was trained on.

A published teacher of the CIFAR-100 KD benchmark (RepDistiller's PyTorch
`ckpt_epoch_240.pth`), imported without PyTorch; its input is normalised with
the benchmark's CIFAR-100 mean/std, the student's with the data set's own:

  python launch.py --config=configs/student.py --workdir=workdirs/kd_32x4_8x4 \
      --config.teacher.pth=path/to/resnet32x4_vanilla/ckpt_epoch_240.pth \
      --config.teacher.model=resnet32x4 --config.model=resnet8x4
"""

import ml_collections
from ml_collections import config_dict

from configs import teacher as teacher_config
from icckd_jax import distillers


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  # The same recipe, data sets and scales as the teacher's config.
  c = teacher_config.get_config(arg)
  del c['icc']
  del c['cache']
  c.mode = 'student'
  c.model = 'resnet8x4' if not arg else 'resnet8'

  c.teacher = ml_collections.ConfigDict()
  c.teacher.workdir = config_dict.placeholder(str)  # the teacher's run
  c.teacher.checkpoint = 'last'  # 'last' or 'best'
  # A teacher run short of its last epoch is refused unless this is set.
  c.teacher.allow_unfinished = False
  # Or a PyTorch checkpoint of the CIFAR-100 KD benchmark and its model name.
  c.teacher.pth = config_dict.placeholder(str)
  c.teacher.model = config_dict.placeholder(str)

  # The distillation method and its settings: config.distill.<name> for each
  # setting a method declares in icckd_jax/distillers/<method>.py (its own)
  # or distillers/settings.py (those several share: temperature, the CE and
  # KD weights, ...), read from the registry when the config is made, so a
  # method registered at run time is there too. Each method reads only its
  # own fields and the shared ones it names; the defaults are its published
  # CIFAR-100 recipe for resnet32x4 -> resnet8x4, so choosing
  # --config.distill.method alone runs that recipe (docs/distillers.md).
  c.distill = ml_collections.ConfigDict()
  c.distill.method = 'kd'  # any of distillers.DISTILLERS
  c.distill.update(distillers.defaults())
  return c

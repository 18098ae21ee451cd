r"""The demo behind `make demo`: the whole method, twice, on real data.

A cross-entropy teacher and an intra-class contrastive teacher, each followed
by a KD student, on 10,000 real Fashion-MNIST images (resnet8, 3 + 3 epochs),
ending with a table of teacher and student top-1. About 10 minutes on 2 CPU
cores.

  python launch.py --config=configs/demo.py --workdir=workdirs/demo
"""

import ml_collections

from configs import sweep_common


def get_config() -> ml_collections.ConfigDict:
  c = sweep_common.sweep_config('cpu')
  c.base.teacher.dataset.name = 'fashion_mnist'
  c.base.teacher.dataset.train_subset = 10000
  c.seeds = (0,)
  c.settings = ('ce_teacher: teacher.icc.lam=0.0',
                'icc_teacher: teacher.icc.lam=0.1')
  return c

r"""The demo behind `make demo`: the whole method, twice, on real data.

A cross-entropy teacher and an intra-class contrastive teacher (λ = 0.1,
δ = 0.4, feature cache), each followed by a KD student, on 5,000 real
Fashion-MNIST training images: resnet8 teachers and students, 2 epochs each
at batch 64, one seed, evaluated on the whole 10,000-image test split. It
ends with a table of teacher and student top-1. A few minutes on 2 CPU
cores; its own scale, independent of the studies'.

  python launch.py --config=configs/demo.py --workdir=workdirs/demo
"""

import ml_collections
from ml_collections import config_dict

from configs import pipeline


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.mode = 'sweep'
  c.workdir = config_dict.placeholder(str)
  c.store = config_dict.placeholder(str)
  c.base = pipeline.get_config()
  t, s = c.base.teacher, c.base.student
  t.dataset.name = 'fashion_mnist'
  t.dataset.train_subset = 5000
  t.model = s.model = 'resnet8'
  for stage in (t, s):
    stage.num_epochs = 2
    stage.lr_decay_epochs = ()
    stage.eval_every_epochs = 2
    stage.log_every_steps = 40
    stage.checkpoint_every_epochs = 2
  c.settings = (
    'ce_teacher: teacher.icc.lam=0.0',
    'icc_teacher: teacher.icc.lam=0.1',
  )
  c.seeds = (0,)
  c.workers = 1
  c.estimate = False  # timing each step first would cost a third of the demo
  return c

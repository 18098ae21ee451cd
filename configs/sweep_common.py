"""What the two ablation configs share: the base pipeline, seeds, scales."""

import ml_collections
from ml_collections import config_dict

from configs import pipeline

# The config arguments and the pipeline scale each one runs.
SCALES = {None: None, 'cpu': 'cifar10_cpu', 'smoke': 'smoke'}


def sweep_config(arg: str | None) -> ml_collections.ConfigDict:
  if arg not in SCALES:
    raise ValueError(f'unknown config argument {arg!r}; valid: cpu, smoke')
  c = ml_collections.ConfigDict()
  c.mode = 'sweep'
  c.workdir = config_dict.placeholder(str)
  c.base = pipeline.get_config(SCALES[arg])
  c.seeds = (0, 1, 2) if arg is None else (0, 1)
  if arg == 'cpu':
    c.base.teacher.dataset.train_subset = 8000
  if arg == 'smoke':
    c.seeds = (0,)
    c.base.teacher.num_epochs = 3
    c.base.student.num_epochs = 2
  return c

r"""Evaluates a run's checkpoint on its whole test split (docs/method.md §5, §7.5-6).

  python launch.py --config=configs/eval.py --config.workdir=workdirs/teacher

The model and data set come from the config saved with the checkpoint; the
device count may differ from the one it was trained on. Prints top-1/top-5
and writes WORKDIR/eval_<checkpoint>.json.
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.mode = 'eval'
  c.workdir = config_dict.placeholder(str)  # the training run's workdir
  c.checkpoint = 'best'  # 'best' or 'last'
  c.eval_batch_size = 500  # a multiple of the device count
  c.num_devices = 0  # 0: every visible device
  return c

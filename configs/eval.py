r"""Evaluates a checkpoint on its whole test split (docs/method.md §5, §7.5-6).

A run of this project (the model and data set come from the config saved
with the checkpoint; the device count may differ from the one it was trained
on); prints top-1/top-5 and writes WORKDIR/eval_<checkpoint>.json:

  python launch.py --config=configs/eval.py --config.workdir=workdirs/teacher

A PyTorch checkpoint of the CIFAR-100 KD benchmark (RepDistiller's
`ckpt_epoch_240.pth`), imported without PyTorch, its input normalised with
the benchmark's CIFAR-100 statistics; prints top-1/top-5 (the figure a student
of this teacher prints at start):

  python launch.py --config=configs/eval.py \
      --config.pth=path/to/resnet32x4_vanilla/ckpt_epoch_240.pth \
      --config.model=resnet32x4

Either can also be exported to a plain parameters file (params and BatchNorm
statistics only, see icckd_jax/interop/params_file.py for loading it in a
notebook): add --config.export=resnet32x4.msgpack.
"""

import ml_collections
from ml_collections import config_dict

from configs import teacher as teacher_config


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.mode = 'eval'
  c.workdir = config_dict.placeholder(str)  # the training run's workdir
  c.checkpoint = 'best'  # 'best' or 'last'
  c.eval_batch_size = 500  # a multiple of the device count
  c.num_devices = 0  # 0: every visible device
  c.compilation_cache = '~/.cache/icckd_jax/xla'  # '': off
  # A PyTorch checkpoint instead of a workdir: the file, its architecture and
  # the data set to evaluate it on (CIFAR-100 by default).
  c.pth = config_dict.placeholder(str)
  c.model = config_dict.placeholder(str)
  c.dataset = teacher_config.get_config().dataset
  c.export = config_dict.placeholder(str)  # write a plain parameters file
  return c

r"""Converts a data set to ArrayRecord shards, for the streaming input path.

  python launch.py --config=configs/convert.py \
      --config.dataset.name=imagenet --config.dataset.path=path/to/imagenet \
      --config.output_dir=path/to/imagenet-shards

then train from them (docs/data.md, "Data sets larger than memory"):

  python launch.py --config=configs/teacher.py --workdir=workdirs/in \
      --config.dataset.name=array_record \
      --config.dataset.path=path/to/imagenet-shards

`dataset.name`: imagenet (ROOT/train/<wnid>/, ROOT/val/ by class or flat
with ROOT/LOC_val_solution.csv or the devkit), image_folder (a train/<class>/*,
test/<class>/* folder of images of any size) or any set configs/teacher.py
reads (cifar100, cifar10, tiny_imagenet, fashion_mnist, a TFDS name, ...).
A killed conversion restarts where it stopped when rerun.
"""

import ml_collections
from ml_collections import config_dict

from configs import teacher as teacher_config


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.mode = 'convert'
  c.dataset = teacher_config.get_config().dataset
  # Training's choice, not the conversion's: the shards hold the images as
  # they were, and an output's identity stays what it was before the field.
  del c.dataset['augment']
  del c.dataset['normalization']
  c.output_dir = config_dict.placeholder(str)
  # Records per shard: many shards let several processes write (and, later,
  # hosts read) in parallel; ~1,000 ImageNet JPEGs make ~110 MB shards.
  c.records_per_shard = 1024
  c.workers = 0  # processes writing shards; 0: every core
  # The training images' longer side at most this (0: as they are):
  # resized (bicubic) and stored as JPEG of quality 90 (PNG if they were
  # not JPEGs), decoding several times faster (docs/data.md); the test
  # split is stored as it is, so that evaluation never upsamples.
  c.max_side = 0
  return c

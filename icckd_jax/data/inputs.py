"""Which input path a run takes, and its data set loaded for it.

`load(config.dataset, config.input.mode, ...)` returns a `datasets.Dataset`:
resident (whole decoded splits, `input_pipeline` puts them on every device)
or streamed (`stream.StreamSplit`s of a converted set, read as the run
goes), and logs which and why.
"""

from __future__ import annotations

from absl import logging
import ml_collections
import numpy as np

from icckd_jax.data import array_record
from icckd_jax.data import datasets
from icckd_jax.data import stream
from icckd_jax.errors import UserError

MODES = ('auto', 'resident', 'stream')
# 'auto' streams a training split that would take more than this fraction
# of one device's memory: the rest is for the model, its activations and
# the test split.
RESIDENT_FRACTION = 0.25


def load(
  config: ml_collections.ConfigDict,
  mode: str = 'auto',
  workers: int = 0,
  device_bytes: int | None = None,
) -> datasets.Dataset:
  """`datasets.load`'s data set, streamed or resident as `mode` (config.input.mode) says.

  Args:
    config: the `dataset` sub-config.
    mode: 'stream' reads a converted set's shards as the run goes; 'resident'
      holds the decoded splits on every device; 'auto' streams a converted
      set whose decoded train split would take more than RESIDENT_FRACTION
      of `device_bytes`, or whose images have several sizes.
    workers: Grain's decode processes when streaming (config.input.workers).
    device_bytes: one device's memory (None: unknown).

  Raises:
    UserError: an unknown mode, 'stream' for a set that is not converted,
      'resident' for a set that cannot be (several sizes, or larger than
      the device).
  """
  if mode not in MODES:
    raise UserError(
      f'config.input.mode={mode!r} is unknown; choose one of: '
      + ', '.join(MODES)
    )
  name = config.get('name')
  if name != 'array_record':
    if mode == 'stream':
      raise UserError(
        f"config.input.mode='stream' reads ArrayRecord shards; convert "
        f'dataset.name={name!r} first with configs/convert.py and train '
        "with dataset.name='array_record'"
      )
    dataset = datasets.load(config)
    logging.info(
      'Input: resident on every device (%s; %.1f MiB decoded train split).',
      f'input.mode={mode!r}',
      dataset.train_images.nbytes / 2**20,
    )
    return dataset
  info = array_record.read_info(config.get('path'))
  decoded = info.decoded_bytes['train']
  fits = device_bytes is None or decoded + info.decoded_bytes['test'] <= (
    device_bytes
  )
  if mode == 'resident':
    if info.image_shape is None:
      raise UserError(
        f"config.input.mode='resident' needs images of one size, but "
        f'those of dataset.path={config.get("path")!r} have several; use '
        "input.mode='stream' (or 'auto')"
      )
    if not fits:
      raise UserError(
        f"config.input.mode='resident': the decoded splits take "
        f'{(decoded + info.decoded_bytes["test"]) / 2**30:.1f} GiB but a '
        f'device has {device_bytes / 2**30:.1f} GiB; use '
        "input.mode='stream' (or 'auto')"
      )
    why = "input.mode='resident'"
  elif mode == 'stream':
    why = "input.mode='stream'"
  elif info.image_shape is None:
    mode, why = 'stream', "input.mode='auto': images of several sizes"
  elif device_bytes is None or decoded > RESIDENT_FRACTION * device_bytes:
    mode = 'stream'
    why = (
      f"input.mode='auto': the decoded train split takes "
      f"{decoded / 2**20:.1f} MiB, more than a quarter of a device's "
      + (
        f'{device_bytes / 2**20:.0f} MiB'
        if device_bytes
        else 'memory (unknown)'
      )
    )
  else:
    mode = 'resident'
    why = (
      f"input.mode='auto': the decoded train split takes "
      f"{decoded / 2**20:.1f} MiB, at most a quarter of a device's "
      f'{device_bytes / 2**20:.0f} MiB'
    )
  train_labels = np.asarray(info.labels('train'), np.int32)
  test_labels = np.asarray(info.labels('test'), np.int32)
  if mode == 'resident':
    logging.info('Input: resident on every device, decoded from %s (%s).',
                 info.root, why)  # fmt: skip
    arrays = array_record.load_resident(info)
    return datasets.Dataset(
      name=name,
      train_images=arrays['train_images'],
      train_labels=train_labels,
      test_images=arrays['test_images'],
      test_labels=test_labels,
      num_classes=info.num_classes,
      mean=info.mean,
      std=info.std,
    )
  splits = stream.splits(info, config.get('image_size', 32), workers)
  logging.info(
    'Input: streaming from the shards in %s with %d decode worker(s), %s '
    'images, %s augmentation (%s).',
    info.root,
    workers,
    'x'.join(map(str, splits[0].image_shape)),
    splits[0].recipe,
    why,
  )
  return datasets.Dataset(
    name=name,
    train_images=None,
    train_labels=train_labels,
    test_images=None,
    test_labels=test_labels,
    num_classes=info.num_classes,
    mean=info.mean,
    std=info.std,
    stream=splits,
  )

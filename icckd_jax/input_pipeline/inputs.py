"""Which input path a run takes, and its data set loaded for it.

`load(DataRequest, config.input.mode, ...)` returns the run's
`source.InputSource`: a `resident.ResidentSource` (whole decoded splits,
put on every device) or a `stream.StreamSource` (a converted set's shards,
read as the run goes), and logs which and why. The choice is made here
only.
"""

from __future__ import annotations

import dataclasses

from absl import logging
import numpy as np

from icckd_jax.data import array_record
from icckd_jax.data import datasets
from icckd_jax.input_pipeline import imagenet_preprocess
from icckd_jax.input_pipeline import resident
from icckd_jax.input_pipeline import stream
from icckd_jax.input_pipeline.source import InputSource
from icckd_jax.errors import UserError

MODES = ('auto', 'resident', 'stream')
# config.dataset.normalization: the statistics the inputs are normalised with.
NORMALIZATIONS = ('measured', 'imagenet')
# 'auto' streams a training split that would take more than this fraction
# of one device's memory: the rest is for the model, its activations and
# the test split.
RESIDENT_FRACTION = 0.25


def load(
  request: datasets.DataRequest,
  mode: str = 'auto',
  workers: int = 0,
  device_bytes: int | None = None,
  decode: str = 'auto',
) -> InputSource:
  """The run's input source for `request`: resident or streamed as `mode`
  (config.input.mode) says, normalised with the statistics `normalization`
  (config.dataset.normalization) names: 'measured' (default) the train
  split's, 'imagenet' torchvision's constants
  (`imagenet_preprocess.normalization`); logs which path and why. The one
  place the path is chosen.

  Args:
    request: the data set (the config's `dataset` section).
    mode: 'stream' reads a converted set's shards as the run goes; 'resident'
      holds the decoded splits on every device; 'auto' streams a converted
      set whose decoded train split would take more than RESIDENT_FRACTION
      of `device_bytes`, whose images have several sizes, or that
      `augment` (config.dataset.augment) crops with RandomResizedCrop.
    workers: Grain's decode processes when streaming (config.input.workers).
    device_bytes: one device's memory (None: unknown).
    decode: how a streamed set's 'resized_crop' decodes and resizes
      (config.input.decode, `stream.DECODES`).

  Raises:
    UserError: an unknown mode or normalization, 'imagenet' on images
      that are not RGB, 'stream' or augment 'resized_crop' for a
      set that is not converted, 'resident' for a set that cannot be
      (several sizes, augment 'resized_crop', or larger than the device).
  """
  normalization = request.normalization
  if normalization not in NORMALIZATIONS:
    raise UserError(
      f'config.dataset.normalization={normalization!r} is unknown; choose '
      'one of: ' + ', '.join(NORMALIZATIONS)
    )
  if mode not in MODES:
    raise UserError(
      f'config.input.mode={mode!r} is unknown; choose one of: '
      + ', '.join(MODES)
    )
  if request.name == 'array_record':
    source = _load_converted(request, mode, workers, device_bytes, decode)
  else:
    source = _load_resident(request, mode)
  if normalization == 'measured':
    return source
  mean, std = imagenet_preprocess.normalization()
  if source.mean.shape != mean.shape:
    raise UserError(
      f"config.dataset.normalization='imagenet' is for RGB images, but "
      f'dataset.name={request.name!r} has {source.mean.shape[0]} '
      "channel(s); use 'measured'"
    )
  return dataclasses.replace(source, mean=mean, std=std)


def _load_converted(
  request: datasets.DataRequest,
  mode: str,
  workers: int,
  device_bytes: int | None,
  decode: str,
) -> InputSource:
  """A converted set (configs/convert.py): decoded whole or streamed, as
  `choose` says; normalised with its train split's statistics."""
  for split in array_record.SPLITS:
    subset = getattr(request, f'{split}_subset')
    if subset:
      raise UserError(
        f'config.dataset.{split}_subset={subset} is '
        "not read for dataset.name='array_record'; convert the subset (or "
        'set it to 0)'
      )
  info = array_record.read_info(request.path)
  mode, why = choose(mode, info, device_bytes, request.path, request.augment)
  if mode == 'resident':
    logging.info('Input: resident on every device, decoded from %s (%s).',
                 info.root, why)  # fmt: skip
    arrays = array_record.load_resident(info)
    return resident.ResidentSource(
      name=request.name,
      train_images=arrays['train_images'],
      train_labels=np.asarray(info.labels('train'), np.int32),
      test_images=arrays['test_images'],
      test_labels=np.asarray(info.labels('test'), np.int32),
      num_classes=info.num_classes,
      mean=info.mean,
      std=info.std,
    )
  streamed = stream.source(
    info, request.image_size, workers, request.augment, request.name, decode
  )
  logging.info(
    'Input: streaming from the shards in %s with %d decode worker(s), %s '
    'images, %s augmentation, %s decode (%s).',
    info.root,
    workers,
    'x'.join(map(str, streamed.image_shape)),
    streamed.train.recipe,
    streamed.decode,
    why,
  )
  return streamed


def _load_resident(request: datasets.DataRequest, mode: str) -> InputSource:
  """A set the project decodes itself: resident, as before streaming."""
  if request.augment == 'resized_crop':
    raise UserError(
      "config.dataset.augment='resized_crop' is the streaming input's; "
      f'convert dataset.name={request.name!r} with configs/convert.py and train '
      "with dataset.name='array_record' (or set dataset.augment='auto')"
    )
  if mode == 'stream':
    raise UserError(
      f"config.input.mode='stream' reads ArrayRecord shards; convert "
      f'dataset.name={request.name!r} first with configs/convert.py '
      "and train with dataset.name='array_record'"
    )
  dataset = datasets.load(request)
  logging.info(
    'Input: resident on every device (%s; %.1f MiB decoded train split).',
    f'input.mode={mode!r}',
    dataset.train_images.nbytes / 2**20,
  )
  return resident.ResidentSource.of(dataset)


def choose(
  mode: str,
  info: array_record.Info,
  device_bytes: int | None,
  path: str,
  augment: str = 'auto',
) -> tuple[str, str]:
  """('resident' | 'stream', why) for a converted set under `mode` and
  config.dataset.augment (RandomResizedCrop is the streaming path's)."""
  decoded = info.decoded_bytes['train']
  both = decoded + info.decoded_bytes['test']
  if augment == 'resized_crop':
    if mode == 'resident':
      raise UserError(
        "config.input.mode='resident' cannot apply "
        "config.dataset.augment='resized_crop', which the streaming path "
        "does; use input.mode='stream' (or 'auto')"
      )
    return 'stream', f"input.mode={mode!r}: dataset.augment='resized_crop'"
  if mode == 'resident':
    if info.image_shape is None:
      raise UserError(
        f"config.input.mode='resident' needs images of one size, but "
        f'those of dataset.path={path!r} have several; use '
        "input.mode='stream' (or 'auto')"
      )
    if device_bytes is not None and both > device_bytes:
      raise UserError(
        f"config.input.mode='resident': the decoded splits take "
        f'{both / 2**30:.1f} GiB but a device has '
        f"{device_bytes / 2**30:.1f} GiB; use input.mode='stream' (or "
        "'auto')"
      )
    return 'resident', "input.mode='resident'"
  if mode == 'stream':
    return 'stream', "input.mode='stream'"
  if info.image_shape is None:
    return 'stream', "input.mode='auto': images of several sizes"
  if device_bytes is None:
    return 'stream', "input.mode='auto': the device's memory is unknown"
  size = (
    f"the decoded train split takes {decoded / 2**20:.1f} MiB of a device's "
    f'{device_bytes / 2**20:.0f} MiB'
  )
  if decoded > RESIDENT_FRACTION * device_bytes:
    return 'stream', f"input.mode='auto': {size}, more than a quarter"
  return 'resident', f"input.mode='auto': {size}, at most a quarter"

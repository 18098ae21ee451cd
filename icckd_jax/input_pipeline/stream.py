"""The streaming input path: Grain over ArrayRecord shards (docs/data.md).

The resident path (`input_pipeline`) keeps whole splits on every device; this
one reads, decodes and augments each step's examples on the host as the run
goes, for sets that do not fit. It keeps the resident path's guarantee: the
global batch of step s, pixels included, is the same whatever the number of
processes, devices and decode workers, and a run resumed at any step sees
the batches an uninterrupted run would have.

* Order: one permutation of the training split per (seed, epoch), which
  every process computes; step s of the epoch takes its rows s*B..(s+1)*B-1.
  Process p reads only the rows its devices hold (Grain's IndexSampler and
  ShardOptions would instead split the records between processes before
  shuffling, so the batches would change with the process count).
* Augmentation: each view of each example is keyed by (seed, step, view,
  position in the global batch) (`host_augment`).
* Position: Grain's `MapDataset` is indexed by the step, so a resumed run
  starts its pipeline at its step; nothing but the step is saved.
* Work: one element is one step's rows of this process, made in Grain's
  worker processes (`input.workers`), put on the devices with
  `jax.make_array_from_process_local_data`; the next step's batch is on
  its way to the devices before the current one is handed out.
"""

from __future__ import annotations

from collections.abc import Iterator
import dataclasses
import functools
from typing import ClassVar

from absl import flags
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from icckd_jax import parallel
from icckd_jax.data import array_record
from icckd_jax.data import images as images_lib
from icckd_jax.input_pipeline import decode_workers
from icckd_jax.input_pipeline import host_augment
from icckd_jax.input_pipeline import stream_rows
from icckd_jax.input_pipeline.source import (
  Batch,
  EvalBatch,
  EvalBatches,
  TrainFeed,
)
from icckd_jax.errors import UserError

# Steps a Grain pipeline may be asked for: more than any run takes.
_ENDLESS = 2**40
# config.dataset.augment: 'auto' picks a recipe by the images' sizes.
AUGMENTS = ('auto', *host_augment.RECIPES)
# config.input.decode: how 'resized_crop' decodes and resizes
# (`host_augment`, `imagenet_preprocess`); 'auto' is DEFAULT_DECODE for a
# new run, what a resumed one started with (runs/data_identity.py).
DECODES = ('auto', 'torchvision', 'exact', 'fast')
# Chosen with benchmarks/input_speed.py (docs/data.md): 'torchvision' gives
# torchvision's pixels (those imported teachers and published tables were
# measured with) at less CPU than 'exact' (its decode stops at the crops),
# and feeds 4,000 img/s from 11 cores, 6,000 from 17 (max_side=320: 7, 11);
# 'fast' costs about 0.75x its CPU at full size, with other pixels.
DEFAULT_DECODE = 'torchvision'
# What streamed runs decoded before config.input.decode existed (and, until
# 'torchvision', by default).
DECODE_BEFORE_RECORDED = 'exact'


@dataclasses.dataclass(frozen=True)
class StreamSplit:
  """A split read from shards as the run goes; the streaming counterpart of
  `resident.Split`.

  `image_shape`: [H, W, C] of the images the pipeline hands out; `recipe`:
  'crop' or 'resized_crop' (`host_augment`); `workers`: Grain's decode
  processes (0: decoding in a thread of this process); `decode`: one of
  DECODES but 'auto', how 'resized_crop' decodes and resizes.
  """

  info: array_record.Info
  split: str
  image_shape: tuple[int, int, int]
  recipe: str
  workers: int
  decode: str = 'exact'

  @property
  def size(self) -> int:
    return self.info.counts[self.split]


def splits(
  info: array_record.Info,
  image_size: int,
  workers: int,
  augment: str = 'auto',
  decode: str = 'auto',
) -> tuple[StreamSplit, StreamSplit]:
  """(train, test) of a converted set under `augment` (config.dataset.augment):
  'crop' at the images' own size (every image must have one), 'resized_crop'
  at `image_size`; 'auto' is 'crop' when every image has one size, else
  'resized_crop'. `decode` (config.input.decode): 'auto' is
  DEFAULT_DECODE.

  Raises:
    UserError: an unknown `augment` or `decode`, or 'crop' on images of
      several sizes.
  """
  for field, value, valid in (
    ('dataset.augment', augment, AUGMENTS),
    ('input.decode', decode, DECODES),
  ):
    if value not in valid:
      raise UserError(
        f'config.{field}={value!r} is unknown; choose one of: '
        + ', '.join(valid)
      )
  if decode == 'auto':
    decode = DEFAULT_DECODE
  missing = images_lib.fast_decode_missing() if decode == 'fast' else []
  if missing:
    raise UserError(
      f"config.input.decode='fast' needs {' and '.join(missing)}, not "
      "installed: pip install 'icckd_jax[fast]', or use 'torchvision'"
    )
  if augment == 'auto':
    augment = 'crop' if info.image_shape is not None else 'resized_crop'
  if augment == 'crop':
    if info.image_shape is None:
      raise UserError(
        f"config.dataset.augment='crop' needs images of one size, but those "
        f"of {str(info.root)!r} have several; use 'resized_crop' (or 'auto')"
      )
    shape = tuple(info.image_shape)
  else:
    shape = (image_size, image_size, info.channels)
  return tuple(
    StreamSplit(info, split, shape, augment, workers, decode)
    for split in array_record.SPLITS
  )


@dataclasses.dataclass(frozen=True)
class StreamSource:
  """A converted set read from its shards as the run goes: the
  `source.InputSource` of the streaming path (`source`).

  `train`, `test`: its splits; the other fields as `source.InputSource`
  names them, from the set's info.json.
  """

  name: str
  num_classes: int
  train_labels: np.ndarray
  test_labels: np.ndarray
  mean: np.ndarray
  std: np.ndarray
  train: StreamSplit
  test: StreamSplit
  input_path: ClassVar[str] = 'stream'

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.train.image_shape)

  @property
  def decode(self) -> str | None:
    """'torchvision', 'exact' or 'fast': how 'resized_crop' decodes and resizes its images
    (None for 'crop', which never resizes)."""
    return self.train.decode if self.train.recipe == 'resized_crop' else None

  def train_batches(
    self, mesh: Mesh, feed: TrainFeed, start_step: int
  ) -> Iterator[Batch]:
    """`source.InputSource.train_batches`, decoded in `train.workers`
    processes."""
    return _train_batches(self.train, mesh, feed, start_step)

  def eval_batches(self, mesh: Mesh, batch_size: int) -> EvalBatches:
    """`source.InputSource.eval_batches`: each pass reads the test split."""
    parallel.check_batch_size(batch_size, mesh, 'config.eval_batch_size')
    return EvalBatches(
      functools.partial(_eval_batches, self.test, mesh, batch_size)
    )


def source(
  info: array_record.Info,
  image_size: int,
  workers: int,
  augment: str = 'auto',
  name: str = 'array_record',
  decode: str = 'auto',
) -> StreamSource:
  """The converted set `info` streamed (`splits` says how)."""
  train, test = splits(info, image_size, workers, augment, decode)
  return StreamSource(
    name=name,
    num_classes=info.num_classes,
    train_labels=np.asarray(info.labels('train'), np.int32),
    test_labels=np.asarray(info.labels('test'), np.int32),
    mean=info.mean,
    std=info.std,
    train=train,
    test=test,
  )


def local_rows(mesh: Mesh, batch_size: int) -> tuple[int, int]:
  """[lo, hi): the rows of a global batch this process's devices hold."""
  index = parallel.batch_sharded(mesh).addressable_devices_indices_map(
    (batch_size,)
  )
  spans = sorted(
    (s[0].start or 0, batch_size if s[0].stop is None else s[0].stop)
    for s in index.values()
  )
  lo, hi = spans[0][0], spans[-1][1]
  if sum(b - a for a, b in set(spans)) != hi - lo:
    raise ValueError(f'the rows of process {jax.process_index()} are split')
  return lo, hi


def _iterate(fn, start: int, stop: int, workers: int, threads: int = 1):
  """fn(start), fn(start + 1), ... from Grain: in `workers` processes (or,
  with none, in `threads` threads of this one), handed back in order (one
  element per index, so the order and content do not depend on either)."""
  import grain  # pylint: disable=g-import-not-at-top

  if not flags.FLAGS.is_parsed():
    # Grain reads its absl flags' defaults; outside launch.py (a test, a
    # notebook) nothing has parsed them.
    flags.FLAGS.mark_as_parsed()
  dataset = grain.MapDataset.range(start, stop).map(fn)
  # A short buffer: elements are whole batches.
  dataset = dataset.to_iter_dataset(
    grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2 * threads)
  )
  if workers:
    decode_workers.start_resource_tracker()
    dataset = dataset.mp_prefetch(
      grain.MultiprocessingOptions(
        num_workers=workers, per_worker_buffer_size=2
      ),
      worker_init_fn=decode_workers.ignore_stop_signals,
    )
  return iter(dataset)


def _checked(element):
  if 'error' in element:
    raise UserError(element['error'])
  return element


def _train_batches(
  split: StreamSplit, mesh: Mesh, feed: TrainFeed, start_step: int
) -> Iterator[Batch]:
  """The global `Batch`es of steps start_step, start_step + 1, ... of
  `split` (`StreamSource.train_batches`), as the resident path gives them."""
  batch_size, num_views = feed.batch_size, feed.num_views
  rows = local_rows(mesh, batch_size)
  fn = stream_rows.TrainRows(split, feed.seed, batch_size, rows, num_views,
                  feed.crop_padding, feed.flip, feed.strong_view)  # fmt: skip
  elements = _iterate(fn, start_step, _ENDLESS, split.workers)
  images_sharding = NamedSharding(mesh, P(None, parallel.DATA))
  rows_sharding = parallel.batch_sharded(mesh)
  on_cpu = split.workers and mesh.devices.flat[0].platform == 'cpu'

  def put(element):
    element = _checked(element)
    if on_cpu:
      element = decode_workers.detached(element)
    images = jax.make_array_from_process_local_data(
      images_sharding,
      element['images'],
      (num_views, batch_size, *split.image_shape),
    )
    labels = jax.make_array_from_process_local_data(
      rows_sharding, element['labels'], (batch_size,)
    )
    if not feed.with_indices:
      return Batch(images, labels)
    indices = jax.make_array_from_process_local_data(
      rows_sharding, element['indices'], (batch_size,)
    )
    return Batch(images, labels, indices)

  try:
    ahead = put(next(elements))
    while True:
      current, ahead = ahead, put(next(elements))
      yield current
  finally:
    close = getattr(elements, 'close', None)
    if close is not None:
      close()
    if split.workers:
      decode_workers.release_last_elements()


def _eval_batches(
  split: StreamSplit, mesh: Mesh, batch_size: int
) -> Iterator[EvalBatch]:
  """The split once, in global `EvalBatch`es, the last one padded and
  masked; each process reads only its rows. Decoded in `split.workers`
  processes, as training is: threads of this process would take its CPU
  (its GIL, and the cores its input pipeline shares) for each image."""
  rows = local_rows(mesh, batch_size)
  num_batches = -(-split.size // batch_size)
  elements = _iterate(
    stream_rows.EvalRows(split, batch_size, rows),
    0,
    num_batches,
    workers=split.workers,
  )
  sharding = parallel.batch_sharded(mesh)
  on_cpu = split.workers and mesh.devices.flat[0].platform == 'cpu'
  try:
    for element in elements:
      element = _checked(element)
      if on_cpu:  # as in training: the worker's segment is freed at once
        element = decode_workers.detached(element)
      yield EvalBatch(
        *(
          jax.make_array_from_process_local_data(
            sharding, element[k], (batch_size, *element[k].shape[1:])
          )
          for k in ('images', 'labels', 'mask')
        )
      )
  finally:
    close = getattr(elements, 'close', None)
    if close is not None:
      close()
    if split.workers:
      decode_workers.release_last_elements()

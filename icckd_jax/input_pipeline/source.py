"""The input source: what a run reads its batches and shapes from.

A run sees its data set through one interface, `InputSource`, whichever
path it is on: `resident.ResidentSource` (whole splits on every device,
batches drawn and augmented there) or `stream.StreamSource` (ArrayRecord
shards read, decoded and augmented on the host as the run goes). The path
is chosen once, where the data is loaded (`inputs.load`); nothing after
that asks which it is.

Both give the same batches for the same (seed, step): a training `Batch`
depends only on them, never on the device, process or worker count, and a
run resumed at any step sees what an uninterrupted one would have.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
import dataclasses
from typing import Protocol

import flax
import jax
from jax.sharding import Mesh
import numpy as np


@flax.struct.dataclass
class Batch:
  """One training step's global batch, sharded over `data` on B.

  Attributes:
    images: [V, B, H, W, C] uint8, V augmented views of each example.
    labels: [B] int32, each example's class.
    indices: [B] int32, each example's index in the training split (a
      distiller's memory bank keys on it, e.g. CRD's); None unless asked
      for (`with_indices`).
  """

  images: jax.Array
  labels: jax.Array
  indices: jax.Array | None = None


@flax.struct.dataclass
class EvalBatch:
  """One evaluation batch of a split, sharded over `data` on B.

  Attributes:
    images: [B, H, W, C] uint8, not augmented.
    labels: [B] int32.
    mask: [B] bool; False on the padding of the split's last batch.
  """

  images: jax.Array
  labels: jax.Array
  mask: jax.Array


@dataclasses.dataclass(frozen=True)
class TrainFeed:
  """How a run's training batches are drawn.

  An epoch is a permutation of the training split keyed by (seed, epoch),
  its remainder short of a batch dropped. View v of the example at
  position i of step t's batch is cropped (zero padding `crop_padding`)
  and flipped (`flip`) with a key of (seed, t, v, i). With `strong_view`,
  the last view then goes through RandAugment (rand_augment.py) with a key
  of its own stream (seed, t, v, i): MLKD's strong view, its weak view the
  first.

  Attributes:
    seed: the run's seed.
    batch_size: B, the global batch (a multiple of the device count).
    num_views: V, augmented views of each example.
    crop_padding: pixels of zero padding around a random crop.
    flip: random horizontal flips.
    with_indices: each example's index in the training split rides along
      (`Batch.indices`); the images and labels are the same either way.
    strong_view: the last view is strongly augmented too; the others, and
      every view without it, are what they were.
  """

  seed: int
  batch_size: int
  num_views: int
  crop_padding: int
  flip: bool
  with_indices: bool = False
  strong_view: bool = False


class EvalBatches:
  """A split in `EvalBatch`es, iterable as often as the run evaluates: each
  pass covers every example exactly once (docs/method.md §7.5)."""

  def __init__(self, make: Callable[[], Iterator[EvalBatch]]):
    self._make = make

  def __iter__(self) -> Iterator[EvalBatch]:
    return self._make()


class InputSource(Protocol):
  """A data set as a run reads it (`resident.ResidentSource`,
  `stream.StreamSource`).

  Attributes:
    name: the data set's config name.
    num_classes: K; every label is in [0, K).
    train_labels: [N] int32, the training split's labels, in its order.
    test_labels: [M] int32.
    mean, std: [C] float32 in [0, 255] units, the statistics the inputs are
      normalised with.
    image_shape: [H, W, C] of the images a step sees.
    input_path: 'resident' or 'stream', the path chosen (`inputs.load`);
      a run resumes on the path it started on (runs/data_identity.py).
    decode: 'torchvision', 'exact' or 'fast', how a streamed ImageNet
      crop is decoded (`stream.DECODES`), None where nothing is resized; a run resumes
      with the decode it started with.
  """

  name: str
  num_classes: int
  train_labels: np.ndarray
  test_labels: np.ndarray
  mean: np.ndarray
  std: np.ndarray
  input_path: str
  decode: str | None

  @property
  def image_shape(self) -> tuple[int, int, int]: ...

  def train_batches(
    self, mesh: Mesh, feed: TrainFeed, start_step: int
  ) -> Iterator[Batch]:
    """The `Batch`es of steps start_step, start_step + 1, ... (endless),
    drawn as `feed` says. The next batch is on its way to the devices
    before the current one is handed out; closing the iterator releases
    what it holds (a streamed set's decode workers)."""
    ...

  def eval_batches(self, mesh: Mesh, batch_size: int) -> EvalBatches:
    """The test split in `EvalBatch`es of `batch_size` (a multiple of the
    device count), the last one padded and masked."""
    ...

"""The on-device input pipeline (docs/method.md §8).

Whole splits live on every device as uint8. A training batch is drawn, cropped
and flipped on the device inside jit, keyed by (seed, step) on the global
batch, and the next one is dispatched before the current one is consumed, so
there is no host round trip per step. An epoch is a permutation of the
training split, keyed by (seed, epoch); the remainder that does not fill a
batch is dropped so every step has the same static shape.

`ResidentSource` is the `source.InputSource` of such a set: a
`datasets.Dataset` with the ways to feed it.
"""

from __future__ import annotations

from collections.abc import Iterator
import dataclasses
import functools
from typing import ClassVar

import flax
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P
import numpy as np

from icckd_jax import parallel
from icckd_jax.data.datasets import Dataset
from icckd_jax.input_pipeline import augment
from icckd_jax.input_pipeline.source import (
  Batch,
  EvalBatch,
  EvalBatches,
  TrainFeed,
)

# Streams of randomness derived from the run's seed; each consumer folds in
# its own constant so that they never share a key.
ORDER_STREAM = 1
AUGMENT_STREAM = 2
STRONG_STREAM = 3  # the strong view's RandAugment (`TrainFeed.strong_view`)


@flax.struct.dataclass
class Split:
  """One split resident on every device of the mesh."""

  images: jax.Array  # [N, H, W, C] uint8
  labels: jax.Array  # [N] int32

  @property
  def size(self) -> int:
    return self.labels.shape[0]


def to_device(images: np.ndarray, labels: np.ndarray, mesh: Mesh) -> Split:
  """A split ([N, H, W, C] uint8 images, [N] int32 labels), replicated on
  every device of the mesh."""
  return Split(*parallel.put_replicated((images, labels), mesh))


@dataclasses.dataclass(frozen=True)
class ResidentSource(Dataset):
  """A data set held whole: the `source.InputSource` whose splits are
  replicated on every device, batches drawn and augmented there."""

  input_path: ClassVar[str] = 'resident'
  decode: ClassVar[str | None] = None

  @classmethod
  def of(cls, dataset: Dataset) -> ResidentSource:
    """`dataset` (`datasets.load`'s) as an input source."""
    return cls(
      **{f.name: getattr(dataset, f.name) for f in dataclasses.fields(dataset)}
    )

  def train_batches(
    self, mesh: Mesh, feed: TrainFeed, start_step: int
  ) -> Iterator[Batch]:
    """`source.InputSource.train_batches`: the training split placed on
    every device for as long as the iterator lives."""
    split = to_device(self.train_images, self.train_labels, mesh)
    return _train_batches(split, mesh, feed, start_step)

  def eval_batches(self, mesh: Mesh, batch_size: int) -> EvalBatches:
    """`source.InputSource.eval_batches`: the test split placed on every
    device once; each pass gathers its batches there."""
    parallel.check_batch_size(batch_size, mesh, 'config.eval_batch_size')
    split = to_device(self.test_images, self.test_labels, mesh)
    return EvalBatches(
      functools.partial(_eval_batches, split, mesh, batch_size)
    )


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  return num_examples // batch_size


def _epoch_order(
  seed: int, epoch: jax.Array, num_examples: int, batch_size: int
) -> jax.Array:
  """[steps_per_epoch, B] int32: example indices of each step of `epoch`."""
  key = jax.random.fold_in(
    jax.random.fold_in(jax.random.key(seed), ORDER_STREAM), epoch
  )
  perm = jax.random.permutation(key, num_examples)
  steps = steps_per_epoch(num_examples, batch_size)
  return perm[: steps * batch_size].reshape(steps, batch_size).astype(jnp.int32)


def make_batch_fn(
  mesh: Mesh,
  seed: int,
  num_views: int,
  crop_padding: int,
  flip: bool,
  strong_view: bool = False,
):
  """A jitted fn(split, indices [B], step) -> (images [V, B, H, W, C] uint8,
  labels [B] int32), both sharded over `data` on the batch axis.

  Each device gathers and augments only its own shard of the global batch.
  View v of the example at global position i uses key
  fold_in(fold_in(fold_in(fold_in(seed, augment), step), v), i), which makes
  the pixels independent of how the batch is split across devices; with
  `strong_view`, the last view's RandAugment uses the same with the strong
  stream.
  """

  def per_device(split, indices, positions, step):
    step_key, strong_key = (
      jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), stream), step)
      for stream in (AUGMENT_STREAM, STRONG_STREAM)
    )
    images = split.images[indices]
    views = []
    for v in range(num_views):
      keys = augment.example_keys(jax.random.fold_in(step_key, v), positions)
      views.append(augment.random_crop_flip(images, keys, crop_padding, flip))
    if strong_view:
      v = num_views - 1
      keys = augment.example_keys(jax.random.fold_in(strong_key, v), positions)
      views[v] = augment.strong(views[v], keys)
    return jnp.stack(views), split.labels[indices]

  sharded = parallel.shard_map(
    per_device,
    mesh,
    in_specs=(P(), P(parallel.DATA), P(parallel.DATA), P()),
    out_specs=(P(None, parallel.DATA), P(parallel.DATA)),
  )

  @jax.jit
  def make_batch(split, indices, step):
    positions = jnp.arange(indices.shape[0], dtype=jnp.int32)
    return sharded(split, indices, positions, step)

  return make_batch


def _train_batches(
  split: Split, mesh: Mesh, feed: TrainFeed, start_step: int
) -> Iterator[Batch]:
  """Yields the global `Batch`es of steps start_step, start_step + 1, ...
  of `split` (`ResidentSource.train_batches`).

  The indices, when `feed` asks for them, are sharded as the labels.

  The batch of step t + 1 is dispatched to the device before the batch of
  step t is handed out (on-device prefetch). Resuming at any step gives the
  batches an uninterrupted run would have seen.
  """
  seed, batch_size = feed.seed, feed.batch_size
  n_steps = steps_per_epoch(split.size, batch_size)
  order_fn = jax.jit(_epoch_order, static_argnums=(0, 2, 3))
  make_batch = make_batch_fn(
    mesh, seed, feed.num_views, feed.crop_padding, feed.flip, feed.strong_view
  )
  orders = {}

  def batch_at(step):
    epoch = step // n_steps
    if epoch not in orders:
      orders.clear()
      orders[epoch] = order_fn(seed, epoch, split.size, batch_size)
    indices = orders[epoch][step % n_steps]
    images, labels = make_batch(split, indices, step)
    if not feed.with_indices:
      return Batch(images, labels)
    return Batch(
      images, labels, jax.device_put(indices, parallel.batch_sharded(mesh))
    )

  step = start_step
  ahead = batch_at(step)
  while True:
    current, ahead = ahead, batch_at(step + 1)
    yield current
    step += 1


def eval_indices(
  num_examples: int, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
  """Covers a split exactly once in batches of `batch_size`.

  Returns indices [num_batches, batch_size] int32 and mask [num_batches,
  batch_size] bool; the last batch is padded with index 0 and masked out.
  """
  num_batches = -(-num_examples // batch_size)
  flat = np.arange(num_batches * batch_size)
  mask = flat < num_examples
  indices = np.where(mask, flat, 0).astype(np.int32)
  return (
    indices.reshape(num_batches, batch_size),
    mask.reshape(num_batches, batch_size),
  )


@functools.lru_cache(maxsize=8)
def _eval_gather_fn(mesh: Mesh):
  """A jitted fn(split, indices [B], mask [B]) -> `EvalBatch`: each device
  gathers only its shard of the batch from the split it holds."""

  def per_device(split, indices, mask):
    return EvalBatch(split.images[indices], split.labels[indices], mask)

  return jax.jit(
    parallel.shard_map(
      per_device,
      mesh,
      in_specs=(P(), P(parallel.DATA), P(parallel.DATA)),
      out_specs=P(parallel.DATA),
    )
  )


def _eval_batches(
  split: Split, mesh: Mesh, batch_size: int
) -> Iterator[EvalBatch]:
  """One pass over `split` in `EvalBatch`es of `batch_size`."""
  gather = _eval_gather_fn(mesh)
  indices, mask = eval_indices(split.size, batch_size)
  for idx, m in zip(indices, mask):
    yield gather(split, *parallel.put_global_batch((idx, m), mesh))

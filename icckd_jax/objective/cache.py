"""The pipeline cache: a ring buffer of the last K training batches (docs/method.md §3).

A mini-batch holds too few same-class samples to serve as negatives, so the
teacher also draws them from the K previous steps. The cache is a pytree that
lives on the device inside the train state, so it is donated with it,
checkpointed with it, and a resumed run continues with the same negatives.

Pipeline order: the batch of step t is first used (its keys are in-batch
negatives and positives at step t), then pushed, so it serves as cache
negatives for steps t+1 ... t+K; the push at the end of step t+K overwrites
it. A slot that has never been written is marked invalid and must be masked
out by the consumer (`entries` returns the mask), never read as zeros.

Each slot holds one global batch: either the detached key embeddings
([B, d] float32, `cache.store='features'`) or the augmented key-view images
([B, H, W, C] uint8, `cache.store='images'`), with their labels.
"""

import math

from flax import struct
import jax
import jax.numpy as jnp


@struct.dataclass
class Cache:
  """Ring buffer state. K = items.shape[0] is static; K = 0 means no cache.

  Attributes:
    items: [K, B, *item_shape] the stored batches.
    labels: [K, B] int32 labels of the stored batches.
    valid: [K] bool, True once slot k has been written.
    next_slot: [] int32, the slot the next push writes, in [0, K) (0 if K=0).
  """

  items: jax.Array
  labels: jax.Array
  valid: jax.Array
  next_slot: jax.Array


def create(
  size: int, batch_size: int, item_shape: tuple[int, ...], dtype
) -> Cache:
  """An empty cache of `size` slots of `batch_size` items each.

  Args:
    size: K >= 0, the number of batches kept; 0 disables the cache (all
      arrays have a leading axis of 0 and `push` is a no-op).
    batch_size: B, the global batch size.
    item_shape: shape of one item, e.g. (d,) or (H, W, C).
    dtype: dtype of the items, e.g. jnp.float32 or jnp.uint8.

  Returns:
    A Cache with every slot invalid and next_slot 0.

  Raises:
    ValueError: `size` or `batch_size` is negative.
  """
  if size < 0 or batch_size < 0:
    raise ValueError(
      f'cache size={size} and batch_size={batch_size} must be >= 0'
    )
  return Cache(
    items=jnp.zeros((size, batch_size, *item_shape), dtype),
    labels=jnp.zeros((size, batch_size), jnp.int32),
    valid=jnp.zeros((size,), jnp.bool_),
    next_slot=jnp.zeros((), jnp.int32),
  )


def push(cache: Cache, items: jax.Array, labels: jax.Array) -> Cache:
  """Writes a batch into slot `next_slot`, marks it valid, advances the ring.

  slot = next_slot;  items'[slot] = sg(items);  labels'[slot] = labels;
  valid'[slot] = True;  next_slot' = (slot + 1) mod K.
  Once all K slots are valid, each push replaces the oldest batch. A no-op
  for K = 0. Jit-able: the slot is a traced index.

  Args:
    cache: the current Cache.
    items: [B, *item_shape]; cast to the cache's dtype, under stop_gradient
      (cache entries are constants for the loss).
    labels: [B] int labels.

  Returns:
    The updated Cache.

  Raises:
    ValueError: `items` or `labels` does not have the shape of one slot.
  """
  if items.shape != cache.items.shape[1:]:
    raise ValueError(
      f'cache push: items of shape {items.shape}, expected '
      f'{cache.items.shape[1:]}'
    )
  if labels.shape != cache.labels.shape[1:]:
    raise ValueError(
      f'cache push: labels of shape {labels.shape}, expected '
      f'{cache.labels.shape[1:]}'
    )
  size = cache.items.shape[0]
  if size == 0:
    return cache
  slot = cache.next_slot
  items = jax.lax.stop_gradient(items).astype(cache.items.dtype)
  return Cache(
    items=cache.items.at[slot].set(items),
    labels=cache.labels.at[slot].set(labels.astype(jnp.int32)),
    valid=cache.valid.at[slot].set(True),
    next_slot=(slot + 1) % size,
  )


def entries(cache: Cache) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The cache as a flat list of K·B entries with per-entry validity.

  Entry k·B + b is item b of slot k; its validity is valid[k].

  Args:
    cache: a Cache with K slots of B items.

  Returns:
    (items [K·B, *item_shape], labels [K·B] int32, valid [K·B] bool).
  """
  size, batch = cache.labels.shape
  items = cache.items.reshape(size * batch, *cache.items.shape[2:])
  valid = jnp.repeat(cache.valid, batch, total_repeat_length=size * batch)
  return items, cache.labels.reshape(size * batch), valid


def nbytes(cache: Cache) -> int:
  """Device bytes held by the cache's arrays (the memory ablation metric)."""
  return sum(
    math.prod(x.shape) * x.dtype.itemsize
    for x in jax.tree_util.tree_leaves(cache)
  )

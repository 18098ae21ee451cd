"""The pipeline cache: ring order, validity, K = 0, jit with donation."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icckd_jax.objective import cache as cache_lib

K, B, D = 3, 4, 2


def batch(step):
  """The batch of step `step`: every item and label carries the step number."""
  items = step + np.arange(B)[:, None] / 10 + np.zeros((B, D))
  items = items.astype(np.float32)
  labels = np.full((B,), 100 + step, np.int32)
  return items, labels


def push_steps(c, steps, push=cache_lib.push):
  for step in steps:
    c = push(c, *batch(step))
  return c


def slot_steps(c):
  """The step stored in each slot, read back from the labels (-1: unwritten)."""
  return [
    int(l[0]) - 100 if v else -1
    for l, v in zip(np.asarray(c.labels), np.asarray(c.valid))
  ]


def test_create_is_empty_with_static_shapes():
  c = cache_lib.create(K, B, (D,), jnp.float32)
  assert c.items.shape == (K, B, D) and c.items.dtype == jnp.float32
  assert c.labels.shape == (K, B) and c.labels.dtype == jnp.int32
  assert c.valid.shape == (K,) and not np.any(c.valid)
  assert c.next_slot.shape == () and int(c.next_slot) == 0


def test_create_rejects_negative_size():
  with pytest.raises(ValueError, match='size=-1'):
    cache_lib.create(-1, B, (D,), jnp.float32)


def test_push_fills_slots_in_order_and_marks_them_valid():
  c = cache_lib.create(K, B, (D,), jnp.float32)
  c = push_steps(c, [0])
  assert slot_steps(c) == [0, -1, -1] and int(c.next_slot) == 1
  c = push_steps(c, [1])
  assert slot_steps(c) == [0, 1, -1] and int(c.next_slot) == 2
  np.testing.assert_array_equal(c.items[1], batch(1)[0])
  np.testing.assert_array_equal(c.items[2], 0.0)


def test_push_after_k_steps_replaces_the_oldest():
  c = push_steps(cache_lib.create(K, B, (D,), jnp.float32), range(K))
  assert slot_steps(c) == [0, 1, 2] and int(c.next_slot) == 0
  c = push_steps(c, [3])
  assert slot_steps(c) == [3, 1, 2] and int(c.next_slot) == 1
  c = push_steps(c, [4, 5, 6])
  # After step t's push the cache holds steps t-K+1 .. t.
  assert sorted(slot_steps(c)) == [4, 5, 6]
  assert slot_steps(c) == [6, 4, 5] and int(c.next_slot) == 1
  for k, step in enumerate(slot_steps(c)):
    np.testing.assert_array_equal(c.items[k], batch(step)[0])


def test_entries_flatten_slot_major_with_per_entry_validity():
  c = push_steps(cache_lib.create(K, B, (D,), jnp.float32), [0, 1])
  items, labels, valid = cache_lib.entries(c)
  assert items.shape == (K * B, D)
  assert labels.shape == (K * B,) and valid.shape == (K * B,)
  for k in range(K):
    for b in range(B):
      np.testing.assert_array_equal(items[k * B + b], c.items[k, b])
      assert labels[k * B + b] == c.labels[k, b]
      assert valid[k * B + b] == c.valid[k]
  assert int(valid.sum()) == 2 * B


def test_size_zero_is_a_no_op():
  c = cache_lib.create(0, B, (D,), jnp.float32)
  for push in (cache_lib.push, jax.jit(cache_lib.push)):
    pushed = push_steps(c, [0, 1], push)
    assert pushed.items.shape == (0, B, D) and pushed.valid.shape == (0,)
    assert int(pushed.next_slot) == 0
  items, labels, valid = cache_lib.entries(c)
  assert items.shape == (0, D) and labels.shape == (0,) and valid.shape == (0,)
  assert cache_lib.nbytes(c) == 4


def test_jit_with_donated_cache_matches_eager():
  # The train step donates its state, cache included; `push` must work on a
  # donated buffer and give the same ring as eager pushes.
  donating = jax.jit(cache_lib.push, donate_argnums=0)
  with warnings.catch_warnings():
    # Backends without donation support warn and copy; either is correct.
    warnings.filterwarnings('ignore', message='Some donated buffers')
    jitted = push_steps(
      cache_lib.create(K, B, (D,), jnp.float32), range(5), donating
    )
  eager = push_steps(cache_lib.create(K, B, (D,), jnp.float32), range(5))
  for a, b in zip(
    jax.tree_util.tree_leaves(jitted), jax.tree_util.tree_leaves(eager)
  ):
    np.testing.assert_array_equal(a, b)
  assert slot_steps(jitted) == [3, 4, 2]


def test_cache_is_a_pytree_that_round_trips():
  c = push_steps(cache_lib.create(K, B, (D,), jnp.float32), [0])
  leaves, treedef = jax.tree_util.tree_flatten(c)
  assert len(leaves) == 4
  again = jax.tree_util.tree_unflatten(treedef, leaves)
  assert slot_steps(again) == slot_steps(c)


def test_image_store_keeps_uint8():
  c = cache_lib.create(2, B, (3, 3, 1), jnp.uint8)
  images = np.arange(B * 9, dtype=np.uint8).reshape(B, 3, 3, 1)
  c = cache_lib.push(c, images, np.zeros(B, np.int32))
  assert c.items.dtype == jnp.uint8
  np.testing.assert_array_equal(c.items[0], images)
  assert cache_lib.entries(c)[0].shape == (2 * B, 3, 3, 1)


def test_pushed_items_carry_no_gradient():
  c = cache_lib.create(K, B, (D,), jnp.float32)
  items, labels = batch(0)
  grad = jax.grad(lambda x: jnp.sum(cache_lib.push(c, x, labels).items))(items)
  np.testing.assert_array_equal(grad, 0.0)


def test_push_rejects_a_batch_of_the_wrong_shape():
  c = cache_lib.create(K, B, (D,), jnp.float32)
  with pytest.raises(ValueError, match='items of shape'):
    cache_lib.push(c, np.zeros((1, D), np.float32), np.zeros(1, np.int32))
  with pytest.raises(ValueError, match='labels of shape'):
    cache_lib.push(c, np.zeros((B, D), np.float32), np.zeros(B + 1, np.int32))


def test_nbytes_counts_every_array():
  c = cache_lib.create(16, 64, (128,), jnp.float32)
  want = 16 * 64 * 128 * 4 + 16 * 64 * 4 + 16 * 1 + 4
  assert cache_lib.nbytes(c) == want
  leaves = jax.tree_util.tree_leaves(c)
  assert cache_lib.nbytes(c) == sum(x.nbytes for x in leaves)
  images = cache_lib.create(2, 8, (32, 32, 3), jnp.uint8)
  assert cache_lib.nbytes(images) == 2 * 8 * 32 * 32 * 3 + 2 * 8 * 4 + 2 + 4

"""On-device augmentation: random crop with zero padding, horizontal flip,
and the strong view's RandAugment (rand_augment.py).

Everything is keyed per example by (step key, position in the global batch),
so a device that augments its shard of the batch produces exactly the pixels
one device would produce for the whole batch: device-count invariance holds
for the data too.
"""

import jax
import jax.numpy as jnp

from icckd_jax.input_pipeline import rand_augment


def example_keys(step_key: jax.Array, positions: jax.Array) -> jax.Array:
  """One key per example. positions: [b] int32 in the global batch -> [b] keys."""
  return jax.vmap(jax.random.fold_in, (None, 0))(step_key, positions)


def random_crop_flip(
  images: jax.Array, keys: jax.Array, pad: int, flip: bool
) -> jax.Array:
  """images: [b, H, W, C] uint8, keys: [b] -> [b, H, W, C] uint8.

  Pads with zeros before cropping, as torchvision's RandomCrop(padding=4)
  does on the uint8 image, so padded pixels are black before normalisation.
  """
  _, h, w, c = images.shape

  def one(image, key):
    k_y, k_x, k_flip = jax.random.split(key, 3)
    if pad:
      image = jnp.pad(image, ((pad, pad), (pad, pad), (0, 0)))
      y = jax.random.randint(k_y, (), 0, 2 * pad + 1)
      x = jax.random.randint(k_x, (), 0, 2 * pad + 1)
      image = jax.lax.dynamic_slice(image, (y, x, 0), (h, w, c))
    if flip:
      image = jnp.where(jax.random.bernoulli(k_flip), image[:, ::-1], image)
    return image

  return jax.vmap(one)(images, keys)


def strong(images: jax.Array, keys: jax.Array) -> jax.Array:
  """images: [b, H, W, C] uint8, keys: [b] -> [b, H, W, C] uint8: each
  image's RandAugment (`rand_augment.apply`) with the draws of its own key.

  The op is chosen with jax.lax.switch (under vmap every op runs and each
  image keeps its own), in a loop over the two ops so that the fourteen
  compile once, not twice.
  """
  branches = rand_augment.branches(jnp)

  def one(image, key):
    k_ops, k_magnitudes, k_cutout = jax.random.split(key, 3)
    ops = jax.random.randint(
      k_ops, (rand_augment.NUM_OPS,), 0, len(rand_augment.OPS)
    )
    uniforms = jax.random.uniform(k_magnitudes, (rand_augment.NUM_OPS,))
    x = jax.lax.fori_loop(
      0,
      rand_augment.NUM_OPS,
      lambda k, x: jax.lax.switch(ops[k], branches, x, uniforms[k]),
      image.astype(jnp.float32),
    )
    return rand_augment.finish(jnp, x, jax.random.uniform(k_cutout, (3,)))

  return jax.vmap(one)(images, keys)


def normalize(
  images: jax.Array, mean: jax.Array, std: jax.Array, dtype=jnp.float32
) -> jax.Array:
  """uint8 [..., C] -> (x - mean) / std in `dtype`; mean, std: [C] in [0, 255]."""
  x = (images.astype(jnp.float32) - mean) / std
  return x.astype(dtype)

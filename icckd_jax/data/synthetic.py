"""A learnable synthetic data set, generated with numpy, for tests.

Each class is a coarse random template; examples are the template shifted by
up to two pixels plus Gaussian noise, so a class keeps its identity while
pixels vary. Deterministic per `dataset.seed`.
"""

import numpy as np

from icckd_jax.errors import UserError


def load(
  num_train: int,
  num_test: int,
  num_classes: int,
  image_size: int,
  channels: int,
  seed: int,
):
  """Class templates plus shift and noise: learnable, deterministic per seed.

  Args:
    num_train, num_test: the splits' example counts.
    num_classes: the number of class templates.
    image_size, channels: the images' [S, S, C].
    seed: the generator's seed (`dataset.seed`).

  Returns:
    ((train_images [N, S, S, C], train_labels [N]),
     (test_images [M, S, S, C], test_labels [M])), num_classes.
  """
  num_train, num_test = int(num_train), int(num_test)
  num_classes, size = int(num_classes), int(image_size)
  channels, seed = int(channels), int(seed)
  for field, value, low in (
    ('num_train', num_train, 1),
    ('num_test', num_test, 1),
    ('num_classes', num_classes, 2),
    ('image_size', size, 4),
    ('channels', channels, 1),
  ):
    if value < low:
      raise UserError(
        f'dataset.{field}={value} is invalid; it must be >= {low}'
      )

  rng = np.random.default_rng(seed)
  # Coarse 4x4 patterns survive the small shifts below, so a class keeps its
  # identity while pixels still vary between examples.
  grid = 4
  coarse = rng.uniform(-1.0, 1.0, (num_classes, grid, grid, channels))
  block = -(-size // grid)
  templates = np.repeat(np.repeat(coarse, block, axis=1), block, axis=2)
  templates = 128.0 + 70.0 * templates[:, :size, :size]

  def sample(count: int):
    # Cycling through the classes before shuffling keeps them balanced.
    labels = rng.permutation(np.arange(count) % num_classes).astype(np.int32)
    shifts = rng.integers(-2, 3, (count, 2))
    images = np.empty((count, size, size, channels), np.float64)
    for i, (label, (dy, dx)) in enumerate(zip(labels, shifts)):
      images[i] = np.roll(templates[label], (dy, dx), axis=(0, 1))
    images += rng.normal(0.0, 40.0, images.shape)
    return np.clip(np.rint(images), 0, 255).astype(np.uint8), labels

  train = sample(num_train)
  test = sample(num_test)
  return (train, test), num_classes

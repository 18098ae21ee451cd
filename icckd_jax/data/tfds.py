"""Any TFDS image-classification set, read without TensorFlow.

`tfds.data_source` reads a prepared set's array_record files without
TensorFlow. Preparing a set (the first download) does need TensorFlow for
most builders; that case is refused with one line naming the pip extra that
installs it. Examples are read in batches of `_READ_BATCH`. Sets whose image
feature has no fixed size are resized to `dataset.image_size` (shorter side
scaled bilinearly, centre crop; see `images.resize_center`). Decoded arrays
of a prepared set are cached in the data folder.
"""

from __future__ import annotations

import pathlib
from typing import Any, Sequence

import numpy as np

from icckd_jax.data import array_cache
from icckd_jax.data import images as images_lib
from icckd_jax.errors import UserError, one_line

# Examples per batched read.
_READ_BATCH = 1024
PREPARE_EXTRA = "pip install 'icckd_jax[tensorflow]'"


def load(
  name: str, data_dir: str | None, image_size: int, cache_root: pathlib.Path
):
  """Reads the 'train' and 'test' splits of TFDS set `name`.

  Args:
    name: a TFDS name, e.g. 'oxford_flowers102'.
    data_dir: TFDS's data folder (None: TFDS's default).
    image_size: side of the square images a variable-size set is resized to.
    cache_root: where decoded arrays are cached.

  Returns:
    ((train_images [N, H, W, C], train_labels [N]),
     (test_images [M, H, W, C], test_labels [M])), num_classes.
  """
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise UserError(
      f'dataset.name={name!r} needs tensorflow-datasets, which is not '
      'installed (pip install tensorflow-datasets)'
    ) from e
  builder, label = _image_builder(tfds, name, data_dir)
  resize = _resize(builder.info.features['image'], image_size, name)

  def decode():
    return _decode(tfds, name, data_dir, label.num_classes, resize)

  prepared = pathlib.Path(builder.data_dir)
  if prepared.is_dir() and any(prepared.iterdir()):
    key = array_cache.folder_key(prepared)
    key.update(format='tfds-1', resize=resize)
    arrays = array_cache.cached(cache_root, f'tfds_{name}', key, decode)
  else:
    arrays = decode()  # Nothing on disk identifies the data: no cache.
  return (
    (arrays['train_images'], arrays['train_labels']),
    (arrays['test_images'], arrays['test_labels']),
  ), int(arrays['num_classes'])


def _image_builder(tfds, name: str, data_dir: str | None):
  """(builder, its ClassLabel feature) of an image-classification set."""
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise UserError(
      f'dataset.name={name!r} is unknown: not synthetic, image_folder, '
      'cifar10, cifar100, tiny_imagenet, fashion_mnist or a TFDS data set '
      '(see https://www.tensorflow.org/datasets/catalog)'
    ) from e
  features = builder.info.features
  label = features['label'] if 'label' in features else None
  if (
    'image' not in features
    or not isinstance(features['image'], tfds.features.Image)
    or not isinstance(label, tfds.features.ClassLabel)
  ):
    raise UserError(
      f'TFDS data set {name!r} lacks an image feature and a class label '
      "feature named 'image' and 'label'; only image classification sets "
      'are supported'
    )
  return builder, label


def _resize(image_feature, image_size, name: str) -> int | None:
  """The side variable-size images are resized to; None for a set whose
  images have one size."""
  height, width = image_feature.shape[:2]
  resize = image_size if height is None or width is None else None
  if resize is not None and (not isinstance(resize, int) or resize < 4):
    raise UserError(
      f'dataset.image_size={image_size!r} is invalid: TFDS set '
      f'{name!r} has images of varying size, resized to '
      'image_size x image_size; set an integer >= 4'
    )
  return resize


def _decode(
  tfds, name: str, data_dir: str | None, num_classes: int, resize
) -> dict[str, np.ndarray]:
  """{'num_classes', 'train_images', 'train_labels', 'test_...'}, read
  (and downloaded if need be) through TFDS's data sources."""
  try:
    sources = tfds.data_source(
      name, split=['train', 'test'], data_dir=data_dir, download=True
    )
  # TFDS fails in many ways offline or with a foreign file format (network,
  # import, format and split errors alike); all mean "not available here".
  except Exception as e:  # pylint: disable=broad-except
    raise _load_error(name, data_dir, e) from e
  arrays = {'num_classes': np.array(num_classes, np.int32)}
  for split, source in zip(('train', 'test'), sources):
    images, labels = read_source(source, f'TFDS set {name!r}', resize)
    arrays[f'{split}_images'], arrays[f'{split}_labels'] = images, labels
  return arrays


def _load_error(
  name: str, data_dir: str | None, error: BaseException
) -> UserError:
  """One line for a set TFDS could not provide; names the extra that
  installs TensorFlow when that is what preparing the set lacked."""
  cause = error
  while cause is not None:
    if isinstance(cause, ImportError):
      missing = getattr(cause, 'name', None) or one_line(cause)
      return UserError(
        f'TFDS set {name!r} is not prepared in data_dir={data_dir!r}, and '
        'preparing it needs TensorFlow and the other packages of the '
        f'[tensorflow] extra (module {missing!r} is missing); install them '
        f'with {PREPARE_EXTRA}, or prepare the set elsewhere and point '
        'dataset.data_dir at it'
      )
    cause = cause.__cause__ or cause.__context__
  return UserError(
    f'TFDS data set {name!r} could not be loaded (data_dir={data_dir!r}): '
    f'{type(error).__name__}: {one_line(error)}'
  )


def read_source(
  source: Sequence[dict[str, Any]], where: str, resize: int | None
) -> tuple[np.ndarray, np.ndarray]:
  """Reads a split in batches.

  Args:
    source: a TFDS data source (random access, `__getitems__` for batches).
    where: names the set in error messages.
    resize: resize every image to [resize, resize] (`images.resize_center`),
      or None to keep sizes, which must then agree.

  Returns:
    ([N, H, W, C] uint8 images, [N] int32 labels).
  """
  images, labels = [], []
  for start in range(0, len(source), _READ_BATCH):
    keys = list(range(start, min(start + _READ_BATCH, len(source))))
    for example in _read_batch(source, keys):
      image = np.asarray(example['image'], np.uint8)
      images.append(
        image if resize is None else images_lib.resize_center(image, resize)
      )
      labels.append(example['label'])
  names = [f'example {i}' for i in range(len(images))]
  return images_lib.stack(where, names, images), np.array(labels, np.int32)


def _read_batch(source, keys: list[int]) -> Sequence[dict[str, Any]]:
  try:
    return source.__getitems__(keys)
  except TypeError:
    # `tfds.testing.mock_data` installs a batched reader that cannot be
    # called through its source (its `self` is missing); read item-wise.
    return [source[k] for k in keys]

"""The data sets, by name: whole splits as uint8 numpy arrays.

`load(DataRequest)` is the one entry point (`DataRequest`: the fields of the
config's `dataset` section); it returns a `Dataset` held
in host memory (possibly memory-mapped from the cache of decoded arrays);
batching, augmentation and normalisation happen on the device elsewhere.
One module per source:

  name              module            source
  cifar10, cifar100 cifar.py          the official python-version archives
  tiny_imagenet     tiny_imagenet.py  the official zip (val as test split)
  fashion_mnist     idx.py            the official idx files
  image_folder      image_folder.py   train/<class>/*, test/<class>/*
  array_record      array_record.py   shards of configs/convert.py, read
                                      by `inputs.load` (streamed or whole)
  synthetic         synthetic.py      generated, for tests
  any other         tfds.py           a TFDS image-classification set

Downloads (`download.py`) and decoded arrays (`array_cache.py`) live in the
data folder: `dataset.data_dir`, else $ICCKD_DATA_DIR, else
~/.cache/icckd_jax.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from icckd_jax.data import cifar
from icckd_jax.data import classes
from icckd_jax.data import download
from icckd_jax.data import idx
from icckd_jax.data import image_folder
from icckd_jax.data import synthetic
from icckd_jax.data import tfds
from icckd_jax.data import tiny_imagenet
from icckd_jax.errors import UserError

# Images per chunk when counting pixel values, to bound temporaries.
_STATS_CHUNK = 2048


@dataclasses.dataclass(frozen=True)
class DataRequest:
  """Which data set a run reads, and how: the config's `dataset` section.

  Attributes:
    name: the data set (the table above).
    path: a local copy (an archive or folder; the shards of an
      'array_record' set); None: look in, or download into, the data folder.
    data_dir: downloads and decoded-array cache; for other TFDS names, TFDS's
      data folder.
    image_size: the size of synthetic images, of variable-size TFDS sets
      resized, and of the crops a streamed set gives.
    label_kind: 'fine' | 'coarse' (cifar100); None: 'fine'.
    num_train, num_test, num_classes, channels, seed: the synthetic set's.
    train_subset, test_subset: keep a fixed random subset of that many
      examples (0: the whole split), for runs sized to a small machine.
    augment: the augmentation and evaluation transform of a streamed set
      (input_pipeline/host_augment.py).
    normalization: the statistics the inputs are normalised with
      (input_pipeline/inputs.py).
  """

  name: str | None = None
  path: str | None = None
  data_dir: str | None = None
  image_size: int = 32
  label_kind: str | None = None
  num_train: int = 512
  num_test: int = 256
  num_classes: int = 10
  channels: int = 3
  seed: int = 0
  train_subset: int = 0
  test_subset: int = 0
  augment: str = 'auto'
  normalization: str = 'measured'

  @classmethod
  def from_fields(cls, fields: Mapping[str, Any]) -> DataRequest:
    """The request of a plain `dataset` section: fields it lacks take their
    defaults, fields no loader reads are left out."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in fields.items() if k in names})


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Both splits of an image-classification data set, in host memory.

  Attributes:
    name: the data set's config name.
    train_images: [N, H, W, C] uint8.
    train_labels: [N] int32 in [0, num_classes).
    test_images: [M, H, W, C] uint8.
    test_labels: [M] int32 in [0, num_classes).
    num_classes: number of classes.
    mean: [C] float32, per-channel mean of train_images in [0, 255] units.
    std: [C] float32, per-channel (population) std of train_images in
      [0, 255] units.
  """

  name: str
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  num_classes: int
  mean: np.ndarray
  std: np.ndarray

  @property
  def image_shape(self) -> tuple[int, int, int]:
    """[H, W, C] of the images."""
    return tuple(self.train_images.shape[1:])


def load(request: DataRequest) -> Dataset:
  """Loads the data set that `request` names.

  Returns:
    The `Dataset`, with train statistics filled in.

  Raises:
    UserError: the data set is unknown, missing, unreadable or malformed.
  """
  name = request.name
  if name == 'array_record':
    raise UserError(
      "dataset.name='array_record' is read by input_pipeline/inputs.py "
      '(streamed or decoded whole), not datasets.load'
    )
  if not name or not isinstance(name, str):
    raise UserError(
      f'dataset.name={name!r} is invalid; choose cifar100, cifar10, '
      'tiny_imagenet, fashion_mnist, image_folder, synthetic or a TFDS '
      'image-classification name'
    )
  splits, num_classes = _read(request)
  classes.check(f'dataset.name={name!r}', num_classes)
  (train_images, train_labels), (test_images, test_labels) = splits
  train_images, train_labels = _subset(
    train_images, train_labels, request.train_subset, 'train'
  )
  test_images, test_labels = _subset(
    test_images, test_labels, request.test_subset, 'test'
  )
  mean, std = channel_stats(train_images)
  return Dataset(
    name=name,
    train_images=train_images,
    train_labels=train_labels,
    test_images=test_images,
    test_labels=test_labels,
    num_classes=num_classes,
    mean=mean,
    std=std,
  )


def _read(request: DataRequest):
  """((train_images, train_labels), (test_images, test_labels)),
  num_classes of the source module that `request.name` names (the table
  above), whole."""
  name, path = request.name, request.path
  root = download.data_dir(request.data_dir)
  if name == 'synthetic':
    return synthetic.load(
      request.num_train,
      request.num_test,
      request.num_classes,
      request.image_size,
      request.channels,
      request.seed,
    )
  if name in cifar.ARCHIVES:
    return cifar.load(name, path, request.label_kind, root)
  if name == 'tiny_imagenet':
    return tiny_imagenet.load(path, root)
  if name == 'fashion_mnist':
    return idx.load(path, root)
  if name == 'image_folder':
    return image_folder.load(path, root / 'arrays')
  return tfds.load(name, request.data_dir, request.image_size, root / 'arrays')


def _subset(
  images: np.ndarray, labels: np.ndarray, size: int, split: str
) -> tuple[np.ndarray, np.ndarray]:
  """A fixed random subset of `size` examples (all when size is 0).

  The permutation is seeded by the split's length alone, so every run that
  asks for the same subset size gets the same examples.
  """
  if not size:
    return images, labels
  if size < 0 or size > len(labels):
    raise UserError(
      f'dataset.{split}_subset={size} must be between 0 and '
      f'the {len(labels)} examples of the {split} split'
    )
  keep = np.sort(
    np.random.default_rng(len(labels)).permutation(len(labels))[:size]
  )
  return images[keep], labels[keep]


def channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and population std, exact in float64.

  Counting each channel's 256 pixel values is faster than float64 sums and
  turns the variance into an exact two-pass one over the histogram.

  Args:
    images: [N, H, W, C] uint8.

  Returns:
    (mean, std), each [C] float32 in [0, 255] units.
  """
  channels = images.shape[-1]
  # Offsetting channel c by 256 * c lets one bincount fill all histograms.
  offsets = (256 * np.arange(channels)).astype(np.uint16)
  counts = np.zeros(256 * channels, np.int64)
  for start in range(0, len(images), _STATS_CHUNK):
    pixels = images[start : start + _STATS_CHUNK].reshape(-1, channels)
    counts += np.bincount((pixels + offsets).ravel(), minlength=counts.size)
  counts = counts.reshape(channels, 256)
  values = np.arange(256, dtype=np.float64)
  total = np.maximum(counts.sum(axis=1), 1)
  mean = counts @ values / total
  var = (counts * np.square(values - mean[:, None])).sum(axis=1) / total
  return mean.astype(np.float32), np.sqrt(var).astype(np.float32)

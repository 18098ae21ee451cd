"""Host-side data set loaders: whole splits as uint8 numpy arrays.

Every loader returns a `Dataset` held fully in host memory; batching,
augmentation and normalisation happen elsewhere. The supported names are
'synthetic' (a learnable set generated with numpy, for tests), 'image_folder'
(a `train/<class>/*`, `test/<class>/*` tree, as a folder or a tar archive),
'fashion_mnist' (TFDS, else the idx files Debian ships) and any other TFDS
image-classification data set, read without TensorFlow.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import gzip
import io
import os
import pathlib
import tarfile
from typing import Any, Sequence

import ml_collections
import numpy as np
from PIL import Image

from icckd_jax.errors import UserError

_IMAGE_FOLDER_LAYOUT = (
    "expected 'train/<class>/<image>' and 'test/<class>/<image>', directly "
    'or under one top-level folder, as a folder or a .tar/.tar.gz/.tgz archive'
)
_DEFAULT_IDX_DIR = '/usr/share/datasets/fashion-mnist'
_IDX_FILES = {
    'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
    'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}
_ARCHIVE_SUFFIXES = ('.tar', '.tar.gz', '.tgz')
# Modes Pillow decodes grey images into; anything else becomes RGB.
_GREY_MODES = ('1', 'L', 'LA')
# Images per chunk when counting pixel values, to bound temporaries.
_STATS_CHUNK = 2048
# Images per decoding task: large enough to amortise the pool's overhead.
_DECODE_CHUNK = 1024


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


def load(config: ml_collections.ConfigDict) -> Dataset:
  """Loads the data set that `config` (the `dataset` sub-config) names.

  Args:
    config: fields `name`; `data_dir` (TFDS data dir, or None for TFDS's
      default); `path` (for 'image_folder'); `idx_dir` (for 'fashion_mnist');
      and for 'synthetic' `num_train`, `num_test`, `num_classes`,
      `image_size`, `channels`, `seed`; `train_subset`, `test_subset` (0:
      the whole split) keep a fixed random subset of that many examples, for
      runs sized to a small machine. Absent fields take defaults.

  Returns:
    The `Dataset`, with train statistics filled in.

  Raises:
    UserError: the data set is unknown, missing, unreadable or malformed.
  """
  name = config.get('name', None)
  if not name or not isinstance(name, str):
    raise UserError(
        f'dataset.name={name!r} is invalid; choose synthetic, image_folder, '
        'fashion_mnist or a TFDS image-classification name such as cifar100')
  if name == 'synthetic':
    splits, num_classes = _synthetic(config)
  elif name == 'image_folder':
    splits, num_classes = _image_folder(config.get('path', None))
  elif name == 'fashion_mnist':
    splits, num_classes = _fashion_mnist(
        config.get('data_dir', None), config.get('idx_dir', None))
  else:
    splits, num_classes = _read_tfds(
        name, config.get('data_dir', None), download=True)
  (train_images, train_labels), (test_images, test_labels) = splits
  train_images, train_labels = _subset(train_images, train_labels,
                                       config.get('train_subset', 0), 'train')
  test_images, test_labels = _subset(test_images, test_labels,
                                     config.get('test_subset', 0), 'test')
  mean, std = channel_stats(train_images)
  return Dataset(
      name=name,
      train_images=train_images,
      train_labels=train_labels,
      test_images=test_images,
      test_labels=test_labels,
      num_classes=num_classes,
      mean=mean,
      std=std)


def _subset(images: np.ndarray, labels: np.ndarray, size: int,
            split: str) -> tuple[np.ndarray, np.ndarray]:
  """A fixed random subset of `size` examples (all when size is 0).

  The permutation is seeded by the split's length alone, so every run that
  asks for the same subset size gets the same examples.
  """
  if not size:
    return images, labels
  if size < 0 or size > len(labels):
    raise UserError(f'dataset.{split}_subset={size} must be between 0 and '
                    f'the {len(labels)} examples of the {split} split')
  keep = np.sort(np.random.default_rng(len(labels)).permutation(
      len(labels))[:size])
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
    pixels = images[start:start + _STATS_CHUNK].reshape(-1, channels)
    counts += np.bincount((pixels + offsets).ravel(), minlength=counts.size)
  counts = counts.reshape(channels, 256)
  values = np.arange(256, dtype=np.float64)
  total = np.maximum(counts.sum(axis=1), 1)
  mean = counts @ values / total
  var = (counts * np.square(values - mean[:, None])).sum(axis=1) / total
  return mean.astype(np.float32), np.sqrt(var).astype(np.float32)


# ------------------------------------------------------------------ synthetic


def _synthetic(config: ml_collections.ConfigDict):
  """Class templates plus shift and noise: learnable, deterministic per seed.

  Returns:
    ((train_images [N, S, S, C], train_labels [N]),
     (test_images [M, S, S, C], test_labels [M])), num_classes.
  """
  num_train = int(config.get('num_train', 512))
  num_test = int(config.get('num_test', 256))
  num_classes = int(config.get('num_classes', 10))
  size = int(config.get('image_size', 32))
  channels = int(config.get('channels', 3))
  seed = int(config.get('seed', 0))
  for field, value, low in (('num_train', num_train, 1),
                            ('num_test', num_test, 1),
                            ('num_classes', num_classes, 2),
                            ('image_size', size, 4), ('channels', channels, 1)):
    if value < low:
      raise UserError(
          f'dataset.{field}={value} is invalid; it must be >= {low}')

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


# --------------------------------------------------------------- image folder


def _image_folder(path: str | None):
  """Reads a `train/<class>/*`, `test/<class>/*` tree from a folder or tar.

  Returns:
    ((train_images [N, H, W, C], train_labels [N]),
     (test_images [M, H, W, C], test_labels [M])), num_classes.
  """
  if not path:
    raise UserError(
        "dataset.path is not set; dataset.name='image_folder' needs a folder "
        f'or archive ({_IMAGE_FOLDER_LAYOUT})')
  root = pathlib.Path(path).expanduser()
  if not root.exists():
    raise UserError(
        f'dataset.path={path!r} does not exist; {_IMAGE_FOLDER_LAYOUT}')
  if root.is_dir():
    files = _folder_files(root)
  elif root.name.endswith(_ARCHIVE_SUFFIXES):
    files = _archive_files(root)
  else:
    raise UserError(
        f'dataset.path={path!r} is neither a folder nor a .tar/.tar.gz/.tgz '
        f'archive; {_IMAGE_FOLDER_LAYOUT}')
  files = _strip_top_folder(files)

  by_split = {}
  for split in ('train', 'test'):
    entries = sorted((parts[1], parts[2], source)
                     for parts, source in files
                     if len(parts) == 3 and parts[0] == split)
    if not entries:
      raise UserError(
          f"dataset.path={path!r} has no images in '{split}/<class>/'; "
          f'{_IMAGE_FOLDER_LAYOUT}')
    by_split[split] = entries
  classes = sorted({cls for cls, _, _ in by_split['train']})
  test_classes = sorted({cls for cls, _, _ in by_split['test']})
  if test_classes != classes:
    raise UserError(
        f"dataset.path={path!r}: test classes {test_classes} differ from "
        f'train classes {classes}')
  index = {cls: i for i, cls in enumerate(classes)}

  names = [f'{split}/{cls}/{name}'
           for split in ('train', 'test')
           for cls, name, _ in by_split[split]]
  sources = [source for split in ('train', 'test')
             for _, _, source in by_split[split]]
  images = _decode_all(path, names, sources)
  num_train = len(by_split['train'])
  splits = []
  for split, part in (('train', images[:num_train]),
                      ('test', images[num_train:])):
    labels = np.array([index[cls] for cls, _, _ in by_split[split]], np.int32)
    splits.append((part, labels))
  return tuple(splits), len(classes)


# A file in the tree: its path parts relative to the tree root, and either the
# path to read or the bytes already read from an archive.
_File = tuple[tuple[str, ...], Any]


def _is_hidden(parts: Sequence[str]) -> bool:
  # Skips .DS_Store, macOS '._' resource forks and similar clutter.
  return any(part.startswith('.') for part in parts)


def _folder_files(root: pathlib.Path) -> list[_File]:
  files = []
  for dirpath, _, filenames in os.walk(root):
    rel = pathlib.Path(dirpath).relative_to(root).parts
    for filename in filenames:
      parts = rel + (filename,)
      if not _is_hidden(parts):
        files.append((parts, pathlib.Path(dirpath, filename)))
  return files


def _archive_files(archive: pathlib.Path) -> list[_File]:
  """Reads every regular file of `archive` into memory, in one pass."""
  files = []
  try:
    with tarfile.open(archive) as tar:
      # Iterating reads the (possibly gzipped) stream once, front to back.
      for member in tar:
        parts = tuple(p for p in member.name.split('/') if p not in ('', '.'))
        if member.isfile() and not _is_hidden(parts):
          files.append((parts, tar.extractfile(member).read()))
  except (tarfile.TarError, OSError, EOFError) as e:
    raise UserError(
        f'dataset.path={str(archive)!r} is not a readable tar archive '
        f'({_one_line(e)}); {_IMAGE_FOLDER_LAYOUT}') from e
  return files


def _strip_top_folder(files: list[_File]) -> list[_File]:
  """Drops a single top-level folder that wraps the train/test tree."""
  tops = {parts[0] for parts, _ in files if len(parts) > 1}
  if 'train' in tops or len(tops) != 1:
    return files
  return [(parts[1:], source) for parts, source in files if len(parts) > 1]


def _decode(path: str, name: str, source) -> np.ndarray:
  """Decodes one image file (a path or bytes) to [H, W, 1 or 3] uint8."""
  try:
    with Image.open(io.BytesIO(source) if isinstance(source, bytes)
                    else source) as image:
      grey = image.mode in _GREY_MODES
      array = np.asarray(image.convert('L' if grey else 'RGB'))
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    raise UserError(
        f'dataset.path={path!r}: cannot decode {name!r} as an image '
        f'({_one_line(e)})') from e
  return array[..., None] if grey else array


def _decode_all(path: str, names: Sequence[str],
                sources: Sequence[Any]) -> np.ndarray:
  """Decodes images in a thread pool.

  Pillow releases the GIL while decoding, which pays off for large images;
  tiny ones such as CIFAR's are bound by Python overhead, hence the chunks.

  Returns:
    [len(sources), H, W, C] uint8; C is 1 only if every image is grey.
  """
  def decode_chunk(start: int) -> list[np.ndarray]:
    stop = start + _DECODE_CHUNK
    return [_decode(path, name, source)
            for name, source in zip(names[start:stop], sources[start:stop])]

  workers = min(8, os.cpu_count() or 1)
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    chunks = pool.map(decode_chunk, range(0, len(sources), _DECODE_CHUNK))
    arrays = [array for chunk in chunks for array in chunk]

  height, width = arrays[0].shape[:2]
  channels = 1
  for name, array in zip(names, arrays):
    if array.shape[:2] != (height, width):
      raise UserError(
          f'dataset.path={path!r}: all images must have one size, but '
          f'{names[0]!r} is {width}x{height} and {name!r} is '
          f'{array.shape[1]}x{array.shape[0]} (width x height)')
    channels = max(channels, array.shape[-1])
  images = np.empty((len(arrays), height, width, channels), np.uint8)
  # Grey images broadcast across RGB when the set mixes the two.
  for i, array in enumerate(arrays):
    images[i] = array
  return images


# -------------------------------------------------------------- fashion mnist


def _fashion_mnist(data_dir: str | None, idx_dir: str | None):
  """TFDS's prepared copy, else idx files, else a TFDS download.

  An explicit `idx_dir` skips TFDS. Reading local files before downloading
  keeps offline machines from waiting on the network.

  Returns:
    ((train_images [N, 28, 28, 1], train_labels [N]),
     (test_images [M, 28, 28, 1], test_labels [M])), 10.
  """
  if idx_dir:
    return _read_idx_dir(idx_dir), 10
  try:
    return _read_tfds('fashion_mnist', data_dir, download=False)
  except UserError:
    pass  # Not prepared locally; the idx files or a download may serve.
  if _find_idx(_DEFAULT_IDX_DIR, _IDX_FILES['train'][0]):
    return _read_idx_dir(_DEFAULT_IDX_DIR), 10
  try:
    return _read_tfds('fashion_mnist', data_dir, download=True)
  except UserError as e:
    raise UserError(
        f'fashion_mnist not found: tried TFDS ({e}) and idx files in '
        f"{_DEFAULT_IDX_DIR}; install Debian's dataset-fashion-mnist "
        '(apt-get install dataset-fashion-mnist), set dataset.idx_dir to a '
        'folder holding the four idx files, or let TFDS download it') from e


def _find_idx(idx_dir: str, stem: str) -> pathlib.Path | None:
  for name in (stem, stem + '.gz'):
    candidate = pathlib.Path(idx_dir, name)
    if candidate.is_file():
      return candidate
  return None


def _read_idx_dir(idx_dir: str):
  """Reads the four Fashion-MNIST idx files (optionally gzipped).

  Returns:
    ((train_images [N, 28, 28, 1], train_labels [N]),
     (test_images [M, 28, 28, 1], test_labels [M])).
  """
  splits = []
  for split in ('train', 'test'):
    arrays = []
    for stem in _IDX_FILES[split]:
      file = _find_idx(idx_dir, stem)
      if file is None:
        raise UserError(
            f'fashion_mnist: {stem}[.gz] is missing in {idx_dir!r}; install '
            "Debian's dataset-fashion-mnist (apt-get install "
            'dataset-fashion-mnist) or point dataset.idx_dir at a folder '
            'holding the four idx files')
      arrays.append(read_idx(file))
    images, labels = arrays
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
      raise UserError(
          f'fashion_mnist: {split} idx files in {idx_dir!r} have shapes '
          f'{images.shape} and {labels.shape}; expected [N, H, W] and [N]')
    if labels.size and labels.max() >= 10:
      raise UserError(
          f'fashion_mnist: {split} labels in {idx_dir!r} reach '
          f'{labels.max()}; expected 10 classes')
    splits.append((images[..., None], labels.astype(np.int32)))
  return tuple(splits)


def read_idx(file: str | os.PathLike) -> np.ndarray:
  """Parses an unsigned-byte idx file (as in (Fashion-)MNIST), gzipped or not.

  Args:
    file: path; a '.gz' suffix means gzip.

  Returns:
    uint8 array with the shape the header declares, e.g. [N, 28, 28].

  Raises:
    UserError: the file is unreadable or not a uint8 idx file.
  """
  file = pathlib.Path(file)
  try:
    opener = gzip.open if file.suffix == '.gz' else open
    with opener(file, 'rb') as f:
      data = f.read()
  except (OSError, EOFError) as e:
    raise UserError(f'cannot read idx file {str(file)!r} ({_one_line(e)})'
                    ) from e
  # Header: two zero bytes, a type code (0x08 = uint8), the number of
  # dimensions, then each dimension as a big-endian int32.
  if len(data) < 4 or data[:2] != b'\0\0' or data[2] != 0x08:
    raise UserError(f'{str(file)!r} is not an unsigned-byte idx file')
  ndim = data[3]
  offset = 4 + 4 * ndim
  shape = tuple(int(d) for d in np.frombuffer(data, '>i4', ndim, 4))
  if len(data) - offset != int(np.prod(shape)):
    raise UserError(
        f'{str(file)!r} holds {len(data) - offset} bytes of data but its '
        f'header declares shape {shape}')
  return np.frombuffer(data, np.uint8, offset=offset).reshape(shape)


# ----------------------------------------------------------------------- TFDS


def _read_tfds(name: str, data_dir: str | None, download: bool):
  """Reads a TFDS image-classification set through its array_record source.

  `tfds.data_source` needs no TensorFlow, unlike `tfds.load`.

  Returns:
    ((train_images [N, H, W, C], train_labels [N]),
     (test_images [M, H, W, C], test_labels [M])), num_classes.
  """
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise UserError(
        f'dataset.name={name!r} needs tensorflow-datasets, which is not '
        'installed (pip install tensorflow-datasets)') from e
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise UserError(
        f'dataset.name={name!r} is unknown: not synthetic, image_folder, '
        'fashion_mnist or a TFDS data set (see '
        'https://www.tensorflow.org/datasets/catalog)') from e
  features = builder.info.features
  label = features['label'] if 'label' in features else None
  if ('image' not in features
      or not isinstance(features['image'], tfds.features.Image)
      or not isinstance(label, tfds.features.ClassLabel)):
    raise UserError(
        f'TFDS data set {name!r} lacks an image feature and a class label '
        "feature named 'image' and 'label'; only image classification sets "
        'are supported')
  try:
    sources = tfds.data_source(
        name, split=['train', 'test'], data_dir=data_dir, download=download)
  # TFDS fails in many ways offline or with a foreign file format (network,
  # import, format and split errors alike); all mean "not available here".
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(
        f'TFDS data set {name!r} could not be loaded (data_dir={data_dir!r}, '
        f'download={download}): {type(e).__name__}: {_one_line(e)}') from e
  splits = tuple(_read_source(source) for source in sources)
  return splits, int(label.num_classes)


def _read_source(source: Sequence[dict[str, Any]]):
  """Returns ([N, H, W, C] uint8 images, [N] int32 labels) of one split."""
  # Item-wise reads: the batched `__getitems__` is not available under
  # `tfds.testing.mock_data`.
  examples = [source[i] for i in range(len(source))]
  images = np.stack([np.asarray(ex['image'], np.uint8) for ex in examples])
  labels = np.array([ex['label'] for ex in examples], np.int32)
  return images, labels


def _one_line(error: BaseException) -> str:
  """The first line of an error's message, for one-line UserErrors."""
  lines = str(error).strip().splitlines()
  return lines[0] if lines else type(error).__name__

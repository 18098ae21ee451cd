"""Fashion-MNIST from its original idx files.

Looked for, in order: in `dataset.path` (a folder holding the four files,
gzipped or not); in Debian's folder (package dataset-fashion-mnist); in the
data folder, where they are downloaded, MD5-verified, if absent.
"""

from __future__ import annotations

import gzip
import os
import pathlib
import numpy as np

from icckd_jax.data import download
from icckd_jax.errors import UserError, one_line

DEBIAN_DIR = pathlib.Path('/usr/share/datasets/fashion-mnist')
# Mirrors of the official files; the checksums make any mirror safe.
URLS = (
  'http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/',
  'https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/'
  'master/data/fashion/',
)
# File stem -> the published MD5 of its .gz file.
FILES = {
  'train-images-idx3-ubyte': '8d4fb7e6c68d591d4c3dfef9ec88bf0d',
  'train-labels-idx1-ubyte': '25c81989df183df01b3e8a0aad5dffbe',
  't10k-images-idx3-ubyte': 'bef4ecab320f06d8554ea6380940ec79',
  't10k-labels-idx1-ubyte': 'bb300cfdad3c16e7a12a480ee83cd310',
}
_SPLITS = {
  'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
  'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}
_NUM_CLASSES = 10


def load(path: str | None, root: pathlib.Path):
  """Reads Fashion-MNIST's four idx files.

  Args:
    path: `dataset.path`, a folder of the idx files, or None.
    root: the data folder; the files are downloaded into root/fashion_mnist.

  Returns:
    ((train_images [60000, 28, 28, 1], train_labels [60000]),
     (test_images [10000, 28, 28, 1], test_labels [10000])), 10.
  """
  if path:
    folder = pathlib.Path(path).expanduser()
    if not folder.is_dir():
      raise UserError(
        f'dataset.path={path!r} is not a folder; '
        "dataset.name='fashion_mnist' needs a folder holding "
        f'{", ".join(f"{s}[.gz]" for s in FILES)}'
      )
    return _read_folder(folder, f'dataset.path={path!r}'), _NUM_CLASSES
  if _find(DEBIAN_DIR, next(iter(FILES))):
    return _read_folder(DEBIAN_DIR, str(DEBIAN_DIR)), _NUM_CLASSES
  folder = root / 'fashion_mnist'
  for stem, md5 in FILES.items():
    if _find(folder, stem) is None:
      download.fetch(
        [url + stem + '.gz' for url in URLS], md5, folder / f'{stem}.gz'
      )
  return _read_folder(folder, str(folder)), _NUM_CLASSES


def _find(folder: pathlib.Path, stem: str) -> pathlib.Path | None:
  for name in (stem, stem + '.gz'):
    candidate = folder / name
    if candidate.is_file():
      return candidate
  return None


def _read_folder(folder: pathlib.Path, where: str):
  """((train_images [N, H, W, 1], train_labels [N]), (test ...))."""
  splits = []
  for split, stems in _SPLITS.items():
    arrays = []
    for stem in stems:
      file = _find(folder, stem)
      if file is None:
        raise UserError(
          f'fashion_mnist: {stem}[.gz] is missing in {where}; point '
          'dataset.path at a folder holding the four idx files, install '
          "Debian's dataset-fashion-mnist, or leave dataset.path unset to "
          'download them'
        )
      arrays.append(read_idx(file))
    images, labels = arrays
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
      raise UserError(
        f'fashion_mnist: {split} idx files in {where} have shapes '
        f'{images.shape} and {labels.shape}; expected [N, H, W] and [N]'
      )
    if labels.size and labels.max() >= _NUM_CLASSES:
      raise UserError(
        f'fashion_mnist: {split} labels in {where} reach '
        f'{labels.max()}; expected {_NUM_CLASSES} classes'
      )
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
    raise UserError(
      f'cannot read idx file {str(file)!r} ({one_line(e)})'
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
      f'header declares shape {shape}'
    )
  return np.frombuffer(data, np.uint8, offset=offset).reshape(shape)

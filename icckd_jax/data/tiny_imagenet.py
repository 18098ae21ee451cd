"""Tiny-ImageNet (200 classes, 64x64) from its official zip.

`tiny-imagenet-200.zip` holds `tiny-imagenet-200/` with `wnids.txt` (one
WordNet id per class), `train/<wnid>/images/*.JPEG` (500 per class) and
`val/images/*.JPEG` labelled by `val/val_annotations.txt` (file, wnid, box;
tab-separated). The labelled validation split serves as the test split; the
official test split has no labels and is ignored. Labels are the positions of
the wnids in sorted order, as an image-folder loader over `train/` numbers
them. The few grey JPEGs are converted to RGB.
"""

from __future__ import annotations

import pathlib
import zipfile
import zlib

import numpy as np

from icckd_jax.data import official
from icckd_jax.data import images as images_lib
from icckd_jax.errors import UserError, one_line

FILENAME = 'tiny-imagenet-200.zip'
URLS = ('http://cs231n.stanford.edu/tiny-imagenet-200.zip',)
MD5 = '90528d7ca1a48142e341f4ef8d21d0de'
FOLDER = 'tiny-imagenet-200'
_LAYOUT = (
  f'expected {FILENAME} or the {FOLDER}/ folder it extracts to, '
  'with wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG and '
  'val/val_annotations.txt'
)


def load(path: str | None, root: pathlib.Path):
  """Reads Tiny-ImageNet, downloading the zip into `root` if needed.

  Args:
    path: `dataset.path`: the zip or the folder it extracts to; None: look
      in, or download into, `root`.
    root: the data folder: downloads, and the cache of decoded arrays.

  Returns:
    ((train_images [100000, 64, 64, 3], train_labels [100000]),
     (test_images [10000, 64, 64, 3], test_labels [10000])), 200.
  """
  arrays = official.cached_arrays(
    official.Archive(FILENAME, URLS, MD5),
    path,
    root,
    ('tiny_imagenet', 'tiny_imagenet-1'),
    _LAYOUT,
    lambda source, where: decode_files(_read_files(source, where), where),
  )
  return (
    (arrays['train_images'], arrays['train_labels']),
    (arrays['test_images'], arrays['test_labels']),
  ), int(arrays['num_classes'])


def _read_files(source: pathlib.Path, where: str) -> dict[str, bytes]:
  """Path under `tiny-imagenet-200/` -> bytes, for the files we read."""

  def wanted(rel: str) -> bool:
    return rel in ('wnids.txt', 'val/val_annotations.txt') or (
      rel.startswith(('train/', 'val/images/'))
      and rel.upper().endswith('.JPEG')
    )

  files = {}
  if source.is_dir():
    folder = source / FOLDER if (source / FOLDER).is_dir() else source
    for file in folder.rglob('*'):
      rel = file.relative_to(folder).as_posix()
      if file.is_file() and wanted(rel):
        files[rel] = file.read_bytes()
    return files
  try:
    with zipfile.ZipFile(source) as archive:
      for info in archive.infolist():
        parts = info.filename.split('/', 1)
        if (
          not info.is_dir()
          and len(parts) == 2
          and parts[0] == FOLDER
          and wanted(parts[1])
        ):
          files[parts[1]] = archive.read(info)
  except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:
    raise UserError(
      f'{where} is not a readable zip archive, or is truncated '
      f'({one_line(e)}); {_LAYOUT}'
    ) from e
  return files


def decode_files(files: dict[str, bytes], where: str) -> dict[str, np.ndarray]:
  """Checks the layout and decodes both splits.

  Args:
    files: path relative to `tiny-imagenet-200/` -> bytes.
    where: names the source in error messages.

  Returns:
    'train_images' [N, 64, 64, 3], 'test_images' [M, 64, 64, 3] uint8,
    'train_labels' [N], 'test_labels' [M] int32, 'num_classes' [] int32.
  """
  if 'wnids.txt' not in files:
    raise UserError(f'{where} has no {FOLDER}/wnids.txt; {_LAYOUT}')
  wnids = sorted(
    {
      line.strip()
      for line in files['wnids.txt'].decode('ascii', 'replace').splitlines()
      if line.strip()
    }
  )
  index = {wnid: i for i, wnid in enumerate(wnids)}
  train = _train_entries(files, index, where)
  test = _val_entries(files, index, where)
  for split, entries in (('train', train), ('val', test)):
    if not entries:
      raise UserError(f'{where} has no {split} images; {_LAYOUT}')
  arrays = {'num_classes': np.array(len(wnids), np.int32)}
  for split, entries in (('train', train), ('test', test)):
    names = [f'{FOLDER}/{rel}' for rel, _ in entries]
    arrays[f'{split}_images'] = images_lib.decode_all(
      where, names, [files[rel] for rel, _ in entries], rgb=True
    )
    arrays[f'{split}_labels'] = np.array(
      [label for _, label in entries], np.int32
    )
  return arrays


def _train_entries(
  files: dict[str, bytes], index: dict[str, int], where: str
) -> list[tuple[str, int]]:
  """(path, label) of train/<wnid>/images/*, in path order; `index`: the
  wnids of wnids.txt and their labels."""
  train = []
  for rel in sorted(files):
    parts = rel.split('/')
    if parts[0] == 'train' and len(parts) == 4 and parts[2] == 'images':
      if parts[1] not in index:
        raise UserError(
          f'{where}: {FOLDER}/{rel} is in a class folder that '
          'wnids.txt does not list'
        )
      train.append((rel, index[parts[1]]))
  return train


def _val_entries(
  files: dict[str, bytes], index: dict[str, int], where: str
) -> list[tuple[str, int]]:
  """(path, label) of the val images val_annotations.txt labels, sorted."""
  annotations = files.get('val/val_annotations.txt')
  if annotations is None:
    raise UserError(
      f'{where} has no {FOLDER}/val/val_annotations.txt; {_LAYOUT}'
    )
  test = []
  for number, line in enumerate(
    annotations.decode('ascii', 'replace').splitlines(), 1
  ):
    fields = line.split('\t')
    if not line.strip():
      continue
    if len(fields) < 2 or fields[1] not in index:
      raise UserError(
        f'{where}: line {number} of val/val_annotations.txt '
        f'({line[:60]!r}) does not name an image and a wnid '
        'of wnids.txt'
      )
    rel = f'val/images/{fields[0]}'
    if rel not in files:
      raise UserError(
        f'{where}: val/val_annotations.txt lists {fields[0]!r}, '
        f'which is not in {FOLDER}/val/images/'
      )
    test.append((rel, index[fields[1]]))
  return sorted(test)

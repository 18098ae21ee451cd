"""An image-folder data set: `train/<class>/*` and `test/<class>/*`.

As a folder, or a .tar/.tar.gz/.tgz archive of one (read straight from the
archive, front to back, without extracting). Labels are the positions of the
class folder names in sorted order. All images must have one size; a set
that mixes sizes is refused with one line naming two files that differ.
Decoded arrays are cached in the data folder (see `array_cache`).
"""

from __future__ import annotations

import os
import pathlib
import tarfile
from typing import Any, Sequence

import numpy as np

from icckd_jax.data import array_cache
from icckd_jax.data import images as images_lib
from icckd_jax.errors import UserError, one_line

LAYOUT = (
  "expected 'train/<class>/<image>' and 'test/<class>/<image>', directly "
  'or under one top-level folder, as a folder or a .tar/.tar.gz/.tgz archive'
)
ARCHIVE_SUFFIXES = ('.tar', '.tar.gz', '.tgz')

# A file in the tree: its path parts relative to the tree root, and either the
# path to read or the bytes already read from an archive.
_File = tuple[tuple[str, ...], Any]


def load(path: str | None, cache_root: pathlib.Path):
  """Reads (or takes from the cache) the tree at `path`.

  Args:
    path: `dataset.path`, a folder or an archive.
    cache_root: where decoded arrays are cached.

  Returns:
    ((train_images [N, H, W, C], train_labels [N]),
     (test_images [M, H, W, C], test_labels [M])), num_classes.
  """
  if not path:
    raise UserError(
      "dataset.path is not set; dataset.name='image_folder' needs a folder "
      f'or archive ({LAYOUT})'
    )
  root = pathlib.Path(path).expanduser()
  if not root.exists():
    raise UserError(f'dataset.path={path!r} does not exist; {LAYOUT}')
  if root.is_dir():
    key = array_cache.folder_key(root)
  elif root.name.endswith(ARCHIVE_SUFFIXES):
    key = array_cache.file_key(root)
  else:
    raise UserError(
      f'dataset.path={path!r} is neither a folder nor a .tar/.tar.gz/.tgz '
      f'archive; {LAYOUT}'
    )
  key['format'] = 'image_folder-1'
  arrays = array_cache.cached(
    cache_root, 'image_folder', key, lambda: _decode_tree(path, root)
  )
  num_classes = int(arrays['num_classes'])
  return (
    (arrays['train_images'], arrays['train_labels']),
    (arrays['test_images'], arrays['test_labels']),
  ), num_classes


def _decode_tree(path: str, root: pathlib.Path) -> dict[str, np.ndarray]:
  files = _folder_files(root) if root.is_dir() else _archive_files(root)
  files = _strip_top_folder(files)
  empty = sorted(
    '/'.join(parts[:2])
    for parts, source in files
    if source is None and len(parts) == 3 and parts[0] in ('train', 'test')
  )
  if empty:
    raise UserError(
      f"dataset.path={path!r}: the class folder '{empty[0]}/' "
      'holds no image; add its images or remove it'
    )
  by_split = {}
  for split in ('train', 'test'):
    entries = sorted(
      (parts[1], parts[2], source)
      for parts, source in files
      if len(parts) == 3 and parts[0] == split and source is not None
    )
    if not entries:
      raise UserError(
        f"dataset.path={path!r} has no images in '{split}/<class>/'; {LAYOUT}"
      )
    by_split[split] = entries
  classes = sorted({cls for cls, _, _ in by_split['train']})
  test_classes = sorted({cls for cls, _, _ in by_split['test']})
  if test_classes != classes:
    raise UserError(
      f'dataset.path={path!r}: test classes {test_classes} differ from '
      f'train classes {classes}'
    )
  index = {cls: i for i, cls in enumerate(classes)}

  names = [
    f'{split}/{cls}/{name}'
    for split in ('train', 'test')
    for cls, name, _ in by_split[split]
  ]
  sources = [
    source for split in ('train', 'test') for _, _, source in by_split[split]
  ]
  decoded = images_lib.decode_all(f'dataset.path={path!r}', names, sources)
  num_train = len(by_split['train'])
  arrays = {'num_classes': np.array(len(classes), np.int32)}
  for split, part in (
    ('train', decoded[:num_train]),
    ('test', decoded[num_train:]),
  ):
    arrays[f'{split}_images'] = part
    arrays[f'{split}_labels'] = np.array(
      [index[cls] for cls, _, _ in by_split[split]], np.int32
    )
  return arrays


def check_link(path: pathlib.Path) -> None:
  """Refuses `path` if it is a symbolic link to nothing (its target moved
  or deleted): listed as a file by nobody, it would be left out silently."""
  if path.is_symlink() and not path.exists():
    raise UserError(
      f'{path} is a broken symbolic link (to {os.readlink(path)!r}); '
      'restore its target or remove it'
    )


def is_hidden(parts: Sequence[str]) -> bool:
  """Whether a path is clutter: .DS_Store, macOS '._' resource forks."""
  return any(part.startswith('.') for part in parts)


def _folder_files(root: pathlib.Path) -> list[_File]:
  files = []
  for dirpath, dirnames, filenames in os.walk(root):
    rel = pathlib.Path(dirpath).relative_to(root).parts
    if not dirnames and not filenames and not is_hidden(rel):
      # An empty leaf folder: a class folder with no image is named below.
      files.append((rel + ('',), None))
    for filename in filenames:
      parts = rel + (filename,)
      if not is_hidden(parts):
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
        if member.isfile() and not is_hidden(parts):
          files.append((parts, tar.extractfile(member).read()))
  except (tarfile.TarError, OSError, EOFError) as e:
    raise UserError(
      f'dataset.path={str(archive)!r} is not a readable tar archive '
      f'({one_line(e)}); {LAYOUT}'
    ) from e
  return files


def _strip_top_folder(files: list[_File]) -> list[_File]:
  """Drops a single top-level folder that wraps the train/test tree."""
  tops = {parts[0] for parts, _ in files if len(parts) > 1}
  if 'train' in tops or len(tops) != 1:
    return files
  return [(parts[1:], source) for parts, source in files if len(parts) > 1]

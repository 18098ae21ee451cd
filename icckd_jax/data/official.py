"""An official archive of a data set, decoded once and cached.

The archive is `dataset.path` (the file or the folder it extracts to), else
ROOT/<file name>, downloaded there (MD5-checked) when missing; one placed
there by hand is checked against the same MD5 before it is first decoded.
Its decoded arrays are cached (array_cache.py) under ROOT/arrays.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Callable

import numpy as np

from icckd_jax.data import array_cache
from icckd_jax.data import download
from icckd_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Archive:
  """An official archive: its file name, where it downloads from (any
  mirror: the checksum makes each safe) and its MD5."""

  filename: str
  urls: tuple[str, ...]
  md5: str


def cached_arrays(
  archive: Archive,
  path: str | None,
  root: pathlib.Path,
  cache: tuple[str, str],
  missing: str,
  decode: Callable[[pathlib.Path, str], dict[str, np.ndarray]],
) -> dict[str, np.ndarray]:
  """The decoded arrays of `archive`, from the cache or decoded now.

  Args:
    archive: the official file.
    path: `dataset.path`, or None: look in, or download into, `root`.
    root: the data folder: downloads, and the cache of decoded arrays.
    cache: (name of the cache entry, format: a version of the decoding
      that changes the arrays).
    missing: what `path` should be, said when it does not exist.
    decode: (source, where: how messages name it) -> {name: array}.
  """
  verify = False
  if path:
    source = pathlib.Path(path).expanduser()
    where = f'dataset.path={path!r}'
    if not source.exists():
      raise UserError(f'{where} does not exist; {missing}')
  else:
    source = root / archive.filename
    where = str(source)
    if not source.exists():
      download.fetch(list(archive.urls), archive.md5, source)
    else:
      verify = True  # Placed by hand: check it before trusting it.
  key = (
    array_cache.folder_key(source)
    if source.is_dir()
    else array_cache.file_key(source)
  )
  name, key['format'] = cache

  def checked_decode():
    if verify and download.md5sum(source) != archive.md5:
      raise UserError(
        f'{where} has the wrong MD5 checksum (expected {archive.md5}, the '
        f'official {archive.filename}); delete it to download it again, or '
        'set dataset.path to a copy of your own'
      )
    return decode(source, where)

  return array_cache.cached(root / 'arrays', name, key, checked_decode)

"""Decoded data sets cached as .npy files, read back memory-mapped.

Decoding a data set (unpickling CIFAR batches, decoding 100,000 JPEGs) takes
seconds to minutes; reading its arrays back from .npy files takes about a
second. A cache entry is a folder named for a digest of its key (the source
file's path, size and modification time, and anything else that changes the
arrays), holding one .npy file per array and `key.json`. It is written under
a temporary name and renamed into place when complete, so a failed or killed
decode never leaves an entry that a later run would trust.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import tempfile
from typing import Any, Callable

from absl import logging
import numpy as np

_KEY_FILE = 'key.json'


def file_key(path: pathlib.Path) -> dict[str, Any]:
  """Identifies a source file: a changed file gets a new cache entry."""
  stat = path.stat()
  return {
    'path': str(path.resolve()),
    'size': stat.st_size,
    'mtime_ns': stat.st_mtime_ns,
  }


def folder_key(root: pathlib.Path) -> dict[str, Any]:
  """Identifies a folder tree by every file's relative path, size and
  modification time (a stat per file, no reads). Symlinked folders are
  followed (a train/ linked from elsewhere is read, so it counts), each
  real folder once."""
  digest = hashlib.sha256()
  seen = set()
  for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
    seen.add(os.path.realpath(dirpath))
    dirnames[:] = sorted(
      d
      for d in dirnames
      if os.path.realpath(os.path.join(dirpath, d)) not in seen
    )
    for name in sorted(filenames):
      stat = os.stat(os.path.join(dirpath, name))
      rel = os.path.relpath(os.path.join(dirpath, name), root)
      # The name's bytes as the file system holds them: a name that is not
      # UTF-8 is a file like any other (UTF-8 names give the same bytes).
      digest.update(os.fsencode(rel))
      digest.update(f'\0{stat.st_size}\0{stat.st_mtime_ns}\n'.encode())
  return {'path': str(root.resolve()), 'tree': digest.hexdigest()}


def cached(
  cache_root: pathlib.Path,
  name: str,
  key: dict[str, Any],
  decode: Callable[[], dict[str, np.ndarray]],
) -> dict[str, np.ndarray]:
  """The arrays of `key`, from the cache, else decoded and then cached.

  Args:
    cache_root: the folder holding the cache entries (created if absent).
    name: readable prefix of the entry's folder name, e.g. 'cifar100'.
    key: JSON-serialisable identity of the decoded content.
    decode: builds the arrays; called only when the cache has no entry.

  Returns:
    name -> array; read-only memory maps when read from the cache.
  """
  text = json.dumps(key, sort_keys=True)
  entry = (
    cache_root / f'{name}-{hashlib.sha256(text.encode()).hexdigest()[:16]}'
  )
  key_file = entry / _KEY_FILE
  if key_file.is_file() and key_file.read_text() == text:
    return {
      p.stem: np.load(p, mmap_mode='r') for p in sorted(entry.glob('*.npy'))
    }
  arrays = decode()
  try:
    _write(entry, text, arrays)
  except OSError as e:
    # A read-only data folder costs speed, not correctness.
    logging.warning('could not cache decoded arrays in %s (%s)', entry, e)
  return arrays


def _write(
  entry: pathlib.Path, text: str, arrays: dict[str, np.ndarray]
) -> None:
  entry.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(
    tempfile.mkdtemp(prefix=entry.name + '.tmp-', dir=entry.parent)
  )
  try:
    for n, array in arrays.items():
      np.save(tmp / f'{n}.npy', np.asarray(array))
    # The key is written last: an entry without it is never read.
    (tmp / _KEY_FILE).write_text(text)
    if entry.exists():
      shutil.rmtree(entry)
    os.replace(tmp, entry)
  finally:
    if tmp.exists():
      shutil.rmtree(tmp, ignore_errors=True)

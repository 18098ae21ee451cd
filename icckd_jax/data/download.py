"""Verified downloads into the data folder: all or nothing.

A file is fetched into a temporary name beside its target, its MD5 checked
against the published checksum, and only then renamed into place, so an
interrupted or corrupted transfer never counts as a complete file: the next
attempt (in this process or a later run) starts again from scratch. The
temporary name is unique per attempt, so processes downloading the same file
at once (several hosts, parallel workers) never write into each other's file.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import pathlib
import sys
import tempfile
import time
from typing import Callable, Sequence
import urllib.error
import urllib.request

from icckd_jax.errors import UserError, one_line

ENV_DATA_DIR = 'ICCKD_DATA_DIR'
# Bytes per read of a transfer or a checksum.
_CHUNK = 1 << 20
# Seconds between two updates of the progress line.
_PROGRESS_EVERY = 0.5
# Seconds a stalled connection may stay silent before the attempt fails.
_TIMEOUT = 60
# Errors of an interrupted or refused transfer, worth another attempt.
_TRANSFER_ERRORS = (
  OSError,
  urllib.error.URLError,
  http.client.HTTPException,
  EOFError,
)


def data_dir(configured: str | None) -> pathlib.Path:
  """The folder where data sets are downloaded and their arrays cached.

  Args:
    configured: `dataset.data_dir`, or None for the default: the environment
      variable ICCKD_DATA_DIR, else $XDG_CACHE_HOME/icckd_jax (by default
      ~/.cache/icckd_jax).
  """
  if configured:
    return pathlib.Path(configured).expanduser()
  if os.environ.get(ENV_DATA_DIR):
    return pathlib.Path(os.environ[ENV_DATA_DIR]).expanduser()
  cache = os.environ.get('XDG_CACHE_HOME') or pathlib.Path.home() / '.cache'
  return pathlib.Path(cache) / 'icckd_jax'


def file_digest(path: os.PathLike, algorithm: str) -> str:
  """Hex digest (hashlib's `algorithm`) of a file, read in chunks: data
  sets are too large to read whole."""
  digest = hashlib.new(algorithm, usedforsecurity=False)
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(_CHUNK), b''):
      digest.update(chunk)
  return digest.hexdigest()


def md5sum(path: pathlib.Path) -> str:
  """Hex MD5 of a file (the official archives' published checksums)."""
  return file_digest(path, 'md5')


def open_url(url: str):
  """Opens a URL for reading (http, https, file); tests replace it."""
  return urllib.request.urlopen(url, timeout=_TIMEOUT)


def fetch(
  urls: Sequence[str],
  md5: str,
  target: pathlib.Path,
  opener: Callable | None = None,
  attempts: int = 3,
) -> pathlib.Path:
  """Downloads `target` from the first of `urls` that delivers it intact.

  Each URL is tried up to `attempts` times; every attempt starts from byte 0
  into a fresh temporary file, which is deleted unless its MD5 matches.

  Args:
    urls: mirrors of one file, tried in order.
    md5: the published hex MD5 of the file.
    target: where the verified file ends up.
    opener: `open_url` (the default) or a stand-in with its interface.
    attempts: tries per URL.

  Returns:
    `target`.

  Raises:
    UserError: no URL delivered the file with the right checksum; the error
      names the last failure and how to supply the file offline.
  """
  try:
    target.parent.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise UserError(
      f'cannot create the data folder {str(target.parent)!r} '
      f'({one_line(e)}); set dataset.data_dir or '
      f'${ENV_DATA_DIR} to a writable folder'
    ) from e
  opener = opener or open_url
  failure = 'no URL'
  for url in urls:
    for _ in range(attempts):
      try:
        _transfer(url, md5, target, opener)
        return target
      except _ChecksumMismatch as e:
        failure = str(e)
        break  # The mirror serves other bytes; another try gets the same.
      except _TRANSFER_ERRORS as e:
        failure = f'{url}: {type(e).__name__}: {one_line(e)}'
  raise UserError(
    f'could not download {target.name} ({failure}); download it yourself '
    f'and set dataset.path to it, or place it in {str(target.parent)!r}'
  )


class _ChecksumMismatch(Exception):
  pass


def _transfer(
  url: str, md5: str, target: pathlib.Path, opener: Callable
) -> None:
  """One attempt: download into a temporary file, verify, rename."""
  fd, part = tempfile.mkstemp(prefix=target.name + '.part-', dir=target.parent)
  try:
    digest = hashlib.md5(usedforsecurity=False)
    with os.fdopen(fd, 'wb') as out, opener(url) as response:
      total = int(response.headers.get('Content-Length') or 0)
      progress = _Progress(target.name, total)
      received = 0
      for chunk in iter(lambda: response.read(_CHUNK), b''):
        out.write(chunk)
        digest.update(chunk)
        received += len(chunk)
        progress.update(received)
      progress.done(received)
    if total and received != total:
      raise http.client.IncompleteRead(b'', total - received)
    if digest.hexdigest() != md5:
      raise _ChecksumMismatch(
        f'{url} delivered a file with MD5 {digest.hexdigest()}, but the '
        f'published checksum is {md5}'
      )
    os.replace(part, target)
  except BaseException:
    pathlib.Path(part).unlink(missing_ok=True)
    raise


class _Progress:
  """A progress line on stderr: rewritten in place on a terminal, else
  printed at the start and the end only (logs stay short)."""

  def __init__(self, name: str, total: int):
    self.name = name
    self.total = total
    self.tty = sys.stderr.isatty()
    self.last = 0.0
    sys.stderr.write(
      f'downloading {name}{f" ({total / 2**20:.1f} MiB)" if total else ""}\n'
    )

  def update(self, received: int) -> None:
    now = time.monotonic()
    if self.tty and now - self.last >= _PROGRESS_EVERY:
      self.last = now
      share = f' {100 * received / self.total:5.1f}%' if self.total else ''
      sys.stderr.write(f'\r  {received / 2**20:8.1f} MiB{share}')
      sys.stderr.flush()

  def done(self, received: int) -> None:
    sys.stderr.write(
      f'{chr(13) if self.tty else ""}  {self.name}: '
      f'{received / 2**20:.1f} MiB received\n'
    )

"""JAX's persistent compilation cache, on by default for every run.

Each start of a run, a resume, a worker's or a pipeline's stage would
otherwise compile its train and eval steps from scratch (10-40 s each on a
GPU). The cache keeps the compiled executables on disk, keyed by the program,
its shapes and the JAX, XLA and device versions, so a cached executable is
the same program and results stay bit for bit.

`$JAX_COMPILATION_CACHE_DIR`, JAX's own setting, wins where it is set (the
tests' private cache is set that way).

JAX writes an entry in place and only where its key is absent: an entry cut
short (the disk filled as it was written) would be read, warned about and
compiled around at every later start, and never written again. Each start
removes such entries first (`repair`), so the next compilation writes them
whole.
"""

import json
import os
import pathlib
import time
import zlib

from absl import logging
import jax

DEFAULT_DIR = '~/.cache/icckd_jax/xla'
# JAX keeps only executables that took at least 1 s to compile by default;
# the CPU's small eval steps take less, and every step is worth keeping.
MIN_COMPILE_SECONDS = 0.0
# JAX's entries are the files named '<module>-<key>-cache'.
ENTRY_SUFFIX = '-cache'
# The entries found whole, by name: (size, mtime_ns), so a start reads only
# the entries written since.
CHECKED_FILE = 'icckd_checked.json'
# An entry younger than this may still be being written by another process
# sharing the cache.
SETTLE_SECONDS = 60.0
_ZSTD_MAGIC = b'\x28\xb5\x2f\xfd'


def enable(directory: str | None) -> str | None:
  """Turns the persistent cache on in `directory` ('~' expanded); '' or
  None leaves it off. Returns the directory in use, or None, having
  removed the entries in it that cannot be read (`repair`)."""
  path = os.environ.get('JAX_COMPILATION_CACHE_DIR')
  if not path:
    if not directory:
      return None
    path = os.path.abspath(os.path.expanduser(directory))
    jax.config.update('jax_compilation_cache_dir', path)
    jax.config.update(
      'jax_persistent_cache_min_compile_time_secs', MIN_COMPILE_SECONDS
    )
    logging.info('Compilation cache: %s', path)
  repair(path)
  return path


def _zstd_decompress():
  """The zstd decompression JAX would use here, or None without one."""
  try:
    from compression import zstd  # pylint: disable=g-import-not-at-top

    return zstd.decompress
  except ImportError:
    pass
  try:
    import zstandard  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return zstandard.ZstdDecompressor().decompress


def readable(entry: bytes) -> bool:
  """Whether `entry` (a cache file's bytes) decompresses as JAX reads it:
  a zstd frame or a zlib stream holding at least the 4 bytes of its
  compile time. A zstd entry where no zstd decompressor is installed
  counts as readable: JAX here did not write it, and cannot judge it."""
  try:
    if entry[:4] == _ZSTD_MAGIC:
      decompress = _zstd_decompress()
      return decompress is None or len(decompress(entry)) > 4
    return len(zlib.decompress(entry)) > 4
  except Exception:  # pylint: disable=broad-except
    # zlib.error, zstd's ZstdError: the compressed stream is damaged.
    return False


def _read_checked(cache: pathlib.Path) -> dict[str, list[int]]:
  try:
    checked = json.loads((cache / CHECKED_FILE).read_text())
  except (OSError, ValueError):
    return {}
  return checked if isinstance(checked, dict) else {}


def _write_checked(cache: pathlib.Path, checked: dict[str, list[int]]) -> None:
  """Replaces the record atomically; a cache that cannot be written (a full
  disk, read-only) keeps the old one: the next start reads more."""
  tmp = cache / f'{CHECKED_FILE}.{os.getpid()}.tmp'
  try:
    tmp.write_text(json.dumps(checked))
    os.replace(tmp, cache / CHECKED_FILE)
  except OSError:
    tmp.unlink(missing_ok=True)


def repair(directory: str) -> list[str]:
  """Removes the entries of the cache in `directory` that cannot be read
  (`readable`), older than SETTLE_SECONDS; returns their names. Entries
  found whole are recorded in CHECKED_FILE (by size and modification time)
  and not read again. One warning line if any is removed."""
  cache = pathlib.Path(directory)
  try:
    names = [n for n in os.listdir(cache) if n.endswith(ENTRY_SUFFIX)]
  except OSError:  # JAX creates it at the first compile
    return []
  before = _read_checked(cache)
  checked, removed = {}, []
  settled = time.time() - SETTLE_SECONDS
  for name in names:
    try:
      stat = (cache / name).stat()
      seen = [stat.st_size, stat.st_mtime_ns]
      if before.get(name) == seen or stat.st_mtime > settled:
        checked[name] = before.get(name)
      elif readable((cache / name).read_bytes()):
        checked[name] = seen
      else:
        (cache / name).unlink()
        removed.append(name)
    except OSError:  # removed meanwhile by another process, or unreadable
      continue
  checked = {n: s for n, s in checked.items() if s is not None}
  if checked != before:
    _write_checked(cache, checked)
  if removed:
    logging.warning(
      'Compilation cache %s: removed %d entr%s that could not be read '
      '(written as the disk filled?); compiled, they are written again.',
      directory,
      len(removed),
      'y' if len(removed) == 1 else 'ies',
    )
  return removed

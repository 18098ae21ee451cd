"""One shard of a conversion (`convert.py`), written in a pool process.

`write_shard(task)` decodes each record once (to check it and to count the
train split's pixel values; a 16-bit image is stored as its 8 bits, PNG), writes the shard under a temporary name,
fsyncs and renames it into place, then writes `<shard>.json` beside it:
its size, checksum and pixel statistics, which mark it complete.
"""

from __future__ import annotations

import errno
import io
import json
import os
import pathlib
import signal
from typing import Any

import numpy as np
from PIL import Image

from icckd_jax.data import array_record
from icckd_jax.data import images
from icckd_jax.errors import UserError, one_line

# PIL's modes of a single-channel image: a set of only these is stored grey.
_GREY_MODES = ('1', 'L', 'LA', 'I;16', 'I', 'F')


def _png(image: Image.Image) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, format='PNG')
  return buffer.getvalue()


def _read_source(source: Any) -> bytes:
  if isinstance(source, bytes):
    return source
  if isinstance(source, str):
    with open(source, 'rb') as f:
      return f.read()
  array = source[..., 0] if source.shape[-1] == 1 else source
  return _png(Image.fromarray(np.asarray(array)))


def shrunk_image(image: Image.Image, fmt: str, max_side: int):
  """(image, its file's bytes) with the longer side at most `max_side`
  (bicubic; the aspect ratio kept), stored as JPEG of quality 90 if it was
  one, else PNG; None if it is small enough already."""
  width, height = image.size
  if not max_side or max(width, height) <= max_side:
    return None
  scale = max_side / max(width, height)
  size = (max(1, round(width * scale)), max(1, round(height * scale)))
  mode = 'L' if image.mode in _GREY_MODES else 'RGB'
  image = image.convert(mode).resize(size, Image.BICUBIC)
  if fmt != 'JPEG':
    return image, _png(image)
  buffer = io.BytesIO()
  image.save(buffer, format='JPEG', quality=90)
  # What is stored is what a run decodes: the statistics are of it.
  with Image.open(io.BytesIO(buffer.getvalue())) as stored:
    stored.load()
    return stored, buffer.getvalue()


def _record(where: str, source: Any, name: str, max_side: int = 0):
  """(the bytes to store, the image's format, whether it is grey, its
  pixels [H, W, 3] uint8) of one record's `source`, its longer side at most
  `max_side` (0: as it is), refused in one line where it cannot be read or
  decoded."""
  try:
    data = _read_source(source)
  except OSError as e:  # The source's, not the output's: named so.
    raise UserError(
      f'{where}: cannot read {name!r} ({e.strerror or e})'
    ) from None
  try:
    with Image.open(io.BytesIO(data)) as opened:
      image = images.eight_bit(where, name, opened)
      if image is not opened:  # 16 bits: stored as the 8 bits read
        data = _png(image)
      shrunk = shrunk_image(image, opened.format, max_side)
      if shrunk is not None:
        image, data = shrunk
      rgb = np.asarray(image.convert('RGB'))
      return data, opened.format, image.mode in _GREY_MODES, rgb
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    raise UserError(
      f'{where}: cannot decode {name!r} as an image ({one_line(e)})'
    ) from None


def write_shard(task: dict[str, Any]) -> dict[str, Any]:
  """Writes one shard (in a pool process) and its `<shard>.json`; returns
  the latter's content.

  Every image is decoded once: to check it and to count the train split's
  pixel values per channel (the mean and std, exactly, as
  `datasets.channel_stats` counts them).
  """
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top

  out = pathlib.Path(task['output_dir'])
  final = out / task['file']
  tmp = out / (task['file'] + '.tmp')
  histogram = np.zeros(3 * 256, np.int64)
  offsets = (256 * np.arange(3)).astype(np.uint16)
  grey, sizes, formats, pixels = True, set(), set(), 0
  writer = _io(
    array_record_module.ArrayRecordWriter, str(tmp), array_record.WRITER_OPTIONS
  )
  try:
    for label, source, name in task['items']:
      data, image_format, is_grey, rgb = _record(
        task['where'], source, name, task.get('max_side', 0)
      )
      formats.add(image_format)
      grey = grey and is_grey
      sizes.add(rgb.shape[:2])
      pixels += rgb.shape[0] * rgb.shape[1]
      if task['statistics']:
        flat = rgb.reshape(-1, 3) + offsets
        histogram += np.bincount(flat.ravel(), minlength=histogram.size)
      _io(writer.write, array_record.encode_record(label, data))
  finally:
    _io(writer.close)
  with open(tmp, 'rb+') as f:
    os.fsync(f.fileno())
  os.replace(tmp, final)
  done = {
    'file': task['file'],
    'records': len(task['items']),
    'bytes': final.stat().st_size,
    'sha256': array_record.sha256_file(final),
    'histogram': histogram.tolist(),
    'grey': grey,
    'sizes': sorted(list(s) for s in sizes)[:2],
    'formats': sorted(formats),
    'pixels': pixels,
  }
  write_json(out / (task['file'] + '.json'), done)
  return done


def write_json(path: pathlib.Path, value: Any) -> None:
  """Writes `value` to `path` whole or not at all (a full disk leaves
  neither a part of it nor its temporary file)."""
  tmp = path.with_name(path.name + '.tmp')
  try:
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)
  except OSError:
    tmp.unlink(missing_ok=True)
    raise


def ignore_interrupts() -> None:
  """A pool worker's initializer: Ctrl-C reaches the terminal's whole
  process group, and the parent alone stops the conversion (it ends its
  workers), so a worker prints no KeyboardInterrupt traceback."""
  signal.signal(signal.SIGINT, signal.SIG_IGN)


# The system's messages, to find the errno in array_record's text.
_ERRNOS = {os.strerror(number): number for number in errno.errorcode}


def _io(call, *args):
  """`call(*args)` of array_record's writer, which reports a failed write
  as a RuntimeError holding the system's message ("write() failed: No
  space left on device; ..."): raised as the OSError it stands for."""
  try:
    return call(*args)
  except RuntimeError as e:
    text = str(e)
    number = next((n for m, n in _ERRNOS.items() if m in text), errno.EIO)
    raise OSError(number, os.strerror(number), one_line(e)) from None

"""A data set as ArrayRecord shards: the format, its writer and its reader.

A converted data set (`convert.py` writes it) is a folder:

  info.json                       what the shards hold (below)
  train-00000-of-00012.array_record, ...   one record per group (random access)
  test-00000-of-00002.array_record, ...
  train-labels.npy, test-labels.npy        [N] int32, in record order

Each record is the label (4 bytes, little-endian uint32) followed by the
image file's bytes as they were read (a JPEG is never re-encoded; images
that came as arrays are stored as PNG). `info.json` holds `classes` (names in
label order), `counts` ({split: records}), the train split's `mean` and `std`
(per channel, [0, 255] units, over every pixel of every training image at its
own size), `channels`, `image_shape` ([H, W, C] when every image has one
size, else null), `image_formats`, `decoded_bytes` ({split: bytes the
decoded images take}), `max_side` (the train split's longer side was
reduced to at most this at conversion; null: images as they were), `labels` ({split: {file, bytes, sha256}}) and
`shards` ({split: [{file, records, bytes, sha256}]}).

Opening a data set (`read_info`) reads info.json and the shards' sizes only,
never a pass over the data: a missing, truncated or extra-long shard is
refused there, a corrupted one (ArrayRecord checksums every chunk) when the
record is read, naming the shard and the record. `Info.digest` names the
data (its classes and the recorded SHA-256 of every shard and label file):
a run records it and resumes only on the same data (runs/data_identity.py).
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import json
import os
import pathlib
import struct
from typing import Any

import numpy as np

from icckd_jax.data import classes
from icckd_jax.data import download
from icckd_jax.data import images as images_lib
from icckd_jax.errors import UserError, one_line

FORMAT = 'icckd_jax-array_record-1'
INFO_FILE = 'info.json'
SPLITS = ('train', 'test')
# One record per group: reading record i decodes that record alone. The
# images are compressed already, so the shards are not compressed again.
WRITER_OPTIONS = 'group_size:1,uncompressed'
_LABEL = struct.Struct('<I')


def shard_name(split: str, index: int, count: int) -> str:
  return f'{split}-{index:05d}-of-{count:05d}.array_record'


def labels_name(split: str) -> str:
  return f'{split}-labels.npy'


def encode_record(label: int, image: bytes) -> bytes:
  """The record of one example: its label, then the image file's bytes."""
  return _LABEL.pack(label) + image


def decode_record(record: bytes) -> tuple[int, bytes]:
  """(label, image file bytes) of a record."""
  return _LABEL.unpack_from(record)[0], record[_LABEL.size :]


def sha256_file(path: os.PathLike) -> str:
  """Hex SHA-256 of a shard or label file, as info.json records it."""
  return download.file_digest(path, 'sha256')


@dataclasses.dataclass(frozen=True)
class Shard:
  path: str
  records: int
  bytes: int


@dataclasses.dataclass(frozen=True)
class Info:
  """A converted data set, as `read_info` found it (nothing decoded)."""

  root: str
  classes: tuple[str, ...]
  counts: dict[str, int]
  mean: np.ndarray  # [C] float32, [0, 255] units
  std: np.ndarray  # [C] float32
  channels: int
  image_shape: tuple[int, int, int] | None  # None: images of several sizes
  decoded_bytes: dict[str, int]
  shards: dict[str, tuple[Shard, ...]]
  digest: str = ''  # SHA-256 of the classes and the files' own SHA-256

  @property
  def num_classes(self) -> int:
    return len(self.classes)

  def labels(self, split: str) -> np.ndarray:
    """[counts[split]] int32, in record order."""
    return np.load(os.path.join(self.root, labels_name(split)), mmap_mode='r')


def _field(info: dict, name: str, where: str):
  if name not in info:
    raise UserError(f'{where} has no {name!r}; convert the data set again')
  return info[name]


def read_info(path: str | None) -> Info:
  """Opens the converted data set at `path` (`dataset.path`).

  Raises:
    UserError: no info.json, one of another format, or one that disagrees
      with the shards or label files beside it (named).
  """
  if not path:
    raise UserError(
      "dataset.path is not set; dataset.name='array_record' needs the "
      'output_dir of configs/convert.py'
    )
  root = pathlib.Path(path).expanduser()
  info_path = root / INFO_FILE
  if not root.is_dir():
    raise UserError(
      f'dataset.path={path!r} is not a folder; give the output_dir of '
      'configs/convert.py'
    )
  if not info_path.is_file():
    shards = sorted(root.glob('*.array_record'))
    raise UserError(
      f'dataset.path={path!r} has no {INFO_FILE}'
      + (
        f' beside its {len(shards)} shards: the conversion did not finish; '
        'rerun configs/convert.py with the same source to complete it'
        if shards
        else ' and no shards; convert a data set into it with '
        'configs/convert.py'
      )
    )
  where = str(info_path)
  try:
    info = json.loads(info_path.read_text())
  except (OSError, ValueError) as e:
    raise UserError(f'{where} cannot be read ({one_line(e)})') from None
  if not isinstance(info, dict) or info.get('format') != FORMAT:
    raise UserError(
      f'{where} is not an info.json of configs/convert.py (format '
      f'{FORMAT!r}); convert the data set again'
    )
  counts = {s: int(_field(info, 'counts', where)[s]) for s in SPLITS}
  shards = {
    split: _checked_shards(root, info, split, counts[split]) for split in SPLITS
  }
  shape = info.get('image_shape')
  return Info(
    root=str(root),
    classes=classes.check(where, tuple(_field(info, 'classes', where))),
    counts=counts,
    mean=np.asarray(_field(info, 'mean', where), np.float32),
    std=np.asarray(_field(info, 'std', where), np.float32),
    channels=int(_field(info, 'channels', where)),
    image_shape=tuple(shape) if shape else None,
    decoded_bytes={
      s: int(v) for s, v in _field(info, 'decoded_bytes', where).items()
    },
    shards=shards,
    digest=_digest(info),
  )


def _digest(info: dict) -> str:
  """Hex SHA-256 naming the data of info.json `info`: its classes and the
  SHA-256 the conversion recorded of each shard and label file, in order.
  Read from info.json alone: no pass over the data."""
  named = {
    'classes': info['classes'],
    'shards': {
      split: [s['sha256'] for s in info['shards'].get(split) or []]
      for split in SPLITS
    },
    'labels': {
      split: info['labels'].get(split, {}).get('sha256') for split in SPLITS
    },
  }
  return hashlib.sha256(json.dumps(named, sort_keys=True).encode()).hexdigest()


def _checked_shards(
  root: pathlib.Path, info: dict, split: str, count: int
) -> tuple[Shard, ...]:
  """The shards of `split` that info.json lists, each of the size it says,
  holding `count` records together, with a label file of the size it says."""
  where = str(root / INFO_FILE)
  found = []
  for entry in _field(info, 'shards', where).get(split) or []:
    shard = root / entry['file']
    if not shard.is_file():
      raise UserError(
        f'{where} lists the shard {entry["file"]} but {shard} is missing; '
        'convert the data set again'
      )
    size = shard.stat().st_size
    if size != entry['bytes']:
      raise UserError(
        f'the shard {shard} has {size} bytes but {INFO_FILE} says '
        f'{entry["bytes"]}: it is truncated or was replaced; convert '
        'the data set again'
      )
    found.append(Shard(str(shard), int(entry['records']), size))
  if sum(s.records for s in found) != count:
    raise UserError(
      f"{where}: counts['{split}']={count} but its shards hold "
      f'{sum(s.records for s in found)} records'
    )
  labels = root / labels_name(split)
  entry = _field(info, 'labels', where).get(split, {})
  if not labels.is_file() or labels.stat().st_size != entry.get('bytes'):
    raise UserError(
      f'{labels} is missing or does not match {INFO_FILE}; convert the '
      'data set again'
    )
  return tuple(found)


class RecordError(Exception):
  """A record that cannot be read or decoded: its shard and index."""


class Records:
  """Random access to one split's examples, decoded to uint8 arrays.

  Picklable (Grain sends it to its worker processes, which open the shards
  themselves). The shards are opened lazily; their record counts come from
  info.json, so opening costs nothing.
  """

  def __init__(self, info: Info, split: str):
    # Imported here: Grain pulls in its own dependencies, which a resident
    # run never needs.
    from grain import sources  # pylint: disable=g-import-not-at-top

    self.shards = info.shards[split]
    self.channels = info.channels
    self._starts = np.cumsum([0] + [s.records for s in self.shards]).tolist()
    self._source = sources.ArrayRecordDataSource(
      [f'{s.path}[0:{s.records}]' for s in self.shards]
    )

  def __len__(self) -> int:
    return self._starts[-1]

  def where(self, index: int) -> str:
    """'shard S, record r' of the example at `index`."""
    shard = bisect.bisect_right(self._starts, index) - 1
    return (
      f'shard {self.shards[shard].path}, record {index - self._starts[shard]}'
    )

  def raw(self, index: int) -> tuple[int, bytes]:
    """(label, image file bytes) of example `index`."""
    try:
      return decode_record(self._source[index])
    except (RuntimeError, OSError, ValueError, struct.error) as e:
      raise RecordError(
        f'{self.where(index)} cannot be read, the shard is corrupted '
        f'({one_line(e)}); convert the data set again'
      ) from None

  def image(self, index: int, rows=None) -> tuple[Any, int]:
    """(Pillow image of mode 'L' or 'RGB' as `channels` says, label) of
    example `index`, with no copy of its pixels; `rows`: a function of its
    (width, height) giving how many top rows to decode, None for all
    (`images.open_image`)."""
    label, data = self.raw(index)
    try:
      image = images_lib.open_image(
        'the record', 'its image', data, self.channels == 3, rows
      )
    except UserError as e:
      raise self._undecodable(index, e) from None
    return image, label

  def scaled(
    self, index: int, min_size
  ) -> tuple[np.ndarray, tuple[float, float], int]:
    """([h, w, channels] uint8, its scale (y, x), label) of example
    `index`, a JPEG decoded as small as `min_size` allows
    (`images.decode_scaled`)."""
    label, data = self.raw(index)
    try:
      array, scale = images_lib.decode_scaled(
        'the record', 'its image', data, self.channels, min_size
      )
    except UserError as e:
      raise self._undecodable(index, e) from None
    return array, scale, label

  def _undecodable(self, index: int, e: UserError) -> RecordError:
    return RecordError(
      f'{self.where(index)} fails to decode ({e}); convert the data set again'
    )

  def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
    """(image [H, W, channels] uint8, label) of example `index`."""
    image, label = self.image(index)
    return images_lib.as_array(image), label


def load_resident(info: Info) -> dict[str, Any]:
  """Decodes every record of a set of one image size into arrays:
  {'train_images' [N, H, W, C], 'train_labels' [N], 'test_...'}."""
  arrays = {}
  for split in SPLITS:
    records = Records(info, split)
    try:
      decoded = [records[i][0] for i in range(len(records))]
    except RecordError as e:
      raise UserError(str(e)) from None
    arrays[f'{split}_images'] = images_lib.stack(
      info.root, [records.where(i) for i in range(len(records))], decoded
    )
    arrays[f'{split}_labels'] = np.asarray(info.labels(split), np.int32)
  return arrays

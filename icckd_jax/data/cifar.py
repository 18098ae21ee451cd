"""CIFAR-10 and CIFAR-100 from the official "python version" archives.

`cifar-10-python.tar.gz` holds `cifar-10-batches-py/` with `data_batch_1`
… `data_batch_5`, `test_batch` and `batches.meta`; `cifar-100-python.tar.gz`
holds `cifar-100-python/` with `train`, `test` and `meta`. Each batch is a
pickled dict: `data`, a [N, 3072] uint8 array whose rows are 1024 red, then
1024 green, then 1024 blue bytes of a 32x32 image in row-major order, and the
labels (`labels`; `fine_labels` and `coarse_labels` for CIFAR-100).

The pickles are read with an unpickler that can build nothing but plain
containers, bytes, numbers and uint8 numpy arrays, so a doctored file cannot
run code. No TensorFlow and no TFDS are involved.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import pathlib
import pickle
import tarfile
import zlib

import numpy as np

from icckd_jax.data import official
from icckd_jax.errors import UserError, one_line

_PAGE = 'https://www.cs.toronto.edu/~kriz/cifar.html'
_SIZE = 32
_ROW_BYTES = 3 * _SIZE * _SIZE


@dataclasses.dataclass(frozen=True)
class _Archive:
  """One of the two archives."""

  filename: str
  md5: str  # published checksum of the archive
  folder: str  # the archive's top-level folder
  train: tuple[str, ...]  # members holding the training split, in order
  test: str
  meta: str
  label_keys: dict[str, tuple[str, int]]  # label_kind -> (key, classes)


ARCHIVES = {
  'cifar10': _Archive(
    filename='cifar-10-python.tar.gz',
    md5='c58f30108f718f92721af3b95e74349a',
    folder='cifar-10-batches-py',
    train=tuple(f'data_batch_{i}' for i in range(1, 6)),
    test='test_batch',
    meta='batches.meta',
    label_keys={'fine': ('labels', 10)},
  ),
  'cifar100': _Archive(
    filename='cifar-100-python.tar.gz',
    md5='eb9058c3a382ffc7106e4002c42a8d85',
    folder='cifar-100-python',
    train=('train',),
    test='test',
    meta='meta',
    label_keys={'fine': ('fine_labels', 100), 'coarse': ('coarse_labels', 20)},
  ),
}
# Mirrors of the official archives; the checksum makes any mirror safe.
_MIRRORS = (
  'https://www.cs.toronto.edu/~kriz/',
  'https://cave.cs.toronto.edu/kriz/',
)


def load(
  name: str, path: str | None, label_kind: str | None, root: pathlib.Path
):
  """Reads CIFAR-10 or CIFAR-100, downloading the archive if needed.

  Args:
    name: 'cifar10' or 'cifar100'.
    path: the archive or the folder it extracts to (`dataset.path`; None:
      look in, or download into, `root`).
    label_kind: 'fine' (None: the same), or 'coarse' for CIFAR-100's 20
      superclasses (`dataset.label_kind`).
    root: the data folder: downloads, and the cache of decoded arrays.

  Returns:
    ((train_images [50000, 32, 32, 3], train_labels [50000]),
     (test_images [10000, 32, 32, 3], test_labels [10000])), num_classes.
  """
  archive = ARCHIVES[name]
  label_kind = label_kind or 'fine'
  if label_kind not in archive.label_keys:
    raise UserError(
      f'dataset.label_kind={label_kind!r} is invalid for {name}; '
      f'choose one of {sorted(archive.label_keys)}'
    )
  arrays = official.cached_arrays(
    official.Archive(
      archive.filename,
      tuple(m + archive.filename for m in _MIRRORS),
      archive.md5,
    ),
    path,
    root,
    (name, f'{name}-python-1'),
    f'expected {archive.filename} or the {archive.folder}/ folder it extracts to',
    lambda source, where: decode_archive(name, source, where),
  )
  label, num_classes = archive.label_keys[label_kind]
  return (
    (arrays['train_images'], arrays[f'train_{label}']),
    (arrays['test_images'], arrays[f'test_{label}']),
  ), num_classes


def decode_archive(
  name: str, source: pathlib.Path, where: str
) -> dict[str, np.ndarray]:
  """Reads and checks every batch of an archive or extracted folder.

  Returns:
    'train_images' [N, 32, 32, 3] and 'test_images' [M, 32, 32, 3] uint8,
    and for each label key of the data set (e.g. 'fine_labels'),
    'train_<key>' [N] and 'test_<key>' [M] int32.

  Raises:
    UserError: the file is not a readable CIFAR archive of this data set.
  """
  archive = ARCHIVES[name]
  expected = (
    f'expected {archive.filename} (from {_PAGE}) or the {archive.folder}/ '
    f'folder it extracts to, holding '
    f'{", ".join((*archive.train, archive.test, archive.meta))}'
  )
  members = _read_members(archive, source, where, expected)
  missing = [
    m for m in (*archive.train, archive.test, archive.meta) if m not in members
  ]
  if missing:
    _check_compressed_stream(source, where, archive.filename)
    raise UserError(
      f'{where} is not the {name} python-version archive: '
      f'{archive.folder}/{missing[0]} is missing; {expected}'
    )
  _unpickle(members[archive.meta], where, archive.meta)
  arrays = {}
  for split, names in (('train', archive.train), ('test', (archive.test,))):
    batches = [
      _batch(archive, _unpickle(members[m], where, m), where, m) for m in names
    ]
    arrays[f'{split}_images'] = np.concatenate([b[0] for b in batches])
    for key, _ in archive.label_keys.values():
      arrays[f'{split}_{key}'] = np.concatenate([b[1][key] for b in batches])
  return arrays


def _check_compressed_stream(
  source: pathlib.Path, where: str, filename: str
) -> None:
  """Raises a UserError naming the corruption when `source` is a gzip file
  whose stream fails its checks: tarfile stops at the first bad header
  after the start as if the archive had ended, so corruption would read as
  missing members."""
  if source.is_dir():
    return
  with open(source, 'rb') as f:
    if f.read(2) != b'\x1f\x8b':
      return
  try:
    with gzip.open(source) as stream:
      while stream.read(1 << 22):
        pass
  except (OSError, EOFError, zlib.error) as e:
    raise UserError(
      f'{where} is corrupt ({one_line(e).rstrip(":")}): '
      f'download {filename} again'
    ) from e


def _read_members(
  archive: _Archive, source: pathlib.Path, where: str, expected: str
) -> dict[str, bytes]:
  """The wanted members' bytes, by name, from the archive or the folder."""
  wanted = {*archive.train, archive.test, archive.meta}
  if source.is_dir():
    folder = (
      source / archive.folder if (source / archive.folder).is_dir() else source
    )
    return {
      m: (folder / m).read_bytes() for m in wanted if (folder / m).is_file()
    }
  members = {}
  try:
    with tarfile.open(source) as tar:
      for member in tar:
        parts = [p for p in member.name.split('/') if p not in ('', '.')]
        if (
          member.isfile()
          and len(parts) == 2
          and parts[0] == archive.folder
          and parts[1] in wanted
        ):
          members[parts[1]] = tar.extractfile(member).read()
  except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
    raise UserError(
      f'{where} is not a readable tar.gz archive, or is '
      f'truncated ({one_line(e).rstrip(":")}); {expected}'
    ) from e
  return members


class _PlainUnpickler(pickle.Unpickler):
  """Builds containers, bytes, numbers and numpy arrays, nothing else."""

  # What the official batches reference: numpy's array reconstructor under
  # its old and new module names, and the byte-string codec of protocol 2.
  _ALLOWED = {
    ('numpy.core.multiarray', '_reconstruct'),
    ('numpy._core.multiarray', '_reconstruct'),
    ('numpy', 'ndarray'),
    ('numpy', 'dtype'),
    ('_codecs', 'encode'),
  }

  def find_class(self, module, name):
    if (module, name) not in self._ALLOWED:
      raise pickle.UnpicklingError(f'refusing to load {module}.{name}')
    if name == '_reconstruct':
      # The reconstructor numpy itself pickles with, whatever its module.
      return np.ndarray.__reduce__(np.zeros(0))[0]
    return super().find_class(module, name)


def _unpickle(data: bytes, where: str, member: str) -> dict[str, object]:
  """A batch's dict, its keys as str (the files were written by Python 2)."""
  try:
    loaded = _PlainUnpickler(io.BytesIO(data), encoding='bytes').load()
  # Unpickling foreign bytes fails with any of a dozen exception types.
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(
      f'{where}: {member} is not a CIFAR batch '
      f'({type(e).__name__}: {one_line(e)})'
    ) from e
  if not isinstance(loaded, dict):
    raise UserError(
      f'{where}: {member} is not a CIFAR batch (a pickled '
      f'{type(loaded).__name__}, expected a dict)'
    )
  return {
    k.decode('latin1') if isinstance(k, bytes) else k: v
    for k, v in loaded.items()
  }


def _batch(
  archive: _Archive, batch: dict[str, object], where: str, member: str
):
  """Checks one batch; ([N, 32, 32, 3] uint8, label key -> [N] int32)."""
  data = batch.get('data')
  if (
    not isinstance(data, np.ndarray)
    or data.dtype != np.uint8
    or data.ndim != 2
    or data.shape[1] != _ROW_BYTES
  ):
    shape = getattr(data, 'shape', None)
    raise UserError(
      f'{where}: {member} has no [N, {_ROW_BYTES}] uint8 '
      f"'data' (found {type(data).__name__} {shape})"
    )
  labels = {}
  for key, num_classes in archive.label_keys.values():
    values = batch.get(key)
    try:
      values = np.asarray(values, np.int64)
    except (TypeError, ValueError):
      values = None
    if values is None or values.shape != (len(data),):
      raise UserError(
        f'{where}: {member} has no {len(data)} integer '
        f"'{key}' to match its {len(data)} images"
      )
    if values.size and (values.min() < 0 or values.max() >= num_classes):
      raise UserError(
        f"{where}: {member}'s '{key}' range over "
        f'[{values.min()}, {values.max()}]; expected '
        f'[0, {num_classes - 1}]'
      )
    labels[key] = values.astype(np.int32)
  # Rows are planar R, G, B: [N, 3, 32, 32], moved to channels-last.
  images = data.reshape(-1, 3, _SIZE, _SIZE).transpose(0, 2, 3, 1)
  return np.ascontiguousarray(images), labels

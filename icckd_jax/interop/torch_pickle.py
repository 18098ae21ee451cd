"""Reads a PyTorch `.pth` file into numpy arrays, without PyTorch.

Two on-disk formats exist (`torch.save`):

* zip (PyTorch >= 1.6): a zip archive with one top folder holding
  `data.pkl`, the pickled object whose tensors refer to storages by key, and
  `data/<key>`, each storage's raw bytes;
* legacy (before 1.6, or `_use_new_zipfile_serialization=False`): five
  consecutive records, the pickles of a magic number, a protocol version and
  system information, the object's pickle, the pickle of the list of storage
  keys, then for each key an int64 element count and the storage's raw bytes.

A `.pth` is a pickle, and unpickling can run any callable it names. The
unpickler here resolves only the few globals a checkpoint of tensors needs
(`_GLOBALS`) and refuses any other, so an untrusted file cannot run code.
"""

import collections
import functools
import io
import pickle
import struct
import zipfile
from typing import Any, BinaryIO

import ml_dtypes
import numpy as np

from icckd_jax.errors import UserError

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

# torch.<Name>Storage -> the element type of its raw bytes.
_STORAGE_DTYPES = {
  'DoubleStorage': np.float64,
  'FloatStorage': np.float32,
  'HalfStorage': np.float16,
  'BFloat16Storage': ml_dtypes.bfloat16,
  'LongStorage': np.int64,
  'IntStorage': np.int32,
  'ShortStorage': np.int16,
  'CharStorage': np.int8,
  'ByteStorage': np.uint8,
  'BoolStorage': np.bool_,
  'UntypedStorage': np.uint8,
}


_ALLOWED_DTYPES = frozenset(np.dtype(d) for d in _STORAGE_DTYPES.values())


class UnsafePickle(UserError):
  """The file names a global outside the checkpoint whitelist."""


class _StorageType:
  """Stands for a torch storage class inside the pickle: only its dtype."""

  def __init__(self, dtype):
    self.dtype = np.dtype(dtype)


def _rebuild_tensor(
  storage: np.ndarray, storage_offset: int, size, stride, *unused
) -> np.ndarray:
  """torch._utils._rebuild_tensor(_v2): a strided view of a storage, copied.

  `size` and `stride` count elements; the extra arguments of the v2 form
  (requires_grad, backward hooks, metadata) do not matter for weights.
  """
  del unused
  size, stride = tuple(size), tuple(stride)
  # as_strided does no bounds checks: a crafted file must not read memory
  # outside its storage.
  if not all(
    isinstance(v, int) and v >= 0 for v in (storage_offset, *size, *stride)
  ) or len(size) != len(stride):
    raise ValueError(
      f'a tensor has an invalid shape {size!r:.60}, stride '
      f'{stride!r:.60} or offset {storage_offset!r:.20}'
    )
  last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
  if all(size) and last >= storage.size:
    raise ValueError(
      f'a tensor of shape {list(size)} reads past its storage '
      f'of {storage.size} elements'
    )
  view = np.lib.stride_tricks.as_strided(
    storage[storage_offset:],
    shape=size,
    strides=tuple(s * storage.itemsize for s in stride),
  )
  return np.array(view)


def _rebuild_parameter(data: np.ndarray, *unused) -> np.ndarray:
  """torch._utils._rebuild_parameter: an nn.Parameter is its data here."""
  del unused
  return data


# Each lookup builds a fresh object: pickle's BUILD opcode can set attributes
# on what a global resolves to, and must not reach anything shared between
# files (collections.OrderedDict is an immutable built-in type).
_GLOBALS = {
  ('collections', 'OrderedDict'): lambda: collections.OrderedDict,
  ('torch._utils', '_rebuild_tensor'): lambda: functools.partial(
    _rebuild_tensor
  ),
  ('torch._utils', '_rebuild_tensor_v2'): lambda: functools.partial(
    _rebuild_tensor
  ),
  ('torch._utils', '_rebuild_parameter'): lambda: functools.partial(
    _rebuild_parameter
  ),
  **{
    ('torch', name): functools.partial(_StorageType, dtype)
    for name, dtype in _STORAGE_DTYPES.items()
  },
}


class _Unpickler(pickle.Unpickler):
  """Resolves only `_GLOBALS`; storages come from `load_storage(key, dtype,
  numel)`."""

  def __init__(self, file: BinaryIO, load_storage):
    super().__init__(file)
    self._load_storage = load_storage

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) not in _GLOBALS:
      raise UnsafePickle(
        f'refuses to unpickle {module}.{name}: a checkpoint may only hold '
        'tensors, storages and containers, and loading this one could run '
        'code'
      )
    return _GLOBALS[(module, name)]()

  def persistent_load(self, pid) -> np.ndarray:
    # ('storage', storage type, key, location, numel[, legacy view metadata])
    if not (
      isinstance(pid, tuple)
      and len(pid) >= 5
      and pid[0] == 'storage'
      and isinstance(pid[1], _StorageType)
    ):
      raise pickle.UnpicklingError(f'unknown persistent id {pid!r:.80}')
    dtype, numel = pid[1].dtype, pid[4]
    if dtype not in _ALLOWED_DTYPES or not isinstance(numel, int) or numel < 0:
      raise pickle.UnpicklingError(f'invalid storage {pid!r:.80}')
    storage = self._load_storage(str(pid[2]), dtype, numel)
    view = pid[5] if len(pid) > 5 else None
    if view is not None:
      _, offset, numel = view
      storage = storage[offset : offset + numel]
    return storage


def _from_bytes(
  raw: bytes, dtype: np.dtype, numel: int, byteorder: str = 'little'
) -> np.ndarray:
  dtype = dtype.newbyteorder('<' if byteorder == 'little' else '>')
  if len(raw) < numel * dtype.itemsize:
    raise ValueError(
      f'a storage holds {len(raw)} bytes, fewer than its {numel} elements need'
    )
  return np.frombuffer(raw, dtype, count=numel).astype(dtype.newbyteorder('='))


def _load_zip(file: BinaryIO) -> Any:
  with zipfile.ZipFile(file) as archive:
    pickles = [
      n
      for n in archive.namelist()
      if n.endswith('/data.pkl') and n.count('/') == 1
    ]
    if len(pickles) != 1:
      raise ValueError('the zip archive holds no <folder>/data.pkl')
    prefix = pickles[0][: -len('data.pkl')]
    byteorder = 'little'
    if f'{prefix}byteorder' in archive.namelist():
      byteorder = archive.read(f'{prefix}byteorder').decode().strip()

    def load_storage(key, dtype, numel):
      return _from_bytes(
        archive.read(f'{prefix}data/{key}'), dtype, numel, byteorder
      )

    return _Unpickler(io.BytesIO(archive.read(pickles[0])), load_storage).load()


def _load_legacy(file: BinaryIO) -> Any:
  # The header records are plain ints and a dict of ints: no globals.
  magic = _Unpickler(file, None).load()
  if magic != _LEGACY_MAGIC:
    raise ValueError('it is neither a zip archive nor a legacy PyTorch file')
  protocol = _Unpickler(file, None).load()
  if protocol != _LEGACY_PROTOCOL:
    raise ValueError(
      f'legacy protocol version {protocol!r} is not {_LEGACY_PROTOCOL}'
    )
  _Unpickler(file, None).load()
  start = file.tell()
  # Storages follow the object's pickle, so a first pass finds their types
  # and sizes, and a second builds the tensors from their bytes.
  wanted = {}

  def record(key, dtype, numel):
    wanted.setdefault(key, dtype)
    return np.zeros(numel, dtype)

  _Unpickler(file, record).load()
  keys = _Unpickler(file, None).load()
  storages = {}
  for key in keys:
    (numel,) = struct.unpack('<q', file.read(8))
    if numel < 0:
      raise ValueError(f'storage {key!r} has a negative size')
    dtype = np.dtype(wanted[key])
    storages[key] = _from_bytes(file.read(numel * dtype.itemsize), dtype, numel)
  file.seek(start)
  return _Unpickler(file, lambda key, dtype, numel: storages[key]).load()


def load(path: str) -> Any:
  """The object a `.pth` file holds, tensors as numpy arrays.

  Args:
    path: a file written by `torch.save`, in the zip or the legacy format.

  Returns:
    The saved object (dicts, lists, numbers, strings) with every tensor a
    numpy array of its dtype and shape, wherever it was saved from (CPU or
    GPU).

  Raises:
    UserError: the file is missing, is not a PyTorch checkpoint, is truncated
      or corrupted, or names a global outside the whitelist (one line, the
      path first).
  """
  try:
    with open(path, 'rb') as f:
      if zipfile.is_zipfile(f):
        f.seek(0)
        return _load_zip(f)
      f.seek(0)
      return _load_legacy(f)
  except UserError as e:
    raise UserError(f'{path}: {e}') from None
  except OSError as e:
    raise UserError(f'{path}: cannot read it ({e.strerror or e})') from None
  except (
    pickle.UnpicklingError,
    zipfile.BadZipFile,
    EOFError,
    KeyError,
    ValueError,
    TypeError,
    IndexError,
    AttributeError,
    struct.error,
  ) as e:
    raise UserError(
      f'{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {e})'
    ) from None

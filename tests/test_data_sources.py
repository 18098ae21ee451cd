"""The real data sets' loaders on small files in their exact official formats:
CIFAR-10/100 python archives, the Tiny-ImageNet zip, Fashion-MNIST idx files,
TFDS reads, verified downloads and the decoded-array cache. No network."""

import dataclasses
import hashlib
import io
import os
import pathlib
import pickle
import tarfile
import zipfile

import jax
import numpy as np
from PIL import Image
import pytest

from icckd_jax import models
from icckd_jax.data import array_cache
from icckd_jax.data import cifar
from icckd_jax.data import datasets
from icckd_jax.data import download
from icckd_jax.data import idx
from icckd_jax.data import images as images_lib
from icckd_jax.data import tfds as tfds_lib
from icckd_jax.errors import UserError
import helpers
from launch_in_process import launch


def _load(**fields) -> datasets.Dataset:
  return datasets.load(datasets.DataRequest.from_fields(fields))


def _one_line_error(match, fn, *args, **kwargs) -> str:
  with pytest.raises(UserError, match=match) as info:
    fn(*args, **kwargs)
  message = str(info.value)
  assert message and '\n' not in message
  return message


def _md5(path: pathlib.Path) -> str:
  return hashlib.md5(path.read_bytes()).hexdigest()


def _leftovers(root: pathlib.Path) -> list[str]:
  """Everything under the data folder: must be empty after a refusal."""
  return (
    sorted(str(p.relative_to(root)) for p in root.rglob('*') if p.is_file())
    if root.exists()
    else []
  )


# ---------------------------------------------------------------------- CIFAR


def _pixel(n, c, y, x):
  """An image set where every (image, channel, row, column) has its own value
  pattern, so a wrong channel order or a transposed image shows."""
  return (n * 7 + c * 50 + y * 3 + x * 5 + (y * x) % 11) % 256


def _rows(offset: int, count: int) -> np.ndarray:
  """[count, 3072] rows written the official way, byte by byte: 1024 R,
  1024 G, 1024 B, each plane row-major."""
  rows = np.zeros((count, 3072), np.uint8)
  for n in range(count):
    for c in range(3):
      for y in range(32):
        for x in range(32):
          rows[n, c * 1024 + y * 32 + x] = _pixel(offset + n, c, y, x)
  return rows


def _expected_images(offset: int, count: int) -> np.ndarray:
  """[count, 32, 32, 3]: pixel (y, x) has channels R, G, B in order."""
  n, y, x, c = np.meshgrid(
    np.arange(offset, offset + count),
    np.arange(32),
    np.arange(32),
    np.arange(3),
    indexing='ij',
  )
  return _pixel(n, c, y, x).astype(np.uint8)


def _batch_bytes(rows, labels: dict[str, list[int]]) -> bytes:
  # Byte-string keys and protocol 2, as the official (Python 2) files have.
  batch = {
    b'batch_label': b'batch',
    b'data': rows,
    b'filenames': [b'x.png'] * len(rows),
  }
  batch.update({k.encode(): v for k, v in labels.items()})
  return pickle.dumps(batch, protocol=2)


def _write_cifar(
  target: pathlib.Path,
  name: str,
  per_batch: int = 3,
  members: dict[str, bytes] | None = None,
) -> dict:
  """Writes an official-layout archive (.tar.gz) or folder; returns the
  expected images and labels of both splits."""
  cifar_archive = cifar.ARCHIVES[name]
  rng = np.random.default_rng(0)
  files, expected, offset = {}, {}, 0
  for split, names in (
    ('train', cifar_archive.train),
    ('test', (cifar_archive.test,)),
  ):
    labels = {key: [] for key, _ in cifar_archive.label_keys.values()}
    for member in names:
      batch_labels = {
        key: rng.integers(0, k, per_batch).tolist()
        for key, k in cifar_archive.label_keys.values()
      }
      files[member] = _batch_bytes(_rows(offset, per_batch), batch_labels)
      for key in labels:
        labels[key] += batch_labels[key]
      offset += per_batch
    count = per_batch * len(names)
    expected[split] = (_expected_images(offset - count, count), labels)
  files[cifar_archive.meta] = pickle.dumps({b'label_names': [b'a']}, protocol=2)
  files.update(members or {})
  if target.suffix == '.gz':
    with tarfile.open(target, 'w:gz') as tar:
      for member, data in files.items():
        info = tarfile.TarInfo(f'{cifar_archive.folder}/{member}')
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
  else:
    (target / cifar_archive.folder).mkdir(parents=True)
    for member, data in files.items():
      (target / cifar_archive.folder / member).write_bytes(data)
  return expected


@pytest.mark.parametrize('form', ['archive', 'folder'])
def test_cifar10_pixels_channel_order_and_labels(tmp_path, form):
  source = tmp_path / ('c10.tar.gz' if form == 'archive' else 'c10')
  expected = _write_cifar(source, 'cifar10')
  ds = _load(name='cifar10', path=str(source), data_dir=str(tmp_path / 'd'))
  assert ds.num_classes == 10
  assert ds.train_images.shape == (15, 32, 32, 3)
  # One pixel spelled out: image 0, row 1, column 2 is (R, G, B).
  np.testing.assert_array_equal(
    ds.train_images[0, 1, 2], [_pixel(0, c, 1, 2) for c in range(3)]
  )
  for split in ('train', 'test'):
    images, labels = expected[split]
    np.testing.assert_array_equal(getattr(ds, f'{split}_images'), images)
    np.testing.assert_array_equal(
      getattr(ds, f'{split}_labels'), labels['labels']
    )
    assert getattr(ds, f'{split}_labels').dtype == np.int32


@pytest.mark.parametrize(
  'label_kind,key,classes',
  [('fine', 'fine_labels', 100), ('coarse', 'coarse_labels', 20)],
)
def test_cifar100_fine_and_coarse_labels(tmp_path, label_kind, key, classes):
  archive = tmp_path / 'c100.tar.gz'
  expected = _write_cifar(archive, 'cifar100', per_batch=4)
  ds = _load(
    name='cifar100',
    path=str(archive),
    label_kind=label_kind,
    data_dir=str(tmp_path / 'd'),
  )
  assert ds.num_classes == classes
  for split in ('train', 'test'):
    images, labels = expected[split]
    np.testing.assert_array_equal(getattr(ds, f'{split}_images'), images)
    np.testing.assert_array_equal(getattr(ds, f'{split}_labels'), labels[key])


def test_cifar_second_load_reads_the_cache(tmp_path, monkeypatch):
  archive = tmp_path / 'c100.tar.gz'
  expected = _write_cifar(archive, 'cifar100')
  decodes = []
  decode = cifar.decode_archive
  monkeypatch.setattr(
    cifar, 'decode_archive', lambda *a: decodes.append(a) or decode(*a)
  )
  fields = dict(
    name='cifar100', path=str(archive), data_dir=str(tmp_path / 'd')
  )
  first = _load(**fields)
  second = _load(**fields, label_kind='coarse')
  assert len(decodes) == 1
  assert isinstance(second.train_images, np.memmap)
  np.testing.assert_array_equal(second.train_images, first.train_images)
  np.testing.assert_array_equal(
    second.test_labels, expected['test'][1]['coarse_labels']
  )
  # A changed archive is a new source: decoded again.
  _write_cifar(archive, 'cifar100', per_batch=2)
  os.utime(archive, ns=(1, 1))
  assert len(_load(**fields).train_labels) == 2
  assert len(decodes) == 2


@pytest.mark.parametrize('damage', ['truncated', 'corrupted'])
def test_cifar_damaged_archive_refused_without_cache(tmp_path, damage):
  archive = tmp_path / 'c10.tar.gz'
  _write_cifar(archive, 'cifar10')
  data = bytearray(archive.read_bytes())
  if damage == 'truncated':
    data = data[: len(data) // 2]
  else:
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)
  archive.write_bytes(bytes(data))
  root = tmp_path / 'd'
  message = _one_line_error(
    'c10.tar.gz', _load, name='cifar10', path=str(archive), data_dir=str(root)
  )
  assert 'cifar-10-python.tar.gz' in message
  assert _leftovers(root) == []


def test_cifar_archive_corrupted_late_is_called_corrupt(tmp_path):
  """Bytes damaged in a late member: tarfile stops there as if the archive
  had ended, so the message must say corrupt, not name a missing batch."""
  archive = tmp_path / 'c10.tar.gz'
  _write_cifar(archive, 'cifar10')
  data = bytearray(archive.read_bytes())
  at = 3 * len(data) // 4
  data[at : at + 64] = bytes(64)
  archive.write_bytes(bytes(data))
  message = _one_line_error(
    'corrupt',
    _load,
    name='cifar10',
    path=str(archive),
    data_dir=str(tmp_path / 'd'),
  )
  assert 'is missing' not in message
  assert 'cifar-10-python.tar.gz' in message


class _Evil:
  def __reduce__(self):
    return (os.system, ('echo pwned',))


@pytest.mark.parametrize(
  'members,match',
  [
    ({}, 'data_batch_3 is missing'),
    (
      {'test_batch': pickle.dumps({b'data': [1, 2], b'labels': []})},
      r'no \[N, 3072\] uint8',
    ),
    (
      {'test_batch': _batch_bytes(_rows(0, 2), {'labels': [3, 10]})},
      r'range over \[3, 10\]; expected \[0, 9\]',
    ),
    (
      {'test_batch': pickle.dumps(_Evil(), protocol=2)},
      'refusing to load posix.system',
    ),
  ],
)
def test_cifar_non_cifar_content_refused(tmp_path, members, match):
  archive = tmp_path / 'c10.tar.gz'
  _write_cifar(archive, 'cifar10', members=members)
  if 'missing' in match:
    with tarfile.open(archive) as tar:
      kept = [
        (m, tar.extractfile(m).read())
        for m in tar
        if not m.name.endswith('data_batch_3')
      ]
    with tarfile.open(archive, 'w:gz') as tar:
      for member, data in kept:
        tar.addfile(member, io.BytesIO(data))
  root = tmp_path / 'd'
  _one_line_error(
    match, _load, name='cifar10', path=str(archive), data_dir=str(root)
  )
  assert _leftovers(root) == []


def _official(monkeypatch, tmp_path, md5=None) -> pathlib.Path:
  """Serves a small cifar10 archive as the official one, from a file URL."""
  mirror = tmp_path / 'mirror'
  mirror.mkdir()
  archive = mirror / 'cifar-10-python.tar.gz'
  _write_cifar(archive, 'cifar10')
  cifar_archive = dataclasses.replace(
    cifar.ARCHIVES['cifar10'], md5=md5 or _md5(archive)
  )
  monkeypatch.setitem(cifar.ARCHIVES, 'cifar10', cifar_archive)
  monkeypatch.setattr(cifar, '_MIRRORS', (mirror.as_uri() + '/',))
  return archive


def test_cifar_downloaded_verified_then_reused(tmp_path, monkeypatch):
  archive = _official(monkeypatch, tmp_path)
  root = tmp_path / 'd'
  ds = _load(name='cifar10', data_dir=str(root))
  assert (root / 'cifar-10-python.tar.gz').read_bytes() == archive.read_bytes()
  assert len(ds.train_labels) == 15
  archive.unlink()  # The mirror is gone: the second load is offline.
  np.testing.assert_array_equal(
    _load(name='cifar10', data_dir=str(root)).train_images, ds.train_images
  )


def test_cifar_wrong_checksum_refused_without_leftovers(tmp_path, monkeypatch):
  _official(monkeypatch, tmp_path, md5='0' * 32)
  root = tmp_path / 'd'
  message = _one_line_error(
    'published checksum is 0{32}', _load, name='cifar10', data_dir=str(root)
  )
  assert 'dataset.path' in message
  assert _leftovers(root) == []


def test_cifar_archive_placed_by_hand_is_checksummed(tmp_path, monkeypatch):
  _official(monkeypatch, tmp_path, md5='0' * 32)
  root = tmp_path / 'd'
  root.mkdir()
  _write_cifar(root / 'cifar-10-python.tar.gz', 'cifar10')
  _one_line_error('wrong MD5', _load, name='cifar10', data_dir=str(root))
  assert _leftovers(root) == ['cifar-10-python.tar.gz']


class _Response(io.BytesIO):
  """A urlopen response whose transfer breaks after `cut` bytes."""

  def __init__(self, data: bytes, cut: int | None = None):
    super().__init__(data)
    self.headers = {'Content-Length': str(len(data))}
    self.cut = cut

  def read(self, size=-1):
    if self.cut is not None and self.tell() >= self.cut:
      raise ConnectionResetError('connection reset by peer')
    limit = size if self.cut is None else min(size, self.cut - self.tell())
    return super().read(limit)


def test_download_interrupted_is_retried_from_scratch(tmp_path):
  data = np.random.default_rng(0).bytes(3 << 20)
  calls = []

  def opener(url):
    calls.append(url)
    return _Response(data, cut=(1 << 20) + 5 if len(calls) == 1 else None)

  target = tmp_path / 'd' / 'file.bin'
  download.fetch(
    ['http://mirror/file.bin'],
    hashlib.md5(data).hexdigest(),
    target,
    opener=opener,
  )
  assert len(calls) == 2
  assert target.read_bytes() == data
  assert _leftovers(tmp_path / 'd') == ['file.bin']


def test_download_keeps_failing_is_one_line_and_leaves_nothing(tmp_path):
  data = b'x' * 1000
  target = tmp_path / 'd' / 'file.bin'
  message = _one_line_error(
    'could not download file.bin',
    download.fetch,
    ['http://a/file.bin'],
    hashlib.md5(data).hexdigest(),
    target,
    opener=lambda url: _Response(data, cut=10),
  )
  assert 'ConnectionResetError' in message
  assert _leftovers(tmp_path / 'd') == []


# -------------------------------------------------------------- Tiny-ImageNet


_WNIDS = ('n09999999', 'n01443537', 'n02000000')  # not sorted on purpose


def _jpeg(rng, mode='RGB') -> bytes:
  pixels = rng.integers(0, 256, (64, 64, 3), np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(pixels).convert(mode).save(buffer, 'JPEG')
  return buffer.getvalue()


def _tiny_files(
  per_class: int = 2, val: int = 4, grey: bool = True
) -> dict[str, bytes]:
  """The files of a small official-layout Tiny-ImageNet, by path."""
  rng = np.random.default_rng(0)
  top = 'tiny-imagenet-200'
  files = {
    f'{top}/wnids.txt': ('\n'.join(_WNIDS) + '\n').encode(),
    f'{top}/words.txt': b'n01443537\tgoldfish\n',
  }
  for wnid in _WNIDS:
    files[f'{top}/train/{wnid}/{wnid}_boxes.txt'] = b''
    for i in range(per_class):
      files[f'{top}/train/{wnid}/images/{wnid}_{i}.JPEG'] = _jpeg(
        rng, 'L' if grey and i == 0 and wnid == _WNIDS[0] else 'RGB'
      )
  lines = []
  for i in range(val):
    files[f'{top}/val/images/val_{i}.JPEG'] = _jpeg(rng)
    lines.append(f'val_{i}.JPEG\t{_WNIDS[i % 3]}\t0\t0\t63\t63')
  files[f'{top}/val/val_annotations.txt'] = ('\n'.join(lines) + '\n').encode()
  files[f'{top}/test/images/test_0.JPEG'] = _jpeg(rng)  # unlabelled: ignored
  return files


def _write_zip(path: pathlib.Path, files: dict[str, bytes]) -> None:
  with zipfile.ZipFile(path, 'w') as archive:
    for name, data in files.items():
      archive.writestr(name, data)


def _decoded(data: bytes) -> np.ndarray:
  return np.asarray(Image.open(io.BytesIO(data)).convert('RGB'))


@pytest.mark.parametrize('form', ['zip', 'folder'])
def test_tiny_imagenet_reads_official_layout(tmp_path, form):
  files = _tiny_files()
  if form == 'zip':
    source = tmp_path / 'tiny-imagenet-200.zip'
    _write_zip(source, files)
  else:
    source = tmp_path / 'extracted'
    for name, data in files.items():
      (source / name).parent.mkdir(parents=True, exist_ok=True)
      (source / name).write_bytes(data)
  _load(name='tiny_imagenet', path=str(source), data_dir=str(tmp_path / 'd'))
  ds = _load(
    name='tiny_imagenet', path=str(source), data_dir=str(tmp_path / 'd')
  )  # from the cache
  assert isinstance(ds.train_images, np.memmap)
  assert ds.num_classes == 3
  assert ds.train_images.shape == (6, 64, 64, 3)
  assert ds.test_images.shape == (4, 64, 64, 3)
  top = 'tiny-imagenet-200'
  order = sorted(_WNIDS)
  train = [(wnid, i) for wnid in order for i in range(2)]
  np.testing.assert_array_equal(
    ds.train_labels, [order.index(w) for w, _ in train]
  )
  np.testing.assert_array_equal(
    ds.train_images,
    np.stack(
      [
        _decoded(files[f'{top}/train/{w}/images/{w}_{i}.JPEG'])
        for w, i in train
      ]
    ),
  )
  np.testing.assert_array_equal(
    ds.test_labels, [order.index(_WNIDS[i % 3]) for i in range(4)]
  )
  np.testing.assert_array_equal(
    ds.test_images,
    np.stack(
      [_decoded(files[f'{top}/val/images/val_{i}.JPEG']) for i in range(4)]
    ),
  )


def test_tiny_imagenet_bad_annotations_and_truncated_zip(tmp_path):
  files = _tiny_files()
  files['tiny-imagenet-200/val/val_annotations.txt'] += b'val_0.JPEG\tn1\n'
  _write_zip(tmp_path / 't.zip', files)
  root = tmp_path / 'd'
  fields = dict(
    name='tiny_imagenet', path=str(tmp_path / 't.zip'), data_dir=str(root)
  )
  _one_line_error('line 5 of val/val_annotations.txt', _load, **fields)
  data = (tmp_path / 't.zip').read_bytes()
  (tmp_path / 't.zip').write_bytes(data[: len(data) - 200])
  _one_line_error('not a readable zip', _load, **fields)
  assert _leftovers(root) == []


def test_every_model_handles_64x64():
  """Global pooling: the same features at 32x32 and 64x64, for every model."""
  for name in models.MODEL_NAMES:
    model = models.create_model(name, 200)
    features = {}
    for size in (32, 64):
      (logits, features[size]), _ = jax.eval_shape(
        lambda x, m=model: m.init_with_output(
          jax.random.key(0), x, train=False
        ),
        jax.ShapeDtypeStruct((1, size, size, 3), np.float32),
      )
      assert logits.shape == (1, 200), name
    assert features[32].shape == features[64].shape, name


@pytest.mark.slow
def test_tiny_imagenet_trains_teacher_and_student(tmp_path):
  """One pipeline command: a teacher, then a KD student, on a fake zip."""
  archive = tmp_path / 'tiny-imagenet-200.zip'
  _write_zip(archive, _tiny_files(per_class=11, val=6, grey=False))
  workdir = tmp_path / 'run'
  launch(
    '--config=configs/pipeline.py:smoke',
    f'--workdir={workdir}',
    '--config.teacher.dataset.name=tiny_imagenet',
    f'--config.teacher.dataset.path={archive}',
    '--config.teacher.crop_padding=8',
    '--config.student.crop_padding=8',
    '--config.teacher.num_epochs=1',
    '--config.student.num_epochs=1',
    '--config.teacher.batch_size=16',
    '--config.student.batch_size=16',
    '--config.teacher.eval_batch_size=8',
    '--config.student.eval_batch_size=8',
    '--config.teacher.num_devices=1',
    '--config.student.num_devices=1',
  )
  for stage in ('teacher', 'student'):
    summary = (workdir / stage / 'summary.json').read_text()
    assert '"final_top1"' in summary, stage
    assert (workdir / stage / 'checkpoints' / '1').is_dir(), stage


# -------------------------------------------------------------- Fashion-MNIST


def test_fashion_mnist_downloaded_from_official_idx(tmp_path, monkeypatch):
  mirror = tmp_path / 'mirror'
  mirror.mkdir()
  rng = np.random.default_rng(2)
  arrays = {
    'train-images-idx3-ubyte': rng.integers(0, 256, (5, 28, 28)),
    'train-labels-idx1-ubyte': rng.integers(0, 10, (5,)),
    't10k-images-idx3-ubyte': rng.integers(0, 256, (3, 28, 28)),
    't10k-labels-idx1-ubyte': rng.integers(0, 10, (3,)),
  }
  for stem, array in arrays.items():
    helpers.write_idx(mirror / f'{stem}.gz', array)
  monkeypatch.setattr(idx, 'DEBIAN_DIR', tmp_path / 'no_debian')
  monkeypatch.setattr(idx, 'URLS', ('http://down/', mirror.as_uri() + '/'))
  monkeypatch.setattr(
    idx, 'FILES', {stem: _md5(mirror / f'{stem}.gz') for stem in arrays}
  )
  ds = _load(name='fashion_mnist', data_dir=str(tmp_path / 'd'))
  np.testing.assert_array_equal(
    ds.train_images[..., 0], arrays['train-images-idx3-ubyte']
  )
  np.testing.assert_array_equal(
    ds.test_labels, arrays['t10k-labels-idx1-ubyte']
  )
  assert sorted(_leftovers(tmp_path / 'd')) == sorted(
    f'fashion_mnist/{stem}.gz' for stem in arrays
  )


# ----------------------------------------------------------------------- TFDS


class _BatchedSource:
  """A data source that serves only batched reads and counts them."""

  def __init__(self, examples):
    self.examples = examples
    self.batches = []

  def __len__(self):
    return len(self.examples)

  def __getitem__(self, key):
    raise AssertionError('read one example at a time')

  def __getitems__(self, keys):
    self.batches.append(len(keys))
    return [self.examples[k] for k in keys]


def test_tfds_reads_in_batches(monkeypatch):
  monkeypatch.setattr(tfds_lib, '_READ_BATCH', 4)
  rng = np.random.default_rng(0)
  examples = [
    {'image': rng.integers(0, 256, (6, 5, 3), np.uint8), 'label': i % 3}
    for i in range(10)
  ]
  source = _BatchedSource(examples)
  images, labels = tfds_lib.read_source(source, 'fake', resize=None)
  assert source.batches == [4, 4, 2]
  np.testing.assert_array_equal(images, [e['image'] for e in examples])
  np.testing.assert_array_equal(labels, [e['label'] for e in examples])


def test_resize_center_scales_shorter_side_then_crops_centre():
  # Three 20-pixel vertical bands, red | green | blue, 20 high: scaling the
  # shorter side (20) to 10 leaves a 30x10 image whose centre is green.
  bands = np.zeros((20, 60, 3), np.uint8)
  for i in range(3):
    bands[:, 20 * i : 20 * (i + 1), i] = 200
  out = images_lib.resize_center(bands, 10)
  assert out.shape == (10, 10, 3)
  np.testing.assert_array_equal(
    out[:, 2:8], np.broadcast_to([0, 200, 0], (10, 6, 3))
  )
  grey = images_lib.resize_center(np.full((7, 9, 1), 50, np.uint8), 16)
  np.testing.assert_array_equal(grey, np.full((16, 16, 1), 50))


def test_tfds_variable_size_set_resized_fixed_size_kept(tmp_path):
  tfds = pytest.importorskip('tensorflow_datasets')
  with tfds.testing.mock_data(num_examples=6):
    flowers = _load(
      name='oxford_flowers102', image_size=24, data_dir=str(tmp_path)
    )
    svhn = _load(name='svhn_cropped', image_size=24, data_dir=str(tmp_path))
  assert flowers.train_images.shape == (6, 24, 24, 3)
  assert flowers.num_classes == 102
  assert svhn.train_images.shape == (6, 32, 32, 3)
  assert svhn.test_labels.dtype == np.int32


def test_tfds_preparation_without_tensorflow_names_the_extra(monkeypatch):
  tfds = pytest.importorskip('tensorflow_datasets')

  def no_tensorflow(*args, **kwargs):
    try:
      raise ModuleNotFoundError("No module named 'tensorflow'")
    except ModuleNotFoundError as e:
      raise RuntimeError('Failed to prepare the data set') from e

  with tfds.testing.mock_data(num_examples=2):
    monkeypatch.setattr(tfds, 'data_source', no_tensorflow)
    message = _one_line_error('needs TensorFlow', _load, name='svhn_cropped')
  assert tfds_lib.PREPARE_EXTRA in message


# ------------------------------------------------------------- array cache


def test_failed_decode_leaves_no_cache_entry(tmp_path):
  def failing():
    raise UserError('bad file')

  with pytest.raises(UserError):
    array_cache.cached(tmp_path, 'x', {'k': 1}, failing)
  assert list(tmp_path.iterdir()) == []
  arrays = array_cache.cached(
    tmp_path, 'x', {'k': 1}, lambda: {'a': np.arange(3)}
  )
  again = array_cache.cached(tmp_path, 'x', {'k': 1}, failing)
  np.testing.assert_array_equal(again['a'], arrays['a'])

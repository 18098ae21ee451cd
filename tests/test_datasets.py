"""Tests for icckd_jax.data.datasets."""

import pathlib
import tarfile

import numpy as np
from PIL import Image
import pytest

from conftest import CIFAR10_ARCHIVE, shared_fixture
from icckd_jax.data import datasets
from icckd_jax.data import idx
from icckd_jax.errors import UserError
import helpers

_DEBIAN_FASHION_MNIST = pathlib.Path('/usr/share/datasets/fashion-mnist')


def _load(**fields) -> datasets.Dataset:
  return datasets.load(datasets.DataRequest.from_fields(fields))


def _assert_one_line_error(match: str, **fields) -> str:
  with pytest.raises(UserError, match=match) as info:
    _load(**fields)
  message = str(info.value)
  assert message and '\n' not in message
  return message


# ------------------------------------------------------------------ synthetic


def test_synthetic_defaults_shapes_and_dtypes():
  ds = _load(name='synthetic')
  assert ds.name == 'synthetic'
  assert ds.train_images.shape == (512, 32, 32, 3)
  assert ds.test_images.shape == (256, 32, 32, 3)
  assert ds.train_images.dtype == ds.test_images.dtype == np.uint8
  assert ds.train_labels.shape == (512,) and ds.test_labels.shape == (256,)
  assert ds.train_labels.dtype == ds.test_labels.dtype == np.int32
  assert ds.num_classes == 10
  assert ds.mean.shape == ds.std.shape == (3,)
  assert ds.mean.dtype == ds.std.dtype == np.float32


def test_synthetic_custom_fields():
  ds = _load(
    name='synthetic',
    num_train=40,
    num_test=12,
    num_classes=4,
    image_size=28,
    channels=1,
    seed=3,
  )
  assert ds.train_images.shape == (40, 28, 28, 1)
  assert ds.test_images.shape == (12, 28, 28, 1)
  assert ds.num_classes == 4
  assert set(ds.train_labels) == set(ds.test_labels) == {0, 1, 2, 3}


def test_synthetic_is_deterministic_per_seed():
  first = _load(name='synthetic', num_train=64, num_test=32, seed=7)
  again = _load(name='synthetic', num_train=64, num_test=32, seed=7)
  other = _load(name='synthetic', num_train=64, num_test=32, seed=8)
  for field in ('train_images', 'train_labels', 'test_images', 'test_labels'):
    np.testing.assert_array_equal(getattr(first, field), getattr(again, field))
  assert not np.array_equal(first.train_images, other.train_images)
  assert not np.array_equal(first.train_images[:32], first.test_images)


def test_synthetic_classes_are_balanced():
  ds = _load(name='synthetic', num_train=500, num_test=250, num_classes=10)
  np.testing.assert_array_equal(np.bincount(ds.train_labels), [50] * 10)
  np.testing.assert_array_equal(np.bincount(ds.test_labels), [25] * 10)
  # Shuffled, not grouped by class.
  assert np.any(np.diff(ds.train_labels) < 0)


def test_synthetic_stats_match_numpy():
  ds = _load(name='synthetic', num_train=100, num_test=10)
  pixels = ds.train_images.astype(np.float64)
  np.testing.assert_allclose(ds.mean, pixels.mean(axis=(0, 1, 2)), rtol=1e-6)
  np.testing.assert_allclose(ds.std, pixels.std(axis=(0, 1, 2)), rtol=1e-6)


def test_synthetic_test_split_is_learnable_from_train():
  ds = _load(name='synthetic', num_train=200, num_test=100, num_classes=10)
  train = ds.train_images.reshape(200, -1).astype(np.float64)
  test = ds.test_images.reshape(100, -1).astype(np.float64)
  centroids = np.stack(
    [train[ds.train_labels == c].mean(axis=0) for c in range(10)]
  )
  distances = ((test[:, None] - centroids[None]) ** 2).sum(axis=-1)
  accuracy = np.mean(distances.argmin(axis=1) == ds.test_labels)
  assert accuracy > 0.9
  # Noise makes examples of one class differ.
  first = ds.train_images[ds.train_labels == 0]
  assert not np.array_equal(first[0], first[1])


def test_synthetic_rejects_bad_sizes():
  message = _assert_one_line_error(
    'num_classes', name='synthetic', num_classes=1
  )
  assert '>= 2' in message


@pytest.mark.parametrize('channels', [1, 3])
def test_channel_stats_match_numpy(channels):
  images = np.random.default_rng(0).integers(
    0, 256, (5000, 4, 3, channels), dtype=np.uint8
  )
  mean, std = datasets.channel_stats(images)
  pixels = images.astype(np.float64)
  np.testing.assert_allclose(mean, pixels.mean(axis=(0, 1, 2)), rtol=1e-6)
  np.testing.assert_allclose(std, pixels.std(axis=(0, 1, 2)), rtol=1e-6)
  assert mean.dtype == std.dtype == np.float32


# --------------------------------------------------------------- image folder

# Class folders created out of sorted order: labels must follow sorted names.
_CLASSES = ('dog', 'cat', 'emu')


def _write_tree(
  root: pathlib.Path, mode: str = 'RGB', sizes=None
) -> dict[str, list[tuple[str, np.ndarray]]]:
  """Writes PNGs under root/{train,test}/<class>/; returns expected pixels.

  Returns:
    split -> [(class, [H, W, C] uint8 pixels)] in the loader's order.
  """
  rng = np.random.default_rng(0)
  channels = 1 if mode == 'L' else 3
  expected = {}
  for split, count in (('train', 3), ('test', 2)):
    entries = []
    for cls in _CLASSES:
      folder = root / split / cls
      folder.mkdir(parents=True)
      for i in range(count):
        height, width = (sizes or {}).get((split, cls, i), (5, 4))
        pixels = rng.integers(0, 256, (height, width, channels), np.uint8)
        Image.fromarray(pixels[..., 0] if mode == 'L' else pixels, mode).save(
          folder / f'{i:02d}.png'
        )
        entries.append((cls, pixels))
    # A stable sort keeps each class's files in name order.
    expected[split] = sorted(
      entries, key=lambda entry: sorted(_CLASSES).index(entry[0])
    )
  return expected


def _assert_matches(ds: datasets.Dataset, expected) -> None:
  assert ds.num_classes == 3
  for split in ('train', 'test'):
    images = getattr(ds, f'{split}_images')
    labels = getattr(ds, f'{split}_labels')
    assert images.dtype == np.uint8 and labels.dtype == np.int32
    np.testing.assert_array_equal(
      images, np.stack([pixels for _, pixels in expected[split]])
    )
    np.testing.assert_array_equal(
      labels, [sorted(_CLASSES).index(cls) for cls, _ in expected[split]]
    )
  pixels = ds.train_images.astype(np.float64)
  np.testing.assert_allclose(ds.mean, pixels.mean(axis=(0, 1, 2)), rtol=1e-6)
  np.testing.assert_allclose(ds.std, pixels.std(axis=(0, 1, 2)), rtol=1e-6)


def _archive(source: pathlib.Path, target: pathlib.Path, top: str) -> None:
  with tarfile.open(target, 'w:gz' if target.suffix != '.tar' else 'w') as tar:
    for split in ('train', 'test'):
      tar.add(source / split, arcname=f'{top}/{split}' if top else split)


def test_image_folder_reads_folder_exactly(tmp_path):
  expected = _write_tree(tmp_path / 'tree')
  ds = _load(name='image_folder', path=str(tmp_path / 'tree'))
  assert ds.name == 'image_folder'
  assert ds.train_images.shape == (9, 5, 4, 3)
  assert ds.test_images.shape == (6, 5, 4, 3)
  _assert_matches(ds, expected)


@pytest.mark.parametrize(
  'filename,top',
  [('tree.tar.gz', 'cifar-like'), ('tree.tgz', ''), ('tree.tar', 'cifar-like')],
)
def test_image_folder_reads_archive_exactly(tmp_path, filename, top):
  expected = _write_tree(tmp_path / 'tree')
  _archive(tmp_path / 'tree', tmp_path / filename, top)
  _assert_matches(
    _load(name='image_folder', path=str(tmp_path / filename)), expected
  )


def test_image_folder_keeps_grey_as_one_channel(tmp_path):
  expected = _write_tree(tmp_path / 'tree', mode='L')
  ds = _load(name='image_folder', path=str(tmp_path / 'tree'))
  assert ds.train_images.shape == (9, 5, 4, 1)
  _assert_matches(ds, expected)


def test_image_folder_ignores_hidden_files(tmp_path):
  expected = _write_tree(tmp_path / 'tree')
  (tmp_path / 'tree' / 'train' / 'cat' / '.DS_Store').write_bytes(b'junk')
  _assert_matches(
    _load(name='image_folder', path=str(tmp_path / 'tree')), expected
  )


def test_image_folder_rejects_mixed_sizes(tmp_path):
  _write_tree(tmp_path / 'tree', sizes={('test', 'emu', 1): (6, 4)})
  message = _assert_one_line_error(
    'one size', name='image_folder', path=str(tmp_path / 'tree')
  )
  assert 'test/emu/01.png' in message


def test_image_folder_rejects_undecodable_file(tmp_path):
  _write_tree(tmp_path / 'tree')
  (tmp_path / 'tree' / 'train' / 'dog' / 'notes.txt').write_text('hello')
  message = _assert_one_line_error(
    'cannot decode', name='image_folder', path=str(tmp_path / 'tree')
  )
  assert 'train/dog/notes.txt' in message


def test_image_folder_rejects_differing_test_classes(tmp_path):
  _write_tree(tmp_path / 'tree')
  test_dir = tmp_path / 'tree' / 'test'
  (test_dir / 'emu').rename(test_dir / 'owl')
  _assert_one_line_error(
    'test classes', name='image_folder', path=str(tmp_path / 'tree')
  )


def test_image_folder_names_an_empty_class_folder(tmp_path):
  _write_tree(tmp_path / 'tree')
  (tmp_path / 'tree' / 'train' / 'owl').mkdir()
  message = _assert_one_line_error(
    'holds no image', name='image_folder', path=str(tmp_path / 'tree')
  )
  assert "'train/owl/'" in message


def test_image_folder_names_a_broken_symbolic_link(tmp_path):
  _write_tree(tmp_path / 'tree')
  link = tmp_path / 'tree' / 'train' / 'dog' / 'moved.png'
  link.symlink_to(tmp_path / 'elsewhere.png')
  message = _assert_one_line_error(
    'broken symbolic link', name='image_folder', path=str(tmp_path / 'tree')
  )
  assert str(link) in message


def test_image_folder_missing_path_names_it(tmp_path):
  missing = str(tmp_path / 'nowhere')
  message = _assert_one_line_error(
    'does not exist', name='image_folder', path=missing
  )
  assert missing in message and 'train/<class>' in message


def test_image_folder_wrong_layout_names_path(tmp_path):
  (tmp_path / 'flat').mkdir()
  Image.new('RGB', (4, 4)).save(tmp_path / 'flat' / 'a.png')
  message = _assert_one_line_error(
    'no images', name='image_folder', path=str(tmp_path / 'flat')
  )
  assert str(tmp_path / 'flat') in message and 'train/<class>' in message


def test_image_folder_corrupt_archive_names_path(tmp_path):
  archive = tmp_path / 'broken.tar.gz'
  archive.write_bytes(b'not a tar archive')
  message = _assert_one_line_error(
    'not a readable tar', name='image_folder', path=str(archive)
  )
  assert str(archive) in message


def test_image_folder_needs_path():
  _assert_one_line_error('dataset.path', name='image_folder')


def test_image_folder_real_cifar10_archive():
  ds = _load(name='image_folder', path=str(shared_fixture(CIFAR10_ARCHIVE)))
  assert ds.train_images.shape == (50000, 32, 32, 3)
  assert ds.test_images.shape == (10000, 32, 32, 3)
  assert ds.num_classes == 10
  np.testing.assert_array_equal(np.bincount(ds.train_labels), [5000] * 10)
  np.testing.assert_array_equal(np.bincount(ds.test_labels), [1000] * 10)
  # Published CIFAR-10 statistics; JPEG re-encoding moves them slightly.
  np.testing.assert_allclose(ds.mean, [125.3, 123.0, 113.9], atol=1.0)
  np.testing.assert_allclose(ds.std, [63.0, 62.1, 66.7], atol=1.5)


# -------------------------------------------------------------- fashion mnist


def _write_fashion_idx(folder: pathlib.Path, suffix: str):
  rng = np.random.default_rng(1)
  arrays = {}
  for split, prefix, count in (('train', 'train', 6), ('test', 't10k', 4)):
    images = rng.integers(0, 256, (count, 28, 28), np.uint8)
    labels = rng.integers(0, 10, (count,), np.uint8)
    helpers.write_idx(folder / f'{prefix}-images-idx3-ubyte{suffix}', images)
    helpers.write_idx(folder / f'{prefix}-labels-idx1-ubyte{suffix}', labels)
    arrays[split] = images, labels
  return arrays


@pytest.mark.parametrize('suffix', ['.gz', ''])
def test_fashion_mnist_reads_idx_dir(tmp_path, suffix):
  arrays = _write_fashion_idx(tmp_path, suffix)
  ds = _load(name='fashion_mnist', path=str(tmp_path))
  assert ds.num_classes == 10
  for split in ('train', 'test'):
    images, labels = arrays[split]
    np.testing.assert_array_equal(
      getattr(ds, f'{split}_images'), images[..., None]
    )
    np.testing.assert_array_equal(getattr(ds, f'{split}_labels'), labels)
    assert getattr(ds, f'{split}_labels').dtype == np.int32
  assert ds.mean.shape == (1,)


def test_fashion_mnist_missing_idx_file_names_it(tmp_path):
  _write_fashion_idx(tmp_path, '.gz')
  (tmp_path / 't10k-labels-idx1-ubyte.gz').unlink()
  message = _assert_one_line_error(
    't10k-labels-idx1-ubyte', name='fashion_mnist', path=str(tmp_path)
  )
  assert str(tmp_path) in message and 'dataset-fashion-mnist' in message


def test_read_idx_rejects_bad_files(tmp_path):
  bad_magic = tmp_path / 'bad-magic'
  bad_magic.write_bytes(b'\x00\x00\x0d\x01\x00\x00\x00\x01\x00')
  with pytest.raises(UserError, match='not an unsigned-byte idx'):
    idx.read_idx(bad_magic)
  truncated = tmp_path / 'truncated'
  truncated.write_bytes(b'\x00\x00\x08\x01\x00\x00\x00\x05\x01\x02')
  with pytest.raises(UserError, match='declares shape'):
    idx.read_idx(truncated)


@pytest.mark.skipif(
  not _DEBIAN_FASHION_MNIST.is_dir(),
  reason=f'{_DEBIAN_FASHION_MNIST} is absent (Debian package '
  'dataset-fashion-mnist)',
)
def test_fashion_mnist_real_debian_files():
  ds = _load(name='fashion_mnist')
  assert ds.train_images.shape == (60000, 28, 28, 1)
  assert ds.test_images.shape == (10000, 28, 28, 1)
  np.testing.assert_array_equal(np.bincount(ds.train_labels), [6000] * 10)
  np.testing.assert_array_equal(np.bincount(ds.test_labels), [1000] * 10)
  # Fashion-MNIST's well-known statistics: 0.2860 and 0.3530 of 255.
  np.testing.assert_allclose(ds.mean, [72.94], atol=0.05)
  np.testing.assert_allclose(ds.std, [90.02], atol=0.05)


# ----------------------------------------------------------------------- TFDS


def test_unknown_tfds_name_is_a_user_error():
  pytest.importorskip('tensorflow_datasets')
  message = _assert_one_line_error('unknown', name='no_such_dataset_xyz')
  assert 'no_such_dataset_xyz' in message


def test_missing_name_is_a_user_error():
  _assert_one_line_error('dataset.name', name='')

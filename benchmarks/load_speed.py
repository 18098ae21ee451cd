r"""First and second load times of CIFAR-10: official archive and image folder.

Builds, in a temporary folder (never in the repository), an official-format
`cifar-10-python.tar.gz` (pickled batches of 3072-byte planar rows) from an
image-folder archive of the 60,000 CIFAR-10 images, then times
`datasets.load` on it and on the image-folder archive: the first load
decodes and fills the decoded-array cache, the second reads the cache.

  python benchmarks/load_speed.py --image_folder=path/to/cifar10-folder.tar.gz
"""

import io
import os
import pathlib
import pickle
import sys
import tarfile
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import numpy as np

from icckd_jax.data import datasets

FLAGS = flags.FLAGS
flags.DEFINE_string(
  'image_folder', None, 'A .tar.gz of train/<class>/*, test/<class>/* CIFAR-10.'
)
flags.mark_flag_as_required('image_folder')


def _timed_load(**fields):
  start = time.perf_counter()
  ds = datasets.load(datasets.DataRequest.from_fields(fields))
  # Touch every pixel, as training does when it copies the set to devices.
  checksum = int(ds.train_images.sum(dtype=np.uint64))
  return time.perf_counter() - start, ds, checksum


def write_official_cifar10(ds: datasets.Dataset, target: pathlib.Path):
  """Writes `ds` as cifar-10-python.tar.gz: 5 train batches and a test
  batch of [N, 3072] uint8 rows (R plane, G plane, B plane)."""

  def batch(images, labels):
    rows = np.ascontiguousarray(images.transpose(0, 3, 1, 2)).reshape(-1, 3072)
    return pickle.dumps(
      {
        b'batch_label': b'built',
        b'data': rows,
        b'labels': [int(x) for x in labels],
        b'filenames': [b'x.png'] * len(labels),
      },
      protocol=2,
    )

  members = {}
  for i in range(5):
    part = slice(10000 * i, 10000 * (i + 1))
    members[f'data_batch_{i + 1}'] = batch(
      ds.train_images[part], ds.train_labels[part]
    )
  members['test_batch'] = batch(ds.test_images, ds.test_labels)
  members['batches.meta'] = pickle.dumps({b'label_names': []}, protocol=2)
  with tarfile.open(target, 'w:gz') as tar:
    for name, data in members.items():
      info = tarfile.TarInfo(f'cifar-10-batches-py/{name}')
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))


def main(argv):
  del argv
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    rows = []
    folder = dict(
      name='image_folder',
      path=FLAGS.image_folder,
      data_dir=str(tmp / 'folder_cache'),
    )
    first, ds, reference = _timed_load(**folder)
    second, _, again = _timed_load(**folder)
    assert again == reference
    rows.append(('image folder (.tar.gz of JPEGs)', first, second))
    archive = tmp / 'cifar-10-python.tar.gz'
    write_official_cifar10(ds, archive)
    official = dict(
      name='cifar10', path=str(archive), data_dir=str(tmp / 'cifar_cache')
    )
    first, built, checksum = _timed_load(**official)
    np.testing.assert_array_equal(built.train_images, ds.train_images)
    second, _, again = _timed_load(**official)
    assert checksum == again == reference
    rows.append(
      (
        f'official python archive ({archive.stat().st_size / 2**20:.0f} MiB)',
        first,
        second,
      )
    )
  print(
    f'# CIFAR-10, {len(ds.train_labels)} + {len(ds.test_labels)} images, '
    f'{os.cpu_count()} CPUs'
  )
  print('| source | first load s (decode + cache) | second load s (cache) |')
  print('|---|---|---|')
  for source, first, second in rows:
    print(f'| {source} | {first:.2f} | {second:.2f} |')


if __name__ == '__main__':
  app.run(main)

"""The converter (data/convert.py, convert_listing.py, shard_writer.py) on a
damaged output or an odd source: a damaged conversion is never called
complete, loose images are never dropped, 16-bit images are never clipped;
what a user can get wrong (a file name, a link, the output's place, a full
disk, a signal, a label file's encoding) is one line, and a rerun carries
on."""

import errno
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
from PIL import Image
import pytest

from icckd_jax.data import array_record
from icckd_jax.data import datasets
from launch_in_process import error_line, run_launcher
from test_array_record import CONVERT, _convert, _jpeg, mixed_folder


@pytest.mark.parametrize('damage', ['truncate', 'delete'])
def test_a_damaged_conversion_is_converted_again_not_called_complete(
  tmp_path, damage
):
  """A shard truncated or deleted after the conversion: training refuses
  the set and says to convert again; converting again rewrites it (not
  'already complete'), and the set opens with the same digest."""
  source = mixed_folder(tmp_path / 'src')
  out = tmp_path / 'out'
  code, stderr = _convert(source, out, '--config.records_per_shard=3')
  assert code == 0, stderr[-2000:]
  digest = array_record.read_info(str(out)).digest
  shard = out / array_record.shard_name('train', 1, 4)
  if damage == 'truncate':
    with open(shard, 'r+b') as f:
      f.truncate(shard.stat().st_size - 7)
  else:
    shard.unlink()
  with pytest.raises(array_record.UserError, match='convert'):
    array_record.read_info(str(out))
  code, stderr = _convert(source, out, '--config.records_per_shard=3')
  assert code == 0, stderr[-2000:]
  assert 'already, complete' not in stderr
  assert 'converting it again' in stderr
  assert array_record.read_info(str(out)).digest == digest


def test_a_source_behind_symlinked_folders_that_changed_is_not_complete(
  tmp_path,
):
  """train/ and test/ are links to folders elsewhere; an image added there
  after the conversion makes it another source, never 'complete'."""
  elsewhere = mixed_folder(tmp_path / 'elsewhere')
  source = tmp_path / 'src'
  source.mkdir()
  for split in ('train', 'test'):
    os.symlink(elsewhere / split, source / split)
  out = tmp_path / 'out'
  code, stderr = _convert(source, out)
  assert code == 0, stderr[-2000:]
  _jpeg(elsewhere / 'train' / 'a' / 'added.jpg', np.random.default_rng(9))
  line = error_line(*_convert(source, out))
  assert 'another source' in line, line


def _imagenet(root: pathlib.Path, val: tuple[str, ...] = ()):
  """ROOT/train/<wnid>/ of two wnids, two 8x8 JPEGs each, and val/<name>
  for each name of `val`."""
  rng = np.random.default_rng(0)
  for wnid in ('n01', 'n02'):
    for i in range(2):
      _jpeg(root / 'train' / wnid / f'{wnid}_{i}.JPEG', rng, (8, 8))
  for name in val:
    _jpeg(root / 'val' / name, rng, (8, 8))
  return root


def test_a_half_sorted_imagenet_val_is_refused_not_dropped(tmp_path):
  """val/ holding class folders and loose images (a sorting script stopped
  midway): one line naming the loose images, nothing written."""
  root = _imagenet(
    tmp_path / 'imagenet',
    ('n01/ILSVRC2012_val_00000001.JPEG', 'ILSVRC2012_val_00000002.JPEG'),
  )
  out = tmp_path / 'out'
  line = error_line(*_convert(root, out, name='imagenet'))
  assert 'loose images' in line and 'ILSVRC2012_val_00000002' in line, line
  assert not out.exists()


def test_16_bit_images_are_scaled_to_8_bits_not_clipped(tmp_path):
  """16-bit grey PNGs spanning [0, 65535]: stored and decoded as v / 257
  (rounded), as the resident and streamed paths both read them."""
  rng = np.random.default_rng(0)
  source = tmp_path / 'src'
  wide = {}
  for split, n in (('train', 3), ('test', 1)):
    for c in 'ab':
      for i in range(n):
        values = rng.integers(0, 65536, (6, 6), dtype=np.uint16)
        path = source / split / c / f'{i}.png'
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(values).save(path)
        wide[f'{split}/{c}/{i}'] = values
  out = tmp_path / 'out'
  code, stderr = _convert(source, out)
  assert code == 0, stderr[-2000:]
  info = array_record.read_info(str(out))
  assert info.channels == 1
  records = array_record.Records(info, 'train')
  image, label = records[0]
  expected = np.round(wide['train/a/0'] / 257).astype(np.uint8)
  np.testing.assert_array_equal(image[..., 0], expected)
  assert label == 0
  assert 100 < info.mean[0] < 155  # uniform over [0, 255], not saturated
  shutil.rmtree(source)  # what the shards hold is all a run reads
  assert array_record.load_resident(info)['train_images'].max() > 200


def test_negative_workers_are_refused_before_writing(tmp_path):
  """workers=-1 (a float is refused by the flag's type already): one line,
  before conversion.json or the output folder exist."""
  out = tmp_path / 'out'
  code, stderr = run_launcher(
    *CONVERT,
    '--config.dataset.name=image_folder',
    f'--config.dataset.path={mixed_folder(tmp_path / "src")}',
    f'--config.output_dir={out}',
    '--config.workers=-1',
  )
  line = error_line(code, stderr)
  assert 'config.workers=' in line and 'integer >= 0' in line, line
  assert not out.exists()


def test_a_zero_byte_info_json_is_converted_again(tmp_path):
  """A 0-byte info.json (a crash or a full disk while it was written) is not
  a finished conversion: the rerun writes it again, no traceback, and the
  set then loads."""
  source, out = mixed_folder(tmp_path / 'src'), tmp_path / 'out'
  args = (
    *CONVERT,
    '--config.dataset.name=image_folder',
    f'--config.dataset.path={source}',
    f'--config.output_dir={out}',
    '--config.workers=1',
  )
  code, stderr = run_launcher(*args)
  assert code == 0, stderr[-2000:]
  written = (out / 'info.json').read_text()
  (out / 'info.json').write_text('')
  code, stderr = run_launcher(*args)
  assert code == 0 and 'Traceback' not in stderr, stderr[-2000:]
  assert 'cannot be read' in stderr
  assert (out / 'info.json').read_text() == written


def _small_folder(root: pathlib.Path, classes=('a', 'b')) -> pathlib.Path:
  """train/<class>/ of two 8x8 JPEGs and test/<class>/ of one, per class."""
  rng = np.random.default_rng(0)
  for split, n in (('train', 2), ('test', 1)):
    for c in classes:
      for i in range(n):
        _jpeg(root / split / c / f'{i}.jpg', rng, (8, 8))
  return root


def _refused_unwritten(source, out, *extra, name='image_folder') -> str:
  """The one error line converting `source` into `out`, which stays as it
  was: absent, or empty."""
  line = error_line(*_convert(source, out, *extra, name=name))
  assert not out.exists() or not any(out.iterdir()), list(out.iterdir())
  return line


def test_a_class_folder_whose_name_is_not_utf8_is_refused(tmp_path):
  """A class folder named in Latin-1 bytes: one line naming it (its name
  would be written to info.json as text); an image file so named, in a
  class folder named in UTF-8, converts like any other."""
  source = _small_folder(tmp_path / 'src')
  latin1 = os.fsdecode(b'caf\xe9')
  os.rename(source / 'train' / 'a' / '0.jpg', source / 'train' / 'a' / latin1)
  out = tmp_path / 'out'
  code, stderr = _convert(source, out)
  assert code == 0, stderr[-2000:]
  assert array_record.read_info(str(out)).counts == {'train': 4, 'test': 2}
  for split in ('train', 'test'):
    os.rename(source / split / 'b', source / split / latin1)
  line = _refused_unwritten(source, tmp_path / 'out2')
  assert 'train/caf\\xe9/' in line and 'not UTF-8' in line, line


def test_a_broken_symlink_among_the_images_is_refused(tmp_path):
  """A link whose target is gone, among the images or as a class folder:
  one line naming it, before anything is written (it was skipped, or a
  traceback)."""
  source = _small_folder(tmp_path / 'src')
  link = source / 'train' / 'a' / 'moved.jpg'
  os.symlink(tmp_path / 'gone.jpg', link)
  line = _refused_unwritten(source, tmp_path / 'out')
  assert f'{link} is a broken symbolic link' in line, line
  link.unlink()
  os.symlink(tmp_path / 'gone', source / 'test' / 'c')
  line = _refused_unwritten(source, tmp_path / 'out')
  assert 'test/c is a broken symbolic link' in line, line


def test_an_output_inside_the_source_folder_is_refused(tmp_path):
  """Shards inside the source change its identity: the rerun would find
  another source and never resume. One line, nothing written."""
  source = _small_folder(tmp_path / 'src')
  line = _refused_unwritten(source, source / 'shards')
  assert 'inside the source folder' in line, line
  assert sorted(os.listdir(source)) == ['test', 'train']


@pytest.fixture
def read_only(tmp_path):
  """An empty folder this process cannot write in: mode 0555, and for
  root, whom modes do not stop, immutable (chattr +i)."""
  folder = tmp_path / 'read_only'
  folder.mkdir()
  folder.chmod(0o555)
  immutable = os.geteuid() == 0
  if immutable:
    done = subprocess.run(['chattr', '+i', str(folder)], capture_output=True)
    if done.returncode:
      pytest.skip(f'root cannot make a folder read-only here: {done.stderr}')
  yield folder
  if immutable:
    subprocess.run(['chattr', '-i', str(folder)], check=True)
  folder.chmod(0o755)


def test_a_read_only_output_folder_is_refused(tmp_path, read_only):
  """One line naming the folder and the system's reason, exit 2."""
  line = _refused_unwritten(_small_folder(tmp_path / 'src'), read_only)
  assert f'cannot write in config.output_dir={str(read_only)!r}' in line, line


class _FillingWriter:
  """array_record's writer on a disk that fills after `space` records:
  what the library then raises (its RuntimeError, as measured on a full
  file system)."""

  space = 5  # records
  real = None  # array_record's own writer class

  def __init__(self, path, options):
    self._path = path
    self._writer = _FillingWriter.real(path, options)

  def write(self, record):
    if _FillingWriter.space == 0:
      raise RuntimeError(
        f'write() failed: {os.strerror(errno.ENOSPC)}; writing {self._path}'
      )
    _FillingWriter.space -= 1
    self._writer.write(record)

  def close(self):
    self._writer.close()


def test_a_full_disk_mid_conversion_is_one_line_and_the_rerun_finishes(
  tmp_path, monkeypatch
):
  """The disk fills in the third shard: one line saying so, exit 2, the two
  shards finished kept and no half-written one left; the rerun, space
  freed, writes the rest into the set a clean conversion gives."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top

  source = _small_folder(tmp_path / 'src')
  args = ('--config.records_per_shard=2',)
  clean = tmp_path / 'clean'
  code, stderr = _convert(source, clean, *args)
  assert code == 0, stderr[-2000:]
  monkeypatch.setattr(
    _FillingWriter, 'real', array_record_module.ArrayRecordWriter
  )
  monkeypatch.setattr(_FillingWriter, 'space', 5)
  monkeypatch.setattr(array_record_module, 'ArrayRecordWriter', _FillingWriter)
  out = tmp_path / 'out'
  line = error_line(*_convert(source, out, *args))
  assert f'the disk holding {out} is full' in line, line
  assert sorted(p.name for p in out.iterdir() if 'tmp' in p.name) == []
  assert len(list(out.glob('*.array_record.json'))) == 2
  assert not (out / array_record.INFO_FILE).exists()
  monkeypatch.undo()
  code, stderr = _convert(source, out, *args)
  assert code == 0, stderr[-2000:]
  assert '(2 shards kept from before)' in stderr
  assert (
    array_record.read_info(str(out)).digest
    == array_record.read_info(str(clean)).digest
  )


def _shm_inodes(pid: int) -> set[int]:
  """The inodes of the /dev/shm files process `pid` maps: its named
  semaphores (glibc maps each under a temporary name, then links it to
  the semaphore's, so only the inode names it)."""
  with open(f'/proc/{pid}/maps') as f:
    return {int(line.split()[4]) for line in f if ' /dev/shm/' in line}


@pytest.mark.slow
def test_sigterm_to_the_converter_stops_it_in_one_line_and_the_rerun_finishes(
  tmp_path,
):
  """SIGTERM to the converter's process while its 2 workers write: one
  line, exit 143, no traceback from the workers, no semaphore left in
  /dev/shm; the rerun keeps the shards written and finishes (~15 s: the
  workers are spawned processes)."""
  rng = np.random.default_rng(0)
  source = tmp_path / 'src'
  for split, n in (('train', 60), ('test', 10)):
    for c in 'ab':
      for i in range(n):
        _jpeg(source / split / c / f'{i}.jpg', rng, (8, 8))
  out = tmp_path / 'out'
  args = (
    *CONVERT,
    '--config.dataset.name=image_folder',
    f'--config.dataset.path={source}',
    f'--config.output_dir={out}',
    '--config.records_per_shard=1',
  )
  process = subprocess.Popen(
    [sys.executable, 'launch.py', *args, '--config.workers=2'],
    stderr=subprocess.PIPE,
    text=True,
  )
  deadline = time.monotonic() + 120
  while not list(out.glob('*.array_record.json')):
    assert process.poll() is None and time.monotonic() < deadline
    time.sleep(0.02)
  semaphores = _shm_inodes(process.pid)  # the pool's queues' locks
  assert semaphores
  process.send_signal(signal.SIGTERM)
  _, stderr = process.communicate(timeout=60)
  assert process.returncode == 128 + signal.SIGTERM, stderr[-3000:]
  assert 'Traceback' not in stderr and 'leaked' not in stderr, stderr[-3000:]
  assert [l for l in stderr.splitlines() if l.startswith('preempted: ')]
  left = [e.name for e in os.scandir('/dev/shm') if e.inode() in semaphores]
  assert not left, left
  assert not list(out.glob('*.tmp'))
  kept = len(list(out.glob('*.array_record.json')))
  assert 0 < kept < 140
  code, stderr = run_launcher(*args, '--config.workers=1')
  assert code == 0, stderr[-2000:]
  assert f'({kept} shards kept from before)' in stderr
  assert array_record.read_info(str(out)).counts == {'train': 120, 'test': 20}


_SOLUTION = (
  'ImageId,PredictionString\r\n'
  'ILSVRC2012_val_00000001,n02 1 2 3 4\r\n'
  'ILSVRC2012_val_00000002,n01 1 2 3 4 n01 5 6 7 8\r\n'
)
_VAL = ('ILSVRC2012_val_00000001.JPEG', 'ILSVRC2012_val_00000002.JPEG')


@pytest.mark.parametrize('encoding', ['utf-16', 'utf-16-le'])
def test_a_utf16_val_solution_csv_is_refused_naming_the_encoding(
  tmp_path, encoding
):
  """Excel's "Unicode text", with its byte-order mark or without: one line
  naming UTF-16 (it was a UnicodeDecodeError's traceback)."""
  root = _imagenet(tmp_path / 'imagenet', _VAL)
  (root / 'LOC_val_solution.csv').write_bytes(_SOLUTION.encode(encoding))
  line = _refused_unwritten(root, tmp_path / 'out', name='imagenet')
  assert 'LOC_val_solution.csv is UTF-16' in line, line


def test_a_val_solution_csv_with_a_utf8_byte_order_mark_converts(tmp_path):
  """Excel's "CSV UTF-8" starts with a byte-order mark: read as its
  columns, not refused for a column '\\ufeffImageId'."""
  root = _imagenet(tmp_path / 'imagenet', _VAL)
  (root / 'LOC_val_solution.csv').write_bytes(_SOLUTION.encode('utf-8-sig'))
  out = tmp_path / 'out'
  code, stderr = _convert(root, out, name='imagenet')
  assert code == 0, stderr[-2000:]
  assert array_record.read_info(str(out)).labels('test').tolist() == [1, 0]


@pytest.mark.parametrize('size', [0, 10, 200])
def test_an_empty_or_truncated_devkit_meta_mat_is_refused(tmp_path, size):
  """meta.mat cut to `size` bytes (scipy raises MatReadError, which is no
  ValueError, or an IndexError): one line naming it."""
  scipy_io = pytest.importorskip('scipy.io')
  root = _imagenet(tmp_path / 'imagenet', _VAL)
  devkit = root / 'ILSVRC2012_devkit_t12' / 'data'
  devkit.mkdir(parents=True)
  (devkit / 'ILSVRC2012_validation_ground_truth.txt').write_text('2\n1\n')
  synsets = np.array(
    [(1, 'n01'), (2, 'n02')], dtype=[('ILSVRC2012_ID', 'O'), ('WNID', 'O')]
  )
  scipy_io.savemat(devkit / 'meta.mat', {'synsets': synsets.reshape(-1, 1)})
  whole = (devkit / 'meta.mat').read_bytes()
  assert len(whole) > 200
  (devkit / 'meta.mat').write_bytes(whole[:size])
  line = _refused_unwritten(root, tmp_path / 'out', name='imagenet')
  assert f'{devkit / "meta.mat"} cannot be read' in line, line


def test_a_one_class_set_is_refused_wherever_it_is_opened(tmp_path):
  """One class: converting it, training from its folder (resident) and
  opening an older version's conversion of it are each one line, before a
  student whose method reads the non-target classes (DKD) could crash."""
  source = _small_folder(tmp_path / 'src', classes=('only',))
  line = _refused_unwritten(source, tmp_path / 'out')
  assert 'holds 1 class (only)' in line, line
  with pytest.raises(datasets.UserError, match='holds 1 class'):
    datasets.load(
      datasets.DataRequest(
        name='image_folder', path=str(source), data_dir=str(tmp_path / 'data')
      )
    )
  two = tmp_path / 'two'
  code, stderr = _convert(_small_folder(tmp_path / 'src2'), two)
  assert code == 0, stderr[-2000:]
  info = json.loads((two / 'info.json').read_text())
  info['classes'] = ['only']
  (two / 'info.json').write_text(json.dumps(info))
  with pytest.raises(array_record.UserError, match='holds 1 class'):
    array_record.read_info(str(two))

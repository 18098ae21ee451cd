"""The converter (data/convert.py, convert_listing.py, shard_writer.py) on a
damaged output or an odd source: a damaged conversion is never called
complete, loose images are never dropped, 16-bit images are never
clipped."""

import os
import shutil

import numpy as np
from PIL import Image
import pytest

from icckd_jax.data import array_record
from launch_in_process import error_line
from test_array_record import _convert, _jpeg, mixed_folder
from launch_in_process import run_launcher
from test_array_record import CONVERT


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


def test_a_half_sorted_imagenet_val_is_refused_not_dropped(tmp_path):
  """val/ holding class folders and loose images (a sorting script stopped
  midway): one line naming the loose images, nothing written."""
  rng = np.random.default_rng(0)
  root = tmp_path / 'imagenet'
  for wnid in ('n01', 'n02'):
    for i in range(2):
      _jpeg(root / 'train' / wnid / f'{wnid}_{i}.JPEG', rng)
  _jpeg(root / 'val' / 'n01' / 'ILSVRC2012_val_00000001.JPEG', rng)
  _jpeg(root / 'val' / 'ILSVRC2012_val_00000002.JPEG', rng)
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

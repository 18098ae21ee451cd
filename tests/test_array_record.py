"""configs/convert.py and the ArrayRecord shards it writes: image folders of
mixed sizes, ImageNet's layout with a flat val/, restart after a kill, and
every bad input refused in one line, exit code 2, with nothing written."""

import io
import json
import os
import pathlib

import numpy as np
from PIL import Image
import pytest

from icckd_jax.data import array_record
from icckd_jax.data import convert_listing
from icckd_jax.data import datasets
from icckd_jax.data import shard_writer
from icckd_jax.input_pipeline import inputs
from icckd_jax.input_pipeline import resident
from icckd_jax.input_pipeline import stream
from icckd_jax.errors import UserError
from launch_in_process import error_line, run_launcher

CONVERT = ('--config=configs/convert.py',)


def _jpeg(path: pathlib.Path, rng, size=None, grey=False) -> np.ndarray:
  h, w = size or rng.integers(12, 40, 2)
  shape = (h, w) if grey else (h, w, 3)
  pixels = rng.integers(0, 256, shape, dtype=np.uint8)
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(pixels).save(path, quality=90)
  return pixels


def mixed_folder(root: pathlib.Path, per_class=(5, 2), classes=('b', 'a')):
  """train/<class>/*.jpg, test/<class>/*.jpg of random sizes."""
  rng = np.random.default_rng(0)
  for split, n in zip(('train', 'test'), per_class):
    for c in classes:
      for i in range(n):
        _jpeg(root / split / c / f'{i}.jpg', rng)
  return root


def _convert(source, out, *extra, name='image_folder'):
  return run_launcher(
    *CONVERT,
    f'--config.dataset.name={name}',
    f'--config.dataset.path={source}',
    f'--config.output_dir={out}',
    '--config.workers=1',
    *extra,
  )


@pytest.fixture(scope='module')
def converted(tmp_path_factory):
  base = tmp_path_factory.mktemp('ar')
  source = mixed_folder(base / 'src')
  code, stderr = _convert(source, base / 'out', '--config.records_per_shard=3')
  assert code == 0, stderr[-2000:]
  return source, base / 'out'


def test_image_folder_of_mixed_sizes_converts_bytes_as_they_were(converted):
  source, out = converted
  info = array_record.read_info(str(out))
  assert info.classes == ('a', 'b')  # sorted class folders
  assert info.counts == {'train': 10, 'test': 4}
  assert info.image_shape is None and info.channels == 3
  assert [s.records for s in info.shards['train']] == [3, 3, 3, 1]
  records = array_record.Records(info, 'train')
  files = sorted((source / 'train').glob('*/*.jpg'))
  decoded = []
  for i, file in enumerate(files):
    label, data = records.raw(i)
    assert data == file.read_bytes()  # the JPEG itself, not re-encoded
    assert info.classes[label] == file.parent.name
    decoded.append(np.asarray(Image.open(file).convert('RGB')))
  np.testing.assert_array_equal(
    info.labels('train'), [info.classes.index(f.parent.name) for f in files]
  )
  pixels = np.concatenate([d.reshape(-1, 3) for d in decoded]).astype(float)
  np.testing.assert_allclose(info.mean, pixels.mean(0), rtol=1e-5)
  np.testing.assert_allclose(info.std, pixels.std(0), rtol=1e-5)
  meta = json.loads((out / array_record.INFO_FILE).read_text())
  for entry in meta['shards']['train']:
    assert entry['sha256'] == array_record.sha256_file(out / entry['file'])
  assert meta['image_formats'] == ['JPEG']


def test_rerun_on_a_complete_output_writes_nothing(converted):
  source, out = converted
  before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
  code, stderr = _convert(source, out, '--config.records_per_shard=3')
  assert code == 0, stderr[-2000:]
  assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_imagenet_layout_with_flat_val_and_solution_csv(tmp_path):
  root = tmp_path / 'imagenet'
  rng = np.random.default_rng(1)
  wnids = ['n02', 'n01', 'n03']
  for wnid in wnids:
    for i in range(2):
      _jpeg(root / 'train' / wnid / f'{wnid}_{i}.JPEG', rng)
  rows = ['ImageId,PredictionString']
  val_labels = ['n03', 'n01', 'n01', 'n02', 'n03']
  for i, wnid in enumerate(val_labels):
    name = f'ILSVRC2012_val_{i + 1:08d}'
    _jpeg(root / 'val' / f'{name}.JPEG', rng)
    rows.append(f'{name},{wnid} 1 2 30 40 {wnid} 3 4 10 20')
  (root / convert_listing.IMAGENET_VAL_CSV).write_text('\n'.join(rows) + '\n')
  code, stderr = _convert(root, tmp_path / 'out', name='imagenet')
  assert code == 0, stderr[-2000:]
  info = array_record.read_info(str(tmp_path / 'out'))
  assert info.classes == ('n01', 'n02', 'n03')  # torchvision's order
  assert info.counts['test'] == len(val_labels)
  assert [info.classes[i] for i in info.labels('test')] == val_labels

  (root / convert_listing.IMAGENET_VAL_CSV).write_text(
    '\n'.join(rows[:2] + ['ILSVRC2012_val_00000002,n99 1 2 3 4']) + '\n'
  )
  line = error_line(*_convert(root, tmp_path / 'new', name='imagenet'))
  assert "'n99', which is not one of the 3 training classes" in line
  assert not (tmp_path / 'new').exists()


def test_killed_conversion_restarts_at_the_first_incomplete_shard(
  tmp_path, monkeypatch
):
  source = mixed_folder(tmp_path / 'src')
  out = tmp_path / 'out'
  real, written = shard_writer.write_shard, []

  def dies_at_third(task):
    if len(written) == 2:
      raise KeyboardInterrupt  # killed while writing the third shard
    written.append(task['file'])
    return real(task)

  monkeypatch.setattr(shard_writer, 'write_shard', dies_at_third)
  code, _ = _convert(source, out, '--config.records_per_shard=3')
  assert code == 130 and not (out / array_record.INFO_FILE).exists()
  kept = {f: (out / f).stat().st_mtime_ns for f in written}
  again = []
  monkeypatch.setattr(
    shard_writer,
    'write_shard',
    lambda task: again.append(task['file']) or real(task),
  )
  code, stderr = _convert(source, out, '--config.records_per_shard=3')
  assert code == 0, stderr[-2000:]
  assert not set(again) & set(written) and len(again) == 6 - len(written)
  assert {f: (out / f).stat().st_mtime_ns for f in written} == kept
  fresh = tmp_path / 'fresh'
  monkeypatch.setattr(shard_writer, 'write_shard', real)
  code, stderr = _convert(source, fresh, '--config.records_per_shard=3')
  assert code == 0, stderr[-2000:]
  for f in fresh.glob('*.array_record'):
    assert f.read_bytes() == (out / f.name).read_bytes()


def test_bad_conversions_are_one_line_and_write_nothing(converted, tmp_path):
  source, out = converted
  as_file = tmp_path / 'file'
  as_file.write_text('x')
  line = error_line(*_convert(source, as_file))
  assert 'is a file' in line and as_file.read_text() == 'x'

  other = mixed_folder(tmp_path / 'other', classes=('c', 'd'))
  before = sorted(p.name for p in out.iterdir())
  line = error_line(*_convert(other, out, '--config.records_per_shard=3'))
  assert 'holds a conversion of another source' in line
  assert sorted(p.name for p in out.iterdir()) == before

  empty = tmp_path / 'empty'
  (empty / 'train').mkdir(parents=True)
  (empty / 'test').mkdir()
  line = error_line(*_convert(empty, tmp_path / 'new'))
  assert 'train/ holds no class folder' in line
  assert not (tmp_path / 'new').exists()


def _copy(out: pathlib.Path, to: pathlib.Path) -> pathlib.Path:
  to.mkdir()
  for p in out.iterdir():
    (to / p.name).write_bytes(p.read_bytes())
  return to


def _train(path, *extra):
  return run_launcher(
    '--config=configs/teacher.py:smoke',
    '--config.dataset.name=array_record',
    f'--config.dataset.path={path}',
    '--config.input.mode=stream',
    '--config.input.workers=0',
    '--config.num_devices=1',
    '--config.batch_size=4',
    '--config.eval_batch_size=4',
    '--config.icc.lam=0',
    '--config.num_epochs=1',
    *extra,
  )


def test_bad_shards_are_one_line_naming_them(converted, tmp_path):
  _, out = converted
  workdir = tmp_path / 'run'
  line = error_line(*_train(tmp_path, f'--workdir={workdir}'))
  assert 'has no info.json and no shards' in line

  no_info = _copy(out, tmp_path / 'no_info')
  (no_info / array_record.INFO_FILE).unlink()
  line = error_line(*_train(no_info, f'--workdir={workdir}'))
  assert 'the conversion did not finish' in line

  disagrees = _copy(out, tmp_path / 'disagrees')
  info = json.loads((disagrees / array_record.INFO_FILE).read_text())
  info['counts']['train'] += 1
  (disagrees / array_record.INFO_FILE).write_text(json.dumps(info))
  line = error_line(*_train(disagrees, f'--workdir={workdir}'))
  assert "counts['train']=11 but its shards hold 10 records" in line

  truncated = _copy(out, tmp_path / 'truncated')
  shard = truncated / array_record.shard_name('train', 1, 4)
  shard.write_bytes(shard.read_bytes()[:1000])
  line = error_line(*_train(truncated, f'--workdir={workdir}'))
  assert f'the shard {shard} has 1000 bytes' in line and 'truncated' in line
  assert not workdir.exists()


def test_corrupted_and_undecodable_records_name_shard_and_record(
  converted, tmp_path
):
  """During a run: one error line naming the shard and record; the
  workdir's earlier checkpoints (none here) are left as they were."""
  from array_record.python import array_record_module

  source, out = converted
  corrupted = _copy(out, tmp_path / 'corrupted')
  shard = corrupted / array_record.shard_name('train', 0, 4)
  data = bytearray(shard.read_bytes())
  # Uncompressed shards hold each JPEG verbatim: flip bytes inside the first.
  jpeg = sorted((source / 'train').glob('*/*.jpg'))[0].read_bytes()
  at = data.find(jpeg[100:200])
  assert at > 0
  data[at : at + 64] = bytes(b ^ 0xFF for b in data[at : at + 64])
  shard.write_bytes(bytes(data))
  line = error_line(*_train(corrupted, f'--workdir={tmp_path / "a"}'))
  assert f'shard {shard}, record' in line and 'corrupted' in line

  garbled = _copy(out, tmp_path / 'garbled')
  shard = garbled / array_record.shard_name('train', 2, 4)
  writer = array_record_module.ArrayRecordWriter(
    str(shard), array_record.WRITER_OPTIONS
  )
  for _ in range(3):
    writer.write(array_record.encode_record(0, b'not an image'))
  writer.close()
  info = json.loads((garbled / array_record.INFO_FILE).read_text())
  info['shards']['train'][2]['bytes'] = shard.stat().st_size
  (garbled / array_record.INFO_FILE).write_text(json.dumps(info))
  line = error_line(*_train(garbled, f'--workdir={tmp_path / "b"}'))
  assert f'shard {shard}, record' in line and 'fails to decode' in line


def test_resident_mode_refuses_images_of_several_sizes(converted, tmp_path):
  _, out = converted
  line = error_line(
    *_train(out, '--config.input.mode=resident', f'--workdir={tmp_path}/r')
  )
  assert "input.mode='resident' needs images of one size" in line
  line = error_line(
    *run_launcher(
      '--config=configs/teacher.py:smoke',
      '--config.input.mode=stream',
      f'--workdir={tmp_path}/s',
    )
  )
  assert 'convert' in line and "dataset.name='array_record'" in line
  assert not os.path.exists(tmp_path / 'r') and not os.path.exists(
    tmp_path / 's'
  )


def test_records_round_trip():
  record = array_record.encode_record(7, b'\xff\xd8jpeg')
  assert array_record.decode_record(record) == (7, b'\xff\xd8jpeg')
  png = io.BytesIO()
  Image.fromarray(np.zeros((2, 3), np.uint8)).save(png, format='PNG')
  assert (
    shard_writer._read_source(np.zeros((2, 3, 1), np.uint8)) == png.getvalue()
  )  # pylint: disable=protected-access


def test_auto_mode_holds_a_set_of_one_size_resident_where_it_fits(tmp_path):
  rng = np.random.default_rng(2)
  source = tmp_path / 'src'
  for split in ('train', 'test'):
    for c in ('a', 'b'):
      for i in range(3):
        _jpeg(source / split / c / f'{i}.jpg', rng, size=(8, 6))
  code, stderr = _convert(source, tmp_path / 'out')
  assert code == 0, stderr[-2000:]
  config = datasets.DataRequest(
    name='array_record', path=str(tmp_path / 'out'), image_size=32
  )
  decoded = 6 * 8 * 6 * 3  # train images x H x W x C
  whole = inputs.load(config, 'auto', 0, device_bytes=4 * decoded)
  assert isinstance(whole, resident.ResidentSource)
  files = sorted((source / 'train').glob('*/*.jpg'))
  np.testing.assert_array_equal(
    whole.train_images,
    [np.asarray(Image.open(f).convert('RGB')) for f in files],
  )
  streamed = inputs.load(config, 'auto', 0, device_bytes=4 * decoded - 1)
  assert isinstance(streamed, stream.StreamSource)
  assert streamed.image_shape == (8, 6, 3)  # one size: kept, 'crop' recipe
  assert streamed.train.recipe == 'crop'
  np.testing.assert_array_equal(streamed.mean, whole.mean)
  with pytest.raises(UserError, match='the decoded splits take'):
    inputs.load(config, 'resident', 0, device_bytes=100)


def test_augment_chooses_the_streamed_recipe_or_refuses_in_one_line(
  converted, tmp_path
):
  rng = np.random.default_rng(3)
  source = tmp_path / 'src'
  for split in ('train', 'test'):
    for c in 'ab':  # two classes: a one-class set is refused
      _jpeg(source / split / c / '0.jpg', rng, size=(40, 48))
  code, stderr = _convert(source, tmp_path / 'out')
  assert code == 0, stderr[-2000:]
  config = datasets.DataRequest(
    name='array_record',
    path=str(tmp_path / 'out'),
    image_size=32,
    augment='resized_crop',
  )
  # One size, room to spare: 'auto' would hold it resident and crop with
  # padding at 40x48; 'resized_crop' streams it at image_size.
  streamed = inputs.load(config, 'auto', 0, device_bytes=2**40)
  assert [s.recipe for s in (streamed.train, streamed.test)] == [
    'resized_crop'
  ] * 2
  assert streamed.image_shape == (32, 32, 3)
  with pytest.raises(UserError, match='cannot apply config.dataset.augment='):
    inputs.load(config, 'resident', 0, device_bytes=2**40)
  synthetic = datasets.DataRequest(name='synthetic', augment='resized_crop')
  with pytest.raises(UserError, match="the streaming input's; convert"):
    inputs.load(synthetic, 'auto', 0)
  _, mixed = converted
  line = error_line(
    *_train(mixed, '--config.dataset.augment=crop', f'--workdir={tmp_path}/c')
  )
  assert "dataset.augment='crop' needs images of one size" in line
  assert not os.path.exists(tmp_path / 'c')


def test_imagenet_flat_val_labelled_by_the_devkit(tmp_path):
  """ILSVRC2012_devkit_t12: meta.mat's synsets map ILSVRC2012_IDs (not in
  wnid order) to wnids; line i of the ground truth is val image i's ID."""
  import scipy.io

  root = tmp_path / 'imagenet'
  rng = np.random.default_rng(3)
  for wnid in ('n05', 'n01'):
    _jpeg(root / 'train' / wnid / f'{wnid}_0.JPEG', rng)
  for i in range(3):
    _jpeg(root / 'val' / f'ILSVRC2012_val_{i + 1:08d}.JPEG', rng)
  devkit = root / convert_listing.DEVKIT_DATA
  devkit.mkdir(parents=True)
  synsets = np.zeros(
    (2, 1), dtype=[('ILSVRC2012_ID', 'O'), ('WNID', 'O'), ('num_children', 'O')]
  )
  synsets[0, 0] = (np.array([[1]]), np.array(['n05']), np.array([[0]]))
  synsets[1, 0] = (np.array([[2]]), np.array(['n01']), np.array([[0]]))
  scipy.io.savemat(devkit / 'meta.mat', {'synsets': synsets})
  (devkit / convert_listing.DEVKIT_GROUND_TRUTH).write_text('1\n2\n2\n')
  code, stderr = _convert(root, tmp_path / 'out', name='imagenet')
  assert code == 0, stderr[-2000:]
  info = array_record.read_info(str(tmp_path / 'out'))
  assert info.classes == ('n01', 'n05')
  assert [info.classes[i] for i in info.labels('test')] == ['n05', 'n01', 'n01']


def test_a_set_read_as_arrays_converts_losslessly(tmp_path):
  """Sets the project decodes itself (here the synthetic one) are stored
  as PNG: decoded back whole, they are the arrays, with their statistics."""
  code, stderr = _convert(
    '', tmp_path / 'out', '--config.dataset.num_train=20',
    '--config.dataset.num_test=6', '--config.dataset.image_size=8',
    name='synthetic',
  )  # fmt: skip
  assert code == 0, stderr[-2000:]
  fields = {'name': 'synthetic', 'num_train': 20, 'num_test': 6,
            'image_size': 8, 'num_classes': 10, 'channels': 3, 'seed': 0}  # fmt: skip
  arrays = datasets.load(datasets.DataRequest.from_fields(fields))
  config = datasets.DataRequest(name='array_record', path=str(tmp_path / 'out'))
  back = inputs.load(config, 'resident', 0, device_bytes=None)
  np.testing.assert_array_equal(back.train_images, arrays.train_images)
  np.testing.assert_array_equal(back.test_labels, arrays.test_labels)
  np.testing.assert_allclose(back.mean, arrays.mean, rtol=1e-6)
  np.testing.assert_allclose(back.std, arrays.std, rtol=1e-6)


def test_max_side_shrinks_train_images_only_and_refuses_to_mix(
  converted, tmp_path
):
  """config.max_side: the train split's longer side at most max_side (JPEG
  again), the test split as it was, recorded in info.json; the same
  output folder rerun with another max_side is refused, even after a
  kill mid-conversion, so one set never mixes the two."""
  source, full = converted
  out = tmp_path / 'small'
  code, stderr = _convert(
    source, out, '--config.records_per_shard=3', '--config.max_side=32'
  )
  assert code == 0, stderr[-2000:]
  info = array_record.read_info(str(out))
  assert (
    json.loads((out / array_record.INFO_FILE).read_text())['max_side'] == 32
  )
  assert info.digest != array_record.read_info(str(full)).digest
  small = array_record.Records(info, 'train')
  was = array_record.Records(array_record.read_info(str(full)), 'train')
  shrunk = 0
  for i in range(len(small)):
    image, label = small[i]
    before, label_before = was[i]
    assert label == label_before
    assert max(image.shape[:2]) == min(32, max(before.shape[:2]))
    assert Image.open(io.BytesIO(small.raw(i)[1])).format == 'JPEG'
    shrunk += image.shape != before.shape
  assert shrunk  # some were larger than 32
  test = array_record.Records(info, 'test')
  test_before = array_record.Records(array_record.read_info(str(full)), 'test')
  for i in range(len(test)):
    assert test.raw(i) == test_before.raw(i)
  # A kill before info.json, then a rerun without max_side: refused.
  (out / array_record.INFO_FILE).unlink()
  for rerun in ('--config.max_side=0', '--config.max_side=64'):
    line = error_line(
      *_convert(source, out, '--config.records_per_shard=3', rerun)
    )
    assert 'converted with max_side=32' in line

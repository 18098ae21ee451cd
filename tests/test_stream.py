"""The streaming input path (input_pipeline/stream.py): the global batch of a step is
the same whatever the processes, devices and decode workers; a streamed run
stopped mid-epoch resumes exactly; runs saved before `config.input` existed
still resume and keep their run-store keys."""

import gc
import io
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
from configs import teacher as teacher_config
from icckd_jax.input_pipeline.source import TrainFeed
from icckd_jax import parallel
from icckd_jax.data import array_record
from icckd_jax.data import images
from icckd_jax.input_pipeline import host_augment
from icckd_jax.input_pipeline import imagenet_preprocess
from icckd_jax.input_pipeline import resident
from icckd_jax.input_pipeline import stream
from icckd_jax.input_pipeline import stream_rows
from icckd_jax.errors import UserError
from icckd_jax.experiments.sweep import run_store
from icckd_jax.training import metric_writer
from icckd_jax.training import preemption
from icckd_jax.runs import validate
from launch_in_process import run_launcher
from test_array_record import mixed_folder
import helpers
from helpers import (
  TRAINED,
  assert_same_run,
  restore_state,
  start_processes,
  strip_timing,
  subprocess_env,
  wait_for_success,
)


@pytest.fixture(scope='module')
def shards(tmp_path_factory):
  """A converted folder of mixed-size JPEGs: 3 classes, 24 train, 6 test."""
  base = tmp_path_factory.mktemp('stream')
  source = mixed_folder(base / 'src', per_class=(8, 2), classes='xyz')
  code, stderr = run_launcher(
    '--config=configs/convert.py',
    '--config.dataset.name=image_folder',
    f'--config.dataset.path={source}',
    f'--config.output_dir={base / "out"}',
    '--config.records_per_shard=5',
    '--config.workers=1',
  )
  assert code == 0, stderr[-2000:]
  return base / 'out'


def _batches(source, mesh, start, count, batch_size=8):
  it = source.train_batches(
    mesh,
    TrainFeed(
      seed=3,
      batch_size=batch_size,
      num_views=2,
      crop_padding=4,
      flip=True,
      with_indices=True,
    ),
    start,
  )
  out = [jax.tree.map(np.asarray, next(it)) for _ in range(count)]
  it.close()
  return out


def test_global_batches_do_not_depend_on_devices_workers_or_resume(shards):
  info = array_record.read_info(str(shards))
  one = stream.source(info, 16, workers=0)
  with_worker = stream.source(info, 16, workers=1)
  # 3 steps per epoch: steps 0-5 cross an epoch boundary.
  reference = _batches(one, parallel.make_mesh(1), 0, 6)
  for got in (
    _batches(with_worker, parallel.make_mesh(4), 0, 6),
    [None] * 2 + _batches(one, parallel.make_mesh(2), 2, 4),
  ):
    for want, have in zip(reference, got):
      if have is not None:
        jax.tree.map(np.testing.assert_array_equal, want, have)
  labels = info.labels('train')
  for batch in reference:
    assert batch.images.shape == (2, 8, 16, 16, 3)
    assert not np.array_equal(batch.images[0], batch.images[1])  # views
    np.testing.assert_array_equal(batch.labels, labels[batch.indices])
  epoch = np.concatenate([b.indices for b in reference[:3]])
  assert sorted(epoch) == list(range(24))  # a permutation of the split
  assert not np.array_equal(
    epoch, np.concatenate([b.indices for b in reference[3:]])
  )


def _mapped_segments() -> set[str]:
  """The /dev/shm segments this process maps (the batches it holds)."""
  with open('/proc/self/maps') as maps:
    return {line.split()[-1] for line in maps if '/dev/shm/psm_' in line}


def test_an_evaluation_pass_leaves_no_batch_in_shared_memory(shards):
  """With decode workers, an evaluation pass frees its batches' segments
  when it ends, not at the garbage collector's next whim (Grain's exhausted
  pipeline keeps each worker's last element in a reference cycle), nor at
  exit with the tracker's leak warning. The collector is off, as it may
  well be for the length of a training run's steps."""
  info = array_record.read_info(str(shards))
  source = stream.source(info, 16, workers=2, augment='resized_crop')
  mesh = parallel.make_mesh(1)
  before = _mapped_segments()
  gc.disable()
  try:
    for _ in range(2):
      masks = [np.asarray(b.mask) for b in source.eval_batches(mesh, 4)]
      assert sum(m.sum() for m in masks) == 6
      assert _mapped_segments() <= before
  finally:
    gc.enable()


def test_each_process_reads_only_its_rows_of_the_global_batch(shards):
  """Process p of P makes rows [p B / P, (p + 1) B / P) of each step: what
  two processes make, stacked, is what one makes."""
  info = array_record.read_info(str(shards))
  split = stream.source(info, 16, workers=0).train

  def rows(lo, hi):
    fn = stream_rows.TrainRows(split, 3, 8, (lo, hi), 2, 4, True)
    return [fn(step) for step in (1, 4)]

  for whole, first, second in zip(rows(0, 8), rows(0, 4), rows(4, 8)):
    np.testing.assert_array_equal(
      whole['images'], np.concatenate([first['images'], second['images']], 1)
    )
    np.testing.assert_array_equal(
      whole['indices'], np.concatenate([first['indices'], second['indices']])
    )


def test_a_strong_view_is_randaugment_on_the_last_view_only(shards):
  """With strong_view, view 0 is what it was and view 1 is the host's
  RandAugment of what it was, keyed by (seed, strong stream, step, view,
  position)."""
  info = array_record.read_info(str(shards))
  split = stream.source(info, 16, workers=0).train
  plain, strong = (
    stream_rows.TrainRows(split, 3, 8, (0, 8), 2, 4, True, strong_view=s)(5)
    for s in (False, True)
  )
  np.testing.assert_array_equal(strong['images'][0], plain['images'][0])
  for i, (got, weak) in enumerate(zip(strong['images'][1], plain['images'][1])):
    rng = host_augment.example_rng(3, resident.STRONG_STREAM, 5, 1, i)
    np.testing.assert_array_equal(got, host_augment.strong(weak, rng))
  assert (strong['images'][1] != plain['images'][1]).any()


STREAMED = (
  '--config=configs/teacher.py:smoke',
  '--config.dataset.name=array_record',
  '--config.input.mode=stream',
  '--config.dataset.image_size=16',
  '--config.batch_size=8',
  '--config.eval_batch_size=4',
  '--config.log_every_steps=1',
  # Two views and the feature cache on the streamed batches.
  '--config.cache.size=2',
)


def _stop_before(monkeypatch, stop_at: int):
  calls = []

  def requested(self, step):
    del self
    calls.append(step)
    return signal.SIGTERM if step == stop_at else 0

  monkeypatch.setattr(preemption.StopRequest, 'requested', requested)


@pytest.mark.slow
def test_streamed_run_stopped_mid_epoch_resumes_exactly(
  shards, tmp_path, monkeypatch
):
  """Stopped by SIGTERM in epoch 2, resumed with decode workers (the
  stopped run had none): the same state, losses in every step and test
  top-1 as the uninterrupted run; the log says it streams; evaluation
  agrees. (Other device counts: the batch test above.)"""
  args = (*STREAMED, f'--config.dataset.path={shards}')
  straight = tmp_path / 'straight'
  code, stderr = run_launcher(
    *args, '--config.num_devices=1', '--config.input.workers=0',
    f'--workdir={straight}',
  )  # fmt: skip
  assert code == 0, stderr[-2000:]
  assert 'Input: streaming from the shards' in stderr

  resumed = tmp_path / 'resumed'
  with monkeypatch.context() as patch:
    _stop_before(patch, 4)  # 3 steps per epoch: step 5 of 6
    code, stderr = run_launcher(
      *args, '--config.num_devices=1', '--config.input.workers=0',
      f'--workdir={resumed}',
    )  # fmt: skip
  assert code == 128 + signal.SIGTERM, stderr[-2000:]
  code, stderr = run_launcher(
    *args, '--config.num_devices=1', '--config.input.workers=1',
    f'--workdir={resumed}',
  )  # fmt: skip
  assert code == 0, stderr[-2000:]
  state_a, meta_a = restore_state(straight)
  state_b, meta_b = restore_state(resumed)
  jax.tree.map(np.testing.assert_array_equal, state_a, state_b)
  assert meta_a == meta_b
  records_a = strip_timing(metric_writer.read_records(str(straight)))
  records_b = strip_timing(metric_writer.read_records(str(resumed)))
  epochs_a = [r for r in records_a if r['kind'] == 'epoch']
  epochs_b = [r for r in records_b if r['kind'] == 'epoch']
  assert len(epochs_a) == len(epochs_b) == 2
  for a, b in zip(epochs_a, epochs_b):
    assert a['step_losses'] == b['step_losses']
    assert a['test_top1'] == b['test_top1']

  code, stderr = run_launcher(
    '--config=configs/eval.py',
    f'--config.workdir={straight}',
    '--config.checkpoint=last',
  )
  assert code == 0, stderr[-2000:]
  result = json.loads((straight / 'eval_last.json').read_text())
  assert result['top1'] == epochs_a[-1]['test_top1']
  assert result['count'] == 6


_CONFIG_AS_DICT = validate.config_as_dict


def _without_input(config):
  """The config as today's main saved it: no `input` section."""
  saved = _CONFIG_AS_DICT(config)
  saved.pop('input', None)
  return saved


def test_runs_saved_before_config_input_resume_and_keep_store_keys(
  tmp_path, monkeypatch
):
  """A run whose config.json and checkpoints lack `input` (as main wrote
  them before this field), stopped mid-epoch 2, resumes with today's
  config and evaluates; a stored run's key is the one it had."""
  old = tmp_path / 'old'
  with monkeypatch.context() as patch:
    patch.setattr(validate, 'config_as_dict', _without_input)
    _stop_before(patch, 3)
    code, stderr = run_launcher(*TRAINED, f'--workdir={old}')
  assert code == 128 + signal.SIGTERM, stderr[-2000:]
  assert 'input' not in json.loads((old / 'config.json').read_text())
  code, stderr = run_launcher(*TRAINED, f'--workdir={old}')
  assert code == 0, stderr[-2000:]
  assert 'Resumed from' in stderr and restore_state(old)[1]['epoch'] == 2
  code, stderr = run_launcher(
    '--config=configs/eval.py', f'--config.workdir={old}'
  )
  assert code == 0, stderr[-2000:]

  config = teacher_config.get_config('smoke')
  before = teacher_config.get_config('smoke')
  del before['input']
  assert run_store.teacher_key(config) == run_store.teacher_key(before)
  config.input.workers = 0  # how fast, not what
  assert run_store.teacher_key(config) == run_store.teacher_key(before)
  config.input.mode = 'stream'
  assert run_store.teacher_key(config) != run_store.teacher_key(before)


@pytest.mark.slow
def test_two_processes_stream_like_one_process_with_two_devices(
  shards, tmp_path
):
  """--multihost on localhost, one CPU device per process, each reading only
  its rows of every batch (training and evaluation): the losses of every
  step within 1e-4 and the same top-1 as one process with two devices."""
  args = (*STREAMED, f'--config.dataset.path={shards}', '--config.num_epochs=2')
  one = tmp_path / 'one'
  code, stderr = run_launcher(
    *args, '--config.num_devices=2', f'--workdir={one}'
  )
  assert code == 0, stderr[-2000:]
  two = tmp_path / 'two'
  wait_for_success(start_processes(*args, f'--workdir={two}'))
  epochs = [
    [
      r
      for r in metric_writer.read_records(str(workdir))
      if r['kind'] == 'epoch'
    ]
    for workdir in (one, two)
  ]
  assert len(epochs[0]) == len(epochs[1]) == 2
  for a, b in zip(*epochs):
    np.testing.assert_allclose(a['step_losses'], b['step_losses'], atol=1e-4)
    assert a['test_top1'] == b['test_top1']


GROUP_ARGS = (
  *STREAMED,
  '--config.num_epochs=4',
  '--config.num_devices=1',
  '--config.input.workers=2',
)


def _launch_group(shards, workdir) -> subprocess.Popen:
  """GROUP_ARGS in a session of its own: its process group is the training
  process, its 2 decode workers and multiprocessing's resource tracker.
  Every run in a process of one CPU device: XLA's CPU kernels may sum in
  another order on a backend of another device count."""
  return subprocess.Popen(
    [
      sys.executable,
      str(ROOT / 'launch.py'),
      *GROUP_ARGS,
      f'--config.dataset.path={shards}',
      f'--workdir={workdir}',
    ],
    cwd=ROOT,
    env=subprocess_env(1),
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
    start_new_session=True,
  )


@pytest.fixture(scope='module')
def straight_group_run(shards, tmp_path_factory):
  """GROUP_ARGS uninterrupted."""
  workdir = tmp_path_factory.mktemp('group') / 'straight'
  _, stderr = (proc := _launch_group(shards, workdir)).communicate(timeout=400)
  assert proc.returncode == 0, stderr[-2000:]
  return workdir


@pytest.mark.slow
@pytest.mark.parametrize('signum', [signal.SIGHUP, signal.SIGTERM])
def test_a_signal_to_the_process_group_mid_run_resumes_exactly(
  shards, straight_group_run, tmp_path, signum
):
  """A real signal to the whole process group in epoch 2, as a cluster
  manager (SIGTERM) or a closed terminal (SIGHUP) sends it: the run saves
  and exits 128 + the signal, without a traceback or a warning of leaks,
  leaving nothing in /dev/shm; resumed, it ends as the uninterrupted run."""
  before = helpers.shared_memory_names()
  workdir = tmp_path / 'run'
  proc = _launch_group(shards, workdir)
  deadline = time.time() + 400
  while not any(
    r['kind'] == 'train' and r['step'] >= 3
    for r in metric_writer.read_records(str(workdir))
  ):
    assert proc.poll() is None and time.time() < deadline, proc.stderr.read()
    time.sleep(0.02)
  os.killpg(proc.pid, signum)
  _, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 128 + signum, stderr[-3000:]
  name = signal.Signals(signum).name
  assert f'preempted: stopped by {name} at step' in stderr
  assert 'Traceback' not in stderr and 'resource_tracker' not in stderr, stderr[
    -3000:
  ]
  assert not helpers.left_in_shared_memory(before)
  _, stderr = (proc := _launch_group(shards, workdir)).communicate(timeout=400)
  assert proc.returncode == 0, stderr[-2000:]
  assert 'resource_tracker' not in stderr, stderr[-3000:]
  assert_same_run(straight_group_run, workdir)


@pytest.mark.parametrize('decode', ['exact', 'torchvision'])
def test_pillow_decodes_give_the_pixels_of_their_reference(shards, decode):
  """input.decode='exact' (copy-free, on the decoded Pillow image) gives,
  bit for bit, the crops of the implementation that converted, copied and
  flipped arrays (helpers' reference); 'torchvision' (decoded down to the
  boxes' bottom) those of torchvision's crop-then-resize, and resumes
  mid-epoch on other devices bit for bit; both evaluate as torchvision."""
  info = array_record.read_info(str(shards))
  source = stream.source(info, 16, 0, 'resized_crop', decode=decode)
  assert source.decode == decode
  records = array_record.Records(info, 'train')
  batches = _batches(source, parallel.make_mesh(1), 0, 4)
  for step, batch in enumerate(batches):
    for position, index in enumerate(batch.indices):
      image = helpers.reference_decode(records.raw(int(index))[1])
      for view in range(2):
        rng = host_augment.example_rng(
          3, resident.AUGMENT_STREAM, step, view, position
        )
        np.testing.assert_array_equal(
          batch.images[view, position],
          helpers.reference_resized_crop_flip(
            image, rng, 16, True, torchvision=decode == 'torchvision'
          ),
        )
  resumed = _batches(source, parallel.make_mesh(2), 2, 2)
  for want, have in zip(batches[2:], resumed):
    jax.tree.map(np.testing.assert_array_equal, want, have)
  test = array_record.Records(info, 'test')
  (first,) = source.eval_batches(parallel.make_mesh(1), 6)
  for i in range(6):
    image = helpers.reference_decode(test.raw(i)[1])
    np.testing.assert_array_equal(
      np.asarray(first.images)[i],
      imagenet_preprocess.resize_center_crop(image, 18, 16),
    )


def _jpeg(height, width, seed=0, fmt='JPEG'):
  rng = np.random.default_rng(seed)
  pixels = rng.integers(
    0, 256, (height // 16 + 1, width // 16 + 1, 3), np.uint8
  )
  raw = io.BytesIO()
  Image.fromarray(pixels).resize((width, height), Image.BICUBIC).save(raw, fmt)
  return raw.getvalue()


def test_fast_decode_scales_in_the_dct_and_keeps_every_crop_the_size():
  """input.decode='fast' decodes a JPEG at libjpeg-turbo's smallest k/8
  scale that keeps every crop box at least the training size on each side
  (a file it cannot scale, at full size), asking for that size once."""
  asked = []

  def min_size(width, height):
    asked.append((width, height))
    return 100, 75

  array, scale = images.decode_scaled('x', 'y', _jpeg(300, 400), 3, min_size)
  assert asked == [(400, 300)]
  assert (array.shape, array.dtype, scale) == (
    (75, 100, 3),
    np.uint8,
    (0.25, 0.25),
  )
  grey, _ = images.decode_scaled('x', 'y', _jpeg(300, 400), 1, min_size)
  assert grey.shape == (75, 100, 1)
  png, scale = images.decode_scaled(
    'x', 'y', _jpeg(30, 40, fmt='PNG'), 3, min_size
  )
  assert (png.shape, scale, asked[-1]) == ((30, 40, 3), (1.0, 1.0), (40, 30))
  # The least decode keeping the narrowest side (40 px) at 16 px once its
  # edges are rounded to whole pixels: 17 / 40 of the file.
  assert images.keeping([(0, 0, 70, 40), (5, 5, 300, 300)], 16, 400, 300) == (
    170,
    128,
  )
  assert images.keeping([(0, 0, 10, 10)], 16, 40, 30) == (40, 30)
  rng, size = np.random.default_rng(1), 64
  reduced, fast, exact, fast_eval, exact_eval = 0, [], [], [], []
  for seed in range(12):
    height, width = (int(v) for v in rng.integers(200, 520, 2))
    boxes = [
      host_augment.resized_crop_box(height, width, rng) for _ in range(2)
    ]
    data = _jpeg(height, width, seed)
    array, (sy, sx) = images.decode_scaled(
      'x', 'y', data, 3, lambda w, h: images.keeping(boxes, size, w, h)
    )
    reduced += array.shape[0] < height
    for left, top, right, bottom in boxes:
      # Rounded to the decode's pixels, as `resize_box` crops it.
      if min(right - left, bottom - top) > size:
        assert round(right * sx) - round(left * sx) >= size
        assert round(bottom * sy) - round(top * sy) >= size
      crop = images.resize_box(
        array, (left, top, right, bottom), (sy, sx), size
      )
      assert crop.shape == (size, size, 3)
      fast.append(crop)
      pil = Image.open(io.BytesIO(data))
      box = (left, top, right, bottom)
      exact.append(np.asarray(host_augment.resized_crop(pil, box, size, False)))
    # Evaluation: the centre crop's box alone, from a decode reduced for it.
    resize = imagenet_preprocess.eval_resize(size)
    centre = imagenet_preprocess.center_crop_box(height, width, resize, size)
    array, scale = images.decode_scaled(
      'x', 'y', data, 3, lambda w, h: images.keeping([centre], size, w, h)
    )
    fast_eval.append(images.resize_box(array, centre, scale, size))
    exact_eval.append(imagenet_preprocess.resize_center_crop(pil, resize, size))
  assert reduced >= 6  # most of these crops are 2x the size or more
  # Another decode and filter, the same geometry: a few grey levels from
  # the exact crops (6.7 and 7.6, training and evaluation, on these sharp
  # JPEGs shrunk up to 8x; 2.0 and 2.9 on the benchmark's photographs at
  # 224), which differ by tens from one another (66 here), as would a box
  # off by a few pixels.
  for fast, exact in ((fast, exact), (fast_eval, exact_eval)):
    fast, exact = (np.stack(v).astype(np.int16) for v in (fast, exact))
    nearer = np.abs(fast - exact).mean()
    assert nearer < np.abs(exact - exact[::-1]).mean() / 5


def test_fast_resize_flips_as_a_reversed_view_would():
  """`resize_box`'s flip (OpenCV's, for speed) mirrors left to right, as
  the training crops' flip is defined, for colour and grey images."""
  rng = np.random.default_rng(0)
  for channels in (3, 1):
    array = rng.integers(0, 256, (40, 50, channels), np.uint8)
    box, scale = (3, 5, 41, 37), (1.0, 1.0)
    plain = images.resize_box(array, box, scale, 16)
    flipped = images.resize_box(array, box, scale, 16, flip=True)
    assert flipped.shape == (16, 16, channels)
    assert not np.array_equal(plain, flipped)
    np.testing.assert_array_equal(flipped, plain[:, ::-1])


def _photo_like_jpeg(rng, shape, **save) -> bytes:
  """A JPEG of `shape`: blocks of random colour with fine noise on top (so
  that every row differs from its neighbours, as a photograph's do)."""
  blocks = rng.integers(0, 200, (shape[0] // 8 + 1, shape[1] // 8 + 1))
  pixels = np.kron(blocks, np.ones((8, 8)))[: shape[0], : shape[1]]
  if len(shape) == 3:
    pixels = pixels[..., None] * rng.uniform(0.5, 1.2, shape[2])
  pixels = pixels + rng.integers(0, 56, shape)
  buffer = io.BytesIO()
  Image.fromarray(pixels.astype(np.uint8)).save(buffer, 'JPEG', **save)
  return buffer.getvalue()


@pytest.mark.parametrize(
  'shape,save',
  [
    ((150, 110, 3), {'quality': 90}),
    ((97, 133, 3), {'quality': 75, 'subsampling': 0, 'progressive': True}),
    ((120, 90), {'quality': 90}),
  ],
)
def test_torchvision_crops_decode_down_to_the_box_only(shape, save):
  """input.decode='torchvision' decodes a JPEG down to its lowest box's
  bottom row and no further: its rows are the whole decode's, and its crops
  torchvision's (the box's pixels as an image of their own, resized), for
  boxes of every scale and touching every edge; colour (4:2:0 and 4:4:4,
  progressive) and grey. 'exact' (the box resized within the whole image)
  differs on the edges. A file cut short is refused, not decoded black."""
  rng = np.random.default_rng(1)
  data = _photo_like_jpeg(rng, shape, **save)
  whole = images.open_image('set', 'file', data, rgb=True)
  pixels = np.asarray(whole)
  height, width = shape[:2]
  cut_short = exact_differs = 0
  for trial in range(60):
    size = (8, 16, 40)[trial % 3]
    box = host_augment.resized_crop_box(height, width, rng)
    if trial % 4 == 0:  # down to the bottom edge
      box = (*box[:3], height)
    left, top, right, bottom = box
    asked = []
    part = images.open_image(
      'set',
      'file',
      data,
      rgb=True,
      rows=lambda w, h: asked.append((w, h)) or bottom,
    )
    assert asked == [(width, height)] and part.height == bottom
    np.testing.assert_array_equal(np.asarray(part), pixels[:bottom])
    cut_short += bottom < height
    cut = Image.fromarray(np.ascontiguousarray(pixels[top:bottom, left:right]))
    want = np.asarray(cut.resize((size, size), Image.BILINEAR))
    for flip in (False, True):
      have = host_augment.torchvision_resized_crop(part, box, size, flip)
      np.testing.assert_array_equal(
        np.asarray(have), want[:, ::-1] if flip else want
      )
    exact = np.asarray(host_augment.resized_crop(whole, box, size, False))
    exact_differs += not np.array_equal(exact, want)
  assert cut_short > 30 and exact_differs > 30
  with pytest.raises(UserError, match='truncated'):
    images.open_image(
      'set', 'file', data[: len(data) * 2 // 3], rows=lambda w, h: h - 1
    )


def test_the_epoch_order_is_made_once_per_epoch_and_is_read_only():
  """Each worker asks for its epoch's order at every step: it is computed
  once (ImageNet's permutation costs ~30 ms), and read-only, as the cached
  copy is everyone's."""
  first = stream_rows.epoch_order(3, 1, 1000)
  assert stream_rows.epoch_order(3, 1, 1000) is first
  assert sorted(first) == list(range(1000))
  assert not np.array_equal(first, stream_rows.epoch_order(3, 2, 1000))
  with pytest.raises(ValueError):
    first[0] = 1


def test_fast_decode_is_keyed_by_step_resumes_mid_epoch_and_nears_exact(
  shards,
):
  """input.decode='fast': the batches still depend on (seed, step) alone: a
  resume mid-epoch on other devices gives them bit for bit (decode workers
  change nothing, as the test above shows for the code they share); the
  crops' geometry is exact's, their pixels near exact's."""
  info = array_record.read_info(str(shards))
  # At 8 px, many crops of the 12-40 px images are 16 px or more.
  fast = stream.source(info, 8, 0, 'resized_crop', decode='fast')
  exact = stream.source(info, 8, 0, 'resized_crop', decode='exact')
  assert (fast.decode, exact.decode) == ('fast', 'exact')
  reference = _batches(fast, parallel.make_mesh(1), 0, 4)
  resumed = _batches(fast, parallel.make_mesh(2), 2, 2)
  for want, have in zip(reference[2:], resumed):
    jax.tree.map(np.testing.assert_array_equal, want, have)
  full = _batches(exact, parallel.make_mesh(1), 0, 4)
  for f, e in zip(reference, full):
    np.testing.assert_array_equal(f.indices, e.indices)
    np.testing.assert_array_equal(f.labels, e.labels)
  fast_images = np.stack([b.images for b in reference])
  full_images = np.stack([b.images for b in full])
  assert not np.array_equal(fast_images, full_images)
  (fast_eval,) = fast.eval_batches(parallel.make_mesh(1), 6)
  (exact_eval,) = exact.eval_batches(parallel.make_mesh(1), 6)
  fast_eval, exact_eval = (
    np.asarray(b.images) for b in (fast_eval, exact_eval)
  )
  assert not np.array_equal(fast_eval, exact_eval)

  def quadrants(x):
    """[..., 8, 8, C] -> [..., 2, 2, C]: the mean of each 4x4 block."""
    x = x.astype(np.float64).reshape(*x.shape[:-3], 2, 4, 2, 4, x.shape[-1])
    return x.mean(axis=(-4, -2))

  # Another decode and filter, the same boxes and flips: on these noise
  # images of 12-40 px, where filters differ most (a few grey levels on
  # photographs: the test above), the pixels differ, each crop's quadrants
  # (2.7 and 2.3 grey levels, training and evaluation) far less than those
  # of another crop (11 and 8) or of a flipped or shifted one.
  for have, want in ((fast_images, full_images), (fast_eval, exact_eval)):
    have, want = quadrants(have), quadrants(want)
    assert np.abs(have - want).mean() < np.abs(want - want[::-1]).mean() / 3


def test_fast_decode_without_its_packages_is_refused_and_auto_is_torchvision(
  shards, monkeypatch
):
  """Where simplejpeg or OpenCV is missing, 'fast' is one line naming the
  field and the package; 'auto' gives a new run 'torchvision'
  (DEFAULT_DECODE), which needs neither."""
  info = array_record.read_info(str(shards))
  assert stream.source(info, 8, 0, 'resized_crop').decode == 'torchvision'
  monkeypatch.setattr(images, 'fast_decode_missing', lambda: ['simplejpeg'])
  with pytest.raises(UserError) as e:
    stream.source(info, 8, 0, 'resized_crop', decode='fast')
  assert str(e.value) == (
    "config.input.decode='fast' needs simplejpeg, not installed: "
    "pip install 'icckd_jax[fast]', or use 'torchvision'"
  )
  assert stream.source(info, 8, 0, 'resized_crop').decode == 'torchvision'

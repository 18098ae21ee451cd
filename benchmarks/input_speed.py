r"""The streaming input path's speed and memory, beside the resident path.

In a temporary folder (never in the repository) it generates JPEG folders,
converts them with the converter of configs/convert.py, and prints:

* images/s of the streaming pipeline (`StreamSource.train_batches`: read, decode,
  RandomResizedCrop to 224x224, flip, onto the device) with 1 and 2 decode
  workers, batch 64, one view; and of the resident path at 32x32
  (`ResidentSource.train_batches` on the synthetic set);
* the conversion's time and disk per 10,000 images;
* the peak RSS of a process streaming one epoch of generated sets of
  --small_sets images (decode workers included), which should not grow with
  the set's size.

  python benchmarks/input_speed.py            # about 4 minutes on 2 cores
  python benchmarks/input_speed.py --speed_images=256 --small_sets=500,2000
"""

import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import jax
import ml_collections
import numpy as np
from PIL import Image

from icckd_jax.input_pipeline.source import TrainFeed
from icckd_jax import parallel
from icckd_jax.data import array_record
from icckd_jax.data import convert
from icckd_jax.data import datasets
from icckd_jax.input_pipeline import resident
from icckd_jax.input_pipeline import stream

FLAGS = flags.FLAGS
flags.DEFINE_integer('speed_images', 1024, 'Images of the 224x224 set.')
flags.DEFINE_list(
  'small_sets', ['5000', '20000'], 'Sizes of the sets whose RSS is measured.'
)
flags.DEFINE_integer('steps', 12, 'Timed steps per measurement.')
flags.DEFINE_integer('batch_size', 64, 'Global batch.')
flags.DEFINE_string(
  'rss_child', None, 'Internal: stream one epoch of this set.'
)


def _folder(root: pathlib.Path, count: int, low: int, high: int) -> None:
  """train/<c>/*.jpg (count images, 10 classes) and a small test/, of sizes
  in [low, high): smooth gradients plus noise, as photographs compress."""
  rng = np.random.default_rng(count)
  for split, n in (('train', count), ('test', max(10, count // 50))):
    for i in range(n):
      h, w = rng.integers(low, high, 2)
      y, x = np.mgrid[:h, :w]
      base = (x[..., None] * rng.uniform(0, 1, 3) + y[..., None]) % 256
      noise = rng.normal(0, 12, (h, w, 3))
      pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
      path = root / split / f'c{i % 10}' / f'{i}.jpg'
      path.parent.mkdir(parents=True, exist_ok=True)
      Image.fromarray(pixels).save(path, quality=85)


def _convert(source: pathlib.Path, out: pathlib.Path) -> float:
  config = ml_collections.ConfigDict(
    {
      'dataset': {'name': 'image_folder', 'path': str(source)},
      'output_dir': str(out),
      'records_per_shard': 256,
      'workers': 0,
    }
  )
  start = time.perf_counter()
  convert.convert(config)
  return time.perf_counter() - start


def _rate(batches, steps: int, batch_size: int) -> float:
  jax.block_until_ready(next(batches))  # warm-up: workers started
  for _ in range(2):
    jax.block_until_ready(next(batches))
  start = time.perf_counter()
  for _ in range(steps):
    jax.block_until_ready(next(batches))
  return steps * batch_size / (time.perf_counter() - start)


def _feed(crop_padding: int) -> TrainFeed:
  """One view per example, cropped and flipped, seed 0."""
  return TrainFeed(0, FLAGS.batch_size, 1, crop_padding, flip=True)


def _stream_rate(path: str, workers: int, size: int) -> float:
  info = array_record.read_info(path)
  batches = stream.source(info, size, workers).train_batches(
    parallel.make_mesh(1),
    _feed(crop_padding=0),
    0,
  )
  try:
    return _rate(batches, FLAGS.steps, FLAGS.batch_size)
  finally:
    batches.close()


def _resident_rate() -> float:
  dataset = datasets.load(
    datasets.DataRequest.from_fields(
      {
        'name': 'synthetic',
        'num_train': 4096,
        'num_test': 64,
        'num_classes': 10,
        'image_size': 32,
        'channels': 3,
        'seed': 0,
      }
    )
  )
  mesh = parallel.make_mesh(1)
  batches = resident.ResidentSource.of(dataset).train_batches(
    mesh,
    _feed(crop_padding=4),
    0,
  )
  return _rate(batches, 10 * FLAGS.steps, FLAGS.batch_size)


def _rss_child(path: str) -> None:
  """Streams one epoch (2 workers, 32x32) and prints the peak RSS, MiB, of
  this process and of its largest worker."""
  info = array_record.read_info(path)
  streamed = stream.source(info, 32, 2)
  batches = streamed.train_batches(
    parallel.make_mesh(1),
    _feed(crop_padding=0),
    0,
  )
  for _ in range(
    resident.steps_per_epoch(streamed.train.size, FLAGS.batch_size)
  ):
    jax.block_until_ready(next(batches))
  batches.close()
  print(
    json.dumps(
      {
        'main_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        'worker_mib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        / 1024,
      }
    )
  )


def main(argv):
  del argv
  if FLAGS.rss_child:
    _rss_child(FLAGS.rss_child)
    return
  with tempfile.TemporaryDirectory(prefix='input_speed-') as tmp:
    tmp = pathlib.Path(tmp)
    start = time.perf_counter()
    _folder(tmp / 'big', FLAGS.speed_images, 250, 500)
    print(
      f'generated {FLAGS.speed_images} JPEGs of 250-500 px a side in '
      f'{time.perf_counter() - start:.0f} s'
    )
    seconds = _convert(tmp / 'big', tmp / 'big_ar')
    disk = sum(p.stat().st_size for p in (tmp / 'big_ar').iterdir())
    images = FLAGS.speed_images + max(10, FLAGS.speed_images // 50)
    print(
      f'convert: {seconds:.1f} s for {images} images = '
      f'{seconds * 10000 / images:.0f} s and '
      f'{disk * 10000 / images / 2**30:.2f} GiB per 10,000 images '
      f'({os.cpu_count()} cores)'
    )
    for workers in (1, 2):
      rate = _stream_rate(str(tmp / 'big_ar'), workers, 224)
      print(f'stream 224x224, {workers} worker(s): {rate:.0f} images/s')
    print(f'resident 32x32: {_resident_rate():.0f} images/s')
    for count in map(int, FLAGS.small_sets):
      _folder(tmp / f's{count}', count, 40, 72)
      _convert(tmp / f's{count}', tmp / f's{count}_ar')
      out = subprocess.run(
        [
          sys.executable,
          __file__,
          f'--rss_child={tmp / f"s{count}_ar"}',
          f'--batch_size={FLAGS.batch_size}',
        ],  # fmt: skip
        check=True,
        capture_output=True,
        text=True,
      ).stdout
      rss = json.loads(out.strip().splitlines()[-1])
      print(
        f'peak RSS streaming one epoch of {count} images (2 workers): '
        f'main process {rss["main_mib"]:.0f} MiB, largest worker '
        f'{rss["worker_mib"]:.0f} MiB'
      )


if __name__ == '__main__':
  app.run(main)

r"""The streaming input path's cost per image, beside torchvision and tf.data.

In a temporary folder (never in the repository) it generates ImageNet-shaped
JPEGs (natural-image-like: smooth 1/f noise, gradients, textured shapes;
pure noise decodes unrealistically slowly), converts them with the converter
of configs/convert.py, once as they are ('full') and once with the longer
side of the training images at 320 ('max_side_320'), and measures

* training (`StreamSource.train_batches`: read, decode, RandomResizedCrop to
  224x224, flip, onto the device) and evaluation (`eval_batches`: resize
  256, centre crop 224) with 1 and 2 decode workers, for
  the default `input.decode` ('project': 'torchvision'), 'exact'
  ('project_exact') and 'fast' ('project_fast'), beside
  torchvision's ImageFolder + DataLoader and tf.data's
  `decode_and_crop_jpeg` (big_vision's way: bilinear, no antialiasing
  unless --tf_antialias) where they are importable (skipped with a line
  where not), and, with --baseline=DIR, an older checkout of this project
  ('project_before', full-size storage: 'x before' is each row's ratio to
  it at the same transform and workers);
* in images per CPU-second of the whole process tree (user + system time of
  the measuring process and its decode workers, which other jobs on the
  cores do not distort; wall-clock rates are not comparable on shared
  cores), each in a fresh process, the configurations interleaved over
  --repeats repetitions: min, median and max, and each one's ratio to
  'project' at the same transform, storage and workers;
* the peak RSS of the measuring process and of each worker.

It prints a table, then one JSON line per measurement:
{"transform", "impl", "storage", "workers", "img_per_cpu_s" (median),
"min", "max", "main_rss_mib", "worker_rss_mib"}.

  python benchmarks/input_speed.py --quick     # under 10 minutes on 2 cores
  python benchmarks/input_speed.py             # ImageNet-like batches of 256
  python benchmarks/input_speed.py --folder=path/to/imagenet  # your images
  git worktree add /tmp/before <commit>
  python benchmarks/input_speed.py --quick --baseline=/tmp/before
"""

import itertools
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

# The package measured: this checkout's, or --baseline's in a measurement of
# 'project_before' (set for its process and inherited by its decode
# workers, which import this file again).
sys.path.insert(
  0,
  os.environ.get(_ROOT_VARIABLE := 'INPUT_SPEED_PACKAGE_ROOT')
  or os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
)

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import ml_collections
import numpy as np
from PIL import Image, ImageDraw

FLAGS = flags.FLAGS
flags.DEFINE_bool('quick', False, 'Fewer images, steps and repetitions.')
flags.DEFINE_string(
  'folder',
  None,
  "An image folder in ImageNet's layout (train/<class>/*, val/<class>/* "
  'or test/<class>/*) to measure instead of generated images.',
)
flags.DEFINE_integer('train_images', 1536, 'Generated training images.')
flags.DEFINE_integer(
  'test_images',
  6144,
  'Generated evaluation images (one pass holds the warm-up, the measured '
  'batches and the read-ahead: worker start-up is once per evaluation).',
)
flags.DEFINE_integer('batch_size', 256, 'Global batch.')
flags.DEFINE_integer(
  'steps',
  12,
  'Measured training steps per measurement (thousands of images: the '
  "read-ahead's share, and so the run-to-run spread, stays small).",
)
flags.DEFINE_integer(
  'eval_steps', 8, 'Measured evaluation batches per measurement.'
)
flags.DEFINE_integer('repeats', 3, 'Interleaved repetitions.')
flags.DEFINE_string(
  'baseline',
  None,
  'A checkout of an older version of this project (git worktree add DIR '
  "COMMIT) measured beside this one as 'project_before' (its default "
  'input.decode, full-size storage).',
)
flags.DEFINE_bool(
  'tf_antialias',
  False,
  "tf.data's resize with antialiasing (big_vision's default is without; "
  "with it, tf.data's training costs about twice as much per image).",
)
flags.DEFINE_list(
  'impls',
  ['project', 'project_fast'],
  "This project's pipelines to measure ('project': the default "
  "input.decode, 'torchvision'; 'project_exact': 'exact'; 'project_fast': "
  "'fast'; 'project' alone measures a version without input.decode).",
)
flags.DEFINE_string('child', None, 'Internal: one measurement, as JSON.')

MAX_SIDE = 320
SIZE = 224
WARMUP_STEPS = 1


def _natural(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
  """[h, w, 3] uint8 like a photograph: 1/f noise, a gradient, shapes."""
  # The 1/f field at a quarter of the size, upsampled: as natural to a
  # JPEG coder, for a sixteenth of the FFT's time.
  fh, fw = -(-h // 4), -(-w // 4)
  fy = np.fft.fftfreq(fh)[:, None]
  fx = np.fft.rfftfreq(fw)[None, :]
  amplitude = 1.0 / np.maximum(np.hypot(fy, fx), 1.0 / max(fh, fw))
  channels = []
  for _ in range(3):
    phase = rng.uniform(0, 2 * np.pi, amplitude.shape)
    field = np.fft.irfft2(amplitude * np.exp(1j * phase), s=(fh, fw))
    field = (field - field.mean()) / (field.std() + 1e-9)
    field = Image.fromarray(field.astype(np.float32)).resize(
      (w, h), Image.BICUBIC
    )
    channels.append(np.asarray(field))
  pixels = 128 + 40 * np.stack(channels, -1)
  y, x = np.mgrid[:h, :w] / max(h, w)
  pixels += 60 * (rng.uniform(-1, 1) * x + rng.uniform(-1, 1) * y)[..., None]
  image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
  draw = ImageDraw.Draw(image)
  for _ in range(rng.integers(3, 8)):
    x0, y0 = rng.integers(0, w), rng.integers(0, h)
    x1, y1 = x0 + rng.integers(20, w // 2), y0 + rng.integers(20, h // 2)
    fill = tuple(int(v) for v in rng.integers(0, 256, 3))
    shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
    shape((x0, y0, x1, y1), fill=fill)
  texture = rng.integers(-8, 9, (h, w, 3), dtype=np.int16)
  return np.clip(np.asarray(image) + texture, 0, 255).astype(np.uint8)


def _generate(root: pathlib.Path, train: int, test: int) -> None:
  """train/<c>/*.JPEG and val/<c>/*.JPEG, 10 classes, ImageNet's shapes
  (shorter side 333-500, aspect 3/4 or 4/3 mostly; mean ~200k pixels),
  quality 90."""
  rng = np.random.default_rng(0)
  for split, count in (('train', train), ('val', test)):
    for i in range(count):
      short = int(rng.integers(333, 501))
      long = int(short * rng.choice([1.0, 4 / 3, 4 / 3, 1.5]))
      h, w = (short, long) if rng.random() < 0.7 else (long, short)
      path = root / split / f'n{i % 10:08d}' / f'{i}.JPEG'
      path.parent.mkdir(parents=True, exist_ok=True)
      Image.fromarray(_natural(rng, h, w)).save(path, quality=90)


def _shrunk(source: pathlib.Path, out: pathlib.Path) -> None:
  """`source` with its training images as a conversion with max_side
  stores them (`shard_writer.shrunk_image`), for the libraries that read
  files; evaluation images as they are."""
  from icckd_jax.data import shard_writer  # pylint: disable=g-import-not-at-top

  for path in source.rglob('*.*'):
    target = out / path.relative_to(source)
    target.parent.mkdir(parents=True, exist_ok=True)
    data = path.read_bytes()
    if path.relative_to(source).parts[0] == 'train':
      with Image.open(path) as image:
        shrunk = shard_writer.shrunk_image(image, image.format, MAX_SIDE)
      data = data if shrunk is None else shrunk[1]
    target.write_bytes(data)


def _convert(source: pathlib.Path, out: pathlib.Path, max_side: int) -> None:
  """`source` converted into `out` by configs/convert.py's converter."""
  from icckd_jax.data import convert  # pylint: disable=g-import-not-at-top

  name = 'imagenet' if (source / 'val').is_dir() else 'image_folder'
  convert.convert(
    ml_collections.ConfigDict(
      {
        'dataset': {'name': name, 'path': str(source)},
        'output_dir': str(out),
        'records_per_shard': 256,
        'workers': 0,
        **({'max_side': max_side} if max_side else {}),
      }
    )
  )


def _tree_cpu(process) -> float:
  """User + system seconds of `process`, of its children it has reaped,
  and of its live descendants."""
  t = process.cpu_times()
  total = t.user + t.system + t.children_user + t.children_system
  for child in process.children(recursive=True):
    try:
      t = child.cpu_times()
      total += t.user + t.system
    except Exception:  # pylint: disable=broad-except
      pass  # gone meanwhile: counted once reaped
  return total


def _settled_cpu(process, poll=0.25, idle=0.005, limit=10.0) -> float:
  """`_tree_cpu(process)` once the pipeline's read-ahead is full: when a
  `poll` interval adds under `idle` CPU-seconds (or after `limit` s)."""
  cpu, start = _tree_cpu(process), time.perf_counter()
  while time.perf_counter() - start < limit:
    time.sleep(poll)
    previous, cpu = cpu, _tree_cpu(process)
    if cpu - previous < idle:
      break
  return cpu


def _peak_rss_mib(process) -> tuple[float, list[float]]:
  """(peak RSS of `process`, of each descendant), MiB (VmHWM)."""

  def hwm(pid):
    try:
      for line in open(f'/proc/{pid}/status'):
        if line.startswith('VmHWM:'):
          return int(line.split()[1]) / 1024
    except OSError:
      pass
    return 0.0

  return hwm(process.pid), [hwm(c.pid) for c in process.children(True)]


def _project(spec: dict, path: str):
  """(iterator of batches, images per batch) of this project's pipeline."""
  import jax  # pylint: disable=g-import-not-at-top

  from icckd_jax import parallel  # pylint: disable=g-import-not-at-top
  from icckd_jax.data import array_record  # pylint: disable=g-import-not-at-top
  from icckd_jax.input_pipeline import stream  # pylint: disable=g-import-not-at-top
  from icckd_jax.input_pipeline.source import TrainFeed  # pylint: disable=g-import-not-at-top

  info = array_record.read_info(path)
  # Older versions have no input.decode: exact only.
  decode = {
    'project_fast': {'decode': 'fast'},
    'project_exact': {'decode': 'exact'},
  }.get(spec['impl'], {})
  source = stream.source(info, SIZE, spec['workers'], 'resized_crop', **decode)
  mesh = parallel.make_mesh(1)
  batch = spec['batch_size']
  if spec['transform'] == 'train':
    feed = TrainFeed(0, batch, 1, 0, flip=True)
    batches = source.train_batches(mesh, feed, 0)
  else:
    batches = itertools.chain.from_iterable(
      iter(source.eval_batches(mesh, batch)) for _ in itertools.count()
    )
  return (jax.block_until_ready(b) for b in batches), batch


def _torchvision(spec: dict, folder: str):
  import torch  # pylint: disable=g-import-not-at-top
  from torchvision import datasets, transforms  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(1)
  if spec['transform'] == 'train':
    transform = transforms.Compose(
      [
        transforms.RandomResizedCrop(SIZE),
        transforms.RandomHorizontalFlip(),
        transforms.PILToTensor(),
      ]
    )
    split = 'train'
  else:
    transform = transforms.Compose(
      [
        transforms.Resize(256),
        transforms.CenterCrop(SIZE),
        transforms.PILToTensor(),
      ]
    )
    split = 'val' if os.path.isdir(os.path.join(folder, 'val')) else 'test'
  dataset = datasets.ImageFolder(os.path.join(folder, split), transform)
  loader = torch.utils.data.DataLoader(
    dataset,
    batch_size=spec['batch_size'],
    shuffle=spec['transform'] == 'train',
    num_workers=spec['workers'],
    persistent_workers=True,
    drop_last=True,
  )
  return itertools.chain.from_iterable(itertools.repeat(loader)), spec[
    'batch_size'
  ]


def _tf_data(spec: dict, folder: str):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  split = 'train' if spec['transform'] == 'train' else 'val'
  if not os.path.isdir(os.path.join(folder, split)):
    split = 'test'
  files = sorted(str(p) for p in pathlib.Path(folder, split).rglob('*.*'))

  def train(path):
    data = tf.io.read_file(path)
    shape = tf.image.extract_jpeg_shape(data)
    begin, size, _ = tf.image.sample_distorted_bounding_box(
      shape,
      tf.zeros([0, 0, 4], tf.float32),
      area_range=(0.08, 1.0),
      aspect_ratio_range=(3 / 4, 4 / 3),
      min_object_covered=0,
      use_image_if_no_bounding_boxes=True,
    )
    y, x, _ = tf.unstack(begin)
    h, w, _ = tf.unstack(size)
    image = tf.image.decode_and_crop_jpeg(data, [y, x, h, w], channels=3)
    image = tf.image.resize(image, [SIZE, SIZE], antialias=spec['antialias'])
    return tf.image.random_flip_left_right(tf.cast(image, tf.uint8))

  def evaluate(path):
    image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
    image = tf.image.resize(image, [256, 256], preserve_aspect_ratio=False)
    return tf.cast(tf.image.central_crop(image, SIZE / 256), tf.uint8)

  options = tf.data.Options()
  options.threading.private_threadpool_size = spec['workers']
  dataset = (
    tf.data.Dataset.from_tensor_slices(files)
    .repeat()
    .map(train if split == 'train' else evaluate, spec['workers'])
    .batch(spec['batch_size'])
    .prefetch(1)
    .with_options(options)
  )
  return iter(dataset), spec['batch_size']


def _child(spec: dict) -> None:
  """One measurement in this fresh process: images per CPU-second of this
  process and its workers over FLAGS.steps batches after a warm-up."""
  import psutil  # pylint: disable=g-import-not-at-top

  make = {'torchvision': _torchvision, 'tf_data': _tf_data}.get(
    spec['impl'], _project
  )
  batches, per_batch = make(spec, spec['path'])
  for _ in range(WARMUP_STEPS):
    next(batches)
  me = psutil.Process()
  # From a full read-ahead to a full read-ahead: the CPU between is that of
  # exactly the measured batches (without it, batches decoded ahead before
  # the start go uncounted, a large part of a short measurement).
  cpu = _settled_cpu(me)
  for _ in range(spec['steps']):
    next(batches)
  cpu = _settled_cpu(me) - cpu
  main_rss, worker_rss = _peak_rss_mib(me)
  print(
    json.dumps(
      {
        'img_per_cpu_s': spec['steps'] * per_batch / cpu,
        'main_rss_mib': main_rss,
        'worker_rss_mib': worker_rss,
      }
    ),
    flush=True,
  )
  # Its decode workers hold this process's stdout: stop them (this
  # process started them), then leave without waiting on any pipeline.
  # Not multiprocessing's resource tracker: left to see this process end,
  # it unlinks the shared-memory segments of the batches still in flight,
  # which would otherwise stay in /dev/shm (RAM) for good.
  for worker in me.children(recursive=True):
    if 'resource_tracker' not in ' '.join(worker.cmdline()):
      worker.kill()
  os._exit(0)


def _converts_max_side() -> bool:
  from configs import convert as convert_config  # pylint: disable=g-import-not-at-top

  return 'max_side' in convert_config.get_config()


def _importable(module: str) -> bool:
  import importlib.util  # pylint: disable=g-import-not-at-top

  return importlib.util.find_spec(module) is not None


def _measure(spec: dict) -> dict | None:
  env = dict(os.environ)
  if spec['root']:  # 'project_before': its package, not this one's
    env[_ROOT_VARIABLE] = spec['root']
  out = subprocess.run(
    [sys.executable, __file__, f'--child={json.dumps(spec)}'],
    capture_output=True,
    text=True,
    timeout=600,
    env=env,
  )
  lines = [x for x in out.stdout.splitlines() if x.startswith('{')]
  if out.returncode or not lines:
    print(f'  failed: {spec} ({out.stderr.strip().splitlines()[-1:]})')
    return None
  return json.loads(lines[-1])


def _specs(paths: dict, impls: list[str]) -> list[dict]:
  specs = []
  for transform, storage, impl, workers in itertools.product(
    ('train', 'eval'), paths, impls, (1, 2)
  ):
    if transform == 'eval' and storage != 'full':
      continue  # the test split is never stored smaller
    if impl == 'project_before' and storage != 'full':
      continue  # the before figure is full-size storage's
    folder, shards = paths[storage]
    specs.append(
      {
        'transform': transform,
        'impl': impl,
        'storage': storage,
        'workers': workers,
        'path': shards if impl.startswith('project') else folder,
        'batch_size': FLAGS.batch_size,
        'steps': FLAGS.steps if transform == 'train' else FLAGS.eval_steps,
        'antialias': FLAGS.tf_antialias,
        'root': FLAGS.baseline if impl == 'project_before' else None,
      }
    )
  return specs


def _ratio(medians: dict, key: tuple, impl: str, storage: str) -> float:
  """key's median over `impl`'s at `storage`, same transform and workers."""
  base = medians.get((key[0], impl, storage, key[3]))
  return medians[key] / base if base else float('nan')


def _report(specs: list[dict], results: dict) -> None:
  """The table (ratios to 'project' at the same storage, to the baseline
  and to tf.data at full size), each impl's 2-worker over 1-worker rate,
  then one JSON line per measurement."""
  keys = [
    tuple(spec[k] for k in ('transform', 'impl', 'storage', 'workers'))
    for spec in specs
  ]
  keys = [k for k in keys if results.get(k)]
  rates = {k: [r['img_per_cpu_s'] for r in results[k]] for k in keys}
  medians = {k: statistics.median(rates[k]) for k in keys}
  print()
  print(
    f'{"transform":9} {"storage":13} {"impl":14} {"wk":>2} '
    f'{"img/CPU-s":>9} {"min":>6} {"max":>6} {"x project":>9} '
    f'{"x before":>8} {"x tf full":>9} {"main MiB":>8} {"worker MiB":>10}'
  )
  lines = []
  for key in keys:
    runs = results[key]
    main_rss = max(r['main_rss_mib'] for r in runs)
    worker_rss = max((max(r['worker_rss_mib'] or [0]) for r in runs))
    print(
      f'{key[0]:9} {key[2]:13} {key[1]:14} {key[3]:>2} '
      f'{medians[key]:9.0f} {min(rates[key]):6.0f} {max(rates[key]):6.0f} '
      f'{_ratio(medians, key, "project", key[2]):9.2f} '
      f'{_ratio(medians, key, "project_before", "full"):8.2f} '
      f'{_ratio(medians, key, "tf_data", "full"):9.2f} '
      f'{main_rss:8.0f} {worker_rss:10.0f}'
    )
    lines.append(
      {
        'transform': key[0],
        'impl': key[1],
        'storage': key[2],
        'workers': key[3],
        'img_per_cpu_s': round(medians[key], 1),
        'min': round(min(rates[key]), 1),
        'max': round(max(rates[key]), 1),
        'main_rss_mib': round(main_rss),
        'worker_rss_mib': [round(v) for v in runs[-1]['worker_rss_mib']],
      }
    )
  print('\n2 workers over 1, per core:')
  for key in keys:
    one = medians.get((*key[:3], 1))
    if key[3] == 2 and one:
      print(f'  {key[0]:9} {key[2]:13} {key[1]:14} {medians[key] / one:.2f}')
  print()
  for line in lines:
    print(json.dumps(line))


def main(argv):
  del argv
  if FLAGS.child:
    _child(json.loads(FLAGS.child))
    return
  if FLAGS.quick:
    # An evaluation pass longer than the warm-up, the measured batches and
    # two workers' read-ahead (about ten batches), which it would end in.
    FLAGS.train_images, FLAGS.test_images = 1024, 1536
    FLAGS.batch_size, FLAGS.steps, FLAGS.eval_steps = 64, 16, 8
    FLAGS.repeats = 2
  impls = list(FLAGS.impls)
  if FLAGS.baseline:
    if not os.path.isfile(os.path.join(FLAGS.baseline, 'icckd_jax', 'main.py')):
      print(
        f'error: --baseline={FLAGS.baseline!r} holds no checkout of this '
        'project (git worktree add DIR COMMIT makes one)',
        file=sys.stderr,
      )
      sys.exit(2)
    impls.insert(0, 'project_before')
  for impl, module in (
    ('torchvision', 'torchvision'),
    ('tf_data', 'tensorflow'),
  ):
    if _importable(module):
      impls.append(impl)
    else:
      print(f'{impl}: skipped ({module} is not importable here)')
  with tempfile.TemporaryDirectory(prefix='input_speed-') as tmp:
    tmp = pathlib.Path(tmp)
    start = time.perf_counter()
    if FLAGS.folder:
      full = pathlib.Path(FLAGS.folder)
    else:
      full = tmp / 'full'
      _generate(full, FLAGS.train_images, FLAGS.test_images)
    paths = {'full': (str(full), str(tmp / 'full_ar'))}
    _convert(full, tmp / 'full_ar', 0)
    storage = f'max_side_{MAX_SIDE}'
    if _converts_max_side():
      paths[storage] = (str(tmp / 'small'), str(tmp / 'small_ar'))
      _convert(full, tmp / 'small_ar', MAX_SIDE)
      if not all(i.startswith('project') for i in impls):
        _shrunk(full, tmp / 'small')
    else:
      print(f'{storage}: skipped (this version converts without max_side)')
    print(
      f'prepared {"--folder" if FLAGS.folder else "generated"} images in '
      f'{time.perf_counter() - start:.0f} s; {os.cpu_count()} cores, '
      f'batch {FLAGS.batch_size}, {FLAGS.steps} training and '
      f'{FLAGS.eval_steps} evaluation steps, {FLAGS.repeats} interleaved '
      f'repetitions; tf.data antialias={FLAGS.tf_antialias}'
    )
    specs = _specs(paths, impls)
    results = {}
    for repeat in range(FLAGS.repeats):
      for spec in specs:
        key = tuple(
          spec[k] for k in ('transform', 'impl', 'storage', 'workers')
        )
        found = _measure(spec)
        if found:
          results.setdefault(key, []).append(found)
      print(f'repetition {repeat + 1} of {FLAGS.repeats} done')
    _report(specs, results)


if __name__ == '__main__':
  app.run(main)

"""Converts a data set to ArrayRecord shards (`array_record.py`'s format).

  python launch.py --config=configs/convert.py --config.dataset.name=NAME \
      --config.dataset.path=P --config.output_dir=D

Sources: `imagenet` (ROOT/train/<wnid>/*.JPEG; ROOT/val/<wnid>/* or a flat
ROOT/val/ labelled by ROOT/LOC_val_solution.csv or the devkit's ground
truth; val becomes the `test` split), `image_folder` (a train/<class>/*, test/<class>/* folder: the files'
bytes are stored as they are, images of any size), and every other set the
project reads (`datasets.load`'s arrays, stored as PNG).

The listing (paths and labels, no pixels) is made and checked before
anything is written. Shards are written by a pool of processes (every core
by default), each under a temporary name renamed into place when complete,
with a small `<shard>.json` beside it holding its size, checksum and pixel
statistics: a killed conversion restarts at the first shard without one.
`conversion.json` records the source; an output folder holding another
source's conversion is refused, never written over. info.json is written
last, so a data set without it is never read.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import multiprocessing
import os
import pathlib
import time
from typing import Any, Sequence

from absl import logging
import ml_collections
import numpy as np
from PIL import Image

from icckd_jax.data import array_cache
from icckd_jax.data import array_record
from icckd_jax.data import datasets
from icckd_jax.data import image_folder
from icckd_jax.errors import UserError, one_line

CONVERSION_FILE = 'conversion.json'
IMAGENET_VAL_CSV = 'LOC_val_solution.csv'
DEVKIT_DATA = 'ILSVRC2012_devkit_t12/data'
DEVKIT_GROUND_TRUTH = 'ILSVRC2012_validation_ground_truth.txt'
_GREY_MODES = ('1', 'L', 'LA', 'I;16', 'I', 'F')
IMAGENET_LAYOUT = (
  'expected ROOT/train/<wnid>/*.JPEG and ROOT/val/<wnid>/*.JPEG, or a flat '
  f'ROOT/val/ with ROOT/{IMAGENET_VAL_CSV} or ROOT/{DEVKIT_DATA}/ (meta.mat '
  f'and {DEVKIT_GROUND_TRUTH})'
)


@dataclasses.dataclass(frozen=True)
class Listing:
  """What a conversion writes, before any pixel is read.

  `items[split]`: (label, source, name) per record in record order; a
  source is a file's path or bytes, or a [H, W, C] uint8 array (stored as
  PNG). `name`: the file's name for error messages.
  """

  classes: tuple[str, ...]
  items: dict[str, list[tuple[int, Any, str]]]
  identity: dict[str, Any]


def _image_files(folder: pathlib.Path) -> list[pathlib.Path]:
  return sorted(
    p
    for p in folder.iterdir()
    if p.is_file() and not image_folder.is_hidden((p.name,))
  )


def _class_folders(split_dir: pathlib.Path) -> list[pathlib.Path]:
  return sorted(
    p
    for p in split_dir.iterdir()
    if p.is_dir() and not image_folder.is_hidden((p.name,))
  )


def _class_tree(
  where: str, split_dir: pathlib.Path, classes: Sequence[str] | None
) -> tuple[list[str], list[tuple[int, Any, str]]]:
  """(classes, items) of split_dir/<class>/*; with `classes` given, the
  folders must name only those."""
  folders = _class_folders(split_dir)
  names = [f.name for f in folders]
  if classes is None:
    classes = names
  index = {c: i for i, c in enumerate(classes)}
  unknown = [n for n in names if n not in index]
  if unknown:
    raise UserError(
      f'{where}: {split_dir.name}/{unknown[0]}/ is not one of the '
      f'{len(classes)} training classes'
    )
  items = []
  for folder in folders:
    files = _image_files(folder)
    if not files:
      raise UserError(
        f'{where}: the class folder {split_dir.name}/{folder.name}/ holds no '
        'image; add its images or remove it'
      )
    items += [
      (index[folder.name], str(f), f'{split_dir.name}/{folder.name}/{f.name}')
      for f in files
    ]
  return list(classes), items


def _list_imagenet(path: str) -> Listing:
  where = f'dataset.path={path!r}'
  root = pathlib.Path(path).expanduser()
  train, val = root / 'train', root / 'val'
  if not train.is_dir() or not val.is_dir():
    raise UserError(f'{where}: {IMAGENET_LAYOUT}')
  classes, train_items = _class_tree(where, train, None)
  if not classes:
    raise UserError(f'{where}: train/ holds no class folder; {IMAGENET_LAYOUT}')
  if _class_folders(val):
    _, test_items = _class_tree(where, val, classes)
  else:
    test_items = _imagenet_flat_val(where, root, classes)
  return Listing(
    tuple(classes),
    {'train': train_items, 'test': test_items},
    {'name': 'imagenet', **array_cache.folder_key(root)},
  )


def _imagenet_flat_val(
  where: str, root: pathlib.Path, classes: list[str]
) -> list[tuple[int, Any, str]]:
  """The flat val/ folder, labelled by ROOT/LOC_val_solution.csv or else by
  the devkit's ground truth."""
  solution = root / IMAGENET_VAL_CSV
  devkit = root / DEVKIT_DATA
  if solution.is_file():
    wnids = _solution_wnids(solution)
  elif (devkit / DEVKIT_GROUND_TRUTH).is_file():
    solution = devkit / DEVKIT_GROUND_TRUTH
    wnids = _devkit_wnids(devkit)
  else:
    raise UserError(
      f'{where}: val/ is flat but neither {IMAGENET_VAL_CSV} nor '
      f'{DEVKIT_DATA}/{DEVKIT_GROUND_TRUTH} is there; {IMAGENET_LAYOUT}'
    )
  index = {c: i for i, c in enumerate(classes)}
  for image_id, wnid in wnids.items():
    if wnid not in index:
      raise UserError(
        f'{solution} labels {image_id} with {wnid!r}, which is not one of '
        f'the {len(classes)} training classes (train/<wnid>/)'
      )
  items = []
  for file in _image_files(root / 'val'):
    image_id = file.name.split('.')[0]
    if image_id not in wnids:
      raise UserError(f'{solution} has no label for val/{file.name}')
    items.append((index[wnids[image_id]], str(file), f'val/{file.name}'))
  if not items:
    raise UserError(f'{where}: val/ holds no image; {IMAGENET_LAYOUT}')
  return items


def _solution_wnids(solution: pathlib.Path) -> dict[str, str]:
  """{ImageId: wnid} of LOC_val_solution.csv (ImageId, then boxes whose
  first word is the wnid)."""
  wnids = {}
  with open(solution, newline='') as f:
    for row in csv.DictReader(f):
      try:
        wnids[row['ImageId']] = row['PredictionString'].split()[0]
      except (KeyError, IndexError, AttributeError):
        raise UserError(
          f'{solution}: expected the columns ImageId,PredictionString '
          '(the wnid first) on every row'
        ) from None
  return wnids


def _devkit_wnids(devkit: pathlib.Path) -> dict[str, str]:
  """{ILSVRC2012_val_%08d: wnid} of the devkit: line i of the ground truth
  holds the ILSVRC2012_ID of val image i, meta.mat maps IDs to wnids."""
  import scipy.io  # pylint: disable=g-import-not-at-top  # only here: slow

  try:
    synsets = scipy.io.loadmat(devkit / 'meta.mat')['synsets'].ravel()
    by_id = {
      int(np.ravel(s['ILSVRC2012_ID'])[0]): str(np.ravel(s['WNID'])[0])
      for s in synsets
    }
    ids = (devkit / DEVKIT_GROUND_TRUTH).read_text().split()
    return {
      f'ILSVRC2012_val_{i + 1:08d}': by_id[int(x)] for i, x in enumerate(ids)
    }
  except (OSError, ValueError, KeyError, IndexError) as e:
    raise UserError(
      f'{devkit}: cannot read meta.mat and {DEVKIT_GROUND_TRUTH} '
      f'({one_line(e)})'
    ) from None


def _list_image_folder(path: str | None) -> Listing:
  if not path:
    raise UserError(
      "dataset.path is not set; dataset.name='image_folder' needs a folder "
      f'({image_folder.LAYOUT})'
    )
  where = f'dataset.path={path!r}'
  root = pathlib.Path(path).expanduser()
  if not root.is_dir():
    raise UserError(
      f'{where} is not a folder; convert a train/<class>/*, '
      'test/<class>/* folder (extract an archive first)'
    )
  if not (root / 'train').is_dir():
    tops = _class_folders(root)
    if len(tops) == 1 and (tops[0] / 'train').is_dir():
      root = tops[0]
  if not (root / 'train').is_dir() or not (root / 'test').is_dir():
    raise UserError(f'{where}: {image_folder.LAYOUT}')
  classes, train_items = _class_tree(where, root / 'train', None)
  if not classes:
    raise UserError(f'{where}: train/ holds no class folder')
  _, test_items = _class_tree(where, root / 'test', classes)
  return Listing(
    tuple(classes),
    {'train': train_items, 'test': test_items},
    {'name': 'image_folder', **array_cache.folder_key(root)},
  )


def _list_arrays(config: ml_collections.ConfigDict) -> Listing:
  """A set the project decodes itself: its (memory-mapped) arrays."""
  ds = datasets.load(datasets.DataSpec.from_fields(config.to_dict()))
  items = {}
  for split, (images, labels) in {
    'train': (ds.train_images, ds.train_labels),
    'test': (ds.test_images, ds.test_labels),
  }.items():
    items[split] = [
      (int(labels[i]), images[i], f'{split} image {i}')
      for i in range(len(labels))
    ]
  return Listing(
    tuple(str(i) for i in range(ds.num_classes)),
    items,
    {'name': config.name, 'config': json.loads(config.to_json_best_effort())},
  )


def list_source(config: ml_collections.ConfigDict) -> Listing:
  """The listing of `config` (the `dataset` sub-config); reads no pixel of
  file-based sources."""
  name = config.get('name')
  if name == 'imagenet':
    if not config.get('path'):
      raise UserError(
        "dataset.path is not set; dataset.name='imagenet' needs ImageNet's "
        f'root ({IMAGENET_LAYOUT})'
      )
    root = pathlib.Path(config.path).expanduser()
    if not root.is_dir():
      raise UserError(f'dataset.path={config.path!r} is not a folder')
    return _list_imagenet(config.path)
  if name == 'image_folder':
    return _list_image_folder(config.get('path'))
  if name == 'array_record':
    raise UserError(
      "dataset.name='array_record' is converted already; train from it"
    )
  return _list_arrays(config)


def _read_source(source: Any) -> bytes:
  if isinstance(source, bytes):
    return source
  if isinstance(source, str):
    with open(source, 'rb') as f:
      return f.read()
  buffer = io.BytesIO()
  array = source[..., 0] if source.shape[-1] == 1 else source
  Image.fromarray(np.asarray(array)).save(buffer, format='PNG')
  return buffer.getvalue()


def write_shard(task: dict[str, Any]) -> dict[str, Any]:
  """Writes one shard (in a pool process) and its `<shard>.json`; returns
  the latter's content.

  Every image is decoded once: to check it and to count the train split's
  pixel values per channel (the mean and std, exactly, as
  `datasets.channel_stats` counts them).
  """
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top

  out = pathlib.Path(task['output_dir'])
  final = out / task['file']
  tmp = out / (task['file'] + '.tmp')
  histogram = np.zeros(3 * 256, np.int64)
  offsets = (256 * np.arange(3)).astype(np.uint16)
  grey, sizes, formats, pixels = True, set(), set(), 0
  writer = array_record_module.ArrayRecordWriter(
    str(tmp), array_record.WRITER_OPTIONS
  )
  try:
    for label, source, name in task['items']:
      data = _read_source(source)
      try:
        with Image.open(io.BytesIO(data)) as image:
          formats.add(image.format)
          grey = grey and image.mode in _GREY_MODES
          rgb = np.asarray(image.convert('RGB'))
      except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(
          f'{task["where"]}: cannot decode {name!r} as an image ({one_line(e)})'
        ) from None
      sizes.add(rgb.shape[:2])
      pixels += rgb.shape[0] * rgb.shape[1]
      if task['statistics']:
        flat = rgb.reshape(-1, 3) + offsets
        histogram += np.bincount(flat.ravel(), minlength=histogram.size)
      writer.write(array_record.encode_record(label, data))
  finally:
    writer.close()
  with open(tmp, 'rb+') as f:
    os.fsync(f.fileno())
  os.replace(tmp, final)
  done = {
    'file': task['file'],
    'records': len(task['items']),
    'bytes': final.stat().st_size,
    'sha256': array_record.sha256_file(final),
    'histogram': histogram.tolist(),
    'grey': grey,
    'sizes': sorted(list(s) for s in sizes)[:2],
    'formats': sorted(formats),
    'pixels': pixels,
  }
  _write_json(out / (task['file'] + '.json'), done)
  return done


def _write_json(path: pathlib.Path, value: Any) -> None:
  tmp = path.with_name(path.name + '.tmp')
  tmp.write_text(json.dumps(value))
  os.replace(tmp, path)


def _done_shard(out: pathlib.Path, file: str) -> dict[str, Any] | None:
  """The `<shard>.json` of a shard written completely, else None."""
  try:
    done = json.loads((out / (file + '.json')).read_text())
  except (OSError, ValueError):
    return None
  shard = out / file
  if not shard.is_file() or shard.stat().st_size != done.get('bytes'):
    return None
  return done


def _prepare_output(output_dir: str | None, identity: dict[str, Any]):
  """Creates or reopens the output folder; refuses one that is a file or
  holds something other than a conversion of this source."""
  if not output_dir:
    raise UserError('config.output_dir is not set; give the folder to write')
  out = pathlib.Path(output_dir).expanduser()
  if out.exists() and not out.is_dir():
    raise UserError(
      f'config.output_dir={output_dir!r} is a file; give a folder'
    )
  marker = out / CONVERSION_FILE
  if marker.is_file():
    try:
      stored = json.loads(marker.read_text())
    except (OSError, ValueError):
      stored = None
    if stored != identity:
      raise UserError(
        f'config.output_dir={output_dir!r} holds a conversion of another '
        f'source ({CONVERSION_FILE} differs); choose another output_dir'
      )
  elif out.is_dir() and any(out.iterdir()):
    raise UserError(
      f'config.output_dir={output_dir!r} is not empty and holds no '
      f'{CONVERSION_FILE}; choose an empty or new folder'
    )
  return out


def _info(listing: Listing, shards: dict[str, list[dict]]) -> dict[str, Any]:
  """info.json's content from the shards' own records."""
  grey = all(s['grey'] for split in shards.values() for s in split)
  channels = 1 if grey else 3
  histogram = np.sum(
    [np.asarray(s['histogram']) for s in shards['train']], axis=0
  ).reshape(3, 256)[:channels]
  values = np.arange(256, dtype=np.float64)
  total = np.maximum(histogram.sum(axis=1), 1)
  mean = histogram @ values / total
  var = (histogram * np.square(values - mean[:, None])).sum(axis=1) / total
  sizes = {
    tuple(x) for split in shards.values() for s in split for x in s['sizes']
  }
  return {
    'format': array_record.FORMAT,
    'classes': list(listing.classes),
    'counts': {split: len(listing.items[split]) for split in shards},
    'mean': mean.astype(np.float32).tolist(),
    'std': np.sqrt(var).astype(np.float32).tolist(),
    'channels': channels,
    'image_shape': [*next(iter(sizes)), channels] if len(sizes) == 1 else None,
    'image_formats': sorted(
      {f for v in shards.values() for s in v for f in s['formats']}
    ),
    'decoded_bytes': {
      split: channels * sum(s['pixels'] for s in v)
      for split, v in shards.items()
    },
    'shards': {
      split: [
        {k: s[k] for k in ('file', 'records', 'bytes', 'sha256')} for s in v
      ]
      for split, v in shards.items()
    },
  }


def convert(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Runs the conversion `config` (configs/convert.py) describes; returns
  info.json's content."""
  per_shard = config.get('records_per_shard', 1024)
  if not isinstance(per_shard, int) or per_shard < 1:
    raise UserError(
      f'config.records_per_shard={per_shard!r} must be an integer >= 1'
    )
  listing = list_source(config.dataset)
  for split in array_record.SPLITS:
    if not listing.items[split]:
      raise UserError(f'the {split} split of the source holds no image')
  identity = {
    'format': array_record.FORMAT,
    'source': listing.identity,
    'records_per_shard': per_shard,
  }
  out = _prepare_output(config.get('output_dir'), identity)
  if (out / array_record.INFO_FILE).is_file():
    logging.info('%s holds this conversion already, complete.', out)
    return json.loads((out / array_record.INFO_FILE).read_text())
  out.mkdir(parents=True, exist_ok=True)
  _write_json(out / CONVERSION_FILE, identity)
  tasks, shards = _plan(listing, out, per_shard, config.dataset.get('path'))
  total = sum(len(t['items']) for t in tasks)
  kept = sum(len(v) for v in shards.values()) - len(tasks)
  logging.info(
    'Converting %d images into %d shards in %s (%d shards kept from before), '
    'with %d processes.',
    total,
    len(tasks),
    out,
    kept,
    _workers(config),
  )
  _run_tasks(tasks, shards, _workers(config), total)
  for split in array_record.SPLITS:
    labels = np.asarray([item[0] for item in listing.items[split]], np.int32)
    np.save(out / array_record.labels_name(split), labels)
  info = _info(listing, shards)
  info['labels'] = {
    split: {
      'file': array_record.labels_name(split),
      'bytes': (out / array_record.labels_name(split)).stat().st_size,
      'sha256': array_record.sha256_file(out / array_record.labels_name(split)),
    }
    for split in array_record.SPLITS
  }
  info['source'] = listing.identity
  _write_json(out / array_record.INFO_FILE, info)
  for split in array_record.SPLITS:
    for s in shards[split]:
      (out / (s['file'] + '.json')).unlink(missing_ok=True)
  logging.info(
    'Wrote %s: %s records, %d classes.',
    out,
    info['counts'],
    len(listing.classes),
  )
  return info


def _plan(listing: Listing, out: pathlib.Path, per_shard: int, path):
  """(tasks of the shards left to write, {split: [shard record or None]}
  with the shards a killed conversion completed filled in)."""
  tasks, shards = [], {}
  for split in array_record.SPLITS:
    items = listing.items[split]
    count = -(-len(items) // per_shard)
    shards[split] = [None] * count
    for i in range(count):
      file = array_record.shard_name(split, i, count)
      done = _done_shard(out, file)
      if done is not None:
        shards[split][i] = done
        continue
      tasks.append(
        {
          'output_dir': str(out),
          'file': file,
          'split': split,
          'index': i,
          'items': items[i * per_shard : (i + 1) * per_shard],
          'statistics': split == 'train',
          'where': f'dataset.path={path!r}',
        }
      )
  return tasks, shards


def _workers(config) -> int:
  return config.get('workers', 0) or os.cpu_count() or 1


def _run_tasks(tasks, shards, workers: int, total: int) -> None:
  """Writes the shards of `tasks`, `workers` at a time, logging progress."""
  if not tasks:
    return
  start, written = time.perf_counter(), 0

  def record(done, task):
    nonlocal written
    shards[task['split']][task['index']] = done
    written += done['records']
    elapsed = time.perf_counter() - start
    rate = written / max(elapsed, 1e-9)
    logging.info(
      'Converted %d/%d images (%.0f images/s), ETA %.0f s.',
      written,
      total,
      rate,
      (total - written) / max(rate, 1e-9),
    )

  if workers == 1 or len(tasks) == 1:
    for task in tasks:
      record(write_shard(task), task)
    return
  # Spawned, not forked: the parent has started JAX's threads.
  with multiprocessing.get_context('spawn').Pool(workers) as pool:
    for task, done in zip(tasks, pool.imap(write_shard, tasks)):
      record(done, task)

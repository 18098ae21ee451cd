"""Converts a data set to ArrayRecord shards (`array_record.py`'s format).

  python launch.py --config=configs/convert.py --config.dataset.name=NAME \
      --config.dataset.path=P --config.output_dir=D

Sources: `imagenet` (ROOT/train/<wnid>/*.JPEG; ROOT/val/<wnid>/* or a flat
ROOT/val/ labelled by ROOT/LOC_val_solution.csv or the devkit's ground
truth; val becomes the `test` split), `image_folder` (a train/<class>/*, test/<class>/* folder: the files'
bytes are stored as they are, images of any size), and every other set the
project reads (`datasets.load`'s arrays, stored as PNG).

The listing (paths and labels, no pixels; `convert_listing.py`) is made and
checked before anything is written. Shards are written by a pool of processes (every core
by default; `shard_writer.py`), each under a temporary name renamed into place when complete,
with a small `<shard>.json` beside it holding its size, checksum and pixel
statistics: a killed conversion restarts at the first shard without one.
`conversion.json` records the source; an output folder holding another
source's conversion is refused, never written over. info.json is written
last, so a data set without it is never read; a rerun over a conversion
damaged since (a shard truncated or deleted) converts it again. A full
disk, an output that cannot be written or a stop signal (SIGTERM, SIGHUP,
Ctrl-C: the pool is ended in order) is one line, the finished shards kept
and the half-written ones removed.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import signal
import time
from typing import Any

from absl import logging
import ml_collections
import numpy as np

from icckd_jax.data import array_record
from icckd_jax.data import convert_pool
from icckd_jax.data import shard_writer
from icckd_jax.data.convert_listing import Listing, list_source
from icckd_jax.errors import Preempted, UserError, one_line

CONVERSION_FILE = 'conversion.json'


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


def _damage(out: pathlib.Path) -> str | None:
  """Why the finished conversion in `out` does not open (`read_info`: a
  shard or label file truncated or deleted since), or None if it opens."""
  try:
    array_record.read_info(str(out))
  except UserError as e:
    return str(e)
  return None


def _prepare_output(
  output_dir: str | None, identity: dict[str, Any], source: str | None
):
  """The output folder, unwritten; refuses one that is a file, lies inside
  the `source` folder, or holds something other than a conversion of this
  source."""
  if not output_dir:
    raise UserError('config.output_dir is not set; give the folder to write')
  out = pathlib.Path(output_dir).expanduser()
  if out.exists() and not out.is_dir():
    raise UserError(
      f'config.output_dir={output_dir!r} is a file; give a folder'
    )
  if source and out.resolve().is_relative_to(source):
    # The source's identity covers every file below it: the shards would
    # change it, and the rerun would find "another source".
    raise UserError(
      f'config.output_dir={output_dir!r} is inside the source folder '
      f'{source}; choose a folder outside it'
    )
  marker = out / CONVERSION_FILE
  if marker.is_file():
    try:
      stored = json.loads(marker.read_text())
    except (OSError, ValueError):
      stored = None
    if _same_but_max_side(stored, identity):
      raise UserError(
        f'config.output_dir={output_dir!r} holds this source converted with '
        f'max_side={stored.get("max_side", 0)}; rerun with that max_side, '
        'or choose another output_dir (one set never mixes the two)'
      )
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


def _same_but_max_side(stored: Any, identity: dict[str, Any]) -> bool:
  """Whether conversion.json's `stored` is this conversion's `identity`
  but for its max_side."""
  if not isinstance(stored, dict) or stored == identity:
    return False
  return {**stored, 'max_side': 0} == {**identity, 'max_side': 0}


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


def _max_side(config) -> int:
  """config.max_side (0: images as they are), checked before anything is
  written."""
  max_side = config.get('max_side', 0)
  if not isinstance(max_side, int) or max_side < 0 or 0 < max_side < 32:
    raise UserError(
      f'config.max_side={max_side!r} must be 0 (images as they are) or an '
      'integer >= 32'
    )
  return max_side


def _records_per_shard(config) -> int:
  """config.records_per_shard, checked before anything is written."""
  per_shard = config.get('records_per_shard', 1024)
  if not isinstance(per_shard, int) or per_shard < 1:
    raise UserError(
      f'config.records_per_shard={per_shard!r} must be an integer >= 1'
    )
  return per_shard


def _write_labels(listing, out: pathlib.Path) -> dict[str, dict[str, Any]]:
  """Writes each split's labels ([N] int32, .npy); info.json's entries."""
  entries = {}
  for split in array_record.SPLITS:
    labels = np.asarray([item[0] for item in listing.items[split]], np.int32)
    path = out / array_record.labels_name(split)
    np.save(path, labels)
    entries[split] = {
      'file': path.name,
      'bytes': path.stat().st_size,
      'sha256': array_record.sha256_file(path),
    }
  return entries


def convert(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Runs the conversion `config` (configs/convert.py) describes; returns
  info.json's content."""
  per_shard, workers = _records_per_shard(config), _workers(config)
  max_side = _max_side(config)
  listing = list_source(config.dataset)
  for split in array_record.SPLITS:
    if not listing.items[split]:
      raise UserError(f'the {split} split of the source holds no image')
  identity = {
    'format': array_record.FORMAT,
    'source': listing.identity,
    'records_per_shard': per_shard,
  }
  if max_side:  # absent at 0: conversions from before the field still match
    identity['max_side'] = max_side
  out = _prepare_output(
    config.get('output_dir'), identity, listing.identity.get('path')
  )
  # An unreadable info.json (hostile to json) is no finished conversion;
  # a readable one is, only while every shard it records is whole.
  finished = _finished_info(out)
  damage = _damage(out) if finished is not None else None
  if finished is not None and damage is None:
    logging.info('%s holds this conversion already, complete.', out)
    return finished
  _claim(out, identity)
  if damage:
    # Removed, so that a conversion stopped from here on is not called
    # complete while training refuses it.
    logging.warning('%s is damaged (%s); converting it again.', out, damage)
    (out / array_record.INFO_FILE).unlink()
  tasks, shards = _plan(
    listing, out, per_shard, config.dataset.get('path'), max_side
  )
  total = sum(len(t['items']) for t in tasks)
  kept = sum(len(v) for v in shards.values()) - len(tasks)
  logging.info(
    'Converting %d images into %d shards in %s (%d shards kept from before), '
    'with %d processes.',
    total,
    len(tasks),
    out,
    kept,
    workers,
  )
  try:
    _run_tasks(tasks, shards, workers, total)
    info = _finish(out, listing, shards, max_side)
  except OSError as e:
    raise _write_failed(out, e) from None
  logging.info(
    'Wrote %s: %s records, %d classes.',
    out,
    info['counts'],
    len(listing.classes),
  )
  return info


def _finish(out: pathlib.Path, listing: Listing, shards, max_side: int):
  """Writes info.json, the conversion complete, then removes the shards'
  progress files; returns info.json's content."""
  info = _info(listing, shards)
  info['labels'] = _write_labels(listing, out)
  info['source'] = listing.identity
  info['max_side'] = max_side or None
  shard_writer.write_json(out / array_record.INFO_FILE, info)
  for split in array_record.SPLITS:
    for s in shards[split]:
      (out / (s['file'] + '.json')).unlink(missing_ok=True)
  return info


def _plan(
  listing: Listing, out: pathlib.Path, per_shard: int, path, max_side: int
):
  """(tasks of the shards left to write, {split: [shard record or None]}
  with the shards a killed conversion completed filled in); the train
  split's images at most `max_side` on their longer side (0: as they are)."""
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
          'max_side': max_side if split == 'train' else 0,
          'where': f'dataset.path={path!r}',
        }
      )
  return tasks, shards


def _finished_info(out: pathlib.Path) -> dict[str, Any] | None:
  """info.json of a finished conversion in `out`, or None: none yet, or one
  that cannot be read (a 0-byte file left by a full disk or a crash), which
  the conversion then writes again."""
  path = out / array_record.INFO_FILE
  if not path.is_file():
    return None
  try:
    info = json.loads(path.read_text())
  except (OSError, ValueError) as e:
    logging.warning('%s cannot be read (%s); converting again.', path, e)
    return None
  return info if isinstance(info, dict) else None


def _claim(out: pathlib.Path, identity: dict[str, Any]) -> None:
  """Creates `out` and writes conversion.json there, the conversion's first
  write: a folder that cannot be written (read-only, another user's, a
  full disk) is refused in one line, with nothing written."""
  created = not out.exists()
  try:
    out.mkdir(parents=True, exist_ok=True)
    shard_writer.write_json(out / CONVERSION_FILE, identity)
  except OSError as e:
    if created and out.is_dir() and not any(out.iterdir()):
      out.rmdir()
    raise _write_failed(out, e) from None


def _write_failed(out: pathlib.Path, error: OSError) -> UserError:
  """The one line of a write into `out` that failed; the shards finished
  before it are kept, and no half-written one is left (`_run_tasks`)."""
  reason = error.strerror or one_line(error)
  if error.errno in (errno.ENOSPC, errno.EDQUOT):
    return UserError(
      f'the disk holding {out} is full ({reason}); the shards written so '
      'far are kept: free space and rerun the same command to carry on'
    )
  return UserError(
    f'cannot write in config.output_dir={str(out)!r} ({reason}); give a '
    'folder this user can write, or make it writable and rerun'
  )


def _workers(config) -> int:
  """config.workers, the processes writing shards (0: every core), checked
  before anything is written."""
  workers = config.get('workers', 0)
  if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
    raise UserError(
      f'config.workers={workers!r} must be an integer >= 0 (0: every core)'
    )
  return workers or os.cpu_count() or 1


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

  try:
    with convert_pool.signals_stop():
      convert_pool.write_all(tasks, workers, record)
  except convert_pool.Signalled as s:
    # Counted on disk: a worker may have finished a shard it had no time
    # to report.
    left = sum(
      _done_shard(pathlib.Path(t['output_dir']), t['file']) is None
      for t in tasks
    )
    raise Preempted(
      s.signum,
      f'{signal.Signals(s.signum).name}: the conversion stopped with '
      f'{left} of {sum(len(v) for v in shards.values())} shards left to '
      'write; rerun the same command to write them',
    ) from None
  finally:
    # A shard a signal or an error cut short (the pool's workers have
    # ended): never taken for complete, but space a full disk needs back.
    for task in tasks:
      for name in (task['file'] + '.tmp', task['file'] + '.json.tmp'):
        (pathlib.Path(task['output_dir']) / name).unlink(missing_ok=True)

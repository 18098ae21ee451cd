"""The data a run started on, and the input path it took: recorded, and
checked on every resume before a checkpoint is touched.

A run writes WORKDIR/data.json (`layout.DATA_FILE`) beside config.json:

  {'data': {'name', 'classes', 'counts': {'train', 'test'}, 'image_shape',
            'digest'}, 'input': 'resident' | 'stream',
   'decode': 'torchvision' | 'exact' | 'fast' (streamed runs)}

`digest` is a converted set's `array_record.Info.digest` (its classes and
the SHA-256 the conversion recorded of every file; None for the sets the
project decodes itself, whose config fields name them). A resume on other
data (another class count, other images of the same shapes) is refused in
one line, so an intact checkpoint is never restored into a model of
another shape (and never taken for a damaged one); `input.mode='auto'`
takes the path the run started on, not one chosen afresh from the host's
free memory, and `input.decode='auto'` the decode it started with (a
streamed run that recorded none decoded 'exact'); another decode, which
changes the pixels of every crop, is refused. Runs of older versions have
no data.json: accepted with a warning (runs/compat.py).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from absl import logging

from icckd_jax.data import array_record
from icckd_jax.data import datasets
from icckd_jax.errors import UserError
from icckd_jax.input_pipeline import stream
from icckd_jax.input_pipeline.source import InputSource
from icckd_jax.runs import compat
from icckd_jax.runs import layout
from icckd_jax.runs.spec import Inputs


def of(data: datasets.DataRequest, source: InputSource) -> dict[str, Any]:
  """The record of `source` (loaded from `data`, config.dataset) as
  data.json holds it."""
  digest = None
  if data.name == 'array_record':
    digest = array_record.read_info(data.path).digest
  decode = source.decode
  return {
    'data': {
      'name': data.name,
      'classes': int(source.num_classes),
      'counts': {
        'train': len(source.train_labels),
        'test': len(source.test_labels),
      },
      'image_shape': list(source.image_shape),
      'digest': digest,
    },
    'input': source.input_path,
    **({'decode': decode} if decode else {}),
  }


def _decode(found: dict[str, Any]) -> str | None:
  """The decode a recorded streamed run used (None: a resident one)."""
  if found.get('input') != 'stream':
    return None
  return found.get('decode', stream.DECODE_BEFORE_RECORDED)


def _resumes(workdir: str | None) -> bool:
  """Whether WORKDIR holds a checkpoint a run would resume from."""
  if not workdir:
    return False
  return any(
    any(name.isdigit() for name in os.listdir(directory))
    for directory in (
      os.path.join(workdir, kind) for kind in layout.CHECKPOINT_DIRS.values()
    )
    if os.path.isdir(directory)
  )


def recorded(workdir: str | None) -> dict[str, Any] | None:
  """WORKDIR's data.json when it has a checkpoint to resume, else None
  (a new run, or one of a version that did not record it)."""
  if not _resumes(workdir):
    return None
  return layout.read_json(
    os.path.join(workdir, layout.DATA_FILE),
    'it records the data the run started on: restore it, or move it aside '
    'to resume without the check',
    lambda found: (
      isinstance(found, dict) and isinstance(found.get('data'), dict)
    ),
  )


def resumed_inputs(inputs: Inputs, workdir: str | None) -> Inputs:
  """`inputs` (config.input), with mode 'auto' resolved to the path the run
  in WORKDIR started on: the path decides the augmentation's pixels, and
  'auto' would choose it afresh from memory the page cache moves; decode
  'auto' likewise to the decode it started with."""
  found = recorded(workdir)
  if found is None or 'input' not in found:
    return inputs
  if inputs.mode == 'auto':
    logging.info(
      "Input: input.mode='auto' resumes on the %s path the run started on.",
      found['input'],
    )
    inputs = dataclasses.replace(inputs, mode=found['input'])
  decode = _decode(found)
  if inputs.decode == 'auto' and decode is not None:
    inputs = dataclasses.replace(inputs, decode=decode)
  return inputs


def check(workdir: str | None, now: dict[str, Any]) -> None:
  """Refuses to resume WORKDIR's run on data or an input path other than
  those it started on (`now`: `of` the data loaded for this start). Runs
  that recorded none (older versions) pass with a warning."""
  if not _resumes(workdir):
    return
  found = recorded(workdir)
  if compat.data_unrecorded(found):
    logging.warning(
      'The run in %s does not record the data it started on (an older '
      'version wrote it); resuming on %s without checking it.',
      workdir,
      now['data']['name'],
    )
    return
  before, data = found['data'], now['data']
  differences = [
    f'{key} {before.get(key)!r} (now {data[key]!r})'
    for key in ('name', 'classes', 'counts', 'image_shape', 'digest')
    if key in before and before[key] != data[key]
  ]
  if differences:
    raise UserError(
      f'workdir {workdir} holds a run started on other data: '
      f'{"; ".join(differences)}; resume it on the data set it started on '
      '(config.dataset), or choose another --workdir'
    )
  if found.get('input', now['input']) != now['input']:
    raise UserError(
      f'workdir {workdir} holds a run started on the {found["input"]} '
      f"input path; resume it with config.input.mode='{found['input']}' "
      "or 'auto'"
    )
  before = _decode(found)
  if before is not None and now.get('decode', before) != before:
    raise UserError(
      f'workdir {workdir} holds a run started with config.input.decode='
      f"'{before}', which decides its crops' pixels; resume it with "
      f"input.decode='{before}' or 'auto'"
    )

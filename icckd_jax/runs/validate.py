"""Config checks that run before a run creates or writes anything.

Two kinds:

* `check_config(config)`: every numeric field is in range (no zero where a
  count or a divisor is needed, no negative rate, no NaN or infinity
  anywhere) and every choice is known, as `config_schema.fields()` declares.
  A field is named by its dotted path in the error, with what would be
  valid.
* `check_resumable(config, workdir)`: a workdir that already holds a run may
  only be resumed by a config that builds the same state and the same run;
  the fields `config_schema.resumable()` names may differ (more epochs,
  another logging or checkpoint interval, another evaluation batch or device
  count), and those the stage does not use.

Both only read; a rejected config leaves the workdir exactly as it was.
"""

import json
import math
import os
from typing import Any, Iterable

import ml_collections

from icckd_jax.data import array_record
from icckd_jax.errors import UserError
from icckd_jax.runs import compat
from icckd_jax.runs import config_schema
from icckd_jax.runs import layout


def config_as_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """`config` as the plain JSON tree saved with a run (config.json)."""
  return json.loads(config.to_json_best_effort())


def _leaves(tree: Any, prefix: str = ''):
  """(dotted path, value) of every leaf of a nested dict."""
  if isinstance(tree, dict):
    for key, value in tree.items():
      yield from _leaves(value, f'{prefix}{key}.')
  else:
    yield prefix[:-1], tree


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_config(config: ml_collections.ConfigDict, prefix: str = '') -> None:
  """Raises a one-line UserError for the first field out of range or choice.

  Fields without a rule (a config of another branch, say) are still
  required to be finite; `lr_decay_epochs` must be non-negative integers.
  """
  check_dataset(config, prefix)
  tree = config.to_dict()
  for path, value in _leaves(tree):
    name = f'config.{prefix}{path}'
    if path == 'lr_decay_epochs':
      if not all(
        isinstance(e, int) and not isinstance(e, bool) and e >= 0
        for e in value or ()
      ):
        raise UserError(f'{name}={tuple(value)!r} must hold integers >= 0')
      continue
    declared = config_schema.field(path)
    if isinstance(value, str) and declared.choices is not None:
      if value not in declared.choices:
        raise UserError(
          f'{name}={value!r} is unknown; choose one of: '
          + ', '.join(declared.choices)
        )
      continue
    if not _is_number(value):
      continue
    rule, valid = declared.rule
    if not math.isfinite(value) or not rule(value):
      raise UserError(f'{name}={value!r} is out of range; it must be {valid}')


# Data sets generated in memory: a path would be silently ignored.
_PATHLESS_DATASETS = ('synthetic',)


def check_dataset(config: ml_collections.ConfigDict, prefix: str = '') -> None:
  """Refuses data set fields the chosen set would ignore."""
  dataset = config.get('dataset')
  if dataset is None:
    return
  if dataset.get('name') in _PATHLESS_DATASETS and dataset.get('path'):
    raise UserError(
      f'config.{prefix}dataset.path={dataset.path!r} is set but '
      f'the {dataset.name!r} data set is generated and reads no '
      'file; drop the path or choose a data set that reads one'
    )


# The generated set's own fields: every other set has its own sizes,
# classes and channels, and ignores them.
_GENERATED_FIELDS = ('num_train', 'num_test', 'num_classes', 'channels', 'seed')


def check_given_fields(
  config: ml_collections.ConfigDict, given: Iterable[str]
) -> None:
  """Refuses fields given on the command line (`given`: dotted paths below
  `config`) that the data set would not read, as they would be recorded
  with the run as if used: the generated set's fields for a set that has
  its own, and an `image_size` other than a converted set's one size
  (`_check_image_size`). A config file's own values (a smoke variant's
  sizes) are left alone: only what was asked is refused."""
  for path in given:
    *section, field = path.split('.')
    if section[-1:] != ['dataset']:
      continue
    dataset = config
    for key in section:
      dataset = dataset.get(key) if dataset is not None else None
    if dataset is None or dataset.get('name') in _PATHLESS_DATASETS:
      continue
    if field == 'image_size':
      _check_image_size(path, dataset)
    if field not in _GENERATED_FIELDS:
      continue
    raise UserError(
      f'config.{path}={dataset.get(field)!r} is read only by the generated '
      f"'synthetic' set; dataset.name={dataset.get('name')!r} has its own "
      '(its data decides it): drop the field'
    )


def _check_image_size(path: str, dataset: ml_collections.ConfigDict) -> None:
  """A converted set whose images all have one size is read at that size,
  resident or streamed, unless augment='resized_crop' crops it to
  `image_size`: another size given is refused. (A set that cannot be
  opened is left to the data's own refusal.)"""
  if dataset.get('name') != 'array_record':
    return
  if dataset.get('augment', 'auto') == 'resized_crop':
    return
  try:
    info = array_record.read_info(dataset.get('path'))
  except UserError:
    return
  size = dataset.get('image_size')
  if info.image_shape is None or tuple(info.image_shape[:2]) == (size, size):
    return
  height, width = info.image_shape[:2]
  raise UserError(
    f'config.{path}={size!r} is not read: the images of '
    f'{str(info.root)!r} are all {height}x{width}, and the run reads them '
    "at that size; drop the field, or set dataset.augment='resized_crop' "
    'to crop them to it'
  )


def stored_config(workdir: str | None) -> dict[str, Any] | None:
  """The config saved with WORKDIR's checkpoints, or None for a new run."""
  if not workdir:
    return None
  return layout.read_json(
    os.path.join(workdir, layout.CONFIG_FILE),
    'move it aside to resume from the checkpoints alone (their own config '
    'is checked)',
  )


def config_differences(
  stored: dict[str, Any], new: dict[str, Any], ignore=None
) -> list[str]:
  """'field=stored→new' for each leaf that differs, outside `ignore`
  (default: the fields a run may resume with changed, and those the new
  config's stage does not use). A field the stored config lacks counts as
  its added default (compat.added_defaults)."""
  if ignore is None:
    ignore = config_schema.resumable() + config_schema.unused(new)
  added = compat.added_defaults()
  old_leaves, new_leaves = dict(_leaves(stored)), dict(_leaves(new))
  differences = []
  for path in sorted(set(old_leaves) | set(new_leaves)):
    if path in ignore:
      continue
    old = old_leaves.get(path, added.get(path, '<absent>'))
    now = new_leaves.get(path, '<absent>')
    if isinstance(old, list):
      old = tuple(old)
    if isinstance(now, list):
      now = tuple(now)
    if old != now:
      differences.append(f'{path}={old!r} (now {now!r})')
  return differences


# The item of a checkpoint that holds the config it was saved with.
CHECKPOINT_CONFIG = os.path.join('config', 'metadata')


def checkpoint_configs(workdir: str | None) -> dict[str, dict[str, Any]]:
  """{checkpoint path: config saved inside it} of the newest committed
  checkpoint of each kind in WORKDIR. These, not config.json (a user may
  edit or remove it), say what run the workdir holds. Unreadable ones are
  left out: restoring will treat them as damaged."""
  found = {}
  for kind in (
    layout.CHECKPOINT_DIRS[which] for which in ('last', 'preempted', 'best')
  ):
    directory = os.path.join(workdir or '', kind)
    if not workdir or not os.path.isdir(directory):
      continue
    steps = sorted(
      (int(name) for name in os.listdir(directory) if name.isdigit()),
      reverse=True,
    )
    for step in steps:
      path = os.path.join(directory, str(step), CHECKPOINT_CONFIG)
      try:
        with open(path) as f:
          found[os.path.join(directory, str(step))] = json.load(f)
        break
      except (OSError, ValueError):
        continue
  return found


def check_resumable(
  config: ml_collections.ConfigDict, workdir: str | None
) -> None:
  """Refuses to resume WORKDIR's run with a config that builds another run.

  The new config is compared with config.json and with the config stored
  inside each kind's newest checkpoint, so that an edited or removed
  config.json cannot let another run resume (or take an intact checkpoint
  of another model for a damaged one).
  """
  new = json.loads(config.to_json_best_effort())
  stored = {os.path.join(workdir, layout.CONFIG_FILE): stored_config(workdir)}
  stored.update(checkpoint_configs(workdir))
  for source, saved in stored.items():
    if saved is None:
      continue
    differences = config_differences(saved, new)
    if differences:
      raise UserError(
        f'workdir {workdir} holds a run with '
        f'{"; ".join(differences)} (from {source}); resume it '
        'with the same config or choose another --workdir'
      )

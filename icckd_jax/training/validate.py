"""Config checks that run before a run creates or writes anything.

Two kinds:

* `check_config(config)`: every numeric field is in range (no zero where a
  count or a divisor is needed, no negative rate, no NaN or infinity
  anywhere). A field is named by its dotted path in the error, with what
  would be valid.
* `check_resumable(config, workdir)`: a workdir that already holds a run may
  only be resumed by a config that builds the same state and the same run;
  the fields in `RESUMABLE_CHANGES` may differ (more epochs, another logging
  or checkpoint interval, another evaluation batch or device count).

Both only read; a rejected config leaves the workdir exactly as it was.
"""

import json
import math
import os
from collections.abc import Callable
from typing import Any

import ml_collections

from icckd_jax.errors import UserError

CONFIG_FILE = 'config.json'


def config_as_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """`config` as the plain JSON tree saved with a run (config.json)."""
  return json.loads(config.to_json_best_effort())

# Fields a resumed run may change: none of them changes the train state, the
# compiled step or the numbers the run computes (evaluation and results are
# independent of the device count, which is tested).
RESUMABLE_CHANGES = ('workdir', 'num_epochs', 'log_every_steps',
                     'checkpoint_every_epochs', 'keep_checkpoints',
                     'eval_batch_size', 'eval_every_epochs', 'num_devices',
                     'mode')

# (predicate, what would be valid) for each checked field, by dotted path.
_Rule = tuple[Callable[[Any], bool], str]


def _int_at_least(low: int) -> _Rule:
  return (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low,
          f'an integer >= {low}')


_POSITIVE = (lambda v: v > 0, 'a finite number > 0')
_NON_NEGATIVE = (lambda v: v >= 0, 'a finite number >= 0')
_FRACTION = (lambda v: 0 <= v < 1, 'a number in [0, 1)')
_ANY = (lambda v: True, 'a finite number')

RULES: dict[str, _Rule] = {
    'seed': _int_at_least(0),
    'num_epochs': _int_at_least(1),
    'batch_size': _int_at_least(1),
    'eval_batch_size': _int_at_least(1),
    'eval_every_epochs': _int_at_least(1),
    'learning_rate': _POSITIVE,
    'lr_decay_rate': _POSITIVE,
    'momentum': _FRACTION,
    'weight_decay': _NON_NEGATIVE,
    'crop_padding': _int_at_least(0),
    'num_devices': _int_at_least(0),
    'log_every_steps': _int_at_least(1),
    'checkpoint_every_epochs': _int_at_least(1),
    # 0 would keep nothing to resume from.
    'keep_checkpoints': _int_at_least(1),
    'dataset.num_train': _int_at_least(1),
    'dataset.num_test': _int_at_least(1),
    'dataset.num_classes': _int_at_least(2),
    'dataset.image_size': _int_at_least(1),
    'dataset.channels': _int_at_least(1),
    'dataset.seed': _int_at_least(0),
    'dataset.train_subset': _int_at_least(0),
    'dataset.test_subset': _int_at_least(0),
    'icc.lam': _NON_NEGATIVE,
    'icc.tau': _POSITIVE,
    # δ = -1 lets every anchor through, δ >= 1 none: any finite value is a
    # meaningful gate (docs/method.md §3).
    'icc.delta': _ANY,
    'icc.head_dim': _int_at_least(1),
    'cache.size': _int_at_least(0),
    'distill.temperature': _POSITIVE,
    'distill.gamma': _NON_NEGATIVE,
    'distill.alpha': _NON_NEGATIVE,
    'distill.beta': _NON_NEGATIVE,
    'distill.w_dist': _NON_NEGATIVE,
    'distill.w_angle': _NON_NEGATIVE,
}


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
  """Raises a one-line UserError for the first numeric field out of range.

  Fields without a rule (a config of another branch, say) are still
  required to be finite; `lr_decay_epochs` must be non-negative integers.
  """
  check_dataset(config, prefix)
  tree = config.to_dict()
  for path, value in _leaves(tree):
    name = f'config.{prefix}{path}'
    if path == 'lr_decay_epochs':
      if not all(_int_at_least(0)[0](e) for e in value or ()):
        raise UserError(f'{name}={tuple(value)!r} must hold integers >= 0')
      continue
    if not _is_number(value):
      continue
    rule, valid = RULES.get(path, _ANY)
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
    raise UserError(f'config.{prefix}dataset.path={dataset.path!r} is set but '
                    f'the {dataset.name!r} data set is generated and reads no '
                    'file; drop the path or choose a data set that reads one')


def stored_config(workdir: str | None) -> dict[str, Any] | None:
  """The config saved with WORKDIR's checkpoints, or None for a new run."""
  if not workdir:
    return None
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f'{path} cannot be read ({e}); move it aside to resume '
                    'from the checkpoints alone (their own config is checked)'
                    ) from None


# Fields added after runs were saved without them, with the value that
# describes how those runs behaved: such a run resumes only with that value.
ADDED_FIELDS = {'eval_every_epochs': 1, 'icc.empty_anchors': 'count'}


def config_differences(stored: dict[str, Any], new: dict[str, Any],
                       ignore=RESUMABLE_CHANGES) -> list[str]:
  """'field=stored→new' for each leaf that differs, outside `ignore`."""
  old_leaves, new_leaves = dict(_leaves(stored)), dict(_leaves(new))
  differences = []
  for path in sorted(set(old_leaves) | set(new_leaves)):
    if path in ignore:
      continue
    old = old_leaves.get(path, ADDED_FIELDS.get(path, '<absent>'))
    now = new_leaves.get(path, '<absent>')
    if isinstance(old, list):
      old = tuple(old)
    if isinstance(now, list):
      now = tuple(now)
    if old != now:
      differences.append(f'{path}={old!r} (now {now!r})')
  return differences


# Where the checkpoint manager (checkpoint.py) keeps each kind, and the
# item of a checkpoint that holds the config it was saved with.
CHECKPOINT_KINDS = ('checkpoints', 'preempted', 'best')
CHECKPOINT_CONFIG = os.path.join('config', 'metadata')


def checkpoint_configs(workdir: str | None) -> dict[str, dict[str, Any]]:
  """{checkpoint path: config saved inside it} of the newest committed
  checkpoint of each kind in WORKDIR. These, not config.json (a user may
  edit or remove it), say what run the workdir holds. Unreadable ones are
  left out: restoring will treat them as damaged."""
  found = {}
  for kind in CHECKPOINT_KINDS:
    directory = os.path.join(workdir or '', kind)
    if not workdir or not os.path.isdir(directory):
      continue
    steps = sorted((int(name) for name in os.listdir(directory)
                    if name.isdigit()), reverse=True)
    for step in steps:
      path = os.path.join(directory, str(step), CHECKPOINT_CONFIG)
      try:
        with open(path) as f:
          found[os.path.join(directory, str(step))] = json.load(f)
        break
      except (OSError, ValueError):
        continue
  return found


def check_resumable(config: ml_collections.ConfigDict,
                    workdir: str | None) -> None:
  """Refuses to resume WORKDIR's run with a config that builds another run.

  The new config is compared with config.json and with the config stored
  inside each kind's newest checkpoint, so that an edited or removed
  config.json cannot let another run resume (or take an intact checkpoint
  of another model for a damaged one).
  """
  new = json.loads(config.to_json_best_effort())
  stored = {os.path.join(workdir, CONFIG_FILE): stored_config(workdir)}
  stored.update(checkpoint_configs(workdir))
  for source, saved in stored.items():
    if saved is None:
      continue
    differences = config_differences(saved, new)
    if differences:
      raise UserError(f'workdir {workdir} holds a run with '
                      f'{"; ".join(differences)} (from {source}); resume it '
                      'with the same config or choose another --workdir')

"""Runs written by older versions: every reading of what they left, here.

A workdir, run store or checkpoint written by an earlier version of the
package keeps resuming, evaluating and keeping its key. Each shim below says
what it reads, which version wrote that (the commit that changed it), and
when it can go: when no store, workdir or checkpoint written before that
commit is kept. tests/test_old_checkpoints.py, tests/test_old_runs.py and
tests/test_config_schema.py hold them to it.

A distiller's setting added later declares its own added default beside it
(`distillers.settings.Setting.added_default`); `added_defaults` reads those
too.
"""

from typing import Any

import ml_collections

from icckd_jax import distillers
from icckd_jax.distillers import settings
from icckd_jax.runs.train_state import TrainState

# Config fields added after runs were saved, and the value that describes
# how those runs behaved: a stored config without the field reads it, and
# such a run resumes only with that value. Each can go when no run saved
# before the commit named is kept.
ADDED_DEFAULTS: dict[str, Any] = {
  # 689d313: runs before evaluated every epoch.
  'eval_every_epochs': 1,
  # 689d313: runs before counted an anchor without negatives.
  'icc.empty_anchors': 'count',
  # 7bb7c92: runs before were resident, which 'auto' still gives them.
  'input.mode': 'auto',
  # e691057: runs before had the augmentation 'auto' gives.
  'dataset.augment': 'auto',
  # 606144a: runs before normalised with the train split's statistics.
  'dataset.normalization': 'measured',
  # input37: runs before decoded at full size, which 'auto' still gives them.
  'input.decode': 'auto',
  # issue 38 (DOT): runs before trained with SGD, reading no dot_delta.
  'optimizer': 'sgd',
  'dot_delta': 0.075,
}

# Config sections added after run stores were written (7bb7c92): a run key
# leaves out their fields at their added defaults, so that the runs stored
# before keep their keys. Can go with the stores written before 7bb7c92.
ADDED_SECTIONS = ('input',)

# Top-level fields added after run stores were written and compiled steps
# keyed (issue 38): a key leaves them out at their added defaults, so that
# runs and steps keyed before keep their keys. Can go with those stores.
ADDED_TOP_LEVEL = ('optimizer', 'dot_delta')

# The dataset fields of a teacher's saved config that a student compares
# though teachers saved before 606144a lack them: read as their `DataRequest`
# default, the value those teachers had. Can go with those teachers.
ADDED_DATA_FIELDS = ('normalization',)


def added_defaults() -> dict[str, Any]:
  """{dotted field: value of runs saved before it existed}: ADDED_DEFAULTS
  and the distillers' settings added later."""
  found = dict(ADDED_DEFAULTS)
  for name, setting in distillers.declarations().items():
    if setting.added_default is not settings.ABSENT:
      found[f'distill.{name}'] = setting.added_default
  return found


def top_level_at_added_default(
  config: ml_collections.ConfigDict,
) -> tuple[str, ...]:
  """The fields of ADDED_TOP_LEVEL whose value is their added default: left
  out of a compiled step's key (runs/spec.py) and a run's."""
  return tuple(
    name
    for name in ADDED_TOP_LEVEL
    if name in config and config[name] == ADDED_DEFAULTS[name]
  )


def at_added_default(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The fields of ADDED_SECTIONS and ADDED_TOP_LEVEL whose value is their
  added default: left out of a run's key (experiments/sweep/run_store.py)."""
  tree = config.to_dict()
  found = list(top_level_at_added_default(config))
  for section in ADDED_SECTIONS:
    for name, value in (tree.get(section) or {}).items():
      path = f'{section}.{name}'
      if path in ADDED_DEFAULTS and value == ADDED_DEFAULTS[path]:
        found.append(path)
  return tuple(found)


def distill_value(distill, name: str) -> Any:
  """config.distill[`name`], or the added default of a setting a run saved
  before it existed lacks; KeyError if it has none."""
  if name in distill:
    return distill[name]
  added = distillers.declarations()[name].added_default
  if added is settings.ABSENT:
    raise KeyError(f'config field {name!r} is missing')
  return added


# Checkpoints saved before f12c83a held a student's distiller buffers
# (CRD's memory bank, a connector's BatchNorm statistics) under
# TrainState.cache, where a teacher holds its negative cache. Can go with
# the checkpoints written before f12c83a.


def written_before_buffers(saved) -> bool:
  """Whether a saved state's tree (its Orbax metadata: a mapping of the
  fields) is of the layout without `distiller_buffers`, where a student's
  distiller buffers were saved under `cache`."""
  return 'cache' in saved and 'distiller_buffers' not in saved


def legacy_target(abstract: TrainState) -> dict:
  """The restore target, in the layout without `distiller_buffers`, of a
  state shaped as `abstract`: the distiller buffers (a student never holds
  a negative cache) stand under `cache`."""
  buffers = abstract.distiller_buffers
  return {
    'step': abstract.step,
    'params': abstract.params,
    'batch_stats': abstract.batch_stats,
    'opt_state': abstract.opt_state,
    'cache': abstract.cache if buffers is None else buffers,
  }


def from_legacy(abstract: TrainState, restored: dict) -> TrainState:
  """The TrainState of a `restored` tree (`legacy_target`'s layout) of a
  state shaped as `abstract`."""
  holds_buffers = abstract.distiller_buffers is not None
  return TrainState(
    step=restored['step'],
    params=restored['params'],
    batch_stats=restored['batch_stats'],
    opt_state=restored['opt_state'],
    cache=None if holds_buffers else restored['cache'],
    distiller_buffers=restored['cache'] if holds_buffers else None,
  )


def last_test(meta: dict[str, Any]) -> dict[str, float] | None:
  """The test figures of a checkpoint's last evaluation. A checkpoint saved
  before fb165b3 holds every epoch's record ('history', otherwise unread:
  metrics.jsonl has them), the last evaluated one among them; this reading
  can go with those checkpoints."""
  if 'test' in meta:
    return meta['test']
  for record in reversed(meta.get('history') or []):
    tested = {k: v for k, v in record.items() if k.startswith('test_')}
    if tested:
      return tested
  return None


def teacher_fingerprint(teacher_eval: dict[str, Any]) -> dict | None:
  """The teacher's fingerprint in a student's teacher_eval.json; None for
  a student started before edf5f77, which did not record it (it is not
  checked). Can go with the students started before edf5f77."""
  return teacher_eval.get('fingerprint')


def result_before_epochs(result: Any) -> bool:
  """Whether a result.json is of the report before 1131aac (no per-epoch
  figures): not read, and rewritten by the next worker. Can go with the
  sweeps written before 1131aac."""
  return isinstance(result, dict) and 'epochs' not in result


def data_unrecorded(record: dict[str, Any] | None) -> bool:
  """Whether a run resumes without a data.json (`record` None): runs started
  before 314309c did not record the data and input path they started on;
  they resume with a warning, their data unchecked (a checkpoint of other
  shapes is still refused, never taken for damage). Can go with the runs
  started before 314309c."""
  return record is None

"""The ablation runner: settings × seeds, each a teacher then its student.

A sweep config holds a `base` pipeline config (teacher + student), `seeds`,
and `settings`, each a string 'NAME: field=value, field=value' of overrides
of the base (fields dotted from the pipeline config, values Python
literals), e.g. 'delta=0.2: teacher.icc.delta=0.2'. Runs go to
WORKDIR/<setting>/seed_<seed>/{teacher,student}. All runs share one process
and one `Reuse`, so the data set is loaded once and a step is compiled once
per distinct shape (δ, λ ≠ 0, τ and the distillation weights are traced).

Restarting a sweep skips finished runs (they hold result.json) and resumes
the one in progress. The report (results.csv, summary.md, plots) is written
after every run, so a sweep in progress already shows what it has.
"""

import ast
import dataclasses
import json
import os
from typing import Any

from absl import logging
import ml_collections

from icckd_jax.experiments import method
from icckd_jax.experiments import report
from icckd_jax.training import train
from icckd_jax.errors import UserError
from icckd_jax.training.reuse import Reuse

SWEEP_FILE = 'sweep.json'


@dataclasses.dataclass(frozen=True)
class Setting:
  name: str
  overrides: dict[str, Any]


def parse_setting(text: str) -> Setting:
  """'NAME: a.b=1, c=0.5' -> Setting('NAME', {'a.b': 1, 'c': 0.5})."""
  name, _, rest = text.partition(':')
  name = name.strip()
  if not name or '/' in name:
    raise UserError(f'config.settings entry {text!r} needs a name without '
                    "'/' before ':'")
  overrides = {}
  for item in filter(None, (part.strip() for part in rest.split(','))):
    field, eq, value = item.partition('=')
    if not eq:
      raise UserError(f'config.settings entry {text!r}: {item!r} is not '
                      'field=value')
    try:
      overrides[field.strip()] = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
      overrides[field.strip()] = value.strip()
  return Setting(name, overrides)


def apply_overrides(base: ml_collections.ConfigDict,
                    overrides: dict[str, Any]) -> ml_collections.ConfigDict:
  """A copy of `base` with dotted `overrides` set; unknown fields are errors."""
  config = ml_collections.ConfigDict(base.to_dict())
  for field, value in overrides.items():
    *parents, leaf = field.split('.')
    node = config
    for part in parents:
      if part not in node:
        raise UserError(f'config.settings: {field!r} is not a field of the '
                        'pipeline config')
      node = node[part]
    if leaf not in node:
      raise UserError(f'config.settings: {field!r} is not a field of the '
                      'pipeline config')
    try:
      node[leaf] = value
    except TypeError as e:
      raise UserError(f'config.settings: {field}={value!r}: {e}') from None
  return config


def run_config(base: ml_collections.ConfigDict, setting: Setting,
               seed: int) -> ml_collections.ConfigDict:
  config = apply_overrides(base, setting.overrides)
  config.teacher.seed = seed
  config.student.seed = seed
  return config


def run_sweep(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  """Runs every (setting, seed) not yet finished; returns the result rows."""
  workdir = train.prepare_workdir(workdir)
  settings = [parse_setting(s) for s in config.settings]
  names = [s.name for s in settings]
  if len(set(names)) != len(names):
    raise UserError(f'config.settings has repeated names: {names}')
  if not config.seeds:
    raise UserError('config.seeds is empty')
  # Fail on a bad override before hours of training, not after.
  for setting in settings:
    apply_overrides(config.base, setting.overrides)
  with open(os.path.join(workdir, SWEEP_FILE), 'w') as f:
    json.dump(train.config_as_dict(config), f, indent=2)

  reuse = Reuse()
  total = len(settings) * len(config.seeds)
  done = 0
  for setting in settings:
    for seed in config.seeds:
      done += 1
      run_dir = os.path.join(workdir, setting.name, f'seed_{seed}')
      if os.path.exists(os.path.join(run_dir, report.RESULT_FILE)):
        logging.info('[%d/%d] %s seed %d: finished earlier, skipped.', done,
                     total, setting.name, seed)
        continue
      logging.info('[%d/%d] %s seed %d: %s', done, total, setting.name, seed,
                   setting.overrides or 'the base config')
      method.run_pipeline(run_config(config.base, setting, seed), run_dir,
                          reuse)
      report.write_result(run_dir, setting.name, seed,
                          config.base.teacher.batch_size,
                          config.base.student.batch_size)
      report.write_report(workdir)
  logging.info('Sweep done; compiled steps: %s', dict(reuse.builds))
  rows = report.write_report(workdir)
  print(report.headline(rows))
  print(f'Every metric: {os.path.join(workdir, report.SUMMARY_FILE)}, '
        f'{report.RESULTS_CSV} and the plots beside it.')
  return rows

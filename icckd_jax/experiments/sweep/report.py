"""A sweep's report: its finished runs' figures, read back and written out.

Every figure is computed from what the runs logged (metrics.jsonl and
summary.json of each teacher and student; sweep/results.py), so a report can
be regenerated at any time from finished runs alone:

  results.csv    one row per (setting, seed): last-epoch figures
  epochs.csv     one row per (setting, seed, stage, epoch)
  summary.md     regime checks (experiments/checks.py), each setting's mean
                 and 95% t-interval, the seed-paired differences of every arm
                 to each control (95% interval, Holm-adjusted p;
                 experiments/comparisons.py), the trend across δ
                 (experiments/readings.py) and the smallest difference the
                 design could detect
  accuracy.png   last-epoch top-1 of each setting with its 95% interval
  transfer.png   student against teacher top-1, one point a KD run
  curves.png     teacher train accuracy, CE, gate pass rate and effective
                 weight per epoch: mean over seeds with a 95% band
                 (the figures: experiments/plots.py)

The headline is always the last epoch's top-1 on the test split, never an
epoch picked on the test set.
"""

import csv
import json
import os
from typing import Any

from absl import logging
import ml_collections

from icckd_jax.errors import UserError
from icckd_jax.experiments import checks
from icckd_jax.experiments import comparisons as comparisons_lib
from icckd_jax.experiments import plots
from icckd_jax.experiments import readings
from icckd_jax.experiments import transfer_rule
from icckd_jax.experiments.sweep import results as results_lib
from icckd_jax.experiments.sweep import settings as settings_lib
from icckd_jax.training import loop

RESULTS_CSV = 'results.csv'
EPOCHS_CSV = 'epochs.csv'
SUMMARY_FILE = 'summary.md'
SWEEP_FILE = 'sweep.json'


def _load(
  workdir: str, write: bool = True
) -> tuple[dict, list[settings_lib.Setting], list[dict], list[str]]:
  """(sweep config, settings, the finished runs' results, the result
  files left out as unreadable or malformed, each with why). `write`:
  rewrite each run's result.json from its records (else read only)."""
  path = os.path.join(workdir, SWEEP_FILE)
  if not os.path.exists(path):
    raise UserError(f'{workdir} holds no sweep ({path} is missing)')
  with open(path) as f:
    sweep = json.load(f)
  settings = [settings_lib.parse_setting(s) for s in sweep['settings']]
  results, left_out = [], []
  for setting in settings:
    for seed in settings_lib.seeds_of(sweep, setting.name):
      result, reason = _result(workdir, sweep, setting, seed, write)
      if reason:
        left_out.append(reason)
      elif result is not None:
        results.append(result)
  for entry in left_out:
    logging.warning('Left out of the report: %s', entry)
  return sweep, settings, results, left_out


def _result(
  workdir: str,
  sweep: dict,
  setting: settings_lib.Setting,
  seed: int,
  write: bool = True,
) -> tuple[dict | None, str | None]:
  """(the figures of one finished run, None), or (None, what was left out
  and why) when they cannot be read, or (None, None) when the run has not
  finished. Recomputed from its stages' records where they are here (so a
  report written by newer code has every column of that code), else its
  result.json as a worker wrote it."""
  run_dir = results_lib.run_dir(workdir, setting.name, seed)
  if all(
    os.path.exists(os.path.join(run_dir, stage, loop.SUMMARY_FILE))
    for stage in ('teacher', 'student')
  ):
    pipeline = settings_lib.apply_overrides(
      ml_collections.ConfigDict(sweep['base']), setting.overrides
    )
    compute = results_lib.write_result if write else results_lib.compute_result
    try:
      return compute(
        run_dir,
        setting.name,
        seed,
        pipeline.teacher.to_dict(),
        pipeline.student.to_dict(),
        sweep.get('reach_train_accuracy'),
      ), None
    except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
      # A truncated or edited summary.json or record of a stage.
      return None, f'{run_dir} ({type(e).__name__}: {e})'
  path = os.path.join(run_dir, results_lib.RESULT_FILE)
  if not os.path.exists(path):
    return None, None
  result, reason = results_lib.read_result(path, setting.name, seed)
  return result, (f'{path} ({reason})' if reason else None)


def write_report(
  workdir: str, output_dir: str | None = None, comparisons: str | None = None
) -> list[dict]:
  """(Re)writes results.csv, epochs.csv, summary.md and the plots from the
  finished runs of the sweep in `workdir`, into `output_dir` (default: the
  workdir). `comparisons` ('arm:control, ...') adds pairs to those of the
  sweep's config."""
  sweep, settings, results, left_out = _load(workdir)
  if not results:
    raise UserError(
      f'no finished runs under {workdir} yet'
      + (f' ({len(left_out)} result file(s) unreadable)' if left_out else '')
    )
  output_dir = output_dir or workdir
  os.makedirs(output_dir, exist_ok=True)
  names = [
    s.name
    for s in settings
    if any(r['row']['setting'] == s.name for r in results)
  ]
  rows = [r['row'] for r in results]
  epoch_rows = _write_tables(output_dir, results)
  lines = _summary_lines(
    os.path.basename(os.path.normpath(workdir)),
    sweep,
    [s for s in settings if s.name in names],
    rows,
    comparisons_lib.parse_comparisons(sweep.get('comparisons'))
    + comparisons_lib.parse_comparisons(comparisons),
  )
  if left_out:
    lines[2:2] = [
      f'Left out: {len(left_out)} run(s) whose result.json could not be '
      'read or holds a malformed value (rerun the sweep to rewrite them):',
      '',
      *[f'- {entry}' for entry in left_out],
      '',
    ]
  with open(os.path.join(output_dir, SUMMARY_FILE), 'w') as f:
    f.write('\n'.join(lines))

  plots.draw(
    output_dir,
    names,
    rows,
    epoch_rows,
    readings.teacher_student_points(checks.distilled(sweep, names), rows),
  )
  return rows


def _write_tables(output_dir: str, results: list[dict]) -> list[dict]:
  """results.csv (one row a run, every column any run has) and epochs.csv
  (one row a run, stage and epoch); returns the latter's rows."""
  rows = [r['row'] for r in results]
  columns = list(dict.fromkeys(k for r in rows for k in r))
  _write_csv(os.path.join(output_dir, RESULTS_CSV), rows, columns)
  epoch_rows = [
    {'setting': r['row']['setting'], 'seed': r['row']['seed'], **e}
    for r in results
    for e in r['epochs']
  ]
  _write_csv(
    os.path.join(output_dir, EPOCHS_CSV),
    epoch_rows,
    ['setting', 'seed', 'stage', 'epoch']
    + [c for c, _ in results_lib.EPOCH_COLUMNS],
  )
  return epoch_rows


def _write_csv(path: str, rows: list[dict], columns: list[str]) -> None:
  """`rows` as CSV in `path`, whole or not at all."""
  with open(f'{path}.tmp', 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=columns, extrasaction='ignore')
    writer.writeheader()
    writer.writerows(rows)
  os.replace(f'{path}.tmp', path)


def _summary_lines(title, sweep, settings, rows, pairs) -> list[str]:
  """summary.md: the regime checks first, then the primary comparison, each
  setting's figures, the other comparisons, the trend, the correlation and
  the detectable differences."""
  names = [s.name for s in settings]
  controls = [
    c for c in (sweep.get('controls') or ('ce_teacher',)) if c in names
  ]
  test_subset = sweep['base']['teacher']['dataset'].get('test_subset')
  split = (
    f'a fixed {test_subset}-image subset of the test split'
    if test_subset
    else 'the whole test split'
  )
  lines = [
    f'# {title}',
    '',
    f'Headline: top-1 after the last epoch on {split}, never an epoch '
    'picked on the test set. Intervals are 95% t-intervals over seeds; '
    'differences are paired by seed (same initialisation, data order '
    'and augmentation). "Train acc" is the accuracy on the augmented '
    "training view, averaged over the epoch's steps. Variance: the "
    'per-epoch variance of the per-step CE, averaged over the epochs '
    'before the first learning-rate decay (the first epoch left out).',
    '',
  ]
  teachers = checks.distilled(sweep, names)
  # Stage 1's rule: on stage 1's own rows, or as stage 2 recorded it.
  decision = _rule_decision(sweep, rows)
  rule = sweep.get('transfer_rule') or (
    transfer_rule.lines(decision) if decision else []
  )
  if any(transfer_rule.FAILED in line for line in rule):
    lines[0] += f': {transfer_rule.FAILED}'
  lines += checks.regime_lines(sweep, names, rows) + list(rule)
  lines += comparisons_lib.primary_lines(sweep, names, controls, rows)
  lines += readings.setting_lines(names, rows)
  lines += comparisons_lib.pair_lines(pairs, names, rows, teachers)
  lines += comparisons_lib.comparison_lines(names, controls, rows, teachers)
  lines += readings.trend_lines(settings_lib.delta_settings(settings), rows)
  lines += readings.correlation_lines(teachers, rows)
  lines += comparisons_lib.power_lines(controls, rows, sweep, teachers)
  return lines


def _rule_decision(sweep: dict, rows: list[dict]):
  """Stage 1's rule on the rows of a stage 1 sweep (one that declares
  `transfer_candidates`); None for other sweeps."""
  if not sweep.get('transfer_candidates'):
    return None
  return transfer_rule.decide(
    comparisons_lib.parse_comparisons(sweep['transfer_candidates']),
    sweep['transfer_minimum'],
    rows,
    tuple(sweep['seeds']),
  )


def transfer_decision(
  workdir: str,
) -> tuple[transfer_rule.Decision, settings_lib.Setting]:
  """Stage 1's rule on the finished sweep in `workdir` (a study's
  config.transfer_from): the decision and the chosen setting. Reads only;
  refuses a workdir without a finished, readable stage 1."""
  field = f'config.transfer_from={workdir!r}'
  try:
    sweep, settings, results, left_out = _load(workdir, write=False)
  except UserError as e:
    raise UserError(f'{field}: {e}') from None
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise UserError(
      f'{field}: its {SWEEP_FILE} is unreadable ({type(e).__name__})'
    ) from None
  if not sweep.get('transfer_candidates'):
    raise UserError(
      f'{field} is no stage 1 sweep (its config declares no '
      'transfer_candidates); name the workdir of configs/study.py:'
      'capacity_transfer'
    )
  planned = sum(len(settings_lib.seeds_of(sweep, s.name)) for s in settings)
  if left_out or len(results) < planned:
    raise UserError(
      f'{field}: {len(results)} of its {planned} runs finished readable'
      + (f', {len(left_out)} unreadable' if left_out else '')
      + '; finish stage 1 (rerun its command) first'
    )
  decision = _rule_decision(sweep, [r['row'] for r in results])
  return decision, next(s for s in settings if s.name == decision.chosen)


def headline(rows: list[dict[str, Any]]) -> str:
  """The short table a sweep prints at its end: each setting's last-epoch
  teacher and student top-1, mean [95% CI] over seeds."""
  lines = [
    '| setting | seeds | teacher top-1 (%) | student top-1 (%) |',
    '|---|---|---|---|',
  ]
  for name in dict.fromkeys(row['setting'] for row in rows):
    mine = [row for row in rows if row['setting'] == name]
    cells = [
      readings.interval_cell(
        [r[c] for r in mine if r.get(c) is not None], 100, 2
      )
      for c in ('teacher_top1_last', 'student_top1_last')
    ]
    lines.append(f'| {name} | {len(mine)} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)

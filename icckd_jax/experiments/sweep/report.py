"""A sweep's report: per-run rows, per-epoch records, statistics and plots.

Every figure is computed from what the runs logged (metrics.jsonl and
summary.json of each teacher and student), so a report can be regenerated at
any time from finished runs alone:

  results.csv    one row per (setting, seed): last-epoch figures
  epochs.csv     one row per (setting, seed, stage, epoch)
  summary.md     regime checks, each setting's mean and 95% t-interval, the
                 seed-paired differences of every arm to each control (95%
                 interval, Holm-adjusted p), the trend across δ and the
                 smallest difference the design could detect
  accuracy.png   last-epoch top-1 of each setting with its 95% interval
  transfer.png   student against teacher top-1, one point a KD run
  curves.png     teacher train accuracy, CE, gate pass rate and effective
                 weight per epoch: mean over seeds with a 95% band

The headline is always the last epoch's top-1 on the test split, never an
epoch picked on the test set.
"""

import csv
import dataclasses
import json
import math
import os
from typing import Any

from absl import logging
import ml_collections
import numpy as np

from icckd_jax.errors import UserError
from icckd_jax.experiments import ablation_metrics as am
from icckd_jax.experiments import plots
from icckd_jax.experiments.sweep import settings as settings_lib
from icckd_jax.experiments import statistics as st
from icckd_jax.training import loop
from icckd_jax.training import metric_writer

RESULT_FILE = 'result.json'
RESULTS_CSV = 'results.csv'
EPOCHS_CSV = 'epochs.csv'
SUMMARY_FILE = 'summary.md'
SWEEP_FILE = 'sweep.json'

# epochs.csv: (column, key of the epoch record).
EPOCH_COLUMNS = (
  ('train_accuracy', 'accuracy'),
  ('ce_loss', 'ce'),
  ('intra_loss', 'intra'),
  ('gate_pass_rate', 'gate_pass_rate'),
  ('effective_weight', 'effective_weight'),
  ('test_top1', 'test_top1'),
  ('loss', 'loss'),
  ('neg_in_batch', 'neg_in_batch'),
  ('neg_cache', 'neg_cache'),
)

# The regime a study must be in, when its config declares none
# (docs/results/regime_cpu/design.md): 'SETTING: COLUMN OP THRESHOLD', the
# seed mean of a results.csv column of one setting ('*': of every setting).
REGIME_CHECKS = (
  'delta=0.0: teacher_train_accuracy_last >= 0.8',
  'delta=0.4: teacher_gate_pass_rate_last_quarter >= 0.5',
)

_OPERATORS = {
  '>=': lambda a, b: a >= b,
  '<=': lambda a, b: a <= b,
  '>': lambda a, b: a > b,
  '<': lambda a, b: a < b,
}


@dataclasses.dataclass(frozen=True)
class RegimeCheck:
  setting: str  # or '*': each setting
  column: str
  operator: str
  threshold: float

  def holds(self, value: float) -> bool:
    return _OPERATORS[self.operator](value, self.threshold)


def parse_regime_check(text: str) -> RegimeCheck:
  """'delta=0.4: teacher_gate_pass_rate_last_quarter >= 0.5' -> a check.
  The setting is what precedes the last ': ' (names may hold ':')."""
  setting, sep, rest = text.rpartition(': ')
  parts = rest.split()
  if (
    not sep
    or len(parts) != 3
    or parts[1] not in _OPERATORS
    or not setting.strip()
  ):
    raise UserError(
      f'regime_checks: {text!r} is not "SETTING: COLUMN OP NUMBER" '
      f'(OP one of {", ".join(_OPERATORS)})'
    )
  try:
    threshold = float(parts[2])
  except ValueError:
    raise UserError(f'regime_checks: {parts[2]!r} in {text!r} is no number')
  return RegimeCheck(setting.strip(), parts[0], parts[1], threshold)


# (column, header, scale, digits) of the per-setting table.
SETTING_COLUMNS = (
  ('teacher_top1_last', 'teacher top-1 (%)', 100, 2),
  ('student_top1_last', 'student top-1 (%)', 100, 2),
  ('teacher_train_accuracy_last', 'teacher train acc, last epoch', 1, 3),
  ('teacher_gate_pass_rate_last_quarter', 'pass rate, last quarter', 1, 3),
  (
    'teacher_effective_weight_last_quarter',
    'effective weight, last quarter',
    1,
    3,
  ),
  ('teacher_ce_variance', 'teacher CE variance before 1st decay', 1, 4),
  (
    'teacher_epochs_to_reach',
    'teacher epochs to shared train acc (3-ep MA)',
    1,
    1,
  ),
  (
    'teacher_epochs_to_reach_first',
    'teacher epochs to shared train acc (first)',
    1,
    1,
  ),
  (
    'student_train_accuracy_change_last_fifth',
    'student train acc change, last fifth',
    1,
    3,
  ),
  ('teacher_compiled_mib', 'teacher step MiB (XLA)', 1, 1),
  ('teacher_device_mib', 'teacher device MiB in use (max)', 1, 1),
  ('cache_kib', 'cache KiB', 1, 1),
)


def _run_records(workdir: str) -> tuple[list[dict], dict]:
  epochs = metric_writer.read_records(workdir, 'epoch')
  with open(os.path.join(workdir, loop.SUMMARY_FILE)) as f:
    summary = json.load(f)
  return epochs, summary


def _last_quarter_mean(epochs: list[dict], key: str) -> float | None:
  values = [
    e.get(key) for e in epochs[len(epochs) - max(1, len(epochs) // 4) :]
  ]
  values = [v for v in values if v is not None]
  return float(np.mean(values)) if values else None


def _change_last_fifth(accuracy: list[float]) -> float | None:
  """|acc[E] − acc[E − k]| with k = ⌈E / 5⌉: how much the train accuracy
  still moved over the last fifth of the E epochs (a trained run barely
  moves), or None for a run of one epoch."""
  if len(accuracy) < 2:
    return None
  k = -(-len(accuracy) // 5)
  return abs(accuracy[-1] - accuracy[-1 - k])


def _stage_row(
  epochs: list[dict],
  summary: dict,
  prefix: str,
  config,
  reach: float | None,
) -> dict[str, Any]:
  """A stage's last-epoch figures (docs/method.md §6).

  Epochs to reach `reach` are given by two definitions, because they can
  disagree: the first epoch whose trailing 3-epoch moving average reaches
  it (`_epochs_to_reach`) and the plain first epoch that does
  (`_epochs_to_reach_first`)."""
  decays = tuple(config['lr_decay_epochs'] or ())
  last = epochs[-1]
  accuracy = [e['accuracy'] for e in epochs]
  tested = [e['test_top1'] for e in epochs if e.get('test_top1') is not None]
  memory = summary.get('compiled_memory') or {}
  device = summary.get('peak_device_bytes')
  return {
    f'{prefix}_model': config['model'],
    f'{prefix}_top1_last': last.get('test_top1'),
    # Kept for reference only: an epoch picked on the test set is never a
    # headline.
    f'{prefix}_top1_best_evaluated': max(tested) if tested else None,
    f'{prefix}_train_accuracy_last': last['accuracy'],
    f'{prefix}_train_accuracy_change_last_fifth': _change_last_fifth(accuracy),
    f'{prefix}_ce_variance': am.stability_variance(
      [e.get('step_ce') or e['step_losses'] for e in epochs],
      min(decays) if decays else None,
    ),
    f'{prefix}_epochs_to_reach': (
      am.epochs_to_reach(accuracy, reach) if reach is not None else None
    ),
    f'{prefix}_epochs_to_reach_first': (
      am.epochs_to_reach(accuracy, reach, window=1)
      if reach is not None
      else None
    ),
    f'{prefix}_compiled_mib': memory.get('total_bytes', 0) / 2**20,
    f'{prefix}_device_mib': device / 2**20 if device else None,
  }


def _epoch_rows(epochs: list[dict], stage: str) -> list[dict[str, Any]]:
  return [
    {
      'stage': stage,
      'epoch': e['epoch'],
      **{column: e.get(key) for column, key in EPOCH_COLUMNS},
    }
    for e in epochs
  ]


def write_result(
  run_dir: str,
  setting: str,
  seed: int,
  teacher_config,
  student_config,
  reach: float | None = None,
) -> dict[str, Any]:
  """Computes a finished run's figures into RUN_DIR/result.json.

  Args:
    run_dir: WORKDIR/<setting>/seed_<seed>, with links `teacher`, `student`.
    setting, seed: what the run is.
    teacher_config, student_config: the stages' configs (their first decay
      epoch bounds the loss-variance window).
    reach: the train accuracy whose first epoch is "epochs to reach" (one
      value for every sweep sharing the runs), or None.
  """
  row = {'setting': setting, 'seed': seed}
  epoch_rows = []
  for stage, config in (
    ('teacher', teacher_config),
    ('student', student_config),
  ):
    epochs, summary = _run_records(os.path.join(run_dir, stage))
    row.update(_stage_row(epochs, summary, stage, config, reach))
    epoch_rows += _epoch_rows(epochs, stage)
    if stage == 'teacher':
      row.update(
        teacher_gate_pass_rate_last_quarter=_last_quarter_mean(
          epochs, 'gate_pass_rate'
        ),
        teacher_effective_weight_last_quarter=_last_quarter_mean(
          epochs, 'effective_weight'
        ),
        teacher_neg_in_batch=epochs[-1].get('neg_in_batch'),
        teacher_neg_cache=epochs[-1].get('neg_cache'),
        cache_kib=(summary.get('compiled_memory') or {}).get('cache_bytes', 0)
        / 1024,
      )
    else:
      row['student_agreement'] = epochs[-1].get('test_agreement')
  result = {'row': row, 'epochs': epoch_rows}
  metric_writer.write_json(os.path.join(run_dir, RESULT_FILE), result)
  return result


def _number_or_none(value) -> bool:
  return value is None or (
    isinstance(value, (int, float))
    and not isinstance(value, bool)
    and math.isfinite(value)
  )


def _malformed(result, setting: str, seed: int) -> str | None:
  """Why a result.json's content cannot be a row of (setting, seed), or
  None: every figure must be a finite number or null."""
  if not isinstance(result, dict) or not isinstance(result.get('row'), dict):
    return 'no row'
  row = result['row']
  if row.get('setting') != setting or row.get('seed') != seed:
    return f'its row is of {row.get("setting")!r} seed {row.get("seed")!r}'
  for key, value in row.items():
    named = key == 'setting' or key.endswith('_model')  # Names, not figures.
    if not (named and isinstance(value, str)) and not _number_or_none(value):
      return f'{key}={value!r} is not a number'
  epochs = result.get('epochs')
  if not isinstance(epochs, list) or not all(
    isinstance(e, dict) for e in epochs
  ):
    return 'no list of epochs'
  for epoch in epochs:
    for key, value in epoch.items():
      if key != 'stage' and not _number_or_none(value):
        return f'epoch {key}={value!r} is not a number'
  return None


def read_result(
  path: str, setting: str, seed: int
) -> tuple[dict | None, str | None]:
  """(result, None) of a readable result.json of (setting, seed); (None,
  why) of a truncated, unreadable or malformed one; (None, None) of one an
  older version of the report wrote (rewritten by the next worker)."""
  try:
    with open(path) as f:
      result = json.load(f)
  except (OSError, ValueError) as e:
    return None, f'{type(e).__name__}: {e}'
  if isinstance(result, dict) and 'epochs' not in result:
    return None, None
  reason = _malformed(result, setting, seed)
  return (None, reason) if reason else (result, None)


def _load(
  workdir: str,
) -> tuple[dict, list[settings_lib.Setting], list[dict], list[str]]:
  """(sweep config, settings, the finished runs' results, the result
  files left out as unreadable or malformed, each with why)."""
  path = os.path.join(workdir, SWEEP_FILE)
  if not os.path.exists(path):
    raise UserError(f'{workdir} holds no sweep ({path} is missing)')
  with open(path) as f:
    sweep = json.load(f)
  settings = [settings_lib.parse_setting(s) for s in sweep['settings']]
  results, left_out = [], []
  for setting in settings:
    for seed in settings_lib.seeds_of(sweep, setting.name):
      result, reason = _result(workdir, sweep, setting, seed)
      if reason:
        left_out.append(reason)
      elif result is not None:
        results.append(result)
  for entry in left_out:
    logging.warning('Left out of the report: %s', entry)
  return sweep, settings, results, left_out


def _result(
  workdir: str, sweep: dict, setting: settings_lib.Setting, seed: int
) -> tuple[dict | None, str | None]:
  """(the figures of one finished run, None), or (None, what was left out
  and why) when they cannot be read, or (None, None) when the run has not
  finished. Recomputed from its stages' records where they are here (so a
  report written by newer code has every column of that code), else its
  result.json as a worker wrote it."""
  run_dir = os.path.join(workdir, setting.name, f'seed_{seed}')
  if all(
    os.path.exists(os.path.join(run_dir, stage, loop.SUMMARY_FILE))
    for stage in ('teacher', 'student')
  ):
    pipeline = settings_lib.apply_overrides(
      ml_collections.ConfigDict(sweep['base']), setting.overrides
    )
    try:
      return write_result(
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
  path = os.path.join(run_dir, RESULT_FILE)
  if not os.path.exists(path):
    return None, None
  result, reason = read_result(path, setting.name, seed)
  return result, (f'{path} ({reason})' if reason else None)


def _write_csv(path: str, rows: list[dict], columns: list[str]) -> None:
  with open(f'{path}.tmp', 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=columns, extrasaction='ignore')
    writer.writeheader()
    writer.writerows(rows)
  os.replace(f'{path}.tmp', path)


def _by_seed(rows: list[dict], name: str, column: str) -> dict[int, float]:
  return {
    r['seed']: r[column]
    for r in rows
    if r['setting'] == name and r.get(column) is not None
  }


def _interval_cell(values, scale: float, digits: int) -> str:
  if not values:
    return '–'
  ci = st.t_interval(values)
  if ci.n < 2:
    return f'{ci.mean * scale:.{digits}f} (1 seed)'
  return (
    f'{ci.mean * scale:.{digits}f} '
    f'[{ci.low * scale:.{digits}f}, {ci.high * scale:.{digits}f}]'
  )


def _p(p: float) -> str:
  return '–' if math.isnan(p) else (f'{p:.3f}' if p >= 0.001 else f'{p:.1e}')


def _regime_lines(sweep: dict, names: list[str], rows: list[dict]) -> list[str]:
  """The regime checks, each on the seed mean of its column, and the
  transfer check (`transfer_check`: 'ARM:CONTROL >= X', the students'
  paired top-1 difference at least X with its 95% interval above 0)."""
  lines = [
    '## Regime checks',
    '',
    '| check | required | measured: mean [95% CI] over seeds | met |',
    '|---|---|---|---|',
  ]
  found = False
  for text in sweep.get('regime_checks') or REGIME_CHECKS:
    check = parse_regime_check(text)
    for name in names if check.setting == '*' else [check.setting]:
      values = list(_by_seed(rows, name, check.column).values())
      if not values:
        continue
      found = True
      mean = float(np.mean(values))
      lines.append(
        f'| {name}: {check.column} | {check.operator} {check.threshold:g} '
        f'| {_interval_cell(values, 1, 3)} '
        f'| {"yes" if check.holds(mean) else "**no**"} |'
      )
  transfer = _transfer(sweep, rows)
  if transfer is not None:
    found = True
    (arm, control, minimum), diff = transfer
    ci = diff.difference
    met = ci.mean >= minimum and ci.low > 0
    lines.append(
      f'| KD transfers: student top-1 {arm} − {control}, paired '
      f'({ci.n} seeds) | ≥ {100 * minimum:g} points, 95% CI above 0 '
      f'| {_interval_cell_diff(ci)} points (p {_p(diff.p_value)}) '
      f'| {"yes" if met else "**no**"} |'
    )
  return lines + [''] if found else []


def parse_transfer_check(text: str) -> tuple[str, str, float]:
  """'ce_teacher:scratch >= 0.01' -> ('ce_teacher', 'scratch', 0.01)."""
  pair, sep, minimum = text.partition('>=')
  arm, colon, control = pair.partition(':')
  try:
    value = float(minimum)
  except ValueError:
    value = None
  if (
    not sep
    or not colon
    or not arm.strip()
    or not control.strip()
    or (value is None)
  ):
    raise UserError(f'transfer_check: {text!r} is not "ARM:CONTROL >= NUMBER"')
  return arm.strip(), control.strip(), value


def _transfer(sweep: dict, rows: list[dict]):
  """((arm, control, minimum), paired student top-1 difference), or None
  where the sweep declares no transfer check or lacks two paired seeds."""
  if not sweep.get('transfer_check'):
    return None
  arm, control, minimum = parse_transfer_check(sweep['transfer_check'])
  try:
    diff = st.paired_difference(
      _by_seed(rows, arm, 'student_top1_last'),
      _by_seed(rows, control, 'student_top1_last'),
    )
  except ValueError:
    return None
  return (arm, control, minimum), diff


def _setting_lines(names: list[str], rows: list[dict]) -> list[str]:
  lines = [
    '## Every setting: mean [95% t-interval] over seeds',
    '',
    '| setting | seeds | '
    + ' | '.join(h for _, h, _, _ in SETTING_COLUMNS)
    + ' |',
    '|---|---|' + '---|' * len(SETTING_COLUMNS),
  ]
  for name in names:
    mine = [r for r in rows if r['setting'] == name]
    cells = [
      _interval_cell(
        [r[c] for r in mine if r.get(c) is not None], scale, digits
      )
      for c, _, scale, digits in SETTING_COLUMNS
    ]
    lines.append(f'| {name} | {len(mine)} | ' + ' | '.join(cells) + ' |')
  return lines + ['']


def paired_comparisons(
  names: list[str], controls: list[str], rows: list[dict], column: str
) -> list[dict[str, Any]]:
  """Every arm minus each control, seed-paired (a control is an arm of the
  controls listed before it); Holm-adjusted over the family of all these
  comparisons of `column`."""
  return _holm_paired(
    [
      (arm, control)
      for i, control in enumerate(controls)
      for arm in names
      if arm != control and arm not in controls[:i]
    ],
    rows,
    column,
  )


def _holm_paired(
  pairs: list[tuple[str, str]], rows: list[dict], column: str
) -> list[dict[str, Any]]:
  """Each (arm, control) of `pairs` with seeds in common, in order:
  {'arm', 'control', 'diff': seed-paired difference of `column`, 'holm':
  its p Holm-adjusted over the family of these comparisons}."""
  out = []
  for arm, control in pairs:
    try:
      diff = st.paired_difference(
        _by_seed(rows, arm, column), _by_seed(rows, control, column)
      )
    except ValueError:
      continue
    out.append({'arm': arm, 'control': control, 'diff': diff})
  for item, adjusted in zip(out, st.holm([c['diff'].p_value for c in out])):
    item['holm'] = adjusted
  return out


def _primary_lines(sweep, names, controls, rows) -> list[str]:
  """The pre-registered comparison: each primary arm against each control
  on the student's top-1, Holm-adjusted over this small family alone."""
  arms = [
    a
    for a in (sweep.get('primary_settings') or ())
    if a in names and a not in controls
  ]
  if not arms or not controls:
    return []
  comparisons = paired_comparisons(arms, controls, rows, 'student_top1_last')
  if not comparisons:
    return []
  lines = _comparison_table(
    '## Primary comparison (pre-registered)',
    'Student top-1 (points), arm − control, paired by seed; '
    f'Holm-adjusted over these {len(comparisons)} comparisons.',
    comparisons,
  )
  margin = sweep.get('equivalence_margin')
  column = 'student_top1_last'
  for c in comparisons:
    lines.append(
      _reading(
        c,
        margin,
        _by_seed(rows, c['arm'], column),
        _by_seed(rows, c['control'], column),
      )
    )
  return lines + ['']


def _reading(comparison: dict, margin, arm: dict, control: dict) -> str:
  """What a primary comparison allows one to say: a difference (Holm p <
  0.05), equivalence (a paired TOST at the declared margin), or no
  difference detected, with the difference the design could detect."""
  d = comparison['diff']
  n = d.difference.n
  detectable = 100 * st.detectable_difference(d.sd, n)
  head = f'- {comparison["arm"]} − {comparison["control"]}: '
  if comparison['holm'] < 0.05:
    return (
      head + f'a difference of {_interval_cell_diff(d.difference)} points '
      f'(Holm p {_p(comparison["holm"])}).'
    )
  text = (
    head + 'no difference detected; with this spread the design could detect '
    f'about {detectable:.2f} points (power 0.8, α = 0.05, {n} seeds).'
  )
  if margin:
    eq = st.tost(arm, control, margin)
    verdict = 'equivalent' if eq.p_value < 0.05 else 'not shown equivalent'
    text += (
      f' Paired TOST at the declared margin ±{100 * margin:g} points: '
      f'p {_p(eq.p_value)}, {verdict}.'
    )
  return text


def _comparison_table(
  title: str, note: str, comparisons: list[dict]
) -> list[str]:
  lines = [
    title,
    '',
    note,
    '',
    '| arm | control | seeds | difference [95% CI] | p | Holm p |',
    '|---|---|---|---|---|---|',
  ]
  for c in comparisons:
    d = c['diff']
    lines.append(
      f'| {c["arm"]} | {c["control"]} | {d.difference.n} | '
      f'{_interval_cell_diff(d.difference)} | {_p(d.p_value)} | '
      f'{_p(c["holm"])} |'
    )
  return lines + ['']


def parse_comparisons(text: str | None) -> list[tuple[str, str]]:
  """'arm:control, arm:control' -> [(arm, control), ...]."""
  pairs = []
  for item in filter(None, (p.strip() for p in (text or '').split(','))):
    arm, sep, control = item.partition(':')
    if not sep or not arm.strip() or not control.strip():
      raise UserError(f'comparisons: {item!r} is not arm:control')
    pairs.append((arm.strip(), control.strip()))
  return pairs


def _pair_lines(pairs, names, rows, teachers) -> list[str]:
  """Pre-registered pairs beyond the controls (e.g. an ablation against the
  arm it removes something from), Holm-adjusted over their own family."""
  pairs = [
    (arm, control)
    for arm, control in pairs
    if arm in names and control in names
  ]
  lines = []
  for stage in ('student', 'teacher'):
    # `teachers`: the settings with a teacher of their own (a student
    # trained without its teacher shares another setting's).
    found = _holm_paired(
      pairs
      if stage == 'student'
      else [p for p in pairs if set(p) <= set(teachers)],
      rows,
      f'{stage}_top1_last',
    )
    if found:
      lines += _comparison_table(
        f'## {stage.capitalize()} top-1: the other pre-registered pairs',
        f'Points of top-1, paired by seed; Holm-adjusted over these '
        f'{len(found)} comparisons.',
        found,
      )
  return lines


def _comparison_lines(names, controls, rows, teachers) -> list[str]:
  lines = []
  for stage in ('student', 'teacher'):
    column = f'{stage}_top1_last'
    comparisons = paired_comparisons(
      names if stage == 'student' else teachers, controls, rows, column
    )
    if not comparisons:
      continue
    lines += _comparison_table(
      f'## {stage.capitalize()} top-1: every arm − each control, paired by '
      'seed',
      f'Points of top-1; Holm-adjusted over the {len(comparisons)} '
      'comparisons of this table.',
      comparisons,
    )
  return lines


def _interval_cell_diff(ci: st.Interval) -> str:
  return f'{100 * ci.mean:+.2f} [{100 * ci.low:+.2f}, {100 * ci.high:+.2f}]'


def _trend_lines(settings, rows) -> list[str]:
  deltas = settings_lib.delta_settings(settings)
  if len(deltas) < 2:
    return []
  lines = [
    '## Trend across δ',
    '',
    'Least-squares slope of last-epoch top-1 on δ over every run of '
    f'the settings {", ".join(deltas)}; points of top-1 per 0.1 of δ.',
    '',
    '| stage | runs | slope per 0.1 δ [95% CI] | p |',
    '|---|---|---|---|',
  ]
  for stage in ('student', 'teacher'):
    x, y = [], []
    for name, delta in deltas.items():
      for value in _by_seed(rows, name, f'{stage}_top1_last').values():
        x.append(delta)
        y.append(value)
    try:
      trend = st.linear_trend(x, y)
    except ValueError:
      continue
    s = trend.slope
    lines.append(
      f'| {stage} | {trend.n} | {10 * s.mean:+.3f} '
      f'[{10 * s.low:+.3f}, {10 * s.high:+.3f}] | '
      f'{_p(trend.p_value)} |'
    )
  return lines + ['']


def _distilled(sweep: dict, names: list[str]) -> list[str]:
  """The settings whose students learn from their teacher: all but the
  transfer check's control (a student trained without the teacher)."""
  if not sweep.get('transfer_check'):
    return list(names)
  _, control, _ = parse_transfer_check(sweep['transfer_check'])
  return [n for n in names if n != control]


def _teacher_student_points(sweep, names, rows):
  """{setting: [(teacher top-1, student top-1), ...]} of the KD runs."""
  points = {}
  for name in _distilled(sweep, names):
    for r in rows:
      if (
        r['setting'] == name
        and r.get('teacher_top1_last') is not None
        and r.get('student_top1_last') is not None
      ):
        points.setdefault(name, []).append(
          (r['teacher_top1_last'], r['student_top1_last'])
        )
  return points


def _correlation_lines(sweep, names, rows) -> list[str]:
  """Does a better teacher give a better student here? Pearson and
  Spearman of student on teacher top-1 over every KD run."""
  pairs = [
    p for v in _teacher_student_points(sweep, names, rows).values() for p in v
  ]
  try:
    c = st.correlation([t for t, _ in pairs], [s for _, s in pairs])
  except ValueError:
    return []
  return [
    '## Teacher and student top-1 across runs',
    '',
    f'Over the {c.n} KD runs (every setting whose student learns from its '
    f'teacher): Pearson r = {c.pearson:+.2f} (p {_p(c.pearson_p)}), '
    f'Spearman ρ = {c.spearman:+.2f} (p {_p(c.spearman_p)}); one point a '
    'run in transfer.png. The runs differ by teacher arm and seed, so this '
    "mixes the arms' effects with seed-to-seed spread.",
    '',
  ]


def _power_lines(controls, rows, sweep, teachers) -> list[str]:
  """The detectable difference at the sweep's seed counts, from the spread
  of the teacher arms' paired differences (a student trained without its
  teacher is no such arm: its spread would say nothing of theirs)."""
  counts = sorted(
    {len(sweep['seeds']), len(sweep.get('primary_seeds') or sweep['seeds'])}
  )
  lines = [
    '## Smallest detectable difference',
    '',
    'From the spread of the seed-paired differences measured here '
    '(pooled over the arms compared with each control, weighted by '
    'their degrees of freedom): the paired '
    'difference a two-sided t-test detects with power 0.8 at α = 0.05 '
    '(before the Holm adjustment), in points of top-1.',
    '',
    '| stage | control | SD of paired differences | '
    + ' | '.join(f'{n} seeds' for n in counts)
    + ' |',
    '|---|---|---|' + '---|' * len(counts),
  ]
  found = False
  for stage in ('student', 'teacher'):
    column = f'{stage}_top1_last'
    for c in controls:
      diffs = [
        x['diff'] for x in paired_comparisons(teachers, [c], rows, column)
      ]
      if not diffs:
        continue
      found = True
      # Pooled over the arms, each variance weighted by its degrees of
      # freedom (n - 1).
      dof = [d.difference.n - 1 for d in diffs]
      sd = float(
        np.sqrt(sum(k * d.sd**2 for k, d in zip(dof, diffs)) / sum(dof))
      )
      cells = [f'{100 * st.detectable_difference(sd, n):.2f}' for n in counts]
      lines.append(
        f'| {stage} | {c} | {100 * sd:.2f} | ' + ' | '.join(cells) + ' |'
      )
  return lines + [''] if found else []


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
    parse_comparisons(sweep.get('comparisons'))
    + parse_comparisons(comparisons),
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

  plots.accuracy(
    output_dir,
    {
      stage: {
        name: list(_by_seed(rows, name, f'{stage}_top1_last').values())
        for name in names
      }
      for stage in ('teacher', 'student')
    },
  )
  plots.curves(output_dir, names, epoch_rows)
  plots.transfer(output_dir, _teacher_student_points(sweep, names, rows))
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
    ['setting', 'seed', 'stage', 'epoch'] + [c for c, _ in EPOCH_COLUMNS],
  )
  return epoch_rows


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
  teachers = _distilled(sweep, names)
  lines += _regime_lines(sweep, names, rows)
  lines += _primary_lines(sweep, names, controls, rows)
  lines += _setting_lines(names, rows)
  lines += _pair_lines(pairs, names, rows, teachers)
  lines += _comparison_lines(names, controls, rows, teachers)
  lines += _trend_lines(settings, rows)
  lines += _correlation_lines(sweep, names, rows)
  lines += _power_lines(controls, rows, sweep, teachers)
  return lines


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
      _interval_cell([r[c] for r in mine if r.get(c) is not None], 100, 2)
      for c in ('teacher_top1_last', 'student_top1_last')
    ]
    lines.append(f'| {name} | {len(mine)} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)

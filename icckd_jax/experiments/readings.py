"""A sweep report's cells and the readings of one figure across settings.

Rows are the per-run rows of results.csv ({'setting', 'seed', column: value
or None}); a figure is one column of them. Here: the cells every table of
summary.md is written in (a mean with its 95% t-interval, a difference, a
p-value), the per-setting table, the trend across δ and the teacher-student
correlation over the KD runs.
"""

import math

import numpy as np

from icckd_jax.experiments import statistics as st

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


def by_seed(rows: list[dict], name: str, column: str) -> dict[int, float]:
  """{seed: value} of `column` in the rows of setting `name` that have one."""
  return {
    r['seed']: r[column]
    for r in rows
    if r['setting'] == name and r.get(column) is not None
  }


def interval_cell(values, scale: float, digits: int) -> str:
  """'mean [low, high]' of `values` (its 95% t-interval), each times
  `scale` with `digits` decimals; '–' for none, 'mean (1 seed)' for one."""
  if not values:
    return '–'
  ci = st.t_interval(values)
  if ci.n < 2:
    return f'{ci.mean * scale:.{digits}f} (1 seed)'
  return (
    f'{ci.mean * scale:.{digits}f} '
    f'[{ci.low * scale:.{digits}f}, {ci.high * scale:.{digits}f}]'
  )


def interval_cell_diff(ci: st.Interval) -> str:
  """A difference of top-1 fractions in signed points: '+1.23 [+0.45, +2.01]'."""
  return f'{100 * ci.mean:+.2f} [{100 * ci.low:+.2f}, {100 * ci.high:+.2f}]'


def p_cell(p: float) -> str:
  """A p-value: 3 decimals, or 1.0e-04 below 0.001; '–' for NaN."""
  return '–' if math.isnan(p) else (f'{p:.3f}' if p >= 0.001 else f'{p:.1e}')


def setting_lines(names: list[str], rows: list[dict]) -> list[str]:
  """The table of every setting: mean [95% t-interval] of each column of
  SETTING_COLUMNS over its seeds."""
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
      interval_cell([r[c] for r in mine if r.get(c) is not None], scale, digits)
      for c, _, scale, digits in SETTING_COLUMNS
    ]
    lines.append(f'| {name} | {len(mine)} | ' + ' | '.join(cells) + ' |')
  return lines + ['']


def trend_lines(deltas: dict[str, float], rows: list[dict]) -> list[str]:
  """The least-squares slope of each stage's top-1 on δ over the runs of
  the settings `deltas` ({name: δ}), or nothing for fewer than two."""
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
      for value in by_seed(rows, name, f'{stage}_top1_last').values():
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
      f'{p_cell(trend.p_value)} |'
    )
  return lines + ['']


def teacher_student_points(
  teachers: list[str], rows: list[dict]
) -> dict[str, list[tuple[float, float]]]:
  """{setting: [(teacher top-1, student top-1), ...]} of the KD runs: those
  of the settings `teachers`, whose students learn from their teacher."""
  points = {}
  for name in teachers:
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


def correlation_lines(teachers: list[str], rows: list[dict]) -> list[str]:
  """Does a better teacher give a better student here? Pearson and
  Spearman of student on teacher top-1 over every KD run (of `teachers`),
  and Pearson within seeds (`_within_seeds`)."""
  pairs = [
    p for v in teacher_student_points(teachers, rows).values() for p in v
  ]
  try:
    c = st.correlation([t for t, _ in pairs], [s for _, s in pairs])
  except ValueError:
    return []
  within = _within_seeds(teachers, rows)
  return [
    '## Teacher and student top-1 across runs',
    '',
    f'Over the {c.n} KD runs (every setting whose student learns from its '
    f'teacher): Pearson r = {c.pearson:+.2f} (p {p_cell(c.pearson_p)}), '
    f'Spearman ρ = {c.spearman:+.2f} (p {p_cell(c.spearman_p)}); one point a '
    'run in transfer.png. The runs differ by teacher arm and seed, so this '
    "mixes the arms' effects with seed-to-seed spread"
    + (
      "; within seeds (each run less the mean of its seed's runs, "
      f'which removes the seed-to-seed part) Pearson r = {within:+.2f}.'
      if within is not None
      else '.'
    ),
    '',
  ]


def _within_seeds(teachers: list[str], rows: list[dict]) -> float | None:
  """Pearson r of student on teacher top-1 over the KD runs, each less the
  mean of its seed's KD runs; None for fewer than three runs."""
  columns = ('teacher_top1_last', 'student_top1_last')
  runs = [
    r
    for r in rows
    if r['setting'] in teachers and None not in map(r.get, columns)
  ]
  seeds = np.array([r['seed'] for r in runs])
  if len(runs) < 3 or len(set(seeds)) == len(runs):
    return None
  top1 = np.array([[r[c] for c in columns] for r in runs])
  centred = top1 - np.array([top1[seeds == s].mean(0) for s in seeds])
  return float(np.corrcoef(*centred.T)[0, 1])

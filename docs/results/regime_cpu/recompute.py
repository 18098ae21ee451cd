"""Recomputes, from this folder's CSVs alone, the figures analysis.md adds
in its section "Corrections" (they are not in summary.md, whose runs are no
longer on disk):

  python docs/results/regime_cpu/recompute.py

Each: a seed-paired difference with its 95% t-interval and paired t-test
(icckd_jax.experiments.statistics, as the report computes them).
"""

import csv
import os

from icckd_jax.experiments import ablation_metrics as am
from icckd_jax.experiments import comparisons
from icckd_jax.experiments import statistics as st

HERE = os.path.dirname(os.path.abspath(__file__))
CONTROLS = ['ce_teacher', 'two_view_null']
# The runs finished after the stop the design's amendment declared.
AFTER_STOP = {('ungated', 4), ('no_cache', 4), ('image_cache', 4)}


def _read(name):
  with open(os.path.join(HERE, name)) as f:
    rows = list(csv.DictReader(f))
  for r in rows:
    r['seed'] = int(r['seed'])
    for k, v in r.items():
      if k not in ('setting', 'seed', 'stage'):
        r[k] = float(v) if v not in ('', None) else None
  return rows


def _diff(rows, arm, control, column, digits=3):
  by = lambda n: {
    r['seed']: r[column]
    for r in rows
    if r['setting'] == n and r[column] is not None
  }
  d = st.paired_difference(by(arm), by(control))
  c = d.difference
  return (
    f'{c.mean:+.{digits}f} [{c.low:+.{digits}f}, {c.high:+.{digits}f}], '
    f'p {d.p_value:.3f}, {c.n} seeds'
  )


def main():
  rows = _read('results.csv')
  epochs = _read('epochs.csv')
  names = list(dict.fromkeys(r['setting'] for r in rows))
  for label, kept in (
    ('all 65 runs', rows),
    (
      'the 62 runs finished by the stop',
      [r for r in rows if (r['setting'], r['seed']) not in AFTER_STOP],
    ),
  ):
    for c in comparisons.paired_comparisons(
      names, CONTROLS, kept, 'teacher_top1_last'
    ):
      if (c['arm'], c['control']) == ('no_cache', 'ce_teacher'):
        d = c['diff'].difference
        print(
          f'teacher top-1 no_cache - ce_teacher, {label}: '
          f'{100 * d.mean:+.2f} points [{100 * d.low:+.2f}, {100 * d.high:+.2f}], '
          f'Holm p {c["holm"]:.3f} over {len(comparisons.paired_comparisons(names, CONTROLS, kept, "teacher_top1_last"))}'
        )
  # Epochs for the teacher to reach train accuracy 0.70, two definitions.
  for r in rows:
    series = [
      e['train_accuracy']
      for e in epochs
      if e['setting'] == r['setting']
      and e['seed'] == r['seed']
      and e['stage'] == 'teacher'
    ]
    r['reach_first'] = am.epochs_to_reach(series, 0.70, window=1)
    r['reach_ma'] = am.epochs_to_reach(series, 0.70, window=3)
  for column, what in (
    ('reach_ma', '3-epoch moving average'),
    ('reach_first', 'plain first crossing'),
  ):
    print(
      f'teacher epochs to train accuracy 0.70 ({what}), delta=0.4 - '
      f'two_view_null: {_diff(rows, "delta=0.4", "two_view_null", column)}'
    )
  print(
    'teacher CE variance no_cache - delta=0.4: '
    + _diff(rows, 'no_cache', 'delta=0.4', 'teacher_ce_variance', 4)
  )
  common = [r['seed'] for r in rows if r['setting'] == 'no_cache']
  paired = {
    n: sum(
      r['teacher_ce_variance']
      for r in rows
      if r['setting'] == n and r['seed'] in common
    )
    / len(common)
    for n in ('no_cache', 'delta=0.4')
  }
  print(
    f'  over seeds {common}: {paired["no_cache"]:.4f} against '
    f'{paired["delta=0.4"]:.4f}, ratio {paired["no_cache"] / paired["delta=0.4"]:.3f}'
  )
  saturated = sum(r['student_epochs_to_converge'] == 10 for r in rows)
  print(
    f'students at "epochs to 99% of best" = 10 of 10: {saturated} of {len(rows)} runs'
  )


if __name__ == '__main__':
  main()

"""Seed-paired comparisons of a sweep's arms and what they allow one to say.

Every arm minus each control (or a pre-registered pair), paired by seed,
Holm-adjusted over the family of its table; the pre-registered primary
comparison with its reading (a difference, equivalence by a paired TOST at
the declared margin, or the difference the design could detect); and the
smallest detectable difference at the sweep's seed counts.
"""

from typing import Any

import numpy as np

from icckd_jax.errors import UserError
from icckd_jax.experiments import readings
from icckd_jax.experiments import statistics as st


def parse_comparisons(text: str | None) -> list[tuple[str, str]]:
  """'arm:control, arm:control' -> [(arm, control), ...]."""
  pairs = []
  for item in filter(None, (p.strip() for p in (text or '').split(','))):
    arm, sep, control = item.partition(':')
    if not sep or not arm.strip() or not control.strip():
      raise UserError(f'comparisons: {item!r} is not arm:control')
    pairs.append((arm.strip(), control.strip()))
  return pairs


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
        readings.by_seed(rows, arm, column),
        readings.by_seed(rows, control, column),
      )
    except ValueError:
      continue
    out.append({'arm': arm, 'control': control, 'diff': diff})
  for item, adjusted in zip(out, st.holm([c['diff'].p_value for c in out])):
    item['holm'] = adjusted
  return out


def _comparison_table(
  title: str, note: str, comparisons: list[dict]
) -> list[str]:
  """A titled table of comparisons (as `_holm_paired` returns them)."""
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
      f'{readings.interval_cell_diff(d.difference)} | {readings.p_cell(d.p_value)} | '
      f'{readings.p_cell(c["holm"])} |'
    )
  return lines + ['']


def primary_lines(sweep, names, controls, rows) -> list[str]:
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
        readings.by_seed(rows, c['arm'], column),
        readings.by_seed(rows, c['control'], column),
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
      head
      + f'a difference of {readings.interval_cell_diff(d.difference)} points '
      f'(Holm p {readings.p_cell(comparison["holm"])}).'
    )
  text = (
    head + "no difference detected; at the SD of this pair's own paired "
    f'differences ({100 * d.sd:.2f} points) the design could detect about '
    f'{detectable:.2f} points (power 0.8, α = 0.05, {n} seeds).'
  )
  if margin:
    eq = st.tost(arm, control, margin)
    verdict = 'equivalent' if eq.p_value < 0.05 else 'not shown equivalent'
    text += (
      f' Paired TOST at the declared margin ±{100 * margin:g} points: '
      f'p {readings.p_cell(eq.p_value)}, {verdict}.'
    )
  return text


def pair_lines(pairs, names, rows, teachers) -> list[str]:
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


def comparison_lines(names, controls, rows, teachers) -> list[str]:
  """Every arm minus each control, a table a stage (the teachers' only of
  the settings with a teacher of their own), Holm-adjusted per table."""
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


def power_lines(controls, rows, sweep, teachers) -> list[str]:
  """The detectable difference at the sweep's seed counts, from the spread
  of the teacher arms' paired differences (a student trained without its
  teacher is no such arm: its spread would say nothing of theirs)."""
  counts = sorted(
    {len(sweep['seeds']), len(sweep.get('primary_seeds') or sweep['seeds'])}
  )
  lines = [
    '## Smallest detectable difference',
    '',
    'From the spread of the seed-paired differences measured here, '
    'pooled over every arm compared with each control (weighted by '
    "their degrees of freedom), so not the primary reading's figure, "
    "which uses its own pair's spread alone: the paired "
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

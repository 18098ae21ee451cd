"""Whether a study ran in the regime it was designed for: its regime checks
('SETTING: COLUMN OP NUMBER' on a seed mean) and its transfer check ('ARM:
CONTROL >= X' on the students' seed-paired top-1 difference), as the first
section of summary.md.
"""

import dataclasses

import numpy as np

from icckd_jax.errors import UserError
from icckd_jax.experiments import readings
from icckd_jax.experiments import statistics as st

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
  """'SETTING: COLUMN OP THRESHOLD': the seed mean of COLUMN over the runs
  of SETTING must satisfy OP THRESHOLD."""

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
      readings.by_seed(rows, arm, 'student_top1_last'),
      readings.by_seed(rows, control, 'student_top1_last'),
    )
  except ValueError:
    return None
  return (arm, control, minimum), diff


def distilled(sweep: dict, names: list[str]) -> list[str]:
  """The settings whose students learn from their teacher: all but the
  transfer check's control (a student trained without the teacher)."""
  if not sweep.get('transfer_check'):
    return list(names)
  _, control, _ = parse_transfer_check(sweep['transfer_check'])
  return [n for n in names if n != control]


def regime_lines(sweep: dict, names: list[str], rows: list[dict]) -> list[str]:
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
      values = list(readings.by_seed(rows, name, check.column).values())
      if not values:
        continue
      found = True
      mean = float(np.mean(values))
      lines.append(
        f'| {name}: {check.column} | {check.operator} {check.threshold:g} '
        f'| {readings.interval_cell(values, 1, 3)} '
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
      f'| {readings.interval_cell_diff(ci)} points (p {readings.p_cell(diff.p_value)}) '
      f'| {"yes" if met else "**no**"} |'
    )
  return lines + [''] if found else []

"""Stage 1's declared rule (docs/results/capacity/design.md, amendment
2026-12-05): the capacity study's students use the first candidate
'ARM:CONTROL' (a KD setting, and scratch at the same epochs), in the
declared order, whose ARM − CONTROL student top-1, paired by seed, is at
least `minimum` on every declared seed; if none is, the one with the largest
mean gain, and regime check (b) has failed in stage 1.
"""

import dataclasses

import numpy as np

from icckd_jax.experiments import readings

COLUMN = 'student_top1_last'
FAILED = 'regime check (b) failed in stage 1'


@dataclasses.dataclass(frozen=True)
class Candidate:
  """One candidate recipe and its paired gains over scratch."""

  arm: str
  control: str
  gains: dict[int, float]  # {seed: ARM − CONTROL top-1}, a fraction
  meets: bool  # at least the minimum on every declared seed

  @property
  def mean(self) -> float | None:
    return float(np.mean(list(self.gains.values()))) if self.gains else None


@dataclasses.dataclass(frozen=True)
class Decision:
  """What the rule chose, and whether any candidate met it."""

  candidates: tuple[Candidate, ...]
  chosen: str  # the chosen candidate's ARM
  failed: bool  # no candidate met the rule: regime check (b) failed
  minimum: float  # the declared gain, a fraction of top-1


def decide(
  candidates: list[tuple[str, str]],
  minimum: float,
  rows: list[dict],
  seeds: tuple[int, ...],
) -> Decision:
  """Applies the rule to result rows ({'setting', 'seed', COLUMN, ...}).

  Args:
    candidates: [(arm, control), ...] in the declared order.
    minimum: the least gain, on every seed, that meets the rule.
    rows: the runs' result rows.
    seeds: the declared seeds; a candidate missing one does not meet the
      rule.
  """
  found = []
  for arm, control in candidates:
    arm_top1 = readings.by_seed(rows, arm, COLUMN)
    control_top1 = readings.by_seed(rows, control, COLUMN)
    gains = {
      s: arm_top1[s] - control_top1[s]
      for s in seeds
      if s in arm_top1 and s in control_top1
    }
    meets = len(gains) == len(seeds) > 0 and all(
      g >= minimum for g in gains.values()
    )
    found.append(Candidate(arm, control, gains, meets))
  # max keeps the first of equal means: the declared order decides ties.
  first = next((c for c in found if c.meets), None) or max(
    found, key=lambda c: -np.inf if c.mean is None else c.mean
  )
  return Decision(tuple(found), first.arm, not first.meets, minimum)


def lines(decision: Decision, recipe: str | None = None) -> list[str]:
  """The report's section: every candidate's gain per seed, the choice and
  whether regime check (b) failed; `recipe` says what the choice sets."""
  seeds = sorted({s for c in decision.candidates for s in c.gains})
  out = [
    "## Stage 1's rule: the student recipe",
    '',
    'Declared (docs/results/capacity/design.md, amendment 2026-12-05): the '
    'first candidate, in this order, whose student top-1 minus scratch at '
    f'the same epochs is at least +{100 * decision.minimum:g} points on '
    'every seed; if none is, the largest mean gain, and regime check (b) '
    'has failed in stage 1. Points of top-1, paired by seed.',
    '',
    '| candidate | scratch | '
    + ' | '.join(f'seed {s}' for s in seeds)
    + ' | mean | meets the rule |',
    '|---|---|' + '---|' * len(seeds) + '---|---|',
  ]
  for c in decision.candidates:
    cells = [f'{100 * c.gains[s]:+.2f}' if s in c.gains else '–' for s in seeds]
    mean = f'{100 * c.mean:+.2f}' if c.mean is not None else '–'
    out.append(
      f'| {c.arm} | {c.control} | '
      + ' | '.join(cells)
      + f' | {mean} | {"yes" if c.meets else "no"} |'
    )
  verdict = (
    f'none met the rule: {FAILED}; the largest mean gain'
    if decision.failed
    else 'the first that met the rule'
  )
  sets = f'; it sets {recipe}' if recipe else ''
  return out + ['', f'Chosen: **{decision.chosen}** ({verdict}){sets}.', '']

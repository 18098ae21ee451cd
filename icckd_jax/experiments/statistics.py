"""The statistics of a study: intervals, paired tests, a trend, power.

Small pure functions over per-seed numbers, each a thin layer over
`scipy.stats` (no distribution is written by hand here). A sweep's report
(readings.py, comparisons.py, checks.py) applies them to the last-epoch
figures of every run:

* `t_interval`: a setting's mean and its 95% t-interval over seeds;
* `paired_difference`: an arm against a control on the seeds both ran
  (same seed = same initialisation, data order and augmentation), its mean
  difference, 95% interval and two-sided paired t-test p-value;
* `holm`: Holm's step-down adjustment of a family of p-values;
* `linear_trend`: the slope of a figure against δ over every run, with its
  95% interval and p-value;
* `detectable_difference`: the smallest paired difference the design could
  detect (two-sided α = 0.05, power 0.8) given the spread it measured;
* `tost`: equivalence of two arms within a margin declared before the data
  (two one-sided paired t-tests); without it, a difference whose interval
  contains 0 is "no difference detected", never "equivalent";
* `correlation`: Pearson's and Spearman's coefficients across runs.

scipy is imported by each function, when a report is written: a run or a
sweep worker that imports the report for its file names never loads it.
"""

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

CONFIDENCE = 0.95
POWER = 0.8


@dataclasses.dataclass(frozen=True)
class Interval:
  """A mean and its two-sided confidence interval over n values."""

  mean: float
  low: float
  high: float
  n: int


def t_interval(
  values: Sequence[float], confidence: float = CONFIDENCE
) -> Interval:
  """Mean of `values` [n] and its t-interval (NaN bounds when n < 2)."""
  from scipy import stats  # pylint: disable=g-import-not-at-top

  x = np.asarray(values, dtype=np.float64)
  if x.size == 0:
    raise ValueError('t_interval needs at least one value')
  mean = float(np.mean(x))
  if x.size < 2:
    return Interval(mean, math.nan, math.nan, 1)
  sem = stats.sem(x)
  if sem == 0:
    return Interval(mean, mean, mean, int(x.size))
  low, high = stats.t.interval(confidence, x.size - 1, loc=mean, scale=sem)
  return Interval(mean, float(low), float(high), int(x.size))


@dataclasses.dataclass(frozen=True)
class PairedDifference:
  """arm − control over the n seeds both ran."""

  difference: Interval
  p_value: float
  sd: float  # standard deviation of the per-seed differences


def paired_difference(
  arm: dict[int, float],
  control: dict[int, float],
  confidence: float = CONFIDENCE,
) -> PairedDifference:
  """Seed-paired arm − control: mean, t-interval and paired t-test p-value.

  Args:
    arm, control: {seed: value}; only seeds present in both count.

  Raises:
    ValueError: fewer than two common seeds.
  """
  from scipy import stats  # pylint: disable=g-import-not-at-top

  seeds = sorted(set(arm) & set(control))
  if len(seeds) < 2:
    raise ValueError(f'a paired difference needs two common seeds, got {seeds}')
  a = np.array([arm[s] for s in seeds], dtype=np.float64)
  c = np.array([control[s] for s in seeds], dtype=np.float64)
  d = a - c
  sd = float(np.std(d, ddof=1))
  if sd == 0:
    p = 1.0 if np.all(d == 0) else 0.0
  else:
    p = float(stats.ttest_rel(a, c).pvalue)
  return PairedDifference(t_interval(d, confidence), p, sd)


def holm(p_values: Sequence[float]) -> list[float]:
  """Holm's step-down adjusted p-values, in the order given.

  The i-th smallest of m p-values is multiplied by (m − i + 1), made
  non-decreasing along that order, and capped at 1; rejecting every
  adjusted p below α controls the family-wise error rate at α.
  """
  p = np.asarray(p_values, dtype=np.float64)
  m = p.size
  order = np.argsort(p)
  adjusted = np.empty(m)
  running = 0.0
  for rank, index in enumerate(order):
    running = max(running, min(1.0, (m - rank) * p[index]))
    adjusted[index] = running
  return adjusted.tolist()


@dataclasses.dataclass(frozen=True)
class Trend:
  """Least-squares slope of a figure against x, per unit of x."""

  slope: Interval
  p_value: float
  n: int


def linear_trend(
  x: Sequence[float], y: Sequence[float], confidence: float = CONFIDENCE
) -> Trend:
  """Slope of y [n] on x [n] (every run one point), its t-interval and the
  p-value of slope = 0."""
  from scipy import stats  # pylint: disable=g-import-not-at-top

  x = np.asarray(x, dtype=np.float64)
  y = np.asarray(y, dtype=np.float64)
  if x.size < 3 or np.ptp(x) == 0:
    raise ValueError('a trend needs three points and two distinct x')
  fit = stats.linregress(x, y)
  half = stats.t.ppf(0.5 + confidence / 2, x.size - 2) * fit.stderr
  return Trend(
    Interval(
      float(fit.slope),
      float(fit.slope - half),
      float(fit.slope + half),
      int(x.size),
    ),
    float(fit.pvalue),
    int(x.size),
  )


def detectable_difference(
  sd: float, n: int, alpha: float = 0.05, power: float = POWER
) -> float:
  """The paired mean difference a two-sided t-test on n pairs detects with
  `power` at level `alpha`, when the per-pair differences have SD `sd`:
  (t_{1−α/2, n−1} + t_{power, n−1}) · sd / √n (the usual t approximation)."""
  from scipy import stats  # pylint: disable=g-import-not-at-top

  if n < 2:
    return math.nan
  df = n - 1
  return float(
    (stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df))
    * sd
    / math.sqrt(n)
  )


@dataclasses.dataclass(frozen=True)
class Equivalence:
  """Two one-sided paired t-tests of |arm − control| < margin."""

  margin: float
  p_lower: float  # H0: difference <= -margin
  p_upper: float  # H0: difference >= +margin
  n: int

  @property
  def p_value(self) -> float:
    """The TOST p-value: the larger one-sided p (both must reject)."""
    return max(self.p_lower, self.p_upper)


def tost(
  arm: dict[int, float], control: dict[int, float], margin: float
) -> Equivalence:
  """Paired two one-sided tests (Schuirmann's TOST) of equivalence within
  ±`margin`, on the seeds both ran.

  With d [n] the per-seed differences, mean m and standard error e:
  p_lower = P(T_{n−1} > (m + margin) / e) and p_upper = P(T_{n−1} <
  (m − margin) / e); equivalence at level α is claimed when both are below
  α, i.e. when the (1 − 2α) interval of m lies inside (−margin, margin).

  Raises:
    ValueError: fewer than two common seeds, or a margin that is not > 0.
  """
  from scipy import stats  # pylint: disable=g-import-not-at-top

  if not margin > 0:
    raise ValueError(f'an equivalence margin must be > 0, got {margin}')
  seeds = sorted(set(arm) & set(control))
  if len(seeds) < 2:
    raise ValueError(f'a paired test needs two common seeds, got {seeds}')
  d = np.array([arm[s] - control[s] for s in seeds], dtype=np.float64)
  m = float(d.mean())
  se = float(np.std(d, ddof=1) / math.sqrt(d.size))
  df = d.size - 1
  if se == 0:
    inside = -margin < m < margin
    return Equivalence(
      margin, 0.0 if inside else 1.0, 0.0 if inside else 1.0, int(d.size)
    )
  return Equivalence(
    margin,
    float(stats.t.sf((m + margin) / se, df)),
    float(stats.t.cdf((m - margin) / se, df)),
    int(d.size),
  )


@dataclasses.dataclass(frozen=True)
class Correlation:
  """Pearson's r and Spearman's ρ of two figures over n runs."""

  pearson: float
  pearson_p: float
  spearman: float
  spearman_p: float
  n: int


def correlation(x: Sequence[float], y: Sequence[float]) -> Correlation:
  """Pearson's and Spearman's coefficients of y [n] on x [n] with their
  two-sided p-values (scipy.stats.pearsonr / spearmanr).

  Raises:
    ValueError: fewer than three points, or a constant series.
  """
  from scipy import stats  # pylint: disable=g-import-not-at-top

  x = np.asarray(x, dtype=np.float64)
  y = np.asarray(y, dtype=np.float64)
  if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
    raise ValueError('a correlation needs three points, neither series flat')
  pearson = stats.pearsonr(x, y)
  spearman = stats.spearmanr(x, y)
  return Correlation(
    float(pearson.statistic),
    float(pearson.pvalue),
    float(spearman.statistic),
    float(spearman.pvalue),
    int(x.size),
  )

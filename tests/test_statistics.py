"""The study's statistics against values worked out by hand or from tables."""

import math

import numpy as np
import pytest

from icckd_jax.experiments import statistics as st


def test_t_interval_of_three_values():
  # mean 2, SD 1, SEM 1/√3, t(0.975, 2) = 4.302653 (any t table).
  ci = st.t_interval([1.0, 2.0, 3.0])
  half = 4.302653 / math.sqrt(3)
  assert ci.n == 3 and ci.mean == pytest.approx(2.0)
  assert (ci.low, ci.high) == pytest.approx((2 - half, 2 + half), rel=1e-6)


def test_t_interval_degenerate_cases():
  assert math.isnan(st.t_interval([0.7]).low)
  same = st.t_interval([0.5, 0.5, 0.5])
  assert (same.low, same.high) == (0.5, 0.5)
  with pytest.raises(ValueError):
    st.t_interval([])


def test_paired_difference_uses_common_seeds_only():
  arm = {0: 0.80, 1: 0.82, 2: 0.81, 7: 0.10}
  control = {0: 0.78, 1: 0.81, 2: 0.78, 5: 0.99}
  d = st.paired_difference(arm, control)
  diffs = np.array([0.02, 0.01, 0.03])
  assert d.difference.n == 3
  assert d.difference.mean == pytest.approx(0.02)
  assert d.sd == pytest.approx(0.01)
  # t = 0.02 / (0.01/√3) = 3.4641 on 2 df: two-sided p = 0.0742 (t table).
  assert d.p_value == pytest.approx(0.0742, abs=5e-4)
  assert d.difference.low < diffs.mean() < d.difference.high
  with pytest.raises(ValueError, match='two common seeds'):
    st.paired_difference({0: 1.0}, {0: 0.5, 1: 0.2})


def test_holm_step_down():
  # Sorted 0.01, 0.03, 0.04 -> ×3, ×2, ×1 = 0.03, 0.06, 0.04 -> monotone
  # 0.03, 0.06, 0.06; returned in the order given.
  assert st.holm([0.04, 0.01, 0.03]) == pytest.approx([0.06, 0.03, 0.06])
  assert st.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
  assert st.holm([0.2]) == pytest.approx([0.2])


def test_linear_trend_recovers_a_line_and_rejects_a_flat_x():
  x = [0.0, 0.0, 0.2, 0.2, 0.4, 0.4]
  y = [1.0 + 0.5 * v + e for v, e in zip(x, [0.01, -0.01] * 3)]
  trend = st.linear_trend(x, y)
  assert trend.slope.mean == pytest.approx(0.5, abs=1e-9)
  assert trend.slope.low < 0.5 < trend.slope.high and trend.p_value < 1e-3
  with pytest.raises(ValueError):
    st.linear_trend([0.1, 0.1, 0.1], [1.0, 2.0, 3.0])


def test_detectable_difference_matches_the_t_approximation():
  # n = 10: t(0.975, 9) = 2.262157, t(0.8, 9) = 0.883404 (t table).
  assert st.detectable_difference(1.0, 10) == pytest.approx(
    (2.262157 + 0.883404) / math.sqrt(10), rel=1e-5
  )
  assert st.detectable_difference(1.0, 5) > st.detectable_difference(1.0, 10)
  assert math.isnan(st.detectable_difference(1.0, 1))


def test_tost_against_a_hand_computed_case():
  # d = 0.2, 0.4, 0.6, 0.8 (mean 0.5, SD 0.2582, SE 0.1291) at margin 1:
  # t_lower = (0.5 + 1) / 0.1291 = 11.619, t_upper = (0.5 - 1) / 0.1291 =
  # -3.873 on 3 df; one-sided p = 6.9e-4 and 0.01522 (t table: t(0.99, 3)
  # = 4.541 > 3.873 > t(0.975, 3) = 3.182).
  control = {0: 0.0, 1: 0.0, 2: 0.0, 3: 0.0}
  arm = {0: 0.2, 1: 0.4, 2: 0.6, 3: 0.8, 9: 5.0}
  eq = st.tost(arm, control, margin=1.0)
  assert eq.n == 4
  assert eq.p_lower == pytest.approx(6.9e-4, rel=0.02)
  assert eq.p_upper == pytest.approx(0.01522, rel=0.01)
  assert eq.p_value == eq.p_upper
  # A margin of 0.6 holds the mean yet not its interval: not equivalent.
  # t_upper = -0.1 / 0.1291 = -0.7746 on 3 df: p = 0.2475.
  assert st.tost(arm, control, margin=0.6).p_value == pytest.approx(
    0.2475, abs=2e-3
  )
  with pytest.raises(ValueError, match='margin'):
    st.tost(arm, control, margin=0.0)


def test_correlation_of_a_monotone_but_curved_relation():
  # y = x³: Spearman's ρ is exactly 1. Pearson's r by hand: deviations
  # from the means (3, 45) are (-2..2) and (-44, -37, -18, 19, 80); their
  # products sum to 304, the squares to 10 and 10390: r = 304 / √103900
  # = 0.9431.
  x = [1.0, 2.0, 3.0, 4.0, 5.0]
  c = st.correlation(x, [v**3 for v in x])
  assert c.n == 5 and c.spearman == pytest.approx(1.0)
  assert c.pearson == pytest.approx(0.9431, abs=1e-4)
  with pytest.raises(ValueError):
    st.correlation([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])

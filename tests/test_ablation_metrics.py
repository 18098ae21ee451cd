"""Known answers for the ablation metrics, on hand-made series."""

import numpy as np
import pytest

from icckd_jax.experiments import ablation_metrics as am
import helpers

# Test top-1 that climbs and plateaus. Its 3-epoch moving average is
# 10, 25, 40, 63.33, 76.67, 80, 80.
PLATEAU = [10.0, 40.0, 70.0, 80.0, 80.0, 80.0, 80.0]


def test_loss_variance_even_epochs_uses_last_half():
  # Population variances: 1, 0, 4, 2/3; the second half is epochs 2 and 3.
  epochs = [[1.0, 3.0], [2.0, 2.0], [0.0, 4.0], [1.0, 2.0, 3.0]]
  figure, series = am.loss_variance(epochs)
  np.testing.assert_allclose(series, [1.0, 0.0, 4.0, 2.0 / 3.0])
  assert figure == pytest.approx((4.0 + 2.0 / 3.0) / 2)


def test_loss_variance_odd_epochs_includes_middle_epoch():
  # Variances 1, 4, 3; E = 3 so the second half is epochs 1 and 2.
  epochs = [[1.0, 3.0], [0.0, 4.0], [2.0, 2.0, 2.0, 6.0]]
  figure, series = am.loss_variance(epochs)
  np.testing.assert_allclose(series, [1.0, 4.0, 3.0])
  assert figure == pytest.approx(3.5)


def test_loss_variance_single_epoch_of_one_step_is_zero():
  assert am.loss_variance([[5.0]]) == (0.0, [0.0])


@pytest.mark.parametrize('num_epochs,start', [(1, 0), (2, 1), (4, 2), (5, 2)])
def test_second_half_start(num_epochs, start):
  assert am.second_half_start(num_epochs) == start


@pytest.mark.parametrize(
  'window,expected',
  [
    (3, [3.0, 4.5, 6.0, 5.0, 4.0]),
    (2, [3.0, 4.5, 7.5, 4.5, 1.5]),
    (1, [3.0, 6.0, 9.0, 0.0, 3.0]),
    (10, [3.0, 4.5, 6.0, 4.5, 4.2]),
  ],
)
def test_moving_average_grows_window_at_start(window, expected):
  np.testing.assert_allclose(
    am.moving_average([3.0, 6.0, 9.0, 0.0, 3.0], window), expected
  )


def test_moving_average_rejects_bad_input():
  with pytest.raises(ValueError):
    am.moving_average([1.0, 2.0], window=0)
  with pytest.raises(ValueError):
    am.moving_average([])


def test_epochs_to_reach():
  assert am.epochs_to_reach(PLATEAU, 60.0) == 4
  assert am.epochs_to_reach(PLATEAU, 40.0) == 3  # Reaching means >=.
  assert am.epochs_to_reach(PLATEAU, 80.5) is None


def test_shared_threshold_is_reached_by_every_run():
  weak = [0.0, 50.0, 50.0, 50.0]  # Best moving average 50.
  runs = [PLATEAU, weak]
  threshold = helpers.shared_threshold(runs)
  assert threshold == pytest.approx(0.9 * 50.0)
  assert [am.epochs_to_reach(r, threshold) for r in runs] == [4, 4]


def test_step_time_stats_median_ignores_slow_first_step():
  stats = am.step_time_stats([5.0, 0.1, 0.3, 0.2, 0.2], batch_size=64)
  assert stats['num_steps'] == 4
  assert stats['median_step_seconds'] == pytest.approx(0.2)
  assert stats['images_per_second'] == pytest.approx(320.0)
  # Even kept, the compile step does not move the median.
  kept_all = am.step_time_stats([5.0, 0.1, 0.3, 0.2, 0.2], 64, skip_first=0)
  assert kept_all['median_step_seconds'] == pytest.approx(0.2)
  with pytest.raises(ValueError):
    am.step_time_stats([5.0], batch_size=64)


def test_stability_variance_averages_epochs_two_to_the_first_decay():
  # Per-epoch population variances: 1.0, 0.25, 4.0, 9.0.
  epochs = [[0.0, 2.0], [1.0, 2.0], [0.0, 4.0], [0.0, 6.0]]
  assert am.stability_variance(epochs, 3) == pytest.approx((0.25 + 4.0) / 2)
  assert am.stability_variance(epochs, None) == pytest.approx(
    (0.25 + 4.0 + 9.0) / 3
  )
  assert am.stability_variance(epochs, 1) == pytest.approx(1.0)
  assert am.stability_variance(epochs[:1], None) == pytest.approx(1.0)

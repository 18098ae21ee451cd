"""The ablation metrics of docs/method.md §6, as functions of plain data.

Every function takes numbers, sequences or NumPy arrays and returns Python
numbers, lists or dicts, so that each definition can be checked on a
hand-made series with a known answer. The memory figures are read by
`icckd_jax.runs.memory`, where the runs take them.

Conventions shared by the functions below:

* Epochs are numbered from 1 wherever an epoch is *returned* (as in the
  tables); series are indexed from 0.
* Accuracies may be fractions or percentages; every function is scale-free in
  them.
* The moving average is trailing and, for the first `window - 1` epochs,
  averages the epochs that exist so far (see `moving_average`).
"""

from typing import Optional, Sequence

import numpy as np


def _as_series(values: Sequence[float], name: str) -> np.ndarray:
  """A non-empty 1-D float64 array of `values`; raises ValueError otherwise."""
  arr = np.asarray(values, dtype=np.float64)
  if arr.ndim != 1 or arr.size == 0:
    raise ValueError(
      f'{name} must be a non-empty 1-D series, got shape {arr.shape}.'
    )
  return arr


def second_half_start(num_epochs: int) -> int:
  """0-based index of the first epoch of the second half of training.

  The second half is epochs `num_epochs // 2, ..., num_epochs - 1`, i.e. the
  last ceil(num_epochs / 2) epochs: with an odd count the middle epoch belongs
  to the second half (E = 5 -> indices 2, 3, 4; E = 4 -> 2, 3; E = 1 -> 0), so
  the half is never empty.

  Args:
    num_epochs: E >= 1.

  Returns:
    E // 2.
  """
  if num_epochs < 1:
    raise ValueError(f'num_epochs must be >= 1, got {num_epochs}.')
  return num_epochs // 2


def loss_variance(
  per_step_losses_by_epoch: Sequence[Sequence[float]],
) -> tuple[float, list[float]]:
  """Variance of the per-step total training loss, per epoch and per run.

  For epoch e with per-step losses l_1..l_n, var_e = mean_k (l_k - mean(l))^2,
  the population variance (ddof = 0): the steps of an epoch are all the steps
  there are, not a sample, and an epoch of one step has variance 0 rather
  than NaN.

  The run's figure is the mean of var_e over the second half of training, the
  epochs of index >= E // 2 (the last ceil(E / 2) epochs; see
  `second_half_start`), so that the transient of the first epochs does not
  dominate it.

  Args:
    per_step_losses_by_epoch: E >= 1 sequences, epoch e holding the total loss
      of each of its steps (at least one).

  Returns:
    (figure, per_epoch): the run's figure and the E per-epoch variances.
  """
  if not per_step_losses_by_epoch:
    raise ValueError('per_step_losses_by_epoch must hold at least one epoch.')
  per_epoch = [
    float(np.var(_as_series(losses, f'epoch {e} losses')))
    for e, losses in enumerate(per_step_losses_by_epoch)
  ]
  start = second_half_start(len(per_epoch))
  return float(np.mean(per_epoch[start:])), per_epoch


def stability_variance(
  per_step_losses_by_epoch: Sequence[Sequence[float]],
  first_decay_epoch: Optional[int],
) -> float:
  """Loss variance where it measures training stability: the mean per-epoch
  variance of the per-step loss over epochs 2 .. first_decay_epoch (1-based),
  before any learning-rate decay.

  Epoch 1 is left out (its loss falls steeply, so its variance measures the
  descent, not the noise); after a decay the variance mostly measures the
  smaller step. Without a decay (None, or one beyond the run) every epoch
  but the first counts; a run of one epoch, or a decay at epoch 1, uses
  epoch 1.

  Args:
    per_step_losses_by_epoch: E sequences of per-step losses (CE, so that
      settings with different objectives compare).
    first_decay_epoch: the epoch after which the learning rate first drops.

  Returns:
    The mean of the per-epoch population variances in the window.
  """
  _, per_epoch = loss_variance(per_step_losses_by_epoch)
  end = (
    len(per_epoch)
    if first_decay_epoch is None
    else min(first_decay_epoch, len(per_epoch))
  )
  window = per_epoch[1:end] or per_epoch[:1]
  return float(np.mean(window))


def moving_average(series: Sequence[float], window: int = 3) -> np.ndarray:
  """Trailing moving average with a growing window at the start.

  ma[t] = mean(series[max(0, t - window + 1) : t + 1]): the mean of the last
  `window` values, and for t < window - 1 the mean of the t + 1 values that
  exist so far (so ma[0] = series[0] and the output is as long as the input).

  Args:
    series: [T] values, T >= 1.
    window: number of trailing values averaged, >= 1.

  Returns:
    [T] float64 array.
  """
  if window < 1:
    raise ValueError(f'window must be >= 1, got {window}.')
  x = _as_series(series, 'series')
  # Cumulative sums give every window's sum in one pass; the leading 0 makes
  # csum[t + 1] - csum[lo] the sum of x[lo..t].
  csum = np.concatenate([[0.0], np.cumsum(x)])
  t = np.arange(x.size)
  lo = np.maximum(0, t - window + 1)
  return (csum[t + 1] - csum[lo]) / (t + 1 - lo)


def epochs_to_reach(
  test_top1_by_epoch: Sequence[float], threshold: float, window: int = 3
) -> Optional[int]:
  """First epoch at which the run reaches a fixed accuracy.

  The smallest 1-based epoch t with moving_average(top1, window)[t - 1] >=
  threshold, or None if the moving average never reaches it. Use one
  threshold for all runs of a sweep so that the epochs compare.

  Args:
    test_top1_by_epoch: [E] test top-1 after each epoch.
    threshold: accuracy in the units of the series.
    window: moving-average window.

  Returns:
    An epoch in 1..E, or None.
  """
  reached = moving_average(test_top1_by_epoch, window) >= threshold
  if not reached.any():
    return None
  return int(np.argmax(reached)) + 1


def best_moving_average(
  test_top1_by_epoch: Sequence[float], window: int = 3
) -> float:
  """max_t moving_average(top1, window)[t]: a run's smoothed best accuracy."""
  return float(moving_average(test_top1_by_epoch, window).max())


def step_time_stats(
  step_seconds: Sequence[float], batch_size: int, skip_first: int = 1
) -> dict[str, float]:
  """Throughput of a train step once it is compiled.

  The first `skip_first` steps are dropped (they include tracing and
  compilation); of the rest, the median, which a stray slow step (a
  checkpoint, a host hiccup) barely moves, unlike the mean.

  Args:
    step_seconds: [S] wall-clock seconds of each step, in order.
    batch_size: global images per step.
    skip_first: leading steps to drop, >= 0.

  Returns:
    {'median_step_seconds': median of the kept steps,
     'images_per_second': batch_size / median_step_seconds,
     'num_steps': number of kept steps}.
  """
  if skip_first < 0:
    raise ValueError(f'skip_first must be >= 0, got {skip_first}.')
  kept = np.asarray(step_seconds, dtype=np.float64)[skip_first:]
  if kept.size == 0:
    raise ValueError(
      f'no steps left after skipping the first {skip_first} '
      f'of {len(step_seconds)}.'
    )
  median = float(np.median(kept))
  return {
    'median_step_seconds': median,
    'images_per_second': batch_size / median,
    'num_steps': int(kept.size),
  }

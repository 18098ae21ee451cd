"""A sweep report's figures, drawn from the rows sweep/report.py reads.

  accuracy.png   last-epoch top-1 of each setting with its 95% interval
  curves.png     teacher train accuracy, CE, gate pass rate and effective
                 weight per epoch: mean over seeds with a 95% band
  transfer.png   student against teacher top-1, one point a KD run

matplotlib is imported when a plot is drawn (`_pyplot`).
"""

import os

import numpy as np

from icckd_jax.experiments import readings
from icckd_jax.experiments import statistics as st

ACCURACY_PNG = 'accuracy.png'
CURVES_PNG = 'curves.png'
TRANSFER_PNG = 'transfer.png'


def _pyplot():
  """matplotlib.pyplot, drawing to files only (never a window). Imported
  when a plot is drawn, so that a run or a sweep worker that has no report
  to write does not load matplotlib (about a second)."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  return plt


def _save(plt, fig, path: str) -> None:
  """Writes `fig` to `path` (laid out, 110 dpi) and closes it."""
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def draw(
  output_dir: str,
  names: list[str],
  rows: list[dict],
  epoch_rows: list[dict],
  points: dict[str, list[tuple[float, float]]],
) -> None:
  """Every figure of a report into `output_dir`: those of the settings
  `names`, from the rows of results.csv and epochs.csv, and `points`
  ({setting: [(teacher top-1, student top-1), ...]}) of the KD runs."""
  accuracy(
    output_dir,
    {
      stage: {
        name: list(readings.by_seed(rows, name, f'{stage}_top1_last').values())
        for name in names
      }
      for stage in ('teacher', 'student')
    },
  )
  curves(output_dir, names, epoch_rows)
  transfer(output_dir, points)


def accuracy(output_dir: str, top1: dict[str, dict[str, list[float]]]) -> None:
  """accuracy.png: last-epoch top-1 of every run (grey) and each setting's
  mean with its 95% interval; `top1` is {stage: {setting: [top-1 a seed]}}."""
  plt = _pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for ax, stage in zip(axes, ('teacher', 'student')):
    names = list(top1[stage])
    for i, name in enumerate(names):
      values = [100 * v for v in top1[stage][name]]
      if not values:
        continue
      ci = st.t_interval(values)
      ax.scatter([i] * len(values), values, color='0.7', s=10, zorder=1)
      if ci.n > 1:
        ax.errorbar(
          [i],
          [ci.mean],
          yerr=[[ci.mean - ci.low], [ci.high - ci.mean]],
          fmt='o',
          color='C0',
          capsize=4,
          zorder=2,
        )
      else:
        ax.plot([i], [ci.mean], 'o', color='C0')
    ax.set_xticks(range(len(names)), names, rotation=35, ha='right', fontsize=8)
    ax.set_title(
      f'{stage}: last-epoch test top-1 (%), mean and 95% CI; grey: seeds',
      fontsize=9,
    )
    ax.grid(alpha=0.3)
  _save(plt, fig, os.path.join(output_dir, ACCURACY_PNG))


def transfer(output_dir: str, points: dict[str, list]) -> None:
  """transfer.png: student against teacher top-1, one point a run,
  coloured by setting."""
  if sum(len(v) for v in points.values()) < 2:
    return
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(5.5, 4.5))
  for i, (name, pairs) in enumerate(points.items()):
    ax.scatter(
      [100 * t for t, _ in pairs],
      [100 * s for _, s in pairs],
      s=18,
      color=f'C{i % 10}',
      label=name,
    )
  ax.set_xlabel('teacher test top-1 (%), last epoch')
  ax.set_ylabel('KD student test top-1 (%), last epoch')
  ax.set_title('one point a run', fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  _save(plt, fig, os.path.join(output_dir, TRANSFER_PNG))


def _band(
  curves: list[list[float]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Mean and 95% t-band over seeds, epoch by epoch ([E] each)."""
  length = min(len(c) for c in curves)
  data = np.array([c[:length] for c in curves], dtype=np.float64)
  mean = data.mean(axis=0)
  if len(curves) < 2:
    return mean, mean, mean
  bands = [st.t_interval(data[:, e]) for e in range(length)]
  return (
    mean,
    np.array([b.low for b in bands]),
    np.array([b.high for b in bands]),
  )


def curves(output_dir: str, names: list[str], epoch_rows: list[dict]) -> None:
  """curves.png: the teachers' train accuracy, CE, gate pass rate and
  effective weight per epoch, each setting's mean over seeds with a 95%
  band; `epoch_rows` as in epochs.csv."""
  panels = (
    ('train_accuracy', 'teacher train accuracy (augmented view)'),
    ('ce_loss', 'teacher CE (not the total loss)'),
    ('gate_pass_rate', 'teacher gate pass rate'),
    ('effective_weight', 'teacher effective weight'),
  )
  plt = _pyplot()
  from matplotlib.ticker import MaxNLocator  # pylint: disable=g-import-not-at-top

  fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4))
  colors = plt.rcParams['axes.prop_cycle'].by_key()['color']
  for ax, (column, title) in zip(axes, panels):
    for i, name in enumerate(names):
      curves = {}
      for r in epoch_rows:
        if (
          r['setting'] == name
          and r['stage'] == 'teacher'
          and r.get(column) is not None
        ):
          curves.setdefault(r['seed'], []).append(r[column])
      if not curves:
        continue
      mean, low, high = _band(list(curves.values()))
      x = np.arange(1, len(mean) + 1)
      color = colors[i % len(colors)]
      ax.plot(x, mean, color=color, label=name, lw=1.2)
      ax.fill_between(x, low, high, color=color, alpha=0.08)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel('epoch')
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if column != 'ce_loss':
      ax.set_ylim(0, 1)  # rates: the whole axis, nothing exaggerated
    else:
      ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
  if axes[0].get_legend_handles_labels()[0]:
    axes[0].legend(fontsize=7)  # the first panel has every setting
  fig.suptitle('mean over seeds, band: 95% t-interval', fontsize=9)
  _save(plt, fig, os.path.join(output_dir, CURVES_PNG))

"""The ablation report: one row per run, one row per setting, and plots.

Every figure is computed by `ablation_metrics` from what the runs logged
(metrics.jsonl and summary.json of each teacher and student), so a report can
be regenerated at any time from finished runs alone:

  WORKDIR/results.csv   one row per (setting, seed), every metric
  WORKDIR/summary.md    one row per setting: mean ± std over seeds
  WORKDIR/accuracy.png  test top-1 against epoch, teacher and student
  WORKDIR/loss.png      teacher training loss per epoch, ± its within-epoch std
  WORKDIR/metrics.png   each metric against the setting, with error bars
"""

import csv
import json
import os
from typing import Any

import matplotlib
matplotlib.use('Agg')  # Files only; never a window.
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
from matplotlib.ticker import MaxNLocator  # pylint: disable=g-import-not-at-top
import numpy as np

from icckd_jax.experiments import ablation_metrics as am
from icckd_jax.training import metric_writer
from icckd_jax.errors import UserError

RESULT_FILE = 'result.json'
RESULTS_CSV = 'results.csv'
SUMMARY_FILE = 'summary.md'

# (column, header, scale, digits) of the summary table, in order.
SUMMARY_COLUMNS = (
    ('teacher_top1_last', 'teacher top-1 last (%)', 100, 2),
    ('teacher_top1_best', 'teacher top-1 best (%)', 100, 2),
    ('student_top1_last', 'student top-1 last (%)', 100, 2),
    ('student_top1_best', 'student top-1 best (%)', 100, 2),
    ('teacher_loss_variance', 'teacher loss var', 1, 4),
    ('teacher_epochs_to_converge', 'teacher epochs to 99%', 1, 1),
    ('teacher_epochs_to_reach', 'teacher epochs to shared acc', 1, 1),
    ('student_epochs_to_converge', 'student epochs to 99%', 1, 1),
    ('teacher_compiled_mib', 'teacher step MiB (compiled)', 1, 1),
    ('teacher_peak_mib', 'peak device MiB', 1, 1),
    ('cache_kib', 'cache KiB', 1, 1),
    ('teacher_step_ms', 'teacher step ms', 1, 1),
    ('teacher_gate_pass_rate', 'gate pass rate (last epoch)', 1, 3),
)


def _run_series(workdir: str) -> dict[str, Any]:
  epochs = metric_writer.read_records(workdir, 'epoch')
  train = metric_writer.read_records(workdir, 'train')
  with open(os.path.join(workdir, 'summary.json')) as f:
    summary = json.load(f)
  return {'epochs': epochs, 'train': train, 'summary': summary}


def _stage_figures(run: dict, prefix: str, batch_size: int) -> dict[str, Any]:
  epochs, summary = run['epochs'], run['summary']
  top1 = [e['test_top1'] for e in epochs]
  variance, per_epoch = am.loss_variance([e['step_losses'] for e in epochs])
  step_times = [r['step_time'] for r in run['train']]
  # The first logged window includes compilation, unless it is the only one.
  timing = am.step_time_stats(step_times, batch_size,
                              skip_first=min(1, len(step_times) - 1))
  memory = summary.get('compiled_memory') or {}
  figures = {
      f'{prefix}_top1_last': top1[-1],
      f'{prefix}_top1_best': max(top1),
      f'{prefix}_loss_variance': variance,
      f'{prefix}_epochs_to_converge': am.epochs_to_converge(top1),
      f'{prefix}_compiled_mib': memory.get('total_bytes', 0) / 2**20,
      f'{prefix}_peak_mib': (summary['peak_device_bytes'] / 2**20
                             if summary.get('peak_device_bytes') else None),
      f'{prefix}_step_ms': 1000 * timing['median_step_seconds'],
      f'{prefix}_images_per_second': timing['images_per_second'],
  }
  series = {
      f'{prefix}_top1': top1,
      f'{prefix}_loss_mean': [float(np.mean(e['step_losses'])) for e in epochs],
      f'{prefix}_loss_std': [float(np.sqrt(v)) for v in per_epoch],
  }
  return figures, series


def write_result(run_dir: str, setting: str, seed: int, teacher_batch: int,
                 student_batch: int) -> dict[str, Any]:
  """Computes a finished run's figures into RUN_DIR/result.json."""
  teacher = _run_series(os.path.join(run_dir, 'teacher'))
  student = _run_series(os.path.join(run_dir, 'student'))
  row = {'setting': setting, 'seed': seed}
  t_fig, t_series = _stage_figures(teacher, 'teacher', teacher_batch)
  s_fig, s_series = _stage_figures(student, 'student', student_batch)
  last = teacher['epochs'][-1]
  row.update(t_fig)
  row.update(s_fig)
  row.update(
      cache_kib=(teacher['summary'].get('compiled_memory') or {}).get(
          'cache_bytes', 0) / 1024,
      teacher_gate_pass_rate=last.get('gate_pass_rate'),
      teacher_neg_in_batch=last.get('neg_in_batch'),
      teacher_neg_cache=last.get('neg_cache'),
      student_agreement=student['epochs'][-1].get('test_agreement'))
  result = {'row': row, 'series': {
      **t_series, **s_series,
      'teacher_gate_pass_rate': [e.get('gate_pass_rate') for e in
                                 teacher['epochs']]}}
  # Whole or not at all: concurrent sweep workers may write the same file.
  path = os.path.join(run_dir, RESULT_FILE)
  with open(f'{path}.{os.getpid()}.tmp', 'w') as f:
    json.dump(result, f, indent=2)
  os.replace(f'{path}.{os.getpid()}.tmp', path)
  return result


def _load_results(workdir: str) -> tuple[list[str], list[dict]]:
  path = os.path.join(workdir, 'sweep.json')
  if not os.path.exists(path):
    raise UserError(f'{workdir} holds no sweep ({path} is missing)')
  with open(path) as f:
    sweep = json.load(f)
  from icckd_jax.experiments.sweep import parse_setting  # pylint: disable=g-import-not-at-top
  names = [parse_setting(s).name for s in sweep['settings']]
  results = []
  for name in names:
    for seed in sweep['seeds']:
      path = os.path.join(workdir, name, f'seed_{seed}', RESULT_FILE)
      if os.path.exists(path):
        with open(path) as f:
          results.append(json.load(f))
  return names, results


def _fmt(value, scale, digits):
  return '–' if value is None else f'{value * scale:.{digits}f}'


def write_report(workdir: str) -> list[dict[str, Any]]:
  """(Re)writes results.csv, summary.md and the plots from finished runs."""
  names, results = _load_results(workdir)
  if not results:
    raise UserError(f'no finished runs under {workdir} yet')
  # A fixed accuracy every run of the sweep reaches: 90% of the weakest
  # run's best 3-epoch moving average.
  threshold = am.shared_threshold([r['series']['teacher_top1']
                                   for r in results])
  rows = []
  for r in results:
    row = dict(r['row'])
    row['shared_teacher_top1'] = threshold
    row['teacher_epochs_to_reach'] = am.epochs_to_reach(
        r['series']['teacher_top1'], threshold)
    rows.append(row)

  columns = list(rows[0])
  with open(os.path.join(workdir, RESULTS_CSV), 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)

  present = [n for n in names if any(r['setting'] == n for r in rows)]
  with open(os.path.join(workdir, 'sweep.json')) as f:
    test_subset = json.load(f)['base']['teacher']['dataset'].get('test_subset')
  split = (f'a fixed {test_subset}-image subset of the test split'
           if test_subset else 'the whole test split')
  lines = [
      f'Mean ± std over seeds; top-1 on {split}, "last" = final '
      f'epoch, "best" = best epoch. Shared accuracy for "epochs to shared '
      f'acc": teacher top-1 {100 * threshold:.2f}% (3-epoch moving average).',
      '',
      '| setting | seeds | ' + ' | '.join(h for _, h, _, _ in SUMMARY_COLUMNS)
      + ' |',
      '|---|---|' + '---|' * len(SUMMARY_COLUMNS)]
  for name in present:
    mine = [row for row in rows if row['setting'] == name]
    cells = []
    for column, _, scale, digits in SUMMARY_COLUMNS:
      values = [row[column] for row in mine if row.get(column) is not None]
      if not values:
        cells.append('–')
        continue
      mean, std = am.mean_std(values)
      cells.append(am.format_mean_std(mean * scale, std * scale, digits))
    lines.append(f'| {name} | {len(mine)} | ' + ' | '.join(cells) + ' |')
  with open(os.path.join(workdir, SUMMARY_FILE), 'w') as f:
    f.write('\n'.join(lines) + '\n')

  _plot(workdir, present, results, rows)
  return rows


def headline(rows: list[dict[str, Any]]) -> str:
  """The short table a sweep prints at its end: top-1 of each setting's
  teacher and student (last epoch, mean ± std over seeds)."""
  lines = ['| setting | seeds | teacher top-1 (%) | student top-1, KD (%) |',
           '|---|---|---|---|']
  for name in dict.fromkeys(row['setting'] for row in rows):
    mine = [row for row in rows if row['setting'] == name]
    cells = [am.format_mean_std(*(100 * v for v in am.mean_std(
        [row[column] for row in mine])))
             for column in ('teacher_top1_last', 'student_top1_last')]
    lines.append(f'| {name} | {len(mine)} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def _mean_curve(curves: list[list[float]]) -> np.ndarray:
  length = min(len(c) for c in curves)
  return np.mean([c[:length] for c in curves], axis=0)


def _plot(workdir: str, names: list[str], results: list[dict],
          rows: list[dict]) -> None:
  by_name = {n: [r for r in results if r['row']['setting'] == n]
             for n in names}
  colors = plt.rcParams['axes.prop_cycle'].by_key()['color']

  fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
  for i, name in enumerate(names):
    color = colors[i % len(colors)]
    for ax, stage in zip(axes, ('teacher', 'student')):
      curve = 100 * _mean_curve([r['series'][f'{stage}_top1']
                                 for r in by_name[name]])
      ax.plot(np.arange(1, len(curve) + 1), curve, color=color, marker='o',
              label=name)
  for ax, stage in zip(axes, ('teacher', 'student')):
    ax.set_title(f'{stage}: test top-1 (mean over seeds)')
    ax.set_xlabel('epoch')
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
  axes[0].set_ylabel('top-1 (%)')
  axes[1].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, 'accuracy.png'), dpi=110)
  plt.close(fig)

  fig, ax = plt.subplots(figsize=(6.5, 4))
  for i, name in enumerate(names):
    mean = _mean_curve([r['series']['teacher_loss_mean'] for r in by_name[name]])
    std = _mean_curve([r['series']['teacher_loss_std'] for r in by_name[name]])
    x = np.arange(1, len(mean) + 1)
    color = colors[i % len(colors)]
    ax.plot(x, mean, color=color, marker='o', label=name)
    ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.15)
  ax.set_title('teacher training loss per epoch (band: ± within-epoch std)')
  ax.set_xlabel('epoch')
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  ax.set_ylabel('total loss')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, 'loss.png'), dpi=110)
  plt.close(fig)

  panels = [c for c in SUMMARY_COLUMNS
            if any(row.get(c[0]) is not None for row in rows)]
  cols = 4
  fig, axes = plt.subplots(-(-len(panels) // cols), cols,
                           figsize=(4 * cols, 3 * -(-len(panels) // cols)))
  for ax, (column, header, scale, _) in zip(axes.flat, panels):
    means, stds = [], []
    for name in names:
      values = [row[column] * scale for row in rows
                if row['setting'] == name and row.get(column) is not None]
      mean, std = am.mean_std(values) if values else (np.nan, 0.0)
      means.append(mean)
      stds.append(std)
    ax.errorbar(range(len(names)), means, yerr=stds, fmt='o', capsize=4)
    ax.set_xticks(range(len(names)), names, rotation=35, ha='right',
                  fontsize=8)
    ax.set_title(header, fontsize=9)
    ax.grid(alpha=0.3)
  for ax in list(axes.flat)[len(panels):]:
    ax.axis('off')
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, 'metrics.png'), dpi=110)
  plt.close(fig)

"""A finished run's figures: RUN_DIR/result.json, computed from what its
teacher and student logged (metrics.jsonl and summary.json), and read back.

result.json holds {'row': the run's row of results.csv (last-epoch figures,
docs/method.md §6), 'epochs': its rows of epochs.csv}.
"""

import json
import math
import os
from typing import Any

import numpy as np

from icckd_jax.experiments import ablation_metrics as am
from icckd_jax.runs import compat
from icckd_jax.runs import layout
from icckd_jax.training import metric_writer


def run_dir(workdir: str, setting: str, seed: int) -> str:
  """RUN_DIR of (setting, seed) in a sweep's WORKDIR: WORKDIR/<setting>/
  seed_<seed>, holding the links `teacher` and `student` and result.json."""
  return os.path.join(workdir, setting, f'seed_{seed}')


# epochs.csv: (column, key of the epoch record).
EPOCH_COLUMNS = (
  ('train_accuracy', 'accuracy'),
  ('ce_loss', 'ce'),
  ('intra_loss', 'intra'),
  ('gate_pass_rate', 'gate_pass_rate'),
  ('effective_weight', 'effective_weight'),
  ('test_top1', 'test_top1'),
  ('loss', 'loss'),
  ('neg_in_batch', 'neg_in_batch'),
  ('neg_cache', 'neg_cache'),
)


def _run_records(workdir: str) -> tuple[list[dict], dict]:
  epochs = metric_writer.read_records(workdir, 'epoch')
  with open(os.path.join(workdir, layout.SUMMARY_FILE)) as f:
    summary = json.load(f)
  return epochs, summary


def _last_quarter_mean(epochs: list[dict], key: str) -> float | None:
  values = [
    e.get(key) for e in epochs[len(epochs) - max(1, len(epochs) // 4) :]
  ]
  values = [v for v in values if v is not None]
  return float(np.mean(values)) if values else None


def _change_last_fifth(accuracy: list[float]) -> float | None:
  """|acc[E] − acc[E − k]| with k = ⌈E / 5⌉: how much the train accuracy
  still moved over the last fifth of the E epochs (a trained run barely
  moves), or None for a run of one epoch."""
  if len(accuracy) < 2:
    return None
  k = -(-len(accuracy) // 5)
  return abs(accuracy[-1] - accuracy[-1 - k])


def _stage_row(
  epochs: list[dict],
  summary: dict,
  prefix: str,
  config,
  reach: float | None,
) -> dict[str, Any]:
  """A stage's last-epoch figures (docs/method.md §6).

  Epochs to reach `reach` are given by two definitions, because they can
  disagree: the first epoch whose trailing 3-epoch moving average reaches
  it (`_epochs_to_reach`) and the plain first epoch that does
  (`_epochs_to_reach_first`)."""
  decays = tuple(config['lr_decay_epochs'] or ())
  last = epochs[-1]
  accuracy = [e['accuracy'] for e in epochs]
  tested = [e['test_top1'] for e in epochs if e.get('test_top1') is not None]
  memory = summary.get('compiled_memory') or {}
  device = summary.get('peak_device_bytes')
  return {
    f'{prefix}_model': config['model'],
    f'{prefix}_top1_last': last.get('test_top1'),
    # Kept for reference only: an epoch picked on the test set is never a
    # headline.
    f'{prefix}_top1_best_evaluated': max(tested) if tested else None,
    f'{prefix}_train_accuracy_last': last['accuracy'],
    f'{prefix}_train_accuracy_change_last_fifth': _change_last_fifth(accuracy),
    f'{prefix}_ce_variance': am.stability_variance(
      [e.get('step_ce') or e['step_losses'] for e in epochs],
      min(decays) if decays else None,
    ),
    f'{prefix}_epochs_to_reach': (
      am.epochs_to_reach(accuracy, reach) if reach is not None else None
    ),
    f'{prefix}_epochs_to_reach_first': (
      am.epochs_to_reach(accuracy, reach, window=1)
      if reach is not None
      else None
    ),
    f'{prefix}_compiled_mib': memory.get('total_bytes', 0) / 2**20,
    f'{prefix}_device_mib': device / 2**20 if device else None,
  }


def _epoch_rows(epochs: list[dict], stage: str) -> list[dict[str, Any]]:
  return [
    {
      'stage': stage,
      'epoch': e['epoch'],
      **{column: e.get(key) for column, key in EPOCH_COLUMNS},
    }
    for e in epochs
  ]


def write_result(run_dir: str, *args) -> dict[str, Any]:
  """`compute_result(run_dir, *args)`, written into RUN_DIR/result.json."""
  result = compute_result(run_dir, *args)
  metric_writer.write_json(os.path.join(run_dir, layout.RESULT_FILE), result)
  return result


def compute_result(
  run_dir: str,
  setting: str,
  seed: int,
  teacher_config,
  student_config,
  reach: float | None = None,
) -> dict[str, Any]:
  """A finished run's figures, from its stages' records; writes nothing.

  Args:
    run_dir: WORKDIR/<setting>/seed_<seed>, with links `teacher`, `student`.
    setting, seed: what the run is.
    teacher_config, student_config: the stages' configs (their first decay
      epoch bounds the loss-variance window).
    reach: the train accuracy whose first epoch is "epochs to reach" (one
      value for every sweep sharing the runs), or None.
  """
  row = {'setting': setting, 'seed': seed}
  epoch_rows = []
  for stage, config in (
    ('teacher', teacher_config),
    ('student', student_config),
  ):
    epochs, summary = _run_records(os.path.join(run_dir, stage))
    row.update(_stage_row(epochs, summary, stage, config, reach))
    epoch_rows += _epoch_rows(epochs, stage)
    if stage == 'teacher':
      row.update(
        teacher_gate_pass_rate_last_quarter=_last_quarter_mean(
          epochs, 'gate_pass_rate'
        ),
        teacher_effective_weight_last_quarter=_last_quarter_mean(
          epochs, 'effective_weight'
        ),
        teacher_neg_in_batch=epochs[-1].get('neg_in_batch'),
        teacher_neg_cache=epochs[-1].get('neg_cache'),
        cache_kib=(summary.get('compiled_memory') or {}).get('cache_bytes', 0)
        / 1024,
      )
    else:
      row['student_agreement'] = epochs[-1].get('test_agreement')
  return {'row': row, 'epochs': epoch_rows}


def _number_or_none(value) -> bool:
  return value is None or (
    isinstance(value, (int, float))
    and not isinstance(value, bool)
    and math.isfinite(value)
  )


def _malformed(result, setting: str, seed: int) -> str | None:
  """Why a result.json's content cannot be a row of (setting, seed), or
  None: every figure must be a finite number or null."""
  if not isinstance(result, dict) or not isinstance(result.get('row'), dict):
    return 'no row'
  row = result['row']
  if row.get('setting') != setting or row.get('seed') != seed:
    return f'its row is of {row.get("setting")!r} seed {row.get("seed")!r}'
  for key, value in row.items():
    named = key == 'setting' or key.endswith('_model')  # Names, not figures.
    if not (named and isinstance(value, str)) and not _number_or_none(value):
      return f'{key}={value!r} is not a number'
  epochs = result.get('epochs')
  if not isinstance(epochs, list) or not all(
    isinstance(e, dict) for e in epochs
  ):
    return 'no list of epochs'
  for epoch in epochs:
    for key, value in epoch.items():
      if key != 'stage' and not _number_or_none(value):
        return f'epoch {key}={value!r} is not a number'
  return None


def read_result(
  path: str, setting: str, seed: int
) -> tuple[dict | None, str | None]:
  """(result, None) of a readable result.json of (setting, seed); (None,
  why) of a truncated, unreadable or malformed one; (None, None) of one an
  older version of the report wrote (rewritten by the next worker)."""
  try:
    with open(path) as f:
      result = json.load(f)
  except (OSError, ValueError) as e:
    return None, f'{type(e).__name__}: {e}'
  if compat.result_before_epochs(result):
    return None, None
  reason = _malformed(result, setting, seed)
  return (None, reason) if reason else (result, None)

"""What a run records (icckd_jax/training/records.py): a stage's own figures
reach the epoch record, the log line and the summary through its
`StageRecords`, where the loop's own fields stand as they always did."""

import logging

import numpy as np

from icckd_jax.training import records

PER_STEP = [
  {
    'loss': np.float32(2.0),
    'accuracy': np.float32(0.25),
    'ce': np.float32(1.5),
  },
  {
    'loss': np.float32(1.0),
    'accuracy': np.float32(0.75),
    'ce': np.float32(0.5),
  },
]


def test_an_epoch_record_holds_the_stages_figures_after_the_step_losses():
  stage = records.StageRecords(epoch_metrics=records.step_series('ce'))
  record = records.epoch_record(
    3, PER_STEP, {'top1': 0.5}, 2.0, 64, 1024, stage
  )
  assert list(record) == [
    'epoch',
    'loss',
    'accuracy',
    'ce',
    'loss_var',
    'step_losses',
    'step_ce',
    'test_top1',
    'epoch_time',
    'images_per_second',
    records.STATE_BYTES,
  ]
  assert record['epoch'] == 3 and record['loss'] == 1.5
  assert record['loss_var'] == 0.25
  assert record['step_losses'] == [2.0, 1.0]
  assert record['step_ce'] == [1.5, 0.5]
  assert record['images_per_second'] == 32.0
  assert record[records.STATE_BYTES] == 1024


def test_a_stage_without_figures_adds_nothing():
  record = records.epoch_record(
    1, PER_STEP, {}, 1.0, 8, 0, records.StageRecords()
  )
  assert 'step_ce' not in record
  assert not any(k.startswith('test_') for k in record)


def test_a_step_series_keeps_only_the_steps_that_report_it():
  series = records.step_series('kd')
  assert series(PER_STEP) == {'step_kd': []}
  assert series([*PER_STEP, {'loss': 1.0, 'kd': np.float32(0.125)}]) == {
    'step_kd': [0.125]
  }


def test_the_stages_note_ends_the_epoch_line_and_its_summary_joins(caplog):
  caplog.set_level(logging.INFO, logger='absl')
  stage = records.StageRecords(
    test_note=lambda test: f', agreement {test["agreement"]:.2f}',
    summary={'teacher_top1': 0.75},
  )
  record = {'loss': 1.0, 'accuracy': 0.5, 'test_top1': 0.5}
  test = {'top1': 0.5, 'top5': 0.9, 'agreement': 0.25}
  records.log_epoch(2, 4, record, test, stage)
  assert caplog.records[-1].getMessage().endswith(', agreement 0.25')
  summary = records.summary(
    record, {'top1': 0.5, 'epoch': 2}, 4, 40, '/w', {}, [None, 7, 3], stage
  )
  assert summary['final_top1'] == 0.5 and summary['peak_device_bytes'] == 7
  assert summary['teacher_top1'] == 0.75

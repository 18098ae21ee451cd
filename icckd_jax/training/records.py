"""What a run records: the train and epoch records of WORKDIR/metrics.jsonl,
the log lines beside them and the summary; and what a stage adds to them
(`StageRecords`), so that the loop knows no stage's state or metric names.
"""

from collections.abc import Callable
import dataclasses
from typing import Any

from absl import logging
import jax
import numpy as np


# The records' name for a stage's `state_bytes` (named when a teacher's
# cache was the only such state; the report reads it under this name).
STATE_BYTES = 'cache_bytes'


def _nothing(_) -> dict[str, Any]:
  return {}


def _no_bytes(_) -> int:
  return 0


def _no_note(_) -> str:
  return ''


@dataclasses.dataclass(frozen=True)
class StageRecords:
  """What a stage (teacher or student) adds to its run's records.

  state_bytes(state) -> the device bytes its state holds beside the model
    and optimiser (a teacher's negative cache, a student's distiller
    buffers): STATE_BYTES of the memory record, every epoch record and
    the summary's compiled memory.
  epoch_metrics(per_step) -> the stage's own figures of an epoch from its
    steps' metrics (host values), after 'step_losses' in the epoch record.
  test_note(test) -> text the epoch's log line ends with, from the
    evaluation's figures ('' for none).
  summary: added to the run's summary.
  """

  state_bytes: Callable[[Any], int] = _no_bytes
  epoch_metrics: Callable[[list[dict]], dict[str, Any]] = _nothing
  test_note: Callable[[dict[str, float]], str] = _no_note
  summary: dict[str, Any] = dataclasses.field(default_factory=dict)


def step_series(name: str) -> Callable[[list[dict]], dict[str, list]]:
  """epoch_metrics: {'step_<name>': each step's `name`}, of the steps that
  report it (e.g. the CE alone, the one loss every setting shares)."""

  def series(per_step: list[dict]) -> dict[str, list]:
    return {f'step_{name}': [float(m[name]) for m in per_step if name in m]}

  return series


def mean_metrics(per_step: list[dict]) -> dict[str, float]:
  """The mean of each metric over steps (host values)."""
  return {k: float(np.mean([m[k] for m in per_step])) for k in per_step[0]}


def epoch_record(
  epoch: int,
  per_step: list[dict],
  test: dict[str, float],
  epoch_time: float,
  images: int,
  state_bytes: int,
  stage: StageRecords,
) -> dict[str, Any]:
  """Epoch `epoch`'s record (1 for the first): its steps' mean metrics,
  losses and the stage's figures (`per_step`, host values), the test
  figures (`test`, {} when not evaluated), its wall time and speed
  (`images` trained in `epoch_time` seconds)."""
  losses = np.array([m['loss'] for m in per_step])
  return {
    'epoch': epoch,
    **mean_metrics(per_step),
    'loss_var': float(np.var(losses)),
    'step_losses': losses.tolist(),
    **stage.epoch_metrics(per_step),
    **{f'test_{k}': v for k, v in test.items()},
    'epoch_time': epoch_time,
    'images_per_second': images / epoch_time,
    STATE_BYTES: state_bytes,
  }


def log_header(
  run, dataset, mesh, steps_per_epoch: int, abstract_state, start_step: int
) -> None:
  """What the first silent seconds are for, and what the run is (`run`: its
  spec.RunSpec; `abstract_state`: its state's shapes)."""
  params = sum(
    int(np.prod(x.shape)) for x in jax.tree.leaves(abstract_state.params)
  )
  logging.info(
    'Run: %s %s on %d train / %d test images %s, %d classes; %d steps per '
    'epoch x %d epochs, batch %d; %s parameters; %d %s device(s) in %d '
    'process(es), compute dtype %s; %s.',
    run.bookkeeping.mode,
    run.recipe.model,
    len(dataset.train_labels),
    len(dataset.test_labels),
    'x'.join(map(str, dataset.image_shape)),
    dataset.num_classes,
    steps_per_epoch,
    run.recipe.num_epochs,
    run.recipe.batch_size,
    f'{params:,}',
    mesh.devices.size,
    mesh.devices.flat[0].platform,
    jax.process_count(),
    run.recipe.dtype,
    f'resuming at step {start_step}' if start_step else 'a new run',
  )


def log_epoch(
  epoch: int,
  num_epochs: int,
  record: dict[str, Any],
  test: dict[str, float],
  stage: StageRecords,
) -> None:
  """The epoch's line: its test figures when it was evaluated, else its
  train loss and accuracy."""
  if test:
    logging.info(
      'epoch %d/%d: test top-1 %.4f top-5 %.4f, train loss %.4f%s',
      epoch,
      num_epochs,
      test['top1'],
      test['top5'],
      record['loss'],
      stage.test_note(test),
    )
  else:
    logging.info(
      'epoch %d/%d: train loss %.4f, accuracy %.4f',
      epoch,
      num_epochs,
      record['loss'],
      record['accuracy'],
    )


def summary(
  last: dict[str, Any],
  best: dict[str, Any],
  num_epochs: int,
  steps: int,
  workdir: str,
  memory: dict[str, int],
  device_bytes: list[int | None],
  stage: StageRecords,
) -> dict[str, Any]:
  """The run's summary: `last`, the last epoch's record (or the last
  evaluation's figures), the best top-1, the compiled step's memory and
  the device bytes sampled while training, and the stage's own."""
  return {
    'final_top1': last.get('test_top1'),
    'best_top1': best['top1'],
    'best_epoch': best['epoch'],
    'epochs': num_epochs,
    'steps': steps,
    'workdir': workdir,
    'compiled_memory': memory,
    # Max of the samples taken during this run (None on CPU).
    'peak_device_bytes': max(
      (b for b in device_bytes if b is not None), default=None
    ),
    **stage.summary,
  }

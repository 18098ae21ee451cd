"""Where training numbers go: a JSON-lines file, TensorBoard, and the console.

metrics.jsonl holds one object per line: {"kind": "step" | "epoch" | ...,
"step": int, ...}. TensorBoard events come from tensorboardX, which needs no
TensorFlow.
"""

import json
import math
import os
import time

from absl import logging
import jax
from tensorboardX import SummaryWriter

from icckd_jax.runs import layout
from icckd_jax.training import estimate


def write_json(path: str, value) -> None:
  """`value` as JSON in `path`, whole or not at all: readers trust
  summary.json, config.json and the files of many runs' reports as they
  find them, and concurrent workers may write the same (identical) file."""
  tmp = f'{path}.{os.getpid()}.tmp'
  with open(tmp, 'w') as f:
    json.dump(value, f, indent=2)
  os.replace(tmp, path)


def write_json_from_process_0(path: str, value) -> None:
  """`write_json` on process 0 only: a run's files are written once,
  whatever the number of hosts."""
  if jax.process_index() == 0:
    write_json(path, value)


def read_records(workdir: str, kind: str | None = None) -> list[dict]:
  """The records of WORKDIR/metrics.jsonl, optionally of one kind.

  A line that is not a whole JSON object (the last line of a run killed
  while writing it), or whose 'step' is not an integer or whose 'kind' is
  not a string (an edited file), is skipped.
  """
  path = os.path.join(workdir, layout.METRICS_FILE)
  if not os.path.exists(path):
    return []
  records = []
  with open(path) as f:
    for line in f:
      try:
        record = json.loads(line)
      except ValueError:
        continue
      if (
        isinstance(record, dict)
        and isinstance(record.get('kind'), str)
        and isinstance(record.get('step'), int)
        and not isinstance(record.get('step'), bool)
      ):
        records.append(record)
  return [r for r in records if kind is None or r.get('kind') == kind]


def _resumed_records(workdir: str, resume_step: int) -> list[dict]:
  """The records a run resumed at `resume_step` keeps: those up to that
  step. The file is the only record (checkpoints hold none): a missing one
  is said once, and the run goes on without the earlier records."""
  path = os.path.join(workdir, layout.METRICS_FILE)
  if not os.path.exists(path):
    logging.warning(
      '%s is missing: the records of the steps before %d are gone; '
      'resuming without them.',
      path,
      resume_step,
    )
    return []
  return [r for r in read_records(workdir) if r['step'] <= resume_step]


class MetricWriter:
  """Appends records. A new run (`resume_step` None) starts an empty file;
  a resumed one first drops the records past the restored step, so that a
  resumed run's file matches an uninterrupted one's, and TensorBoard purges
  the events past that step. `sync` before each checkpoint is saved: the
  records of the steps a checkpoint holds are on disk before it is."""

  def __init__(self, workdir: str, resume_step: int | None):
    self._path = os.path.join(workdir, layout.METRICS_FILE)
    self._is_writer = jax.process_index() == 0
    self._tb: SummaryWriter | None = None  # process 0's only
    if not self._is_writer:
      return
    kept = [] if resume_step is None else _resumed_records(workdir, resume_step)
    tmp = self._path + '.tmp'
    with open(tmp, 'w') as f:
      f.writelines(json.dumps(r) + '\n' for r in kept)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, self._path)
    self._tb = SummaryWriter(
      os.path.join(workdir, layout.TENSORBOARD_DIR),
      purge_step=(resume_step or 0) + 1,
    )

  def write(self, kind: str, step: int, values: dict) -> dict:
    """Appends {'kind', 'step', **values}; returns that record."""
    record = {'kind': kind, 'step': int(step), **values}
    if not self._is_writer:
      return record
    with open(self._path, 'a') as f:
      f.write(json.dumps(record) + '\n')
    for name, value in values.items():
      if isinstance(value, (int, float)) and math.isfinite(value):
        self._tb.add_scalar(f'{kind}/{name}', value, int(step))
    return record

  def sync(self) -> None:
    """Flushes the records written so far to disk (fsync)."""
    if not self._is_writer:
      return
    with open(self._path, 'a') as f:
      os.fsync(f.fileno())
    self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


class Progress:
  """A one-line progress report with rate and ETA, at every logged step."""

  def __init__(self, total_steps: int, start_step: int, batch_size: int):
    self._total = total_steps
    self._start_step = start_step
    self._batch = batch_size
    self._t0 = time.perf_counter()

  def report(
    self, step: int, epoch: int, num_epochs: int, values: dict, note: str = ''
  ) -> None:
    elapsed = time.perf_counter() - self._t0
    done = step - self._start_step
    rate = done / elapsed if elapsed > 0 else 0.0
    eta = (self._total - step) / rate if rate > 0 else float('nan')
    shown = ' '.join(f'{k} {v:.4g}' for k, v in values.items())
    logging.info(
      'epoch %d/%d step %d/%d (%.0f%%) | %s | %.1f img/s | ETA %s%s',
      epoch + 1,
      num_epochs,
      step,
      self._total,
      100.0 * step / max(self._total, 1),
      shown,
      rate * self._batch,
      estimate.duration(eta) if math.isfinite(eta) else '?',
      note,
    )

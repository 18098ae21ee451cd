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

METRICS_FILE = 'metrics.jsonl'


def read_records(workdir: str, kind: str | None = None) -> list[dict]:
  """The records of WORKDIR/metrics.jsonl, optionally of one kind."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    records = [json.loads(line) for line in f if line.strip()]
  return [r for r in records if kind is None or r.get('kind') == kind]


class MetricWriter:
  """Appends records; on resume, first drops those past the restored step,
  so that a resumed run's file matches an uninterrupted one's."""

  def __init__(self, workdir: str, resume_step: int, tensorboard: bool = True):
    self._path = os.path.join(workdir, METRICS_FILE)
    self._is_writer = jax.process_index() == 0
    if not self._is_writer:
      return
    kept = [r for r in read_records(workdir) if r['step'] <= resume_step]
    tmp = self._path + '.tmp'
    with open(tmp, 'w') as f:
      f.writelines(json.dumps(r) + '\n' for r in kept)
    os.replace(tmp, self._path)
    self._tb = (SummaryWriter(os.path.join(workdir, 'tensorboard'))
                if tensorboard else None)

  def write(self, kind: str, step: int, values: dict) -> None:
    if not self._is_writer:
      return
    record = {'kind': kind, 'step': int(step), **values}
    with open(self._path, 'a') as f:
      f.write(json.dumps(record) + '\n')
    if self._tb is not None:
      for name, value in values.items():
        if isinstance(value, (int, float)) and math.isfinite(value):
          self._tb.add_scalar(f'{kind}/{name}', value, int(step))

  def close(self) -> None:
    if self._is_writer and self._tb is not None:
      self._tb.close()


def _duration(seconds: float) -> str:
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}h{m:02d}m' if h else f'{m}m{s:02d}s'


class Progress:
  """A one-line progress report with rate and ETA, at every logged step."""

  def __init__(self, total_steps: int, start_step: int, batch_size: int):
    self._total = total_steps
    self._start_step = start_step
    self._batch = batch_size
    self._t0 = time.perf_counter()

  def report(self, step: int, epoch: int, num_epochs: int,
             values: dict, note: str = '') -> None:
    elapsed = time.perf_counter() - self._t0
    done = step - self._start_step
    rate = done / elapsed if elapsed > 0 else 0.0
    eta = (self._total - step) / rate if rate > 0 else float('nan')
    shown = ' '.join(f'{k} {v:.4g}' for k, v in values.items())
    logging.info('epoch %d/%d step %d/%d (%.0f%%) | %s | %.1f img/s | ETA %s%s',
                 epoch + 1, num_epochs, step, self._total,
                 100.0 * step / max(self._total, 1), shown,
                 rate * self._batch,
                 _duration(eta) if math.isfinite(eta) else '?', note)

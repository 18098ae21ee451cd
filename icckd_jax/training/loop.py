"""The train loop both stages run (flax imagenet style, read top to bottom).

`fit(run, workdir, setup, dataset, mesh)` (`run`: the stage's `spec.RunSpec`)
resumes from the newest intact
checkpoint if there is one, then runs epochs of `setup.train_step`,
evaluates on the whole test split (every `eval_every_epochs` and at the last
epoch), logs, checkpoints, and returns the run's summary, also written to
WORKDIR/summary.json. Its phases are the methods of `_Loop`: resume, the
steps of an epoch, the end of an epoch, preemption, the summary. Its hooks
(hooks.py) are called after each step and each epoch: the run's own clock,
then those of `reuse.hooks` (a process of many runs adds its own there).

A checkpoint holds what resume needs (the state, the step, the best top-1,
the divergence guard's reference, the input shape, the last evaluation) and
nothing that grows with the run: WORKDIR/metrics.jsonl is the run's record,
fsynced before each checkpoint is saved.

Nothing is saved before the whole new state and the step losses are checked
(`divergence`): a diverged run raises Diverged and leaves every checkpoint
and config.json as they were. SIGTERM or SIGINT save the state at the next
step boundary into WORKDIR/preempted and raise Preempted; the rerun resumes
there, bit for bit.
"""

from collections.abc import Sequence
import errno
import os
import signal
import time
from typing import Any

from absl import logging
import jax
from jax.sharding import Mesh
import numpy as np

from icckd_jax.errors import UserError
from icckd_jax.input_pipeline.source import EvalBatches, InputSource
from icckd_jax.objective import cache as cache_lib
from icckd_jax.training import checkpoint
from icckd_jax.training import divergence
from icckd_jax.training import estimate
from icckd_jax.training import evaluate
from icckd_jax.training import hooks as hooks_lib
from icckd_jax.runs import memory as memory_lib
from icckd_jax.training import metric_writer
from icckd_jax.runs import reuse as reuse_lib
from icckd_jax.runs import run_setup
from icckd_jax.runs import validate
from icckd_jax.training.preemption import Preempted, StopRequest
from icckd_jax.runs.reuse import Reuse
from icckd_jax.runs.run_setup import RunSetup, compute_dtype, mesh_key
from icckd_jax.runs.spec import RunSpec

SUMMARY_FILE = 'summary.json'


def fit(
  run: RunSpec,
  workdir: str,
  setup: RunSetup,
  dataset: InputSource,
  mesh: Mesh,
  summary_extra: dict[str, Any] | None = None,
  reuse: Reuse | None = None,
  step_memory: dict[str, int] | None = None,
) -> dict[str, Any]:
  """Trains `setup` in `workdir`, resuming if it can; returns the summary
  (with `summary_extra` added). `step_memory`: the compiled step's memory
  analysis when the caller already has it (`preflight.check_step_memory`).

  A full disk anywhere in the run becomes one UserError; the partial save
  is removed and every checkpoint saved before stays intact.
  """
  try:
    with checkpoint.Checkpoints(
      workdir, keep=run.bookkeeping.keep_checkpoints
    ) as ckpts:
      loop = _Loop(run, workdir, setup, dataset, mesh, ckpts, reuse)
      return loop.run(summary_extra, step_memory)
  except Exception as e:  # pylint: disable=broad-except
    if not _disk_full(e):
      raise
    checkpoint.remove_partial_saves(workdir)
    raise checkpoint.SaveFailed(
      f'the disk holding {workdir} is full (no space left while '
      'writing); every checkpoint saved before is intact: free '
      'space and rerun the same command to resume',
      e,
    ) from None


def _disk_full(error: BaseException | None) -> bool:
  """Whether `error`, or an error it was raised from or during, is a full
  disk (Orbax and TensorStore wrap the OSError in their own types)."""
  seen = set()  # Orbax's chains of causes can loop.
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, checkpoint.SaveFailed):
      error = error.error
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
      return True
    if 'No space left on device' in str(error):
      return True
    error = error.__cause__ or error.__context__
  return False


def write_json_from_process_0(path: str, value: Any) -> None:
  """`metric_writer.write_json` on process 0 only: a run's files are
  written once, whatever the number of hosts."""
  if jax.process_index() == 0:
    metric_writer.write_json(path, value)


def _mean_metrics(per_step: list[dict]) -> dict[str, float]:
  return {k: float(np.mean([m[k] for m in per_step])) for k in per_step[0]}


def _restore(
  ckpts: checkpoint.Checkpoints, abstract_state, steps_per_epoch: int
):
  """(state, meta) of the newest intact checkpoint, a preempted run's if it
  is newer than the last epoch's; None for a new run."""
  epochs = ckpts.latest_steps('last')
  preempted = ckpts.latest_steps('preempted')
  if preempted and (not epochs or preempted[-1] > epochs[-1] * steps_per_epoch):
    restored = ckpts.restore_newest_intact(abstract_state, 'preempted')
    if restored is not None:
      return restored[:2]
  restored = ckpts.restore_newest_intact(abstract_state, 'last')
  return None if restored is None else restored[:2]


def _last_test(meta: dict[str, Any]) -> dict[str, float] | None:
  """The test figures of a checkpoint's last evaluation. A checkpoint from
  before they were kept holds every epoch's record ('history', otherwise
  unread: metrics.jsonl has them), the last evaluated one among them."""
  if 'test' in meta:
    return meta['test']
  for record in reversed(meta.get('history') or []):
    tested = {k: v for k, v in record.items() if k.startswith('test_')}
    if tested:
      return tested
  return None


def _partial_epoch(per_step: list[dict], logged: int) -> dict[str, Any]:
  """The metrics of an epoch's steps so far, exactly (float32 values are
  exact as JSON floats), so that a resumed epoch's record is identical."""
  per_step = jax.device_get(per_step)
  keys = list(per_step[0]) if per_step else []
  return {
    'logged': logged,
    'metrics': {k: [float(m[k]) for m in per_step] for k in keys},
    'dtypes': {k: str(np.asarray(per_step[0][k]).dtype) for k in keys},
  }


def _unpack_partial(partial: dict[str, Any]) -> tuple[list[dict], int]:
  metrics, dtypes = partial['metrics'], partial['dtypes']
  n = len(next(iter(metrics.values()))) if metrics else 0
  per_step = [
    {k: np.asarray(metrics[k][i], dtypes[k]) for k in metrics} for i in range(n)
  ]
  return per_step, partial['logged']


def _header(
  run: RunSpec,
  setup: RunSetup,
  dataset: InputSource,
  mesh: Mesh,
  abstract_state,
  start_step: int,
) -> None:
  """What the first silent seconds are for, and what the run is."""
  params = sum(
    int(np.prod(x.shape)) for x in jax.tree.leaves(abstract_state.params)
  )
  devices = mesh.devices.flat[0]
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
    setup.steps_per_epoch,
    run.recipe.num_epochs,
    run.recipe.batch_size,
    f'{params:,}',
    mesh.devices.size,
    devices.platform,
    jax.process_count(),
    run.recipe.dtype,
    f'resuming at step {start_step}' if start_step else 'a new run',
  )


class _Loop:
  """One run's loop; its mutable progress lives here, its phases are the
  methods. Step counts are always *steps taken so far*."""

  def __init__(
    self,
    spec: RunSpec,
    workdir,
    setup: RunSetup,
    dataset,
    mesh,
    ckpts: checkpoint.Checkpoints,
    reuse: Reuse | None,
  ):
    self.spec, self.workdir, self.setup = spec, workdir, setup
    self.dataset, self.mesh, self.ckpts, self.reuse = (
      dataset,
      mesh,
      ckpts,
      reuse,
    )
    self.steps_per_epoch = setup.steps_per_epoch
    self.total_steps = spec.recipe.num_epochs * self.steps_per_epoch
    self.per_step, self.logged = [], 0  # this epoch's step metrics
    self.record, self.device_bytes = {}, []
    # Set by `resume`: where the run starts and what it carries over.
    self.state: Any = None
    self.start_step = 0
    self.best = {'top1': -1.0, 'epoch': 0}
    self.last_test: dict[str, float] | None = None
    self.reference_loss: float | None = None
    # Set by `run` once the run has resumed.
    self.test_split: EvalBatches | None = None
    self.evaluate: Any = None
    self.batches: Any = None
    self.writer: metric_writer.MetricWriter | None = None
    self.progress: metric_writer.Progress | None = None
    self.cache_bytes = 0
    self.hooks: Sequence[hooks_lib.Hook] = ()
    self.memory: dict[str, int] = {}
    self.compiled = False

  # Resume.

  def resume(self) -> bool:
    """Restores the newest intact checkpoint or creates the initial state;
    whether the run resumed."""
    abstract_state = checkpoint.abstract_like(
      jax.eval_shape(self.setup.init_state), self.mesh
    )
    restored = _restore(self.ckpts, abstract_state, self.steps_per_epoch)
    if restored is not None:
      self.state, meta = restored
      self.start_step = meta.get('step', meta['epoch'] * self.steps_per_epoch)
      self.best, self.last_test = meta['best'], _last_test(meta)
      self.reference_loss = meta.get('reference_loss')
      if self.start_step > self.total_steps:
        raise UserError(
          f'the run in {self.workdir} is at step {self.start_step}, past '
          f'the {self.total_steps} steps of config.num_epochs='
          f'{self.spec.recipe.num_epochs}; resume it with a larger num_epochs, '
          'or choose another --workdir'
        )
      if meta.get('partial'):
        self.per_step, self.logged = _unpack_partial(meta['partial'])
      logging.info(
        'Resumed from %s at step %d (epoch %d).',
        self.workdir,
        self.start_step,
        meta['epoch'],
      )
    else:
      self.state = self.setup.create_state(self.mesh)
      self.start_step, self.reference_loss, self.last_test = 0, None, None
      self.best = {'top1': -1.0, 'epoch': 0}
    _header(
      self.spec,
      self.setup,
      self.dataset,
      self.mesh,
      abstract_state,
      self.start_step,
    )
    return restored is not None

  def _meta(self, epoch: int, step: int, **extra) -> dict[str, Any]:
    """What a checkpoint stores beside the state, to resume exactly; of a
    size that does not grow with the run. 'test': the last evaluation's
    figures, the summary's when a finished run is rerun."""
    return {
      'epoch': epoch,
      'step': step,
      'best': self.best,
      'reference_loss': self.reference_loss,
      'input_shape': list(self.dataset.image_shape),
      'test': self.last_test,
      **extra,
    }

  def _evaluate_fn(self):
    spec, setup, dataset, mesh = (
      self.spec,
      self.setup,
      self.dataset,
      self.mesh,
    )
    reference = setup.reference[0] if setup.reference else None
    return reuse_lib.get(
      self.reuse,
      'eval',
      f'{setup.model}|{spec.bookkeeping.eval_batch_size}|'
      f'{run_setup.data_key(spec.data)}|{mesh_key(mesh)}|{reference}',
      lambda: evaluate.make_eval_fn(
        setup.model,
        mesh,
        mean=dataset.mean,
        std=dataset.std,
        dtype=compute_dtype(spec.recipe.dtype),
        reference=reference,
      ),
    )

  def run(self, summary_extra, step_memory) -> dict[str, Any]:
    resumed = self.resume()
    recipe, book, setup = self.spec.recipe, self.spec.bookkeeping, self.setup
    self.test_split = self.dataset.eval_batches(self.mesh, book.eval_batch_size)
    self.evaluate = self._evaluate_fn()
    self.batches = setup.batches(
      recipe, self.dataset, self.mesh, self.start_step
    )
    self.writer = metric_writer.MetricWriter(
      self.workdir, self.start_step if resumed else None
    )
    self.progress = metric_writer.Progress(
      self.total_steps, self.start_step, recipe.batch_size
    )
    # The teacher's negative cache, or the student's distiller buffers.
    self.cache_bytes = cache_lib.nbytes(
      (self.state.cache, self.state.distiller_buffers)
    )
    self.hooks = (
      estimate.RunClock(
        recipe.batch_size,
        self.steps_per_epoch,
        self.total_steps,
        self.start_step,
      ),
      *(self.reuse.hooks if self.reuse else ()),
    )
    for hook in self.hooks:
      hook.on_start(self.start_step, self.total_steps)
    self.memory, self.compiled = dict(step_memory or {}), False
    start_epoch, first = divmod(self.start_step, self.steps_per_epoch)
    # Closing the batches stops a streamed run's decode workers.
    with StopRequest(book.preemption_check_every_steps) as stop:
      try:
        for epoch in range(start_epoch, recipe.num_epochs):
          epoch_start = time.perf_counter()
          if epoch != start_epoch:
            self.per_step, self.logged, first = [], 0, 0
          self.run_epoch(epoch, first, stop)
          self.end_epoch(epoch, time.perf_counter() - epoch_start)
      finally:
        self.batches.close()
      self.writer.close()
      # A summary says the run finished: only beside its final checkpoint.
      self.ckpts.commit(recipe.num_epochs)
      summary = self.summarize(summary_extra)
      # A signal after the last step's check: the run is complete, yet the
      # caller (a pipeline, a worker of many runs, a script) asked to stop.
      signum = stop.agreed()
    if signum:
      raise Preempted(
        signum,
        f'stopped by {signal.Signals(signum).name} after the last step; '
        f'the run in {self.workdir} is finished and saved. Rerun the same '
        'command to carry on with what comes after it.',
      )
    return summary

  # The steps of an epoch.

  def _first_step(self, batch) -> None:
    """Before the first step: its memory analysis, logged once per run."""
    logging.info('Compiling the train step...')
    if not self.memory:
      # Compiling ahead shares XLA's cache with the call that follows, so
      # the memory analysis costs a trace, not a second compilation.
      self.memory = memory_lib.compiled_memory(
        self.setup.train_step.lower(
          self.state, batch, self.setup.step_args
        ).compile()
      )
    self.memory['cache_bytes'] = self.cache_bytes
    self.compiled = True
    if self.start_step == 0:  # Once per run, also when it resumes later.
      self.writer.write('memory', 0, self.memory)

  def _check_window(self, done: int) -> list[dict]:
    """The steps since the last log, their losses checked; `done` steps
    taken."""
    window = jax.device_get(self.per_step[self.logged :])
    if window:
      divergence.check_losses(
        np.array([m['loss'] for m in window]),
        done - len(window) + 1,
        self.reference_loss,
        self.ckpts,
      )
    return window

  def run_epoch(self, epoch: int, first: int, stop: StopRequest) -> None:
    """Steps `first`..the end of `epoch`, logging every log_every_steps."""
    recipe, book, setup = self.spec.recipe, self.spec.bookkeeping, self.setup
    window_start = time.perf_counter()
    for i in range(first, self.steps_per_epoch):
      done = epoch * self.steps_per_epoch + i
      signum = stop.requested(done)
      if signum:
        self.preempt(epoch, done, signum)
      batch = next(self.batches)
      if not self.compiled:
        self._first_step(batch)
      self.state, metrics = setup.train_step(self.state, batch, setup.step_args)
      for hook in self.hooks:
        hook.on_step(done + 1, metrics)
      self.per_step.append(metrics)
      done += 1
      if self.reference_loss is None:
        self.reference_loss = float(metrics['loss'])
      if done % book.log_every_steps == 0 or i == self.steps_per_epoch - 1:
        window = self._check_window(done)
        step_time = (time.perf_counter() - window_start) / len(window)
        values = _mean_metrics(window)
        values.update(
          learning_rate=float(setup.learning_rate_fn(done - 1)),
          step_time=step_time,
          images_per_second=recipe.batch_size / step_time,
        )
        self.writer.write('train', done, values)
        self.device_bytes.append(memory_lib.device_bytes_in_use())
        self.progress.report(
          done,
          epoch,
          recipe.num_epochs,
          {'loss': values['loss'], 'acc': values['accuracy']},
          ''.join(hook.note() for hook in self.hooks),
        )
        self.logged, window_start = len(self.per_step), time.perf_counter()

  # Preemption.

  def preempt(self, epoch: int, done: int, signum: int) -> None:
    """Saves the state after `done` steps into WORKDIR/preempted, with the
    epoch's step metrics so far, and raises Preempted."""
    self._check_window(done)
    divergence.check_state(self.state, done, self.ckpts)
    self.writer.sync()
    self.ckpts.save_preempted(
      done,
      self.state,
      self._meta(
        epoch, done, partial=_partial_epoch(self.per_step, self.logged)
      ),
      self.spec.saved,
    )
    self._write_config()
    self.writer.close()
    raise Preempted(
      signum,
      f'stopped by {signal.Signals(signum).name} at '
      f'step {done}; saved it in {self.workdir}/preempted. '
      'Rerun the same command to resume.',
    )

  # The end of an epoch.

  def end_epoch(self, epoch: int, epoch_time: float) -> None:
    """Checks the state, evaluates when due, records, logs, checkpoints."""
    recipe, book = self.spec.recipe, self.spec.bookkeeping
    done = (epoch + 1) * self.steps_per_epoch
    divergence.check_state(self.state, done, self.ckpts)
    per_step = jax.device_get(self.per_step)
    losses = np.array([m['loss'] for m in per_step])
    is_last = epoch + 1 == recipe.num_epochs
    # Evaluation every `eval_every_epochs` and always at the last epoch,
    # whose figures are the run's headline.
    evaluated = is_last or (epoch + 1) % book.eval_every_epochs == 0
    test = (
      self.evaluate(
        {
          'params': self.state.params['model'],
          'batch_stats': self.state.batch_stats,
        },
        self.test_split,
        self.setup.reference[1] if self.setup.reference else None,
      )
      if evaluated
      else {}
    )
    self.record = {
      'epoch': epoch + 1,
      **_mean_metrics(per_step),
      'loss_var': float(np.var(losses)),
      'step_losses': losses.tolist(),
      # CE alone: the one loss every setting shares (the total differs by
      # λ·L between settings).
      'step_ce': [float(m['ce']) for m in per_step if 'ce' in m],
      **{f'test_{k}': v for k, v in test.items()},
      'epoch_time': epoch_time,
      'images_per_second': (
        self.steps_per_epoch * recipe.batch_size / epoch_time
      ),
      'cache_bytes': self.cache_bytes,
    }
    self.writer.write('epoch', done, self.record)
    if evaluated:
      self.last_test = {f'test_{k}': v for k, v in test.items()}
    for hook in self.hooks:
      hook.on_epoch(epoch + 1, self.record)
    self._log_epoch(epoch, test)
    improved = evaluated and test['top1'] > self.best['top1']
    if improved:
      self.best = {'top1': test['top1'], 'epoch': epoch + 1}
    regular = (epoch + 1) % book.checkpoint_every_epochs == 0 or is_last
    if regular or improved:
      self.writer.sync()
      self.ckpts.save(
        epoch + 1,
        self.state,
        self._meta(epoch + 1, done),
        self.spec.saved,
        last=regular,
        best=improved,
      )
      self._write_config()

  def _log_epoch(self, epoch: int, test: dict[str, float]) -> None:
    num_epochs, record = self.spec.recipe.num_epochs, self.record
    if test:
      logging.info(
        'epoch %d/%d: test top-1 %.4f top-5 %.4f, train loss %.4f%s',
        epoch + 1,
        num_epochs,
        test['top1'],
        test['top5'],
        record['loss'],
        f', agreement with teacher {test["agreement"]:.4f}'
        if 'agreement' in test
        else '',
      )
    else:
      logging.info(
        'epoch %d/%d: train loss %.4f, accuracy %.4f',
        epoch + 1,
        num_epochs,
        record['loss'],
        record['accuracy'],
      )

  def _write_config(self) -> None:
    """WORKDIR/config.json, replaced atomically, beside a checkpoint that has
    just been saved: a rejected or diverged run never rewrites it."""
    write_json_from_process_0(
      os.path.join(self.workdir, validate.CONFIG_FILE),
      self.spec.saved,
    )

  # The summary.

  def summarize(self, summary_extra) -> dict[str, Any]:
    """The run's summary, written to WORKDIR/summary.json: a finished run is
    recognised by that file."""
    # Restarted after the last epoch: nothing was left to train, and the
    # last checkpoint holds the last evaluation.
    record = self.record or self.last_test or {}
    summary = {
      'final_top1': record.get('test_top1'),
      'best_top1': self.best['top1'],
      'best_epoch': self.best['epoch'],
      'epochs': self.spec.recipe.num_epochs,
      'steps': self.total_steps,
      'workdir': self.workdir,
      'compiled_memory': self.memory,
      # Max of the samples taken during this run (None on CPU).
      'peak_device_bytes': max(
        (b for b in self.device_bytes if b is not None), default=None
      ),
      **(summary_extra or {}),
    }
    write_json_from_process_0(os.path.join(self.workdir, SUMMARY_FILE), summary)
    logging.info(
      'Done: last top-1 %s, best top-1 %.4f at epoch %d.',
      summary['final_top1'],
      self.best['top1'],
      self.best['epoch'],
    )
    return summary

"""The train loop both stages run, read top to bottom (as flax's imagenet
`train_and_evaluate`).

`fit(run, workdir, setup, dataset, mesh)` (`run`: a stage's `spec.RunSpec`)
sets the run up and resumes it if it can (resume.py); then each epoch runs
its steps, logged every `log_every_steps` (`train_epoch`), and ends
(`end_epoch`): the state checked, the evaluation when due, the record, the
checkpoint when due; `finish` writes the summary (WORKDIR/summary.json).
Hooks (hooks.py): the run's own clock, then the caller's. What a stage adds
to the records comes from it (`records.StageRecords`).

Nothing is saved before the whole new state and the step losses are checked
(`divergence`): a diverged run raises Diverged and leaves every checkpoint
and config.json as they were. SIGTERM or SIGINT save the state at the next
step boundary into WORKDIR/preempted and raise Preempted; the rerun resumes
there, bit for bit.
"""

from collections.abc import Sequence
import dataclasses
import os
import signal
import time
from typing import Any

from absl import logging
import jax
from jax.sharding import Mesh

from icckd_jax.input_pipeline.source import EvalBatches, InputSource
from icckd_jax.runs import data_identity
from icckd_jax.runs import layout
from icckd_jax.runs import memory as memory_lib
from icckd_jax.runs import reuse as reuse_lib
from icckd_jax.runs import run_setup
from icckd_jax.runs.reuse import Reuse
from icckd_jax.runs.run_setup import RunSetup, compute_dtype, mesh_key
from icckd_jax.runs.spec import RunSpec
from icckd_jax.training import checkpoint
from icckd_jax.training import divergence
from icckd_jax.training import estimate
from icckd_jax.training import evaluate
from icckd_jax.training import hooks as hooks_lib
from icckd_jax.training import metric_writer
from icckd_jax.training import records
from icckd_jax.training import resume
from icckd_jax.training.preemption import Preempted, StopRequest


def fit(
  run: RunSpec,
  workdir: str,
  setup: RunSetup,
  dataset: InputSource,
  mesh: Mesh,
  stage: records.StageRecords = records.StageRecords(),
  hooks: Sequence[hooks_lib.Hook] = (),
  reuse: Reuse | None = None,
  step_memory: dict[str, int] | None = None,
) -> dict[str, Any]:
  """Trains `setup` in `workdir`, resuming if it can; returns the summary.
  `stage`: what the stage adds to the records; `hooks`: called after the
  run's own clock; `step_memory`: the compiled step's memory analysis when
  the caller already has it (`preflight.check_step_memory`).

  A full disk anywhere in the run becomes one UserError; the partial save
  is removed and every checkpoint saved before stays intact.
  """
  data = data_identity.of(run.data, dataset)
  try:
    with checkpoint.Checkpoints(
      workdir, keep=run.bookkeeping.keep_checkpoints
    ) as ckpts:
      return train_and_evaluate(
        _Run(run, workdir, setup, dataset, mesh, ckpts, stage, data),
        hooks,
        reuse,
        step_memory,
      )
  except Exception as e:  # pylint: disable=broad-except
    if not checkpoint.disk_full(e):
      raise
    checkpoint.remove_partial_saves(workdir)
    raise checkpoint.SaveFailed(
      f'the disk holding {workdir} is full (no space left while '
      'writing); every checkpoint saved before is intact: free '
      'space and rerun the same command to resume',
      e,
    ) from None


@dataclasses.dataclass(frozen=True)
class _Run:
  """What every phase of one run reads; nothing here changes."""

  spec: RunSpec
  workdir: str
  setup: RunSetup
  dataset: InputSource
  mesh: Mesh
  ckpts: checkpoint.Checkpoints
  stage: records.StageRecords
  data: dict[str, Any]  # data.json: the data and input path it started on

  @property
  def steps_per_epoch(self) -> int:
    return self.setup.steps_per_epoch

  @property
  def total_steps(self) -> int:
    return self.spec.recipe.num_epochs * self.setup.steps_per_epoch


@dataclasses.dataclass
class _Tally:
  """Where the run reports (its records, progress line and hooks), and what
  its summary reads, gathered as it trains."""

  writer: metric_writer.MetricWriter
  progress: metric_writer.Progress
  hooks: Sequence[hooks_lib.Hook]
  state_bytes: int
  memory: dict[str, int]  # the compiled step's memory analysis
  compiled: bool = False
  device_bytes: list[int | None] = dataclasses.field(default_factory=list)
  record: dict[str, Any] = dataclasses.field(default_factory=dict)


def _due(count: int, every: int, last: bool = False) -> bool:
  """Whether a periodic action is due after `count` (steps or epochs):
  every `every`, and always at the `last` (big_vision's `u.itstime`)."""
  return last or count % every == 0


def _start_tally(
  r: _Run,
  at: resume.Position,
  resumed: bool,
  hooks: Sequence[hooks_lib.Hook],
  step_memory: dict[str, int] | None,
) -> _Tally:
  """The run's records opened, its hooks (the run's clock first) started."""
  batch_size = r.spec.recipe.batch_size
  tally = _Tally(
    writer=metric_writer.MetricWriter(r.workdir, at.step if resumed else None),
    progress=metric_writer.Progress(r.total_steps, at.step, batch_size),
    hooks=(
      estimate.RunClock(batch_size, r.steps_per_epoch, r.total_steps, at.step),
      *hooks,
    ),
    state_bytes=r.stage.state_bytes(at.state),
    memory=dict(step_memory or {}),
  )
  for hook in tally.hooks:
    hook.on_start(at.step, r.total_steps)
  return tally


def train_and_evaluate(
  r: _Run,
  hooks: Sequence[hooks_lib.Hook],
  reuse: Reuse | None,
  step_memory: dict[str, int] | None,
) -> dict[str, Any]:
  """The run, top to bottom: set up, resume, epochs, summary."""
  recipe, book, setup = r.spec.recipe, r.spec.bookkeeping, r.setup
  abstract_state = checkpoint.abstract_like(
    jax.eval_shape(setup.init_state), r.mesh
  )
  at, resumed = resume.restore_or_create(
    r.workdir,
    r.ckpts,
    abstract_state,
    lambda: setup.create_state(r.mesh),
    r.steps_per_epoch,
    r.total_steps,
    recipe.num_epochs,
  )
  records.log_header(
    r.spec, r.dataset, r.mesh, r.steps_per_epoch, abstract_state, at.step
  )
  test_split = r.dataset.eval_batches(r.mesh, book.eval_batch_size)
  evaluate_fn = _evaluate_fn(r, reuse)
  batches = setup.batches(recipe, r.dataset, r.mesh, at.step)
  tally = _start_tally(r, at, resumed, hooks, step_memory)
  start_epoch, first = divmod(at.step, r.steps_per_epoch)
  # Closing the batches stops a streamed run's decode workers.
  with StopRequest(book.preemption_check_every_steps) as stop:
    try:
      for epoch in range(start_epoch, recipe.num_epochs):
        epoch_start = time.perf_counter()
        if epoch != start_epoch:
          at.new_epoch()
          first = 0
        train_epoch(r, at, tally, batches, stop, epoch, first)
        epoch_time = time.perf_counter() - epoch_start
        end_epoch(r, at, tally, evaluate_fn, test_split, epoch, epoch_time)
    finally:
      batches.close()
    summary = finish(r, at, tally)
    # A signal after the last step's check: the run is complete, yet the
    # caller (a pipeline, a worker of many runs, a script) asked to stop.
    signum = stop.agreed()
  if signum:
    raise Preempted(
      signum,
      f'stopped by {signal.Signals(signum).name} after the last step; '
      f'the run in {r.workdir} is finished and saved. Rerun the same '
      'command to carry on with what comes after it.',
    )
  return summary


def _evaluate_fn(r: _Run, reuse: Reuse | None):
  """evaluate(variables, split, reference_variables) of the run's model,
  shared through `reuse` by runs of the same model, data and mesh."""
  spec, setup, dataset, mesh = r.spec, r.setup, r.dataset, r.mesh
  reference = setup.reference[0] if setup.reference else None
  return reuse_lib.get(
    reuse,
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


# The steps of an epoch.


def train_epoch(
  r: _Run,
  at: resume.Position,
  tally: _Tally,
  batches,
  stop: StopRequest,
  epoch: int,
  first: int,
) -> None:
  """Steps `first`..the end of `epoch`, logging every log_every_steps."""
  setup, spe = r.setup, r.steps_per_epoch
  window_start = time.perf_counter()
  for i in range(first, spe):
    signum = stop.requested(at.step)
    if signum:
      preempt(r, at, tally, epoch, signum)
    batch = next(batches)
    if not tally.compiled:
      _first_step(r, at, tally, batch)
    at.state, metrics = setup.train_step(at.state, batch, setup.step_args)
    at.step += 1
    for hook in tally.hooks:
      hook.on_step(at.step, metrics)
    at.per_step.append(metrics)
    if at.reference_loss is None:
      at.reference_loss = float(metrics['loss'])
    if _due(at.step, r.spec.bookkeeping.log_every_steps, i == spe - 1):
      log_train(r, at, tally, epoch, time.perf_counter() - window_start)
      window_start = time.perf_counter()


def _first_step(r: _Run, at: resume.Position, tally: _Tally, batch) -> None:
  """Before the first step: its memory analysis, logged once per run."""
  logging.info('Compiling the train step...')
  if not tally.memory:
    # Compiling ahead shares XLA's cache with the call that follows, so
    # the memory analysis costs a trace, not a second compilation.
    tally.memory = memory_lib.compiled_memory(
      r.setup.train_step.lower(at.state, batch, r.setup.step_args).compile()
    )
  tally.memory[records.STATE_BYTES] = tally.state_bytes
  tally.compiled = True
  if at.step == 0:  # Once per run, also when it resumes later.
    tally.writer.write('memory', 0, tally.memory)


def log_train(
  r: _Run, at: resume.Position, tally: _Tally, epoch: int, seconds: float
) -> None:
  """The train record and progress line of the steps since the last log,
  which took `seconds`."""
  recipe = r.spec.recipe
  window = divergence.check_window(
    at.per_step[at.logged :], at.step, at.reference_loss, r.ckpts
  )
  step_time = seconds / len(window)
  values = records.mean_metrics(window)
  values.update(
    learning_rate=float(r.setup.learning_rate_fn(at.step - 1)),
    step_time=step_time,
    images_per_second=recipe.batch_size / step_time,
  )
  tally.writer.write('train', at.step, values)
  tally.device_bytes.append(memory_lib.device_bytes_in_use())
  tally.progress.report(
    at.step,
    epoch,
    recipe.num_epochs,
    {'loss': values['loss'], 'acc': values['accuracy']},
    ''.join(hook.note() for hook in tally.hooks),
  )
  at.logged = len(at.per_step)


def preempt(
  r: _Run, at: resume.Position, tally: _Tally, epoch: int, signum: int
) -> None:
  """Saves the state into WORKDIR/preempted, with the epoch's step metrics
  so far, and raises Preempted."""
  divergence.check_window(
    at.per_step[at.logged :], at.step, at.reference_loss, r.ckpts
  )
  divergence.check_state(at.state, at.step, r.ckpts)
  tally.writer.sync()
  r.ckpts.save_preempted(
    at.step,
    at.state,
    resume.checkpoint_meta(
      at,
      epoch,
      r.dataset.image_shape,
      partial=resume.pack_partial(at.per_step, at.logged),
    ),
    r.spec.saved,
  )
  _write_config(r)
  tally.writer.close()
  raise Preempted(
    signum,
    f'stopped by {signal.Signals(signum).name} at step {at.step}; saved it '
    f'in {r.workdir}/{layout.CHECKPOINT_DIRS["preempted"]}. Rerun the same '
    'command to resume.',
  )


# The end of an epoch.


def end_epoch(
  r: _Run,
  at: resume.Position,
  tally: _Tally,
  evaluate_fn,
  test_split: EvalBatches,
  epoch: int,
  epoch_time: float,
) -> None:
  """Checks the state, evaluates when due, records, logs, checkpoints."""
  recipe, book = r.spec.recipe, r.spec.bookkeeping
  divergence.check_state(at.state, at.step, r.ckpts)
  is_last = epoch + 1 == recipe.num_epochs
  # The last epoch's figures are the run's headline: always evaluated.
  evaluated = _due(epoch + 1, book.eval_every_epochs, is_last)
  test = (
    evaluate_fn(
      {
        'params': at.state.params['model'],
        'batch_stats': at.state.batch_stats,
      },
      test_split,
      r.setup.reference[1] if r.setup.reference else None,
    )
    if evaluated
    else {}
  )
  tally.record = records.epoch_record(
    epoch + 1,
    jax.device_get(at.per_step),
    test,
    epoch_time,
    r.steps_per_epoch * recipe.batch_size,
    tally.state_bytes,
    r.stage,
  )
  tally.writer.write('epoch', at.step, tally.record)
  if evaluated:
    at.last_test = {f'test_{k}': v for k, v in test.items()}
  for hook in tally.hooks:
    hook.on_epoch(epoch + 1, tally.record)
  records.log_epoch(epoch + 1, recipe.num_epochs, tally.record, test, r.stage)
  improved = evaluated and test['top1'] > at.best['top1']
  if improved:
    at.best = {'top1': test['top1'], 'epoch': epoch + 1}
  regular = _due(epoch + 1, book.checkpoint_every_epochs, is_last)
  if regular or improved:
    tally.writer.sync()
    r.ckpts.save(
      epoch + 1,
      at.state,
      resume.checkpoint_meta(at, epoch + 1, r.dataset.image_shape),
      r.spec.saved,
      last=regular,
      best=improved,
    )
    _write_config(r)


def _write_config(r: _Run) -> None:
  """WORKDIR/config.json and data.json, replaced atomically, beside a
  checkpoint that has just been saved: a rejected or diverged run never
  rewrites them."""
  metric_writer.write_json_from_process_0(
    os.path.join(r.workdir, layout.CONFIG_FILE), r.spec.saved
  )
  metric_writer.write_json_from_process_0(
    os.path.join(r.workdir, layout.DATA_FILE), r.data
  )


# The summary.


def finish(r: _Run, at: resume.Position, tally: _Tally) -> dict[str, Any]:
  """Closes the record, commits the last checkpoint and writes the run's
  summary to WORKDIR/summary.json: a finished run is recognised by that
  file, so it is written only beside its final checkpoint."""
  tally.writer.close()
  r.ckpts.commit(r.spec.recipe.num_epochs)
  # Restarted after the last epoch: nothing was left to train, and the
  # last checkpoint holds the last evaluation.
  summary = records.summary(
    tally.record or at.last_test or {},
    at.best,
    r.spec.recipe.num_epochs,
    r.total_steps,
    r.workdir,
    tally.memory,
    tally.device_bytes,
    r.stage,
  )
  metric_writer.write_json_from_process_0(
    os.path.join(r.workdir, layout.SUMMARY_FILE), summary
  )
  logging.info(
    'Done: last top-1 %s, best top-1 %.4f at epoch %d.',
    summary['final_top1'],
    at.best['top1'],
    at.best['epoch'],
  )
  return summary
